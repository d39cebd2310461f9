// The webhook's HTTPS listener: POST /mutate (AdmissionReview in, AdmissionReview out) and GET /healthz.
// HTTPS only (the API server calls webhooks over TLS and nothing else). Bodies are bounded before they are
// read; every refusal is a JSON {"error": ...} with a status that says what was wrong.
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from '../observability/log.js';
import { admit } from './admission.js';
import type { WebhookConfig } from './config.js';

/** The certificate or key files cannot be used: exit status 2 (src/commands/command.ts). */
export class WebhookTlsError extends Error {
  readonly code = 'webhook_tls_invalid';
  constructor(message: string) {
    super(message);
    this.name = 'WebhookTlsError';
  }
}
import { loadKeyPair, reloadOnChange, type KeyPair, type Reloader } from './tls.js';

export interface RunningWebhook {
  readonly url: string;
  readonly port: number;
  /** Check the certificate files now (tests; the timer does it every --tls-reload-interval). */
  reloadCertificate(): Promise<void>;
  close(): Promise<void>;
}

/** The API server's default webhook timeout is 10 s; a client slower than this is not the API server. */
const REQUEST_TIMEOUT_MS = 10_000;

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** The body, or undefined once a 413 has been sent (the connection is then closed). */
function readBody(req: IncomingMessage, res: ServerResponse, max: number): Promise<string | undefined> {
  const tooLarge = () => {
    res.setHeader('Connection', 'close');
    send(res, 413, { error: `the AdmissionReview is larger than ${max} bytes (--max-request-bytes)` });
  };
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > max) {
    tooLarge();
    req.resume();
    return Promise.resolve(undefined);
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        req.off('data', onData);
        req.resume();
        tooLarge();
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

export async function startWebhook(config: WebhookConfig, log: Logger): Promise<RunningWebhook> {
  const files = { cert: config.tlsCert, key: config.tlsKey };
  let initial: KeyPair;
  try {
    initial = loadKeyPair(files);
  } catch (err) {
    throw new WebhookTlsError(`--tls-cert/--tls-key: ${(err as Error).message}`);
  }

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const pathname = (req.url ?? '/').split('?', 1)[0];
    if (pathname === '/healthz') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, { error: 'use GET /healthz' });
      return send(res, 200, { status: 'ok' });
    }
    if (pathname !== '/mutate') return send(res, 404, { error: `no such path ${JSON.stringify(pathname)}: POST /mutate or GET /healthz` });
    if (req.method !== 'POST') return send(res, 405, { error: 'use POST /mutate with an AdmissionReview' });
    const type = String(req.headers['content-type'] ?? 'application/json');
    if (!/^application\/json\s*(;|$)/i.test(type)) return send(res, 415, { error: `content-type ${type}: send application/json` });
    const body = await readBody(req, res, config.maxRequestBytes);
    if (body === undefined) return log.warn({ outcome: 'too-large', limit: config.maxRequestBytes }, 'admission request refused');
    const answer = admit(body, config);
    if (answer.status === 200) log.info(answer.log, 'admission');
    else log.warn(answer.log, 'admission request refused');
    send(res, answer.status, answer.body);
  };

  const server = https.createServer({ cert: initial.cert, key: initial.key, minVersion: 'TLSv1.2' }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.error({ err }, 'admission request failed');
      if (!res.headersSent) send(res, 500, { error: 'internal error; see the webhook log' });
      else res.destroy();
    });
  });
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.headersTimeout = REQUEST_TIMEOUT_MS;
  server.maxConnections = 1024;
  // A TLS handshake that fails (a scanner, a client without the CA) is the client's problem: log, do not crash.
  server.on('tlsClientError', (err: Error) => log.debug({ err: err.message }, 'TLS handshake failed'));
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as { port: number }).port;
  const host = config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host;

  const reloader: Reloader = reloadOnChange(
    files,
    initial,
    config.tlsReloadIntervalMs,
    (pair) => {
      server.setSecureContext({ cert: pair.cert, key: pair.key, minVersion: 'TLSv1.2' });
      log.info({ certificate: pair.describe }, 'serving certificate reloaded');
    },
    (message) => log.warn({ problem: message }, 'serving certificate not reloaded; keeping the previous one'),
  );

  log.info({ url: `https://${host}:${port}`, certificate: initial.describe }, 'admission webhook listening');
  return {
    url: `https://${host}:${port}`,
    port,
    reloadCertificate: () => reloader.check(),
    close: () =>
      new Promise<void>((resolve) => {
        reloader.stop();
        server.close(() => resolve());
        server.closeIdleConnections();
        // In-flight answers are quick (no I/O); whatever is left after a moment is cut.
        setTimeout(() => {
          for (const s of sockets) s.destroy();
        }, 2000).unref();
      }),
  };
}
