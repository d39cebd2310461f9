// The IMDS listeners: node:http servers (one per --listen address), each with its own request pipeline
// (pipeline.ts), and the unix socket files they own. Malformed HTTP, which never becomes a request, is answered
// here in the IMDS shape.
import type http from 'node:http';
import { unlink } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { renderError } from '../imds/errors.js';
import { describeAddress, IMDS_ADDRESS, type ListenAddress } from '../values/addresses.js';
import {
  applySocketAccess,
  prepareSocketPath,
  removeSocket,
  socketIdentity,
  SocketPathError,
  stagingPath,
  type SocketIdentity,
} from './unix-socket.js';

// node:http through process.getBuiltinModule, not `import http from 'node:http'`: on Node 24 that import
// builds an ES module namespace of http's exports, which runs its lazy WebSocket/CloseEvent/MessageEvent
// getters and so loads Node's bundled undici, TLS, HTTP/2 and web streams: 14 MB RSS (docs/performance.md).
const { createServer, STATUS_CODES } = process.getBuiltinModule('node:http');

const JSON_TYPE = 'application/json; charset=utf-8';
/** Malformed HTTP never reaches the handler; answer it in the IMDS shape too, then close. */
function onClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (!socket.writable || err.code === 'ECONNRESET') {
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

/** Why a listener could not start, and what to do about it. */
export type ListenErrorCode =
  | 'listen_address_unavailable'
  | 'listen_permission'
  | 'listen_in_use'
  | 'listen_socket_path'
  | 'listen_failed'
  | 'host_namespace_refused';

export class ListenError extends Error {
  readonly code: ListenErrorCode;
  constructor(code: ListenErrorCode, message: string) {
    super(message);
    this.name = 'ListenError';
    this.code = code;
  }
}

function listenError(err: NodeJS.ErrnoException, address: ListenAddress): ListenError {
  const where = describeAddress(address);
  if (err instanceof SocketPathError) return new ListenError('listen_socket_path', `cannot listen on ${where}: ${err.message}`);
  switch (err.code) {
    case 'EADDRNOTAVAIL': {
      const host = address.kind === 'tcp' ? address.host : '';
      return new ListenError(
        'listen_address_unavailable',
        `cannot listen on ${where}: ${host} is not an address in this network namespace. ` +
          `Add it to the loopback of the application's network namespace first: 'arc-imds-proxy netns-setup' or ` +
          `'ip addr add ${host}/32 dev lo' (needs NET_ADMIN)` +
          (host === IMDS_ADDRESS ? ' — never in the host network namespace, where it breaks Arc agent onboarding' : ''),
      );
    }
    case 'EACCES':
      return new ListenError(
        'listen_permission',
        address.kind === 'unix'
          ? `cannot listen on ${where}: permission denied creating the socket or its directory`
          : `cannot listen on ${where}: permission denied. Ports below 1024 need root, CAP_NET_BIND_SERVICE, ` +
              `or sysctl net.ipv4.ip_unprivileged_port_start=0 in this network namespace`,
      );
    case 'EPERM':
      return new ListenError('listen_permission', `cannot listen on ${where}: not permitted to set the socket's group or mode (${err.message})`);
    case 'EADDRINUSE':
      return new ListenError('listen_in_use', `cannot listen on ${where}: the address is already in use by another process`);
    default:
      return new ListenError('listen_failed', `cannot listen on ${where}: ${err.message}`);
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
