// The token cache between the token route and the upstream fetch. It shields HIMDS from storms and keeps
// workloads served through HIMDS hiccups:
//   - key: the exact resource + the identity selector (api-version and other parameters are not part of it);
//   - single-flight: concurrent requests for one key share one upstream fetch;
//   - refresh ahead: past about half its lifetime (never later than --refresh-before ahead of expires_on, up
//     to 10% early so keys do not refresh in lockstep) the next request for a token starts a background
//     refresh and is served the cached token; a failed refresh is retried with backoff meanwhile;
//   - serve through outages, never past --min-remaining: a token with less validity left than that is never
//     served from the cache (clients would consider it stale anyway), and never past its own expires_on;
//   - forced refresh (bypass_cache / token_sha256_to_refresh) at most once per key per --force-refresh-interval,
//     counted from the last attempt, successful or not; when it fails, a token still servable is the answer;
//   - no error caching: a failure is shared only by the requests that were waiting on that fetch;
//   - fetches belong to their waiters: when the last client waiting on a fetch goes away, the fetch is dropped
//     (still queued: before it ever reaches the upstream; running: aborted, freeing its slot). Background
//     refreshes are the cache's own and always run. Queued plus running fetches are bounded (--upstream-queue
//     beyond --upstream-concurrency); past that a new key is refused at once, never queued.
//
// lru-cache is the store: bounded (least recently used evicted) with a per-entry TTL that ends when the token
// stops being servable. Its fetch() is not used: its stale-while-revalidate cannot express "serve only while
// min-remaining holds" or back off after a failed refresh, so single-flight is the small map below.
import { LRUCache } from 'lru-cache';
import { clip, type Logger } from '../observability/log.js';
import { FetchFailure } from '../values/failures.js';
import { tokenRequest, type Token, type TokenRequest } from '../values/token.js';

/** How a request was served: the `result` label of arc_imds_token_cache_results_total. */
export type CacheResult = 'hit' | 'refreshing' | 'miss' | 'coalesced' | 'forced';

export interface Served {
  readonly token: Token;
  readonly result: CacheResult;
}

/** Where the token route gets tokens: the cache. */
export interface TokenSource {
  /**
   * A fetch serves every request waiting on its key and carries its own deadline (fetchTimeoutMs); `gone`
   * aborts when this request's client has gone away (its waiting ends, and with the last waiter the fetch).
   * A hit never looks at it.
   */
  getToken(request: TokenRequest, gone?: AbortSignal): Promise<Served>;
}

export type FetchToken = (request: TokenRequest, signal: AbortSignal) => Promise<Token>;

export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
}

export interface TokenCacheOptions {
  readonly maxEntries: number;
  /** A cached token is served only while it has at least this much validity left, ms. */
  readonly minRemainingMs: number;
  /** Refresh at this fraction of a token's lifetime... */
  readonly refreshRatio: number;
  /** ...but never later than this before it expires. */
  readonly refreshBeforeMs: number;
  readonly forceRefreshIntervalMs: number;
  /** Upstream fetches at once; the rest queue. */
  readonly upstreamConcurrency: number;
  /** Fetches that may wait for a slot; a new key beyond them is refused at once. */
  readonly upstreamQueue: number;
  /** Deadline of one upstream fetch, queueing included. */
  readonly fetchTimeoutMs: number;
  readonly clock?: Clock;
  readonly random?: () => number;
  /** Told of every background refresh's outcome (for metrics). */
  readonly onRefresh?: (ok: boolean) => void;
}

/** Refresh up to this fraction of the refresh delay early. */
export const REFRESH_JITTER = 0.1;
/** How long the slot of a fetch abandoned mid-flight rests before another fetch may take it. */
export const ABANDONED_SLOT_REST_MS = 1000;
/** Backoff after a failed background refresh: first pause, doubling, capped. */
export const REFRESH_BACKOFF_MS = { first: 5_000, max: 300_000 } as const;

interface Entry {
  readonly token: Token;
  /** When the upstream fetch that produced it completed (ms). */
  readonly fetchedAt: number;
  /** The last upstream attempt for this key, successful or not: what --force-refresh-interval counts from. */
  lastAttemptAt: number;
  readonly refreshAt: number;
  /** Failed background refreshes in a row, and when the next may start. */
  failures: number;
  nextAttemptAt: number;
  /** What a hit returns, made once: the hit path allocates nothing. */
  readonly asHit: Served;
  readonly asRefreshing: Served;
}

