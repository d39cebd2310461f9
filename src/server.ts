// The IMDS listener: node:http servers (one per --listen address) sharing one request handler.
//
// The flow for a request is as follows:
//   1. the gate applies the IMDS contract (method, X-Forwarded-For, body, Metadata, path, query,
//      api-version) and answers failures at once: an SDK probe never waits on anything;
//   2. the route table picks the handler for the normalised path (anything else was a 404 in the gate);
//   3. token: the selector is read, the token cache gives a token (single-flight; on a miss the upstream fetch
//      answers the key-file challenge), and the IMDS-shaped body is sent with expires_in computed now;
//   4. metadata passthrough: the allowlisted path is streamed from the upstream;
//   5. any failure is an ImdsError from the one table in imds/errors.ts, answered by failed(); anything
//      else thrown is a 500 and a log line.
import type http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { IMDS_ADDRESS, type ListenAddress, type ServeConfig } from './config.js';
import { ImdsError, renderError, renderImdsError, type RenderedError } from './imds/errors.js';
import { gate, type GatedRequest } from './imds/gate.js';
import { passThrough } from './imds/passthrough.js';
import type { ListenerLimits } from './imds/limits.js';
import type { ResourcePolicy } from './imds/policy.js';
import { tokenRequestOf } from './imds/token-route.js';
import type { Audit } from './observability/audit.js';
import type { Logger } from './observability/log.js';
import type { Metrics, RouteLabel } from './observability/metrics.js';
import type { Served, TokenCache } from './tokens/cache.js';
import { TokenResponses, type TokenRequest } from './tokens/token.js';
import { unlink } from 'node:fs/promises';
import { applySocketAccess, prepareSocketPath, removeSocket, socketIdentity, SocketPathError, stagingPath, type SocketIdentity } from './unix-socket.js';
import type { UpstreamClient } from './upstream/client.js';

// node:http through process.getBuiltinModule, not `import http from 'node:http'`: on Node 24 that import
// builds an ES module namespace of http's exports, which runs its lazy WebSocket/CloseEvent/MessageEvent
// getters and so loads Node's bundled undici, TLS, HTTP/2 and web streams: 14 MB RSS (docs/performance.md).
const { createServer, STATUS_CODES } = process.getBuiltinModule('node:http');

export interface ProxyDeps {
  readonly config: Pick<ServeConfig, 'himdsApiVersion' | 'requestTimeoutMs'>;
  readonly log: Logger;
  readonly tokens: Pick<TokenCache, 'peek' | 'getToken'>;
  readonly upstream: UpstreamClient;
  readonly metrics: Metrics;
  readonly audit: Audit;
  /** Set when shutting down: answers then close their connection, so keep-alive clients move on. */
  readonly draining: { readonly now: boolean };
  readonly policy: ResourcePolicy;
  /** This listener's limits on the token route (each listener has its own). */
  readonly limits: ListenerLimits;
}

/** The route label of a request the gate refused (or that matched no route). */
const NO_ROUTE: RouteLabel = 'none';

const JSON_TYPE = 'application/json; charset=utf-8';

function respond(res: ServerResponse, status: number, body: string, bytes: number, retryAfter: string | undefined): void {
  const headers: Record<string, string | number> = { 'Content-Type': JSON_TYPE, 'Content-Length': bytes };
  if (retryAfter !== undefined) headers['Retry-After'] = retryAfter;
  res.writeHead(status, headers);
  res.end(body);
}


