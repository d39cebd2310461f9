// A HIMDS emulator, faithful to what real Arc agents do on the wire (docs/protocol.md#1-himds-the-upstream): the 401 key-file
// challenge with single-use, short-lived GUID-named key files, compact all-string token JSON with an empty
// `resource`, user-assigned echo as new agents do (or not, as legacy agents do), and the instance endpoints.
// It backs the tests, `demo`, and anyone developing against Arc managed identity on a laptop.
//
// Fault switches: latency, failing the next N requests, 503 during start-up, and going down (in process).
// GET /__emulator/stats reports counters; POST /__emulator/faults (JSON) changes switches at run time.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import type http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TcpAddress } from '../values/addresses.js';

import type { UserAssignedMode } from './modes.js';

export type { UserAssignedMode } from './modes.js';

// node:http through process.getBuiltinModule, not `import http from 'node:http'`: on Node 24 that import
// builds an ES module namespace of http's exports, which runs its lazy WebSocket/CloseEvent/MessageEvent
// getters and so loads Node's bundled undici, TLS, HTTP/2 and web streams: 14 MB RSS (see src/server.ts).
const { createServer } = process.getBuiltinModule('node:http');

export interface EmulatorOptions {
  readonly tokensDir: string;
  readonly tokenLifetimeS: number;
  readonly keyTtlMs: number;
  readonly latencyMs: number;
  readonly failNext: number;
  readonly failStatus: number;
  readonly startupUnavailableMs: number;
  readonly userAssigned: UserAssignedMode;
}

export const EMULATOR_DEFAULTS = {
  tokenLifetimeS: 86_400,
  keyTtlMs: 30_000,
  latencyMs: 0,
  failNext: 0,
  failStatus: 503,
  startupUnavailableMs: 0,
  userAssigned: 'echo',
} as const satisfies Omit<EmulatorOptions, 'tokensDir'>;

/** Switches that can change while running. */
export interface Faults {
  latencyMs: number;
  failNext: number;
  failStatus: number;
  userAssigned: UserAssignedMode;
}

export interface EmulatorStats {
  /** Requests to the token endpoint, authorized or not. */
  tokenRequests: number;
  /** 401s with a fresh key file. */
  challenges: number;
  /** Tokens handed out. */
  tokensIssued: number;
  /** Authorized requests whose key was unknown, used or expired. */
  rejectedKeys: number;
  /** Requests to the instance and identity-info endpoints. */
  metadataRequests: number;
  /** Requests answered by --fail-next or the start-up window. */
  injectedFailures: number;
  /** Query of the last token request, as received (for tests of what the proxy forwards). */
  lastTokenQuery: Record<string, string> | null;
  /** Key files written and not yet used or expired. */
  keysOutstanding: number;
}

/** HIMDS accepts these on the token and instance endpoints (docs/protocol.md#1-himds-the-upstream). */
export const HIMDS_API_VERSIONS = ['2019-08-15', '2019-11-01', '2020-06-01'];
const TENANT_ID = '72f988bf-86f1-41af-91ab-2d7cd011db47';
const SELECTORS = ['client_id', 'object_id', 'msi_res_id'] as const;

const COMPUTE = {
  location: 'westeurope',
  name: 'arc-emulated-host',
  resourceGroupName: 'arc-emulator-rg',
  resourceId:
    '/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/arc-emulator-rg/providers/Microsoft.HybridCompute/machines/arc-emulated-host',
  subscriptionId: '00000000-0000-0000-0000-000000000000',
  tags: 'environment:emulator',
  vmId: '11111111-2222-3333-4444-555555555555',
  osType: 'Linux',
} as const;

interface Identity {
  readonly clientId: string;
  readonly objectId: string;
  readonly resourceId: string;
}

