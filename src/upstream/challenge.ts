// The HIMDS key-file challenge (docs/protocol.md#1-himds-the-upstream). The realm arrives from the network and names a file we read
// as a privileged process, so it is hostile input: it must name a plainly-named `.key` file directly inside
// the configured tokens directory, and that file must be a small regular file that is not a link. The key is
// single-use: read once, sent once, never cached, never logged, never returned.
//
// The read is synchronous, on purpose: five system calls on a file of at most 4 KB that HIMDS wrote into its
// local directory a moment before (its inode and page are in memory) take a few microseconds; the same five
// through libuv's thread pool took about 0.15 ms, each a hand-off to a pool thread and back, on the path of
// every token minted (docs/performance.md, "The cold path"). nginx reads the files it serves the same way.
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync, type Stats } from 'node:fs';
import path from 'node:path';
import { UpstreamFailure, type ChallengeFailure } from '../values/failures.js';

export type { ChallengeFailure } from '../values/failures.js';

/** A challenge that could not be answered: an upstream failure of kind `challenge`, with its reason. */
export class ChallengeError extends UpstreamFailure {
  declare readonly reason: ChallengeFailure;
  constructor(reason: ChallengeFailure, detail: string, cause?: unknown) {
    super('challenge', detail, { reason, cause });
    this.name = 'ChallengeError';
  }
}

/** Every SDK enforces this limit, inclusive. */
export const MAX_KEY_FILE_BYTES = 4096;
const MAX_REALM_LENGTH = 4096;
// GUID-style names in practice; allow plain file-name characters only.
const KEY_FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,250}\.key$/;

/**
 * The key-file path from `Www-Authenticate: Basic realm=<path>`. The scheme and `realm` are matched
 * case-insensitively (HIMDS sends Go casing, proxies may not); a fully quoted value is unquoted. Anything
 * else about the value is checked by keyFilePath().
 */
export function parseRealm(header: string | string[] | undefined): string {
  const value = Array.isArray(header) ? (header.length === 1 ? header[0] : undefined) : header;
  if (value === undefined) throw new ChallengeError('bad_realm', 'HIMDS answered 401 without a single Www-Authenticate header');
  if (value.length > MAX_REALM_LENGTH + 32) throw new ChallengeError('bad_realm', 'the challenge realm is too long');
  const m = /^basic\s+realm=(.*)$/is.exec(value.trim());
  if (!m) throw new ChallengeError('bad_realm', 'HIMDS answered 401 without a Basic realm');
  let realm = m[1]!;
  if (realm.length >= 2 && realm.startsWith('"') && realm.endsWith('"')) realm = realm.slice(1, -1);
  return realm;
}

/** Validate the realm as a path: directly in tokensDir, a plain `*.key` name, nothing to normalise. */
export function keyFilePath(realm: string, tokensDir: string): string {
  if (realm.length === 0 || realm.length > MAX_REALM_LENGTH) {
    throw new ChallengeError('bad_realm', 'the challenge realm is empty or too long');
  }
  const name = path.posix.basename(realm);
  if (path.posix.dirname(realm) !== tokensDir || realm !== `${tokensDir}/${name}` || !KEY_FILE_NAME.test(name)) {
    throw new ChallengeError('bad_realm', `HIMDS named a key file that is not a plain *.key file directly in ${tokensDir}; refusing to read it`);
  }
  return realm;
}

const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/**
 * Read the key file the realm names. lstat first (no symlink, FIFO or device is ever opened), then open with
 * O_NOFOLLOW|O_NONBLOCK and check the opened file is the one inspected (no swap in between). One trailing
 * newline is stripped; the key goes into a header, so it must be printable.
 */
export function readKeyFile(realm: string, tokensDir: string): string {
  const file = keyFilePath(realm, tokensDir);
  let before: Stats;
  let fd: number;
  const buffer = Buffer.alloc(MAX_KEY_FILE_BYTES + 1);
  try {
    before = lstatSync(file);
    checkShape(before.isSymbolicLink(), before.isFile(), before.size);
    fd = openSync(file, OPEN_FLAGS);
  } catch (err) {
    throw fsFailure(err, tokensDir);
  }
  try {
    const opened = fstatSync(fd);
    if (opened.ino !== before.ino || opened.dev !== before.dev) {
      throw new ChallengeError('symlink', 'the key file was replaced while it was being read; refusing it');
    }
    checkShape(false, opened.isFile(), opened.size);
    const bytesRead = readSync(fd, buffer, 0, buffer.length, 0);
    checkShape(false, true, bytesRead);
    let key = buffer.toString('utf8', 0, bytesRead);
    if (key.endsWith('\r\n')) key = key.slice(0, -2);
    else if (key.endsWith('\n')) key = key.slice(0, -1);
    // It becomes an HTTP header value: printable ASCII only (undici refuses anything else).
    if (!/^[\x21-\x7e]+$/.test(key)) {
      throw new ChallengeError('bad_key', 'the key file holds no key or unprintable characters');
    }
    return key;
  } catch (err) {
    throw fsFailure(err, tokensDir);
  } finally {
    buffer.fill(0);
    closeSync(fd);
  }
}

function checkShape(isLink: boolean, isFile: boolean, size: number): void {
  if (isLink) throw new ChallengeError('symlink', 'the key file HIMDS named is a symbolic link; refusing to follow it');
  if (!isFile) throw new ChallengeError('not_regular', 'the key file HIMDS named is not a regular file; refusing to read it');
  if (size === 0) throw new ChallengeError('empty', 'the key file HIMDS named is empty');
  if (size > MAX_KEY_FILE_BYTES) throw new ChallengeError('too_large', `the key file HIMDS named is larger than ${MAX_KEY_FILE_BYTES} bytes`);
}

function fsFailure(err: unknown, tokensDir: string): ChallengeError {
  if (err instanceof ChallengeError) return err;
  const code = (err as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT':
    case 'ENOTDIR':
      return new ChallengeError(
        'missing',
        `the key file HIMDS named does not exist in ${tokensDir} (keys are single-use and short-lived; is --tokens-dir the directory HIMDS writes to?)`,
        err,
      );
    case 'EACCES':
    case 'EPERM':
      return new ChallengeError('permission', `permission denied reading key files in ${tokensDir}: run as root or in the himds group`, err);
    case 'ELOOP':
      return new ChallengeError('symlink', 'the key file HIMDS named is a symbolic link; refusing to follow it', err);
    default:
      return new ChallengeError('io', `could not read the key file (${code ?? 'unknown error'})`, err);
  }
}
