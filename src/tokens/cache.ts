// The token cache between the token route and the upstream fetch. It shields HIMDS from storms and keeps
// workloads served through HIMDS hiccups:
//   - key: the exact resource + the identity selector (api-version and other parameters are not part of it);
//   - single-flight: concurrent requests for one key share one upstream fetch;
//   - refresh ahead: past about half its lifetime (never later than --refresh-before ahead of expires_on, up
//     to 10% early so keys do not refresh in lockstep) the next request for a token starts a background
//     refresh and is served the cached token; a failed refresh is retried with backoff meanwhile;
//   - serve through outages, never past --min-remaining: a token with less validity left than that is never
//     served from the cache (clients would consider it stale anyway), and never past its own expires_on;
//   - forced refresh (bypass_cache / token_sha256_to_refresh) at most once per key per --force-refresh-interval;
//   - no error caching: a failure is shared only by the requests that were waiting on that fetch.
//
// lru-cache is the store: bounded (least recently used evicted) with a per-entry TTL that ends when the token
// stops being servable. Its fetch() is not used: its stale-while-revalidate cannot express "serve only while
// min-remaining holds" or back off after a failed refresh, so single-flight is the small map below.
import { LRUCache } from 'lru-cache';
import { ImdsError } from '../imds/errors.js';
import type { Logger } from '../observability/log.js';
import { tokenRequest, type Token, type TokenRequest } from './token.js';

/** How a request was served: the `result` label of arc_imds_token_cache_results_total. */
export type CacheResult = 'hit' | 'refreshing' | 'miss' | 'coalesced' | 'forced';

export interface Served {
  readonly token: Token;
  readonly result: CacheResult;
}

/** Where the token route gets tokens: the cache. */
export interface TokenSource {
  /**
   * No per-request signal: a fetch serves every request waiting on its key and carries its own deadline
   * (fetchTimeoutMs), and a hit must not pay for a timer.
   */
  getToken(request: TokenRequest): Promise<Served>;
}

export type FetchToken = (request: TokenRequest, signal: AbortSignal) => Promise<Token>;

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

export interface TokenCacheOptions {
  readonly maxEntries: number;
  readonly minRemainingMs: number;
  /** Refresh at this fraction of a token's lifetime... */
  readonly refreshRatio: number;
  /** ...but never later than this before it expires. */
  readonly refreshBeforeMs: number;
  readonly forceRefreshIntervalMs: number;
  /** Upstream fetches at once; the rest queue. */
  readonly upstreamConcurrency: number;
  /** Deadline of one upstream fetch, queueing included. */
  readonly fetchTimeoutMs: number;
  readonly clock?: Clock;
  readonly random?: () => number;
  /** Told of every background refresh's outcome (for metrics). */
  readonly onRefresh?: (ok: boolean) => void;
}

/** Refresh up to this fraction of the refresh delay early. */
export const REFRESH_JITTER = 0.1;
/** Backoff after a failed background refresh: first pause, doubling, capped. */
export const REFRESH_BACKOFF_MS = { first: 5_000, max: 300_000 } as const;

interface Entry {
  readonly token: Token;
  /** When the upstream fetch that produced it completed (ms). */
  readonly fetchedAt: number;
  readonly refreshAt: number;
  /** Failed background refreshes in a row, and when the next may start. */
  failures: number;
  nextAttemptAt: number;
  /** What a hit returns, made once: the hit path allocates nothing. */
  readonly asHit: Served;
  readonly asRefreshing: Served;
}

/** A simple counting semaphore: bounded upstream concurrency, FIFO. */
class Semaphore {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(size: number) {
    this.#free = size;
  }
  async acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }
  release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}

export class TokenCache implements TokenSource {
  readonly #fetchToken: FetchToken;
  readonly #options: TokenCacheOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #log: Logger;
  readonly #store: LRUCache<string, Entry>;
  readonly #inflight = new Map<string, Promise<Token>>();
  readonly #slots: Semaphore;

