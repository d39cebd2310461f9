// The one way anything reaches the upstream (HIMDS, or a relay): an undici Pool with per-attempt deadlines
// (AbortSignal.timeout: undici's own timeouts are too coarse), bounded body reads, and failures classified into
// typed UpstreamFailures (what happened; what a client is told is decided in src/imds/errors.ts). Bodies are
// always consumed or dumped so pooled connections are reused, never leaked.
import type { Dispatcher, Pool } from 'undici';
import undiciErrors from 'undici/lib/core/errors.js';
import DispatcherClass from 'undici/lib/dispatcher/dispatcher.js';
import PoolClass from 'undici/lib/dispatcher/pool.js';
import request from 'undici/lib/api/api-request.js';
import type { Metrics, UpstreamLeg, UpstreamOutcome } from '../observability/metrics.js';
import type { UpstreamAddress } from '../values/addresses.js';
import { UpstreamFailure } from '../values/failures.js';

// undici's Pool, its request method and its errors, not its index: the index also loads fetch, WebSocket,
// caches, mocks and the other request APIs (about 6 MB RSS on Node 24), none of which an upstream call uses.
// Static imports, so the build's bundler takes exactly these files (src/vendor.d.ts gives them undici's types).
// `request` goes onto the Dispatcher prototype as undici's index puts it there.
DispatcherClass.prototype.request = request;

/** Token and error bodies are small; anything bigger is not HIMDS talking. */
export const MAX_UPSTREAM_BODY = 64 * 1024;

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: string;
}

export interface UpstreamClientOptions {
  readonly attemptTimeoutMs: number;
  /** Concurrent upstream connections; more requests queue in the pool. */
  readonly connections: number;
  readonly metrics?: Metrics | undefined;
}

function statusOutcome(status: number): UpstreamOutcome {
  if (status === 401) return '401';
  if (status >= 200 && status < 300) return '2xx';
  if (status >= 400 && status < 500) return '4xx';
  if (status >= 500 && status < 600) return '5xx';
  return 'other';
}

/** The metric outcome of a failed request: what happened on the wire. */
function failureOutcome(err: UpstreamFailure): UpstreamOutcome {
  return err.kind === 'timeout' || err.kind === 'refused' || err.kind === 'reset' ? err.kind : 'error';
}

export class UpstreamClient {
  readonly address: UpstreamAddress;
  readonly #pool: Pool;
  /** Metadata passthrough's own connections (see get()). */
  readonly #metadataPool: Pool;
  readonly #attemptTimeoutMs: number;
  readonly #metrics: Metrics | undefined;

  constructor(address: UpstreamAddress, options: UpstreamClientOptions) {
    this.address = address;
    this.#attemptTimeoutMs = options.attemptTimeoutMs;
    this.#metrics = options.metrics;
    const poolOptions = {
      ...(address.kind === 'unix' ? { socketPath: address.path } : {}),
      // Fail a dead upstream fast; the attempt deadline still bounds everything else.
      connect: { timeout: Math.min(options.attemptTimeoutMs, 5000) },
      keepAliveTimeout: 4000,
    };
    this.#pool = new PoolClass(address.origin, { ...poolOptions, connections: options.connections });
    this.#metadataPool = new PoolClass(address.origin, { ...poolOptions, connections: Math.max(2, Math.ceil(options.connections / 4)) });
  }

  /** A human description for operator messages. */
  get describe(): string {
    return this.address.kind === 'unix' ? `unix:${this.address.path}` : this.address.origin;
  }