export function createRequestHandler(deps: ProxyDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const { log, tokens, upstream, config, metrics, audit, draining, policy, limits } = deps;
  // Decided once: at info, no per-request log object is even built.
  const debug = log.isLevelEnabled('debug');
  const responses = new TokenResponses();

  /** A cached hit is answered synchronously; only a request that must wait for a fetch goes async. */
  function token(gated: GatedRequest, req: IncomingMessage, res: ServerResponse): number | Promise<number> {
    const request = tokenRequestOf(gated);
    if (request instanceof ImdsError) throw request;
    if (!policy.allows(request.resource)) throw new ImdsError('resource_not_allowed');
    if (!limits.enabled) {
      const hit = tokens.peek(request);
      if (hit) return serve(request, hit, req, res, 0);
    }
    const started = performance.now();
    return limited(async () => serve(request, await tokens.getToken(request), req, res, started));
  }

  /** Run under this listener's limits, when they are on (IMDS's 429 otherwise). */
  async function limited(work: () => Promise<number>): Promise<number> {
    if (!limits.enabled) return work();
    if (!limits.acquire()) throw new ImdsError('throttled', undefined, { retryAfter: '1' });
    try {
      return await work();
    } finally {
      limits.release();
    }
  }

  function serve(request: TokenRequest, served: Served, req: IncomingMessage, res: ServerResponse, started: number): number {
    metrics.cacheResults.inc(served.result);
    const client = req.socket.remoteAddress ?? 'unix';
    if (served.result === 'miss' || served.result === 'forced') {
      // Only fetches are logged at info: the cached path stays cheap (the audit counts hits).
      log.info(
        { client, resource: request.resource, selector: request.selector?.kind ?? 'system', result: served.result, ms: Math.round(performance.now() - started) },
        'token fetched from upstream',
      );
    }
    audit.served(client, request);
    const rendered = responses.render(served.token, request, Date.now() / 1000);
    send(res, 200, rendered.body, undefined, rendered.bytes);
    return 200;
  }

  function metadata(gated: GatedRequest, _req: IncomingMessage, res: ServerResponse): Promise<number> {
    return limited(() => passThrough(gated, res, upstream, config.himdsApiVersion, AbortSignal.timeout(config.requestTimeoutMs), draining));
  }

  const ROUTES = { token, instance: metadata, identity_info: metadata } as const;

  /** Every answer of this handler. While draining, it closes its connection so keep-alive clients move on. */
  function send(res: ServerResponse, status: number, body: string, retryAfter?: string, bytes = Buffer.byteLength(body)): void {
    if (draining.now) res.shouldKeepAlive = false;
    respond(res, status, body, bytes, retryAfter);
  }

  /** Metrics for every answer; an access line at debug ('rejected' by the gate, else 'served'). */
  function answered(req: IncomingMessage, route: RouteLabel, status: number, started: number, line = 'served'): void {
    metrics.answered(route, status, (performance.now() - started) / 1000);
    if (debug) log.debug({ method: req.method, url: req.url, status }, line);
  }

  function failed(req: IncomingMessage, res: ServerResponse, route: RouteLabel, started: number, err: unknown): void {
    if (res.headersSent) {
      res.destroy();
      answered(req, route, res.statusCode, started);
      return;
    }
    let rendered: RenderedError;
    if (err instanceof ImdsError) {
      log.warn({ url: req.url, code: err.code, detail: err.detail }, 'request failed');
      rendered = renderImdsError(err);
    } else {
      log.error({ url: req.url, err }, 'unexpected error');
      rendered = renderError('internal');
    }
    send(res, rendered.status, rendered.body, rendered.retryAfter);
    answered(req, route, rendered.status, started);
  }

  return function handle(req, res) {
    const started = performance.now();
    const gated = gate(req);
    if (gated instanceof ImdsError) {
      const rendered = renderImdsError(gated);
      // A request that carried a body is not read: close the connection rather than parse what follows it.
      if (gated.code === 'request_body') res.shouldKeepAlive = false;
      send(res, rendered.status, rendered.body, rendered.retryAfter);
      answered(req, NO_ROUTE, rendered.status, started, 'rejected');
      return;
    }
    const route = gated.route;
    let outcome: number | Promise<number>;
    try {
      outcome = ROUTES[route](gated, req, res);
    } catch (err) {
      failed(req, res, route, started, err);
      return;
    }
    if (typeof outcome === 'number') answered(req, route, outcome, started);
    else outcome.then((status) => answered(req, route, status, started), (err: unknown) => failed(req, res, route, started, err));
  };
}

/** Malformed HTTP never reaches the handler; answer it in the IMDS shape too, then close. */
function onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (!socket.writable || (err.code === 'ECONNRESET')) {
    socket.destroy();
    return;
  }
  const { status, body } = renderError(
    err.code === 'HPE_HEADER_OVERFLOW' ? 'headers_too_large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'headers_too_slow' : 'malformed_http',
  );
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: ${JSON_TYPE}\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** Why a listener could not start, and what to do about it. `config` marks problems in the configuration. */
export class ListenError extends Error {
  readonly config: boolean;
  constructor(message: string, config: boolean) {
    super(message);
    this.name = 'ListenError';
    this.config = config;
  }
}

