// The one way anything reaches the upstream (HIMDS, or a relay): an undici Pool with per-attempt deadlines
// (AbortSignal.timeout: undici's own timeouts are too coarse), bounded body reads, and failures classified into
// typed UpstreamFailures (what happened; what a client is told is decided in src/imds/errors.ts). Each answer
// is read whole by a dispatch handler of our own (UpstreamAnswer, below), so a pooled connection is always
// read to the end or destroyed, never left half-read.
import type { Dispatcher, Pool } from 'undici';
import undiciErrors from 'undici/lib/core/errors.js';
import PoolClass from 'undici/lib/dispatcher/pool.js';
import type { Metrics, UpstreamLeg, UpstreamOutcome } from '../observability/metrics.js';
import type { UpstreamAddress } from '../values/addresses.js';
import { UpstreamFailure } from '../values/failures.js';

// undici's Pool and its errors, not its index: the index also loads fetch, WebSocket, caches, mocks and the
// request APIs (about 6 MB RSS on Node 24), none of which an upstream call uses. Static imports, so the build's
// bundler takes exactly these files (src/vendor.d.ts gives them undici's types). Not undici's `request()`
// either: it hands the body over as a stream, which a small answer read whole does not need, and the cold path
// (a token minted: two upstream calls, rare enough to run as baseline code) pays for every layer
// (docs/performance.md, "The cold path").

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
  get(leg: UpstreamLeg, path: string, headers: Record<string, string>, signal: AbortSignal): Promise<UpstreamResponse> {
    const started = performance.now();
    const pool = leg === 'passthrough' ? this.#metadataPool : this.#pool;
    return new Promise((resolve, reject) => {
      const late = () => new UpstreamFailure('timeout', `no answer from ${this.describe} in time`);
      if (signal.aborted) {
        reject(this.#failed(leg, started, late()));
        return;
      }
      const deadline = AbortSignal.timeout(this.#attemptTimeoutMs);
      const onAbort = () => answer.abort(late());
      const answer = new UpstreamAnswer((err, response) => {
        signal.removeEventListener('abort', onAbort);
        deadline.removeEventListener('abort', onAbort);
        // Settled before anything else can throw: this runs inside undici's callbacks.
        if (response) {
          resolve(response);
          this.#record(leg, started, statusOutcome(response.status));
        } else {
          const failure = this.#classify(err);
          reject(failure);
          this.#record(leg, started, failureOutcome(failure));
        }
      });
      signal.addEventListener('abort', onAbort);
      deadline.addEventListener('abort', onAbort);
      pool.dispatch({ path, method: 'GET', headers }, answer);
    });
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

  /** Say what undici threw: a typed failure (the deadline's and the body bound's are typed already). */
  #classify(err: unknown): UpstreamFailure {
    if (err instanceof UpstreamFailure) return err;
    const cause = { cause: err };
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

/**
 * What undici tells us about one request, collected into an UpstreamResponse: settles once, with the whole
 * answer or the first failure. A body over MAX_UPSTREAM_BODY, or abort(), stops the request (undici then
 * destroys its connection: nothing half-read goes back into the pool).
 */
class UpstreamAnswer implements Dispatcher.DispatchHandler {
  readonly #settle: (err: unknown, response?: UpstreamResponse) => void;
  #settled = false;
  #controller: Dispatcher.DispatchController | undefined;
  /** Set when aborted before undici started the request: it is stopped as soon as it starts. */
  #abortedWith: Error | undefined;
  #status = 0;
  #headers: UpstreamResponse['headers'] = {};
  readonly #chunks: Buffer[] = [];
  #size = 0;

  constructor(settle: (err: unknown, response?: UpstreamResponse) => void) {
    this.#settle = settle;
  }

  /**
   * Give up on the request: it settles now with `reason`, and undici stops it. One still waiting for a pooled
   * connection is stopped when it gets one, before anything is written (undici then closes that connection, as
   * its request() did).
   */
  abort(reason: Error): void {
    this.#finish(reason);
    if (this.#controller) this.#controller.abort(reason);
    else this.#abortedWith ??= reason;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#abortedWith) controller.abort(this.#abortedWith);
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[]>): void {
    // 1xx answers are informational: the real one follows.
    if (statusCode < 200) return;
    this.#status = statusCode;
    this.#headers = headers;
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#settled) return;
    this.#size += chunk.length;
    if (this.#size > MAX_UPSTREAM_BODY) {
      this.abort(new UpstreamFailure('bad_body', `response body larger than ${MAX_UPSTREAM_BODY} bytes`));
      return;
    }
    this.#chunks.push(chunk);
  }

  onResponseEnd(): void {
    const body = Buffer.concat(this.#chunks, this.#size).toString('utf8');
    this.#finish(undefined, { status: this.#status, headers: this.#headers, body });
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.#finish(err);
  }

  #finish(err: unknown, response?: UpstreamResponse): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#chunks.length = 0;
    this.#settle(err, response);
  }
}

/** First value of a response header, whatever its casing upstream (undici lower-cases names). */
export function headerValue(headers: UpstreamResponse['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}
