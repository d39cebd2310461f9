// The serving certificate, re-read when its files change, so that rotation (cert-manager renewing the Secret,
// kubelet swapping the mounted files) needs no restart. The files are polled rather than watched: a Secret
// volume changes by an atomic symlink swap, which inotify on the file names does not report reliably.
// A half-rotated pair (new certificate, old key) is refused and the previous one kept until both agree.
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';

export interface KeyPair {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** What to log about it: never the key. */
  readonly describe: { subject: string; validTo: string; fingerprint256: string };
}

/** Check a certificate and key as TLS would use them; throws a one-line message naming the files. */
export function keyPair(cert: Buffer, key: Buffer, files: { cert: string; key: string }): KeyPair {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new Error(`${files.cert}: not a PEM certificate (${(err as Error).message})`);
  }
  try {
    tls.createSecureContext({ cert, key });
  } catch (err) {
    throw new Error(`${files.key}: not the private key of ${files.cert}, or not a PEM key (${(err as Error).message})`);
  }
  return { cert, key, describe: { subject: x509.subject.replaceAll('\n', ', '), validTo: x509.validTo, fingerprint256: x509.fingerprint256 } };
}

function readBoth(read: (file: string) => Buffer, files: { cert: string; key: string }): { cert: Buffer; key: Buffer } {
  const one = (file: string) => {
    try {
      return read(file);
    } catch (err) {
      throw new Error(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
  return { cert: one(files.cert), key: one(files.key) };
}

/** Read and check the pair now (at start: a problem stops the command). */
export function loadKeyPair(files: { cert: string; key: string }): KeyPair {
  const { cert, key } = readBoth((f) => readFileSync(f), files);
  return keyPair(cert, key, files);
}

export interface Reloader {
  /** Check the files once now (the timer does it every interval). */
  check(): Promise<void>;
  stop(): void;
}

/**
 * Poll the files every intervalMs; on a change to a valid pair call onChange, on an invalid one call onError
 * (once per distinct content, not every tick) and keep serving the last good pair.
 */
export function reloadOnChange(
  files: { cert: string; key: string },
  initial: KeyPair,
  intervalMs: number,
  onChange: (pair: KeyPair) => void,
  onError: (message: string) => void,
): Reloader {
  let current = { cert: initial.cert, key: initial.key };
  let lastError = '';
  let running: Promise<void> | undefined;
  const check = () => {
    running ??= (async () => {
      try {
        const [cert, key] = await Promise.all([readFile(files.cert), readFile(files.key)]).catch((err: NodeJS.ErrnoException) => {
          throw new Error(`cannot read ${err.path ?? 'the certificate files'}: ${err.code ?? err.message}`);
        });
        if (cert.equals(current.cert) && key.equals(current.key)) return;
        const pair = keyPair(cert, key, files);
        current = { cert, key };
        lastError = '';
        onChange(pair);
      } catch (err) {
        const message = (err as Error).message;
        if (message !== lastError) onError(message);
        lastError = message;
      }
    })().finally(() => {
      running = undefined;
    });
    return running;
  };
  const timer = setInterval(() => void check(), intervalMs);
  timer.unref();
  return { check, stop: () => clearInterval(timer) };
}