/** Why a fetch was dropped (the reasons are compared by identity; they abort the upstream request's signal). */
const ABANDONED = new Error('every client waiting for this token has gone away');
const DEADLINE = new Error('no upstream slot became free in time');
// What a client that went away, or a fetch dropped for either reason, is rejected with. One instance each, made
// once: nobody is answered (or sees a stack) for an abandoned request, so a flood of them allocates no errors.
const ABANDONED_FAILURE = new FetchFailure('abandoned', ABANDONED.message);
const DEADLINE_FAILURE = new FetchFailure('deadline', DEADLINE.message);
const failureFor = (reason: Error | undefined) => (reason === ABANDONED ? ABANDONED_FAILURE : DEADLINE_FAILURE);
const GRANTED = Promise.resolve();

/** A fetch's place in the slot queue. */
interface QueuedAcquire {
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

/**
 * A counting semaphore for upstream slots, FIFO. A queued acquire is taken out of the queue by its owner as soon
 * as its fetch is dropped (cancel), so nobody's abandoned fetch holds a place. A freed slot is handed on in the
 * next turn of the event loop: clients that hung up together are all seen gone before the next fetch starts, so
 * a burst of abandoned requests is dropped whole instead of each reaching the upstream in turn.
 */
class Slots {
  #free: number;
  readonly #queue = new Set<QueuedAcquire>();
  constructor(size: number) {
    this.#free = size;
  }
  get queued(): number {
    return this.#queue.size;
  }
  /** A slot now, or a place in the queue, given to `onQueued` (to cancel with). */
  acquire(onQueued: (place: QueuedAcquire) => void): Promise<void> {
    if (this.#free > 0 && this.#queue.size === 0) {
      this.#free--;
      return GRANTED;
    }
    return new Promise<void>((resolve, reject) => {
      const place: QueuedAcquire = { resolve, reject };
      this.#queue.add(place);
      onQueued(place);
    });
  }
  /** Leave the queue (if still in it): the acquire rejects with `reason`. */
  cancel(place: QueuedAcquire, reason: unknown): void {
    if (this.#queue.delete(place)) place.reject(reason);
  }
  /** Give a slot back, now (handed on in the next turn) or after `restMs`. */
  release(restMs = 0): void {
    const back = () => {
      this.#free++;
      this.#handOn();
    };
    if (restMs > 0) setTimeout(back, restMs).unref();
    else setImmediate(back);
  }
  #handOn(): void {
    while (this.#free > 0) {
      const next = this.#queue.values().next();
      if (next.done) return;
      this.#queue.delete(next.value);
      this.#free--;
      next.value.resolve();
    }
  }
}

/**
 * One upstream fetch for one key, and who is waiting for it. What it holds while it waits for a slot is kept
 * small (no controller, no listener: most fetches of a burst of abandoned requests never get a slot).
 */
interface Fetch {
  token: Promise<Token>;
  /** Clients waiting; a background refresh has none and is never dropped. */
  waiters: number;
  readonly background: boolean;
  /** Its place in the slot queue, while it has one. */
  queued: QueuedAcquire | undefined;
  /** Made when it gets a slot: aborts the upstream request. */
  controller: AbortController | undefined;
  /** ABANDONED or DEADLINE, once dropped. */
  dropped: Error | undefined;
  deadline: NodeJS.Timeout | undefined;
}

export class TokenCache implements TokenSource {
  readonly #fetchToken: FetchToken;
  readonly #options: TokenCacheOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #log: Logger;
  readonly #store: LRUCache<string, Entry>;
  readonly #inflight = new Map<string, Fetch>();
  readonly #slots: Slots;
  readonly #maxFetches: number;
  /** What a new key is refused with at the bound: the same failure each time (the count is the bound). */
  readonly #saturated: FetchFailure;