/** A GUID derived from a string, so one user-assigned identity looks the same on every request. */
function derivedGuid(seed: string): string {
  const h = createHash('sha256').update(seed).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** The whole identity a selector names: the named part as given, the other two derived from it. */
function userAssignedIdentity(kind: (typeof SELECTORS)[number], id: string): Identity {
  const name = derivedGuid(`${kind}:${id}`).slice(0, 8);
  return {
    clientId: kind === 'client_id' ? id : derivedGuid(`client:${kind}:${id}`),
    objectId: kind === 'object_id' ? id : derivedGuid(`object:${kind}:${id}`),
    resourceId:
      kind === 'msi_res_id'
        ? id
        : `/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/arc-emulator-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uami-${name}`,
  };
}

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  // Compact JSON, as HIMDS sends it.
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

export class HimdsEmulator {
  readonly options: EmulatorOptions;
  readonly faults: Faults;
  readonly #stats: EmulatorStats = {
    tokenRequests: 0,
    challenges: 0,
    tokensIssued: 0,
    rejectedKeys: 0,
    metadataRequests: 0,
    injectedFailures: 0,
    lastTokenQuery: null,
    keysOutstanding: 0,
  };
  /** Outstanding keys: contents -> file path and its expiry timer. */
  readonly #keys = new Map<string, { file: string; timer: NodeJS.Timeout }>();
  readonly #server: http.Server;
  readonly #startedAt = Date.now();
  /** Aborted by close(): requests sleeping on --latency are dropped instead of holding the process. */
  readonly #closed = new AbortController();

  /** The machine's system-assigned identity. */
  readonly #systemIdentity: Identity = { clientId: randomUUID(), objectId: randomUUID(), resourceId: COMPUTE.resourceId };
  #address: TcpAddress | undefined;

  private constructor(options: EmulatorOptions) {
    this.options = options;
    // Every request sleeping on --latency listens on #closed: any number may (not a listener leak).
    setMaxListeners(0, this.#closed.signal);
    this.faults = {
      latencyMs: options.latencyMs,
      failNext: options.failNext,
      failStatus: options.failStatus,
      userAssigned: options.userAssigned,
    };
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) send(res, 500, { error: 'internal_error', error_description: String(err) });
        else res.destroy();
      });
    });
  }

  static async start(options: Partial<EmulatorOptions> & { tokensDir: string }, address: TcpAddress): Promise<HimdsEmulator> {
    const emulator = new HimdsEmulator({ ...EMULATOR_DEFAULTS, ...options });
    await mkdir(emulator.options.tokensDir, { recursive: true, mode: 0o750 });
    await emulator.#listen(address);
    return emulator;
  }

  /** e.g. http://127.0.0.1:40342 */
  get url(): string {
    const a = this.#address!;
    return `http://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
  }

  get address(): TcpAddress {
    return this.#address!;
  }

  stats(): EmulatorStats {
    return { ...this.#stats, keysOutstanding: this.#keys.size };
  }

  /** Stop accepting connections (clients see connection refused) until up(). */
  async down(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  async up(): Promise<void> {
    await this.#listen(this.#address!);
  }

  async close(): Promise<void> {
    this.#closed.abort();
    if (this.#server.listening) await this.down();
    for (const { file, timer } of this.#keys.values()) {
      clearTimeout(timer);
      await rm(file, { force: true });
    }
    this.#keys.clear();
  }

  async #listen(address: TcpAddress): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: address.host, port: address.port }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    const bound = this.#server.address();
    this.#address = { kind: 'tcp', host: address.host, port: typeof bound === 'object' && bound ? bound.port : address.port };
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://himds');
    if (url.pathname.startsWith('/__emulator/')) return this.#control(url.pathname, req, res);
    if (this.faults.latencyMs > 0) {
      const slept = await sleep(this.faults.latencyMs, true, { signal: this.#closed.signal }).catch(() => false);
      if (!slept) return void res.destroy();
    }
    if (Date.now() - this.#startedAt < this.options.startupUnavailableMs) {
      this.#stats.injectedFailures++;
      return send(res, 503, { error: 'service_unavailable', error_description: 'HIMDS is starting' }, { 'Retry-After': '1' });
    }
    if (this.faults.failNext > 0) {
      this.faults.failNext--;
      this.#stats.injectedFailures++;
      return send(res, this.faults.failStatus, { error: 'injected_failure', error_description: 'failure injected by the emulator' });
    }
    if (req.method !== 'GET') return send(res, 405, { error: 'invalid_request', error_description: 'method not allowed' });
    if (url.pathname === '/agentstatus') return send(res, 200, { status: 'Connected', agentVersion: 'emulator' });
    if (req.headers.metadata !== 'true') {
      return send(res, 400, { error: 'invalid_request', error_description: 'Required metadata header not specified' });
    }
    const apiVersion = url.searchParams.get('api-version');
    if (apiVersion === null || !HIMDS_API_VERSIONS.includes(apiVersion)) {
      return send(res, 400, { error: 'invalid_request', error_description: 'Invalid API version' });
    }
    switch (url.pathname) {
      case '/metadata/identity/oauth2/token':
        return this.#token(url, req, res);
      case '/metadata/instance':
        this.#stats.metadataRequests++;
        return send(res, 200, { compute: COMPUTE, network: { interface: [] } });
      case '/metadata/instance/compute':
        this.#stats.metadataRequests++;
        return send(res, 200, COMPUTE);
      case '/metadata/identity/info':
        this.#stats.metadataRequests++;
        return send(res, 200, { tenantId: TENANT_ID });
      default:
        return send(res, 404, { error: 'not_found', error_description: 'path not found' });
    }
  }

  async #token(url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.#stats.tokenRequests++;
    this.#stats.lastTokenQuery = Object.fromEntries(url.searchParams);
    const resource = url.searchParams.get('resource');
    if (!resource) return send(res, 400, { error: 'invalid_request', error_description: 'resource is required' });

    const authorization = req.headers.authorization;
    if (authorization === undefined) return this.#challenge(res);
    const key = authorization.startsWith('Basic ') ? authorization.slice(6) : '';
    const entry = this.#keys.get(key);
    if (!entry) {
      this.#stats.rejectedKeys++;
      return this.#challenge(res);
    }
    // Single use: gone the moment it is presented.
    this.#keys.delete(key);
    clearTimeout(entry.timer);
    await rm(entry.file, { force: true });

    let selector: (typeof SELECTORS)[number] | undefined;
    for (const name of SELECTORS) if (url.searchParams.get(name)) selector = name;
    // mi_res_id is not a selector HIMDS knows: it silently returns the system-assigned identity.
    if (selector && this.faults.userAssigned === 'not-found') {
      return send(res, 404, {
        error: 'identity_not_found',
        error_description: 'Identity not found: error acquiring access token: requested identity was not found',
        error_codes: [404],
      });
    }
    const echo = selector !== undefined && this.faults.userAssigned === 'echo';
    const id = echo ? url.searchParams.get(selector!)! : undefined;
    const identity = echo ? userAssignedIdentity(selector!, id!) : this.#systemIdentity;
    const now = Math.floor(Date.now() / 1000);
    const expiresOn = now + this.options.tokenLifetimeS;
    const claims = {
      aud: resource,
      iss: `https://sts.windows.net/${TENANT_ID}/`,
      iat: now,
      nbf: now,
      exp: expiresOn,
      appid: identity.clientId,
      oid: identity.objectId,
      tid: TENANT_ID,
      xms_mirid: identity.resourceId,
      uti: randomBytes(12).toString('base64url'),
    };
    const accessToken = `${base64url({ typ: 'JWT', alg: 'RS256', kid: 'himds-emulator' })}.${base64url(claims)}.${randomBytes(32).toString('base64url')}`;
    this.#stats.tokensIssued++;
    const body: Record<string, string> = {
      access_token: accessToken,
      refresh_token: '',
      expires_in: String(this.options.tokenLifetimeS),
      expires_on: String(expiresOn),
      not_before: String(now),
      resource: '',
      token_type: 'Bearer',
    };
    if (echo) body[selector!] = id!;
    send(res, 200, body);
  }

  async #challenge(res: ServerResponse): Promise<void> {
    const key = randomBytes(32).toString('hex');
    const file = path.join(this.options.tokensDir, `${randomUUID()}.key`);
    // No trailing newline, readable by owner and group (root and himds on a real host).
    await writeFile(file, key, { mode: 0o640, flag: 'wx' });
    const timer = setTimeout(() => {
      this.#keys.delete(key);
      rm(file, { force: true }).catch(() => undefined);
    }, this.options.keyTtlMs);
    timer.unref();
    this.#keys.set(key, { file, timer });
    this.#stats.challenges++;
    // Go header casing and no quotes, exactly as HIMDS sends it.
    res.setHeader('Www-Authenticate', `Basic realm=${file}`);
    send(res, 401, { error: 'unauthorized', error_description: 'Authorization header with the key file contents required' });
  }

  /** Validate a whole patch first, then apply it: a bad patch changes nothing. */
  #applyFaults(patch: unknown): string | undefined {
    if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return 'expected a JSON object';
    const p = patch as Record<string, unknown>;
    const wholeAtLeast = (k: string, min: number, max = Number.MAX_SAFE_INTEGER) =>
      p[k] === undefined || (Number.isInteger(p[k]) && (p[k] as number) >= min && (p[k] as number) <= max)
        ? undefined
        : `${k} must be a whole number from ${min} to ${max}`;
    const problem =
      wholeAtLeast('latencyMs', 0, 600_000) ??
      wholeAtLeast('failNext', 0) ??
      wholeAtLeast('failStatus', 400, 599) ??
      (p.userAssigned === undefined || ['echo', 'ignore', 'not-found'].includes(p.userAssigned as string)
        ? undefined
        : 'userAssigned must be echo, ignore or not-found');
    if (problem) return problem;
    Object.assign(this.faults, Object.fromEntries(Object.entries(p).filter(([k]) => k in this.faults)));
    return undefined;
  }

  async #control(pathname: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (pathname === '/__emulator/stats' && req.method === 'GET') return send(res, 200, this.stats());
    if (pathname === '/__emulator/faults' && req.method === 'POST') {
      let text = '';
      for await (const chunk of req) {
        text += String(chunk);
        if (text.length > 4096) return send(res, 413, { error: 'too_large' });
      }
      let patch: unknown;
      try {
        patch = JSON.parse(text);
      } catch {
        return send(res, 400, { error: 'invalid_json' });
      }
      const problem = this.#applyFaults(patch);
      return problem ? send(res, 400, { error: 'invalid_faults', error_description: problem }) : send(res, 200, this.faults);
    }
    return send(res, 404, { error: 'not_found' });
  }
}