  constructor(fetchToken: FetchToken, options: TokenCacheOptions, log: Logger) {
    this.#fetchToken = fetchToken;
    this.#options = options;
    this.#clock = options.clock ?? Date;
    this.#random = options.random ?? Math.random;
    this.#log = log;
    this.#slots = new Semaphore(options.upstreamConcurrency);
    this.#store = new LRUCache<string, Entry>({
      max: options.maxEntries,
      perf: this.#clock,
      // Exact expiry, no 1 ms time caching: the TTL is a hard "no longer servable" bound.
      ttlResolution: 0,
      // Expired entries go on access; nothing runs timers per entry.
      ttlAutopurge: false,
    });
  }

  /** Servable tokens cached now (expired entries are dropped first: this is for scrapes, not the hot path). */
  get size(): number {
    this.#store.purgeStale();
    return this.#store.size;
  }

  /** Upstream fetches in flight (one per key at most). */
  get inFlight(): number {
    return this.#inflight.size;
  }

  /** Seconds until the earliest cached token expires, or undefined when nothing is cached. Scrape-time only. */
  earliestExpirySeconds(): number | undefined {
    let earliest: number | undefined;
    for (const entry of this.#store.values()) {
      if (earliest === undefined || entry.token.expiresOn < earliest) earliest = entry.token.expiresOn;
    }
    return earliest === undefined ? undefined : earliest - this.#clock.now() / 1000;
  }

  /**
   * A cached token that may be served now, synchronously; undefined when the request must wait for a fetch
   * (nothing servable cached, or a forced refresh that is due). Starts a background refresh when one is due.
   */
  peek(request: TokenRequest): Served | undefined {
    const key = request.subject;
    const entry = this.#store.get(key);
    if (!entry) return undefined;
    const now = this.#clock.now();
    if (!this.#servable(entry, now)) return undefined;
    if (request.forceRefresh && now - entry.fetchedAt >= this.#options.forceRefreshIntervalMs) return undefined;
    if (now < entry.refreshAt) return entry.asHit;
    if (now >= entry.nextAttemptAt && !this.#inflight.has(key)) this.#refreshInBackground(key, request, entry);
    return entry.asRefreshing;
  }

  async getToken(request: TokenRequest): Promise<Served> {
    const served = this.peek(request);
    if (served) return served;
    const key = request.subject;
    const entry = this.#store.peek(key);
    const forced = entry !== undefined && this.#servable(entry, this.#clock.now()) && request.forceRefresh;
    return this.#join(key, request, forced ? 'forced' : 'miss');
  }

  /** Fetch the tokens given at start, so the first real requests are hits. Failures are logged, not fatal. */
  async prefetch(resources: readonly string[]): Promise<void> {
    await Promise.all(
      resources.map((resource) =>
        this.getToken(tokenRequest(resource)).then(
          () => this.#log.info({ resource }, 'prefetched token'),
          (err: unknown) => this.#log.warn({ resource, err: (err as Error).message }, 'prefetch failed; the first request will fetch'),
        ),
      ),
    );
  }

  #servable(entry: Entry, now: number): boolean {
    return entry.token.expiresOn * 1000 - now >= this.#options.minRemainingMs;
  }

  /** Join the fetch in flight for this key, or start one. */
  async #join(key: string, request: TokenRequest, result: 'miss' | 'forced'): Promise<Served> {
    const inflight = this.#inflight.get(key);
    if (inflight) return { token: await inflight, result: 'coalesced' };
    return { token: await this.#startFetch(key, request), result };
  }

  #startFetch(key: string, request: TokenRequest): Promise<Token> {
    // The fetch belongs to no single client: a client that goes away does not cancel it for the others.
    const signal = AbortSignal.timeout(this.#options.fetchTimeoutMs);
    const fetching = (async () => {
      await this.#slots.acquire();
      try {
        // Waited in the queue past its deadline: do not start an upstream request nobody can use.
        if (signal.aborted) throw new ImdsError('upstream_unavailable', 'no upstream slot became free in time');
        const token = await this.#fetchToken(request, signal);
        this.#store_(key, token);
        return token;
      } finally {
        this.#slots.release();
      }
    })();
    this.#inflight.set(key, fetching);
    const forget = () => {
      if (this.#inflight.get(key) === fetching) this.#inflight.delete(key);
    };
    fetching.then(forget, forget);
    return fetching;
  }

  #refreshInBackground(key: string, request: TokenRequest, entry: Entry): void {
    const started = this.#clock.now();
    // The refresh is for the key, not for this request's extras.
    this.#startFetch(key, request.forceRefresh ? tokenRequest(request.resource, request.selector) : request).then(
      () => {
        this.#options.onRefresh?.(true);
        this.#log.info({ resource: request.resource, selector: request.selector?.kind ?? 'system' }, 'token refreshed ahead of expiry');
      },
      (err: unknown) => {
        this.#options.onRefresh?.(false);
        entry.failures++;
        const backoff = Math.min(REFRESH_BACKOFF_MS.first * 2 ** (entry.failures - 1), REFRESH_BACKOFF_MS.max);
        entry.nextAttemptAt = started + backoff * (1 + this.#random() / 2);
        this.#log.warn(
          {
            resource: request.resource,
            failures: entry.failures,
            retryInMs: Math.round(entry.nextAttemptAt - this.#clock.now()),
            servableForS: Math.round((entry.token.expiresOn * 1000 - this.#options.minRemainingMs - this.#clock.now()) / 1000),
            err: (err as Error).message,
          },
          'background token refresh failed; serving the cached token meanwhile',
        );
      },
    );
  }

  /** Keep a fetched token if it is servable at all; otherwise only its requesters get it. */
  #store_(key: string, token: Token): void {
    const now = this.#clock.now();
    const servableMs = token.expiresOn * 1000 - this.#options.minRemainingMs - now;
    if (servableMs <= 0) {
      this.#store.delete(key);
      this.#log.warn({ expiresOn: token.expiresOn }, 'upstream token expires within --min-remaining; not caching it');
      return;
    }
    this.#store.set(
      key,
      {
        token,
        fetchedAt: now,
        refreshAt: this.refreshAt(now, token.expiresOn * 1000),
        failures: 0,
        nextAttemptAt: 0,
        asHit: { token, result: 'hit' },
        asRefreshing: { token, result: 'refreshing' },
      },
      { ttl: servableMs },
    );
  }

  /** When to refresh a token fetched at `fetchedAt` (ms) that expires at `expiresAt` (ms). */
  refreshAt(fetchedAt: number, expiresAt: number): number {
    const lifetime = expiresAt - fetchedAt;
    const byRatio = lifetime * this.#options.refreshRatio;
    const latest = lifetime - this.#options.refreshBeforeMs;
    const delay = latest > 0 ? Math.min(byRatio, latest) : byRatio;
    return fetchedAt + delay * (1 - REFRESH_JITTER * this.#random());
  }
}