  /**
   * One GET with the attempt deadline (and the caller's overall signal); the body read whole, bounded. Metadata
   * passthrough has connections of its own, so polling instance metadata cannot starve token fetches.
   */
  async get(leg: UpstreamLeg, path: string, headers: Record<string, string>, signal: AbortSignal): Promise<UpstreamResponse> {
    const started = performance.now();
    const attempt = AbortSignal.any([signal, AbortSignal.timeout(this.#attemptTimeoutMs)]);
    const pool = leg === 'passthrough' ? this.#metadataPool : this.#pool;
    let response: Dispatcher.ResponseData;
    try {
      response = await pool.request({ path, method: 'GET', headers, signal: attempt });
    } catch (err) {
      throw this.#failed(leg, started, this.#classify(err, attempt));
    }
    try {
      const body = await readBounded(response.body);
      this.#record(leg, started, statusOutcome(response.statusCode));
      return { status: response.statusCode, headers: response.headers, body };
    } catch (err) {
      response.body.destroy();
      throw this.#failed(leg, started, err instanceof UpstreamFailure ? err : this.#classify(err, attempt));
    }
  }

  #record(leg: UpstreamLeg, started: number, outcome: UpstreamOutcome): void {
    if (!this.#metrics) return;
    this.#metrics.upstreamRequests.inc({ leg, outcome });
    this.#metrics.upstreamDuration.observe({ leg }, (performance.now() - started) / 1000);
  }

  #failed(leg: UpstreamLeg, started: number, err: UpstreamFailure): UpstreamFailure {
    this.#record(leg, started, failureOutcome(err));
    return err;
  }

  /** Let requests in flight finish for up to `graceMs`, then abandon them. */
  async close(graceMs = Infinity): Promise<void> {
    await Promise.all([closePool(this.#pool, graceMs), closePool(this.#metadataPool, graceMs)]);
  }

  /** Say what undici or the deadline threw: a typed failure. */
  #classify(err: unknown, attempt: AbortSignal): UpstreamFailure {
    if (err instanceof UpstreamFailure) return err;
    const cause = { cause: err };
    if (attempt.aborted) return new UpstreamFailure('timeout', `no answer from ${this.describe} in time`, cause);
    const code = (err as { code?: string }).code;
    if (code === 'ECONNREFUSED') return new UpstreamFailure('refused', `connection refused by ${this.describe}`, cause);
    if (code === 'ENOENT') return new UpstreamFailure('refused', `no socket at ${this.describe} (is the relay running?)`, cause);
    if (code === 'EACCES') return new UpstreamFailure('refused', `permission denied connecting to ${this.describe} (socket mode or group)`, cause);
    if (err instanceof undiciErrors.ConnectTimeoutError)
      return new UpstreamFailure('timeout', `could not connect to ${this.describe} in time`, cause);
    if (err instanceof undiciErrors.SocketError || code === 'ECONNRESET' || code === 'EPIPE') {
      return new UpstreamFailure('reset', `connection to ${this.describe} was reset`, cause);
    }
    if (err instanceof undiciErrors.UndiciError) return new UpstreamFailure('bad_body', `${this.describe}: ${err.message}`, cause);
    // Anything else on the connection (an HTTP parse error on garbage, an unknown socket error): it broke.
    return new UpstreamFailure('reset', `${this.describe}: ${code ?? (err as Error).message}`, cause);
  }
}

/** Let a pool's requests finish for up to `graceMs`, then abandon them. Idempotent. */
async function closePool(pool: Pool, graceMs: number): Promise<void> {
  if (pool.closed || pool.destroyed) return;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<'expired'>((resolve) => {
    if (Number.isFinite(graceMs)) timer = setTimeout(() => resolve('expired'), graceMs);
  });
  const outcome = await Promise.race([pool.close().then(() => 'closed' as const), expired]);
  clearTimeout(timer);
  if (outcome === 'expired') await pool.destroy();
}

async function readBounded(body: Dispatcher.ResponseData['body']): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_UPSTREAM_BODY) {
      throw new UpstreamFailure('bad_body', `response body larger than ${MAX_UPSTREAM_BODY} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size).toString('utf8');
}

/** First value of a response header, whatever its casing upstream (undici lower-cases names). */
export function headerValue(headers: UpstreamResponse['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}