export function describeAddress(address: ListenAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

function listenError(err: NodeJS.ErrnoException, address: ListenAddress): ListenError {
  const where = describeAddress(address);
  if (err instanceof SocketPathError) return new ListenError(`cannot listen on ${where}: ${err.message}`, false);
  switch (err.code) {
    case 'EADDRNOTAVAIL': {
      const host = address.kind === 'tcp' ? address.host : '';
      return new ListenError(
        `cannot listen on ${where}: ${host} is not an address in this network namespace. ` +
          `Add it to the loopback of the application's network namespace first: 'arc-imds-proxy netns-setup' or ` +
          `'ip addr add ${host}/32 dev lo' (needs NET_ADMIN)` +
          (host === IMDS_ADDRESS ? ' — never in the host network namespace, where it breaks Arc agent onboarding' : ''),
        true,
      );
    }
    case 'EACCES':
      return new ListenError(
        address.kind === 'unix'
          ? `cannot listen on ${where}: permission denied creating the socket or its directory`
          : `cannot listen on ${where}: permission denied. Ports below 1024 need root, CAP_NET_BIND_SERVICE, ` +
              `or sysctl net.ipv4.ip_unprivileged_port_start=0 in this network namespace`,
        true,
      );
    case 'EPERM':
      return new ListenError(`cannot listen on ${where}: not permitted to set the socket's group or mode (${err.message})`, true);
    case 'EADDRINUSE':
      return new ListenError(`cannot listen on ${where}: the address is already in use by another process`, false);
    default:
      return new ListenError(`cannot listen on ${where}: ${err.message}`, false);
  }
}

export interface SocketAccess {
  readonly mode: number;
  readonly gid: number | undefined;
}

/** Listen; for a unix socket, also who owns the file now (so shutdown removes only ours). */
export async function listen(
  server: http.Server,
  address: ListenAddress,
  access: SocketAccess,
): Promise<{ bound: ListenAddress; socket?: SocketIdentity }> {
  const staged = address.kind === 'unix' ? stagingPath(address.path) : '';
  try {
    if (address.kind === 'unix') await prepareSocketPath(address.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = () => {
        server.off('error', reject);
        resolve();
      };
      if (address.kind === 'unix') {
        // Nobody else may connect between bind() and the chmod below: bind happens inside this call.
        const umask = process.umask(0o177);
        try {
          server.listen({ path: staged, exclusive: true }, done);
        } finally {
          process.umask(umask);
        }
      } else {
        server.listen({ host: address.host, port: address.port, exclusive: true }, done);
      }
    });
    if (address.kind === 'unix') {
      await applySocketAccess(staged, address.path, access.mode, access.gid);
      return { bound: address, socket: await socketIdentity(address.path) };
    }
  } catch (err) {
    // Bound but not usable (e.g. the group could not be set): do not leave it listening, or its file behind.
    if (server.listening) server.close();
    if (staged && staged !== (address as { path?: string }).path) await unlink(staged).catch(() => undefined);
    throw listenError(err as NodeJS.ErrnoException, address);
  }
  const bound = server.address();
  return { bound: typeof bound === 'object' && bound !== null ? { kind: 'tcp', host: address.host, port: bound.port } : address };
}

export interface ServerLimits {
  /** Connections per listener; more are closed at once. */
  readonly maxConnections: number;
  /** A client must have sent its whole header block within this (slowloris). */
  readonly headersTimeoutMs: number;
}

export function createImdsServer(handler: http.RequestListener, limits: ServerLimits): http.Server {
  const server = createServer(
    {
      // Slow senders cannot hold a connection open: the headers within --headers-timeout, the whole request
      // within 30 s (our own answer comes within --request-timeout). Node checks these deadlines every
      // connectionsCheckingInterval, so that interval follows the header deadline.
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: Math.max(30_000, limits.headersTimeoutMs + 1),
      connectionsCheckingInterval: Math.min(1000, Math.max(50, Math.floor(limits.headersTimeoutMs / 4))),
      keepAliveTimeout: 5_000,
      maxHeaderSize: 16 * 1024,
    },
    handler,
  );
  // Connections beyond the cap are closed at once: a flood cannot exhaust file descriptors or memory.
  server.maxConnections = limits.maxConnections;
  server.on('clientError', onClientError);
  return server;
}

export interface RunningServers {
  readonly addresses: readonly ListenAddress[];
  /** Stop accepting, let in-flight requests finish for up to `graceMs`, then cut what is left. */
  close(graceMs: number): Promise<void>;
}

/** Start one server per address; if any fails, close the ones already started and throw its ListenError. */
export async function listenAll(
  handlerFor: () => http.RequestListener,
  addresses: readonly ListenAddress[],
  access: SocketAccess,
  limits: ServerLimits,
): Promise<RunningServers> {
  const servers: http.Server[] = [];
  const bound: ListenAddress[] = [];
  const sockets: SocketIdentity[] = [];
  const close = async (graceMs: number) => {
    await Promise.all(
      servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            const cut = setTimeout(() => s.closeAllConnections(), graceMs);
            s.close(() => {
              clearTimeout(cut);
              resolve();
            });
            s.closeIdleConnections();
          }),
      ),
    );
    // Ours only: a listener that failed to start never owned its path, and a successor may own it now.
    for (const socket of sockets) await removeSocket(socket);
  };
  try {
    for (const address of addresses) {
      const server = createImdsServer(handlerFor(), limits);
      servers.push(server);
      const result = await listen(server, address, access);
      bound.push(result.bound);
      if (result.socket) sockets.push(result.socket);
    }
  } catch (err) {
    servers.pop();
    await close(0);
    throw err;
  }
  return { addresses: bound, close };
}