  constructor(fetchToken: FetchToken, options: TokenCacheOptions, log: Logger) {
    this.#fetchToken = fetchToken;
    this.#options = options;
    this.#clock = options.clock ?? Date;
    this.#random = options.random ?? Math.random;
    this.#log = log;
    this.#slots = new Slots(options.upstreamConcurrency);
    this.#maxFetches = options.upstreamConcurrency + options.upstreamQueue;
    this.#saturated = new FetchFailure('saturated', `${this.#maxFetches} token fetches are already queued or running`);
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

  /** Upstream fetches queued or running (one per key at most; bounded by --upstream-concurrency + --upstream-queue). */
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
    // A forced refresh is due once per interval from the last attempt; one in flight is joined, never repeated.
    if (request.forceRefresh && (now - entry.lastAttemptAt >= this.#options.forceRefreshIntervalMs || this.#inflight.has(key))) return undefined;
    if (now < entry.refreshAt) return entry.asHit;
    if (now >= entry.nextAttemptAt && !this.#inflight.has(key)) this.#refreshInBackground(key, request, entry);
    return entry.asRefreshing;
  }

  async getToken(request: TokenRequest, gone?: AbortSignal): Promise<Served> {
    const served = this.peek(request);
    if (served) return served;
    const key = request.subject;
    const entry = this.#store.peek(key);
    const now = this.#clock.now();
    if (!(entry !== undefined && request.forceRefresh && this.#servable(entry, now))) return this.#join(key, request, 'miss', gone);
    // Forced, with a servable token cached: the interval counts from this attempt, whatever its outcome, and
    // if it fails the cached token is still the answer (the client asked for a newer one, not for an error).
    if (!this.#inflight.has(key)) entry.lastAttemptAt = now;
    try {
      return await this.#join(key, request, 'forced', gone);
    } catch (err) {
      if (err instanceof FetchFailure && err.kind === 'abandoned') throw err;
      if (!this.#servable(entry, this.#clock.now())) throw err;
      this.#log.warn({ resource: clip(request.resource), err: (err as Error).message }, 'forced token refresh failed; serving the cached token');
      return entry.asRefreshing;
    }
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

  /** Join the fetch in flight for this key, or start one (if there is room). */
  async #join(key: string, request: TokenRequest, result: 'miss' | 'forced', gone: AbortSignal | undefined): Promise<Served> {
    // A client already gone joins nothing and starts nothing.
    if (gone?.aborted) throw ABANDONED_FAILURE;
    const inflight = this.#inflight.get(key);
    if (inflight) return { token: await this.#wait(key, inflight, gone), result: 'coalesced' };
    // A flood of new keys is refused without making anything per request.
    if (this.#inflight.size >= this.#maxFetches) throw this.#saturated;
    return { token: await this.#wait(key, this.#startFetch(key, request, false), gone), result };
  }

  /** Wait for a fetch as one of its clients; when the last client goes away, the fetch is dropped. */
  #wait(key: string, fetch: Fetch, gone: AbortSignal | undefined): Promise<Token> {
    fetch.waiters++;
    // Without a signal (prefetch) the waiter stays until the fetch ends.
    if (gone === undefined) return fetch.token;
    return new Promise<Token>((resolve, reject) => {
      const leave = () => {
        this.#leave(key, fetch);
        reject(ABANDONED_FAILURE);
      };
      gone.addEventListener('abort', leave, { once: true });
      fetch.token.then(
        (token) => {
          gone.removeEventListener('abort', leave);
          resolve(token);
        },
        (err: unknown) => {
          gone.removeEventListener('abort', leave);
          reject(err);
        },
      );
    });
  }

  #leave(key: string, fetch: Fetch): void {
    fetch.waiters--;
    if (fetch.waiters === 0 && !fetch.background) {
      if (this.#inflight.get(key) === fetch) this.#inflight.delete(key);
      this.#drop(fetch, ABANDONED);
    }
  }

  /** End a fetch early: out of the slot queue if it is still there, its upstream request aborted if it runs. */
  #drop(fetch: Fetch, reason: Error): void {
    if (fetch.dropped) return;
    fetch.dropped = reason;
    if (fetch.queued) this.#slots.cancel(fetch.queued, failureFor(reason));
    fetch.controller?.abort(reason);
  }

  #startFetch(key: string, request: TokenRequest, background: boolean): Fetch {
    // The fetch belongs to its waiters, not to one client: it ends at its own deadline or when they are all
    // gone. A timer cleared when the fetch ends, so a finished fetch holds nothing (AbortSignal.timeout would
    // keep every fetch's closure alive until its deadline passed).
    const fetch: Fetch = {
      // Set just below: the fetch's own run needs the fetch.
      token: GRANTED as Promise<never>,
      waiters: 0,
      background,
      queued: undefined,
      controller: undefined,
      dropped: undefined,
      deadline: undefined,
    };
    fetch.deadline = setTimeout(() => this.#drop(fetch, DEADLINE), this.#options.fetchTimeoutMs);
    fetch.token = this.#run(key, request, fetch);
    this.#inflight.set(key, fetch);
    return fetch;
  }

  /** A fetch from start to end: a slot, the upstream, the store. One promise chain, whatever the outcome. */
  async #run(key: string, request: TokenRequest, fetch: Fetch): Promise<Token> {
    try {
      await this.#slots.acquire((place) => {
        fetch.queued = place;
      });
      fetch.queued = undefined;
      if (fetch.dropped) {
        // Dropped in the turn it got its slot, before it used it.
        this.#slots.release(0);
        throw failureFor(fetch.dropped);
      }
      const controller = new AbortController();
      fetch.controller = controller;
      try {
        const fetched = await this.#fetchToken(request, controller.signal);
        this.#store_(key, fetched);
        return fetched;
      } finally {
        // A fetch abandoned while the upstream had not answered: its slot rests before the next fetch takes it,
        // so an upstream that is not answering is not sent a new request each time a client gives up.
        this.#slots.release(fetch.dropped === ABANDONED ? ABANDONED_SLOT_REST_MS : 0);
      }
    } finally {
      clearTimeout(fetch.deadline);
      fetch.queued = undefined;
      if (this.#inflight.get(key) === fetch) this.#inflight.delete(key);
    }
  }

  #refreshInBackground(key: string, request: TokenRequest, entry: Entry): void {
    // At the bound, the refresh waits for a later request: the cached token is still being served.
    if (this.#inflight.size >= this.#maxFetches) return;
    const started = this.#clock.now();
    // The refresh is for the key, not for this request's extras.
    this.#startFetch(key, request.forceRefresh ? tokenRequest(request.resource, request.selector) : request, true).token.then(
      () => {
        this.#options.onRefresh?.(true);
        this.#log.info({ resource: clip(request.resource), selector: request.selector?.kind ?? 'system' }, 'token refreshed ahead of expiry');
      },
      (err: unknown) => {
        this.#options.onRefresh?.(false);
        entry.failures++;
        const backoff = Math.min(REFRESH_BACKOFF_MS.first * 2 ** (entry.failures - 1), REFRESH_BACKOFF_MS.max);
        entry.nextAttemptAt = started + backoff * (1 + this.#random() / 2);
        this.#log.warn(
          {
            resource: clip(request.resource),
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
        lastAttemptAt: now,
        refreshAt: this.refreshAt(now, token.expiresOn * 1000),
        failures: 0,
        nextAttemptAt: 0,
        asHit: { token, result: 'hit' },
        asRefreshing: { token, result: 'refreshing' },
      },
      { ttl: servableMs },
    );
  }

  /**
   * When to refresh a token fetched at `fetchedAt` (ms) that expires at `expiresAt` (ms): at --refresh-ratio of
   * its lifetime, no later than --refresh-before ahead of expiry, and always inside the window in which it is
   * servable (until --min-remaining before expiry) with half that window to spare. A token shorter-lived than
   * --refresh-before would otherwise stop being servable before its refresh was due: an 8-minute token with
   * the defaults is servable for 3 minutes, so it is refreshed after 1.5, not 4.
   */
  refreshAt(fetchedAt: number, expiresAt: number): number {
    const lifetime = expiresAt - fetchedAt;
    const servable = lifetime - this.#options.minRemainingMs;
    const latest = Math.max(lifetime - this.#options.refreshBeforeMs, servable / 2);
    const delay = Math.min(lifetime * this.#options.refreshRatio, latest);
    return fetchedAt + delay * (1 - REFRESH_JITTER * this.#random());
  }
}
