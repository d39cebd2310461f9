// The token cache's rules, on a fake clock. The upstream here is a scripted fetch whose calls are counted and
// whose answers (tokens with chosen expiry, failures, delays) the test controls; the storm against the real
// emulator is in test/tokens/cache-storm.test.ts.
import t from 'tap';
import { ImdsError } from '../../src/imds/errors.js';
import { FetchFailure } from '../../src/values/failures.js';
import { createLogger } from '../../src/observability/log.js';
import { TokenCache, type TokenCacheOptions } from '../../src/tokens/cache.js';
import { makeToken, tokenRequest, type Selector, type Token, type TokenRequest } from '../../src/values/token.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const START = 1_800_000_000_000; // ms; never 0: lru-cache treats 0 as "no time"

class FakeClock {
  ms = START;
  now = () => this.ms;
  advance(ms: number) {
    this.ms += ms;
  }
}

/** A scripted upstream: each call answers with the next planned outcome (default: a token valid for `lifetime`). */
function scriptedFetch(clock: FakeClock, lifetimeMs = 24 * HOUR) {
  const calls: TokenRequest[] = [];
  const plan: (() => Promise<Token>)[] = [];
  let serial = 0;
  const token = (lifetime = lifetimeMs) =>
    makeToken({
      accessToken: `token-${++serial}`,
      expiresOn: Math.floor((clock.ms + lifetime) / 1000),
      notBefore: '',
      tokenType: 'Bearer',
      clientId: '',
    });
  const fetch = async (request: TokenRequest) => {
    calls.push(request);
    const next = plan.shift();
    return next ? next() : token();
  };
  return { calls, plan, token, fetch };
}

const logs: string[] = [];
const log = createLogger('debug', { write: (l: string) => void logs.push(l) });
const request = (resource = 'https://management.azure.com/', extra: { selector?: Selector; forceRefresh?: boolean } = {}): TokenRequest =>
  tokenRequest(resource, extra.selector, extra.forceRefresh);
const flush = () => new Promise((r) => setImmediate(r));

function cacheWith(
  clock: FakeClock,
  fetch: (r: TokenRequest, signal: AbortSignal) => Promise<Token>,
  options: Partial<TokenCacheOptions> = {},
  random = () => 0,
) {
  return new TokenCache(
    fetch,
    {
      maxEntries: 1000,
      minRemainingMs: 5 * MIN,
      refreshRatio: 0.5,
      refreshBeforeMs: 10 * MIN,
      forceRefreshIntervalMs: 30_000,
      upstreamConcurrency: 16,
      upstreamQueue: 256,
      fetchTimeoutMs: 15_000,
      clock,
      random,
      ...options,
    },
    log,
  );
}

t.test('keys (the request subject): exact resource and selector; nothing else', async (t) => {
  const key = (resource: string, extra: { selector?: Selector; forceRefresh?: boolean } = {}) => request(resource, extra).subject;
  t.not(key('a'), key('a/'), 'resource strings are not normalised');
  t.not(key('a'), key('a', { selector: { kind: 'client_id', value: 'x' } }));
  t.not(key('a', { selector: { kind: 'client_id', value: 'x' } }), key('a', { selector: { kind: 'object_id', value: 'x' } }));
  t.equal(key('a'), key('a', { forceRefresh: true }));
});

t.test('hits, misses and single-flight', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  let release!: () => void;
  up.plan.push(() => new Promise((resolve) => (release = () => resolve(up.token()))));
  const cache = cacheWith(clock, up.fetch);
  const burst = Array.from({ length: 100 }, () => cache.getToken(request()));
  await flush();
  t.equal(up.calls.length, 1, '100 concurrent cold requests: one upstream fetch');
  release();
  const served = await Promise.all(burst);
  t.equal(new Set(served.map((s) => s.token.accessToken)).size, 1, 'all got the same token');
  t.same(
    served.map((s) => s.result).filter((r) => r === 'miss'),
    ['miss'],
    'one caused it',
  );
  t.equal(served.filter((s) => s.result === 'coalesced').length, 99, 'the rest joined it');
  const again = await cache.getToken(request());
  t.equal(again.result, 'hit');
  t.equal(up.calls.length, 1, 'a later request is a hit');
  await cache.getToken(request('https://vault.azure.net'));
  t.equal(up.calls.length, 2, 'another resource is another key');
});

t.test('refresh ahead: at half life for long tokens, in the background, with jitter only earlier', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock, 24 * HOUR);
  const cache = cacheWith(clock, up.fetch);
  const first = await cache.getToken(request());
  clock.advance(12 * HOUR - 1000);
  t.equal((await cache.getToken(request())).result, 'hit', 'before half life: a plain hit');
  t.equal(up.calls.length, 1);
  clock.advance(1000);
  const during = await cache.getToken(request());
  t.equal(during.token.accessToken, first.token.accessToken, 'at half life the cached token is still served at once');
  t.equal(during.result, 'refreshing');
  t.equal(up.calls.length, 2, 'and a refresh started');
  await flush();
  const after = await cache.getToken(request());
  t.not(after.token.accessToken, first.token.accessToken, 'the refreshed token is served next');
  t.equal(after.result, 'hit');

  // Jitter: refresh up to 10% earlier, never later; never later than refresh-before ahead of expiry.
  const early = cacheWith(clock, up.fetch, {}, () => 1);
  t.equal(early.refreshAt(0, 24 * HOUR), 12 * HOUR * 0.9, 'full jitter: 10% earlier');
  t.equal(cache.refreshAt(0, 24 * HOUR), 12 * HOUR, 'no jitter: exactly half');
  t.equal(cache.refreshAt(0, 15 * MIN), 5 * MIN, 'a 15-minute token refreshes 10 minutes before expiry, not at half');
  // An 8-minute token is servable for 3 minutes (min-remaining 5): its refresh starts inside that window, with
  // half of it to spare, not at half life (4 minutes), when it could no longer be served.
  t.equal(cache.refreshAt(0, 8 * MIN), 1.5 * MIN, 'a token shorter than refresh-before: inside its servable window');
  for (const lifetime of [5.5 * MIN, 6 * MIN, 8 * MIN, 10 * MIN, 14 * MIN, 15 * MIN, 20 * MIN, HOUR]) {
    // The latest a refresh can be due (no jitter) leaves half the servable window, or the 5 minutes between
    // refresh-before and min-remaining, whichever is less.
    const servable = lifetime - 5 * MIN;
    const at = cache.refreshAt(0, lifetime);
    t.ok(servable - at >= Math.min(servable / 2, 5 * MIN), `a ${lifetime / MIN}-minute token: refresh due while servable, with a margin`);
  }
  for (const r of [0, 0.25, 0.5, 0.99]) {
    const at = cacheWith(clock, up.fetch, {}, () => r).refreshAt(0, 2 * HOUR);
    t.ok(at <= HOUR && at >= HOUR * 0.9, `jitter ${r}: within [0.9, 1] x half life`);
  }
});

t.test('serving through an outage, until min-remaining', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock, HOUR);
  const cache = cacheWith(clock, up.fetch);
  const first = await cache.getToken(request());
  const down = () => Promise.reject(new ImdsError('upstream_unavailable', 'connection refused'));
  for (let i = 0; i < 20; i++) up.plan.push(down);

  clock.advance(30 * MIN);
  t.equal((await cache.getToken(request())).token.accessToken, first.token.accessToken, 'refresh due: cached token served');
  await flush();
  t.equal(up.calls.length, 2, 'the refresh failed');
  const afterFailure = up.calls.length;
  clock.advance(1000);
  await cache.getToken(request());
  t.equal(up.calls.length, afterFailure, 'no retry before the backoff has passed (no hammering on every request)');
  clock.advance(10_000);
  await cache.getToken(request());
  await flush();
  t.equal(up.calls.length, afterFailure + 1, 'retried after the backoff');

  clock.ms = START + HOUR - 5 * MIN - 1;
  const last = await cache.getToken(request());
  t.equal(last.token.accessToken, first.token.accessToken, 'still served with just over min-remaining left');
  await flush();
  clock.ms = START + HOUR - 5 * MIN + 1000;
  await t.rejects(cache.getToken(request()), { code: 'upstream_unavailable' }, 'past min-remaining: the upstream error (a 503)');
  up.plan.length = 0;
  const recovered = await cache.getToken(request());
  t.not(recovered.token.accessToken, first.token.accessToken, 'and a fresh token once upstream is back');
  t.match(logs.join(''), /background token refresh failed; serving the cached token meanwhile/);
});

t.test('never serve past expires_on, whatever min-remaining says', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock, HOUR);
  const cache = cacheWith(clock, up.fetch, { minRemainingMs: 0 });
  const first = await cache.getToken(request());
  up.plan.push(
    () => Promise.reject(new ImdsError('upstream_unavailable')),
    () => Promise.reject(new ImdsError('upstream_unavailable')),
  );
  clock.ms = first.token.expiresOn * 1000 + 1;
  await t.rejects(cache.getToken(request()), { code: 'upstream_unavailable' });
});

t.test('a token arriving with less than min-remaining goes to its requesters only', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  up.plan.push(async () => up.token(2 * MIN));
  const cache = cacheWith(clock, up.fetch);
  const short = await cache.getToken(request());
  t.equal(short.result, 'miss', 'the requester gets it');
  t.equal(cache.size, 0, 'not cached');
  const next = await cache.getToken(request());
  t.not(next.token.accessToken, short.token.accessToken, 'the next request fetches again');
  t.equal(up.calls.length, 2);
});

t.test('forced refresh, limited per key', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  const cache = cacheWith(clock, up.fetch);
  const first = await cache.getToken(request());
  const tooSoon = await cache.getToken(request(undefined, { forceRefresh: true }));
  t.equal(tooSoon.token.accessToken, first.token.accessToken, 'within 30 s of the last fetch: the newest token');
  t.equal(up.calls.length, 1);
  clock.advance(30_000);
  const forced = await cache.getToken(request(undefined, { forceRefresh: true }));
  t.equal(forced.result, 'forced');
  t.not(forced.token.accessToken, first.token.accessToken);
  t.equal(up.calls.length, 2);
  const burst = await Promise.all(Array.from({ length: 10 }, () => cache.getToken(request(undefined, { forceRefresh: true }))));
  t.equal(up.calls.length, 2, 'a burst of forced refreshes right after one: no fetch');
  t.ok(
    burst.every((s) => s.token.accessToken === forced.token.accessToken),
    'they get the newest token',
  );
  clock.advance(30_000);
  await Promise.all(Array.from({ length: 10 }, () => cache.getToken(request(undefined, { forceRefresh: true }))));
  t.equal(up.calls.length, 3, 'a concurrent burst after the window: one fetch');
});

t.test('forced refresh during an outage: the cached token, and the interval counts from the failed attempt', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  const cache = cacheWith(clock, up.fetch);
  const first = await cache.getToken(request());
  clock.advance(60_000);
  up.plan.push(async () => {
    throw new ImdsError('upstream_unavailable', 'connection refused');
  });
  const forced = await cache.getToken(request(undefined, { forceRefresh: true }));
  t.equal(forced.token.accessToken, first.token.accessToken, 'the failed forced fetch answers the cached token');
  t.equal(forced.result, 'refreshing');
  t.equal(up.calls.length, 2, 'one attempt');
  const burst = await Promise.all(Array.from({ length: 20 }, () => cache.getToken(request(undefined, { forceRefresh: true }))));
  t.equal(up.calls.length, 2, 'more forced requests within the interval of the failed attempt: no fetch');
  t.ok(burst.every((s) => s.token.accessToken === first.token.accessToken && s.result === 'hit'));
  t.ok(logs.some((l) => l.includes('forced token refresh failed; serving the cached token')));
  clock.advance(30_000);
  const later = await cache.getToken(request(undefined, { forceRefresh: true }));
  t.equal(up.calls.length, 3, 'after the interval: one new attempt');
  t.equal(later.result, 'forced');
  t.not(later.token.accessToken, first.token.accessToken);
});

t.test('forced requests during a forced fetch join it', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  const cache = cacheWith(clock, up.fetch);
  const first = await cache.getToken(request());
  clock.advance(60_000);
  let finish!: () => void;
  up.plan.push(() => new Promise((resolve) => (finish = () => resolve(up.token()))));
  const leader = cache.getToken(request(undefined, { forceRefresh: true }));
  await flush();
  const follower = cache.getToken(request(undefined, { forceRefresh: true }));
  await flush();
  finish();
  const [a, b] = await Promise.all([leader, follower]);
  t.equal(up.calls.length, 2);
  t.equal(b.result, 'coalesced', 'the second forced request waits for the new token');
  t.equal(a.token.accessToken, b.token.accessToken);
  t.not(b.token.accessToken, first.token.accessToken);
});

t.test('fetches belong to their waiters: abandoned ones are dropped before they reach the upstream', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  const hung: (() => void)[] = [];
  const fetch = (r: TokenRequest, signal: AbortSignal) => {
    up.calls.push(r);
    return new Promise<Token>((resolve, reject) => {
      hung.push(() => resolve(up.token()));
      signal.addEventListener('abort', () => reject(new ImdsError('upstream_unavailable', 'aborted')), { once: true });
    });
  };
  const cache = cacheWith(clock, fetch, { upstreamConcurrency: 2, upstreamQueue: 3 });
  const clients = Array.from({ length: 5 }, (_, i) => ({ gone: new AbortController(), resource: `https://r${i}/` }));
  const waits = clients.map((c) => cache.getToken(request(c.resource), c.gone.signal).catch((e: unknown) => e));
  await flush();
  t.equal(cache.inFlight, 5, 'two running, three queued');
  t.equal(up.calls.length, 2, 'only two reached the upstream');
  const full = await cache.getToken(request('https://r-more/'), new AbortController().signal).catch((e: unknown) => e);
  t.type(full, FetchFailure);
  t.equal((full as FetchFailure).kind, 'saturated', 'beyond the bound: refused at once');

  // Two clients wait for r0: one hanging up does not cancel it for the other.
  const second = new AbortController();
  const shared = cache.getToken(request('https://r0/'), second.signal);
  for (const c of clients) c.gone.abort();
  const outcomes = await Promise.all(waits);
  t.ok(
    outcomes.every((e) => e instanceof FetchFailure && e.kind === 'abandoned'),
    'the clients that left are told so',
  );
  await flush();
  await flush();
  t.equal(cache.inFlight, 1, 'abandoned fetches are gone; r0 still has a client');
  t.equal(up.calls.length, 2, 'no queued fetch reached the upstream after its clients left');
  hung[0]!();
  t.equal((await shared).result, 'coalesced', 'the remaining client gets its token');
  await flush();
  t.equal(cache.inFlight, 0);
  // The slots freed by aborted fetches serve new clients at once.
  const fresh = cache.getToken(request('https://new/'), new AbortController().signal);
  await flush();
  await flush();
  t.equal(up.calls.length, 3, 'a new resource reaches the upstream');
  hung.at(-1)!();
  t.equal((await fresh).result, 'miss');
});

t.test('a burst of abandoned requests: one shared failure, nothing made for fetches that never got a slot', async (t) => {
  const clock = new FakeClock();
  const signals: AbortSignal[] = [];
  const fetch = (_r: TokenRequest, signal: AbortSignal) => {
    signals.push(signal);
    return new Promise<Token>((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
  };
  const cache = cacheWith(clock, fetch, { upstreamConcurrency: 1, upstreamQueue: 50 });
  const clients = Array.from({ length: 50 }, (_, i) => ({ gone: new AbortController(), resource: `https://burst-${i}/` }));
  const waits = clients.map((c) => cache.getToken(request(c.resource), c.gone.signal).catch((e: unknown) => e));
  await flush();
  t.equal(cache.inFlight, 50, 'one running, 49 queued');
  t.equal(signals.length, 1, 'only the running fetch has an upstream signal');
  for (const c of clients) c.gone.abort();
  const outcomes = await Promise.all(waits);
  t.ok(outcomes[0] instanceof FetchFailure && outcomes[0].kind === 'abandoned');
  t.ok(
    outcomes.every((e) => e === outcomes[0]),
    'every client that left is rejected with the same failure: no error (and stack) made per abandoned request',
  );
  t.ok(signals[0]!.aborted, 'the running fetch is aborted');
  await flush();
  t.equal(cache.inFlight, 0, 'the queue is empty');
});

t.test('a client gone in the turn its fetch got a slot: the upstream never sees it, the slot is free at once', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  const cache = cacheWith(clock, up.fetch, { upstreamConcurrency: 1 });
  const gone = new AbortController();
  const left = cache.getToken(request('https://left/'), gone.signal).catch((e: unknown) => e);
  gone.abort();
  t.equal(((await left) as FetchFailure).kind, 'abandoned');
  // No rest for a slot that never reached the upstream (an abandoned running fetch's slot rests
  // ABANDONED_SLOT_REST_MS): the next fetch reaches the upstream within a turn or two of the event loop.
  const pending = cache.getToken(request('https://next/'), new AbortController().signal);
  await flush();
  await flush();
  t.same(
    up.calls.map((c) => c.resource),
    ['https://next/'],
    'the next fetch is at the upstream already',
  );
  const next = await pending;
  t.equal(next.result, 'miss');
  t.same(
    up.calls.map((c) => c.resource),
    ['https://next/'],
    'only the next fetch reached the upstream',
  );
});

t.test('a client already gone when it asks starts nothing and joins nothing', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  // The live client's fetch is held at the upstream until the end, so that the gone clients find it in flight.
  let answer!: () => void;
  up.plan.push(() => new Promise<Token>((resolve) => (answer = () => resolve(up.token()))));
  const cache = cacheWith(clock, up.fetch, { upstreamConcurrency: 1 });
  const waiting = cache.getToken(request('https://shared/'), new AbortController().signal);
  await flush();
  t.equal(cache.inFlight, 1, 'a live client waits for a fetch');
  const gone = AbortSignal.abort();
  for (const resource of ['https://new/', 'https://shared/']) {
    const err = await cache.getToken(request(resource), gone).catch((e: unknown) => e);
    t.ok(err instanceof FetchFailure && err.kind === 'abandoned', `${resource}: abandoned at once`);
  }
  t.equal(cache.inFlight, 1, 'nothing more in flight');
  answer();
  t.equal((await waiting).result, 'miss', 'the live client is served: the gone one did not drop its fetch');
  t.same(
    up.calls.map((c) => c.resource),
    ['https://shared/'],
    'the upstream saw only that fetch',
  );
});

t.test('a fetch still queued at its deadline leaves the queue without reaching the upstream', async (t) => {
  const clock = new FakeClock();
  const started: string[] = [];
  // The running fetch keeps its slot past the queued one's deadline (an upstream that ignores the abort and
  // fails later): the queued fetch's deadline passes while it is still queued, whatever the timers' order.
  const fetch = (r: TokenRequest) => {
    started.push(r.resource);
    return new Promise<Token>((_resolve, reject) => setTimeout(() => reject(new ImdsError('upstream_unavailable')), 150));
  };
  const cache = cacheWith(clock, fetch, { upstreamConcurrency: 1, fetchTimeoutMs: 50 });
  const running = cache.getToken(request('https://running/'), new AbortController().signal).catch((e: unknown) => e);
  const queued = cache.getToken(request('https://queued/'), new AbortController().signal).catch((e: unknown) => e);
  const [a, b] = await Promise.all([running, queued]);
  t.type(a, ImdsError, 'the running fetch fails on its own, later');
  t.ok(b instanceof FetchFailure && b.kind === 'deadline', 'the queued one is told it never got a slot');
  t.same(started, ['https://running/']);
  t.equal(cache.inFlight, 0);
});

t.test("a background refresh is the cache's own: clients that join and leave do not cancel it", async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  const cache = cacheWith(clock, up.fetch);
  await cache.getToken(request());
  clock.advance(13 * HOUR);
  let finish!: () => void;
  up.plan.push(() => new Promise((resolve) => (finish = () => resolve(up.token()))));
  t.equal(cache.peek(request())?.result, 'refreshing', 'the refresh starts');
  const gone = new AbortController();
  const forced = cache.getToken(request(undefined, { forceRefresh: true }), gone.signal).catch((e: unknown) => e);
  await flush();
  gone.abort();
  t.equal(((await forced) as FetchFailure).kind, 'abandoned');
  t.equal(cache.inFlight, 1, 'the refresh still runs');
  finish();
  await flush();
  t.equal(cache.inFlight, 0);
  t.equal(cache.peek(request())?.result, 'hit', 'and its token is cached');
});

t.test('no error caching', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  let fail!: () => void;
  up.plan.push(() => new Promise((_, reject) => (fail = () => reject(new ImdsError('upstream_busy')))));
  const cache = cacheWith(clock, up.fetch);
  const waiting = Array.from({ length: 5 }, () => cache.getToken(request()));
  await flush();
  fail();
  for (const w of waiting) await t.rejects(w, { code: 'upstream_busy' }, 'every waiter gets the failure');
  const next = await cache.getToken(request());
  t.equal(next.result, 'miss', 'the next request tries again at once');
  t.equal(up.calls.length, 2);
});

t.test('bounded: least recently used evicted', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  const cache = cacheWith(clock, up.fetch, { maxEntries: 2 });
  await cache.getToken(request('a'));
  await cache.getToken(request('b'));
  await cache.getToken(request('a'));
  await cache.getToken(request('c'));
  t.equal(cache.size, 2);
  t.equal(up.calls.length, 3);
  t.equal((await cache.getToken(request('a'))).result, 'hit', 'recently used a kept');
  t.equal((await cache.getToken(request('b'))).result, 'miss', 'least recently used b evicted');
});

t.test('upstream concurrency is bounded; the rest queue', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  const releases: (() => void)[] = [];
  let active = 0;
  let peak = 0;
  const fetch = (r: TokenRequest) =>
    new Promise<Token>((resolve) => {
      active++;
      peak = Math.max(peak, active);
      releases.push(() => {
        active--;
        resolve(up.token());
      });
      up.calls.push(r);
    });
  const cache = cacheWith(clock, fetch, { upstreamConcurrency: 4 });
  const all = Array.from({ length: 50 }, (_, i) => cache.getToken(request(`r${i}`)));
  for (let served = 0; served < 50; ) {
    await flush();
    const batch = releases.splice(0);
    for (const release of batch) release();
    served += batch.length;
  }
  await Promise.all(all);
  t.equal(peak, 4, 'never more than 4 upstream fetches at once');
  t.equal(up.calls.length, 50, 'every resource fetched');
});

t.test('prefetch warms the cache and survives failures', async (t) => {
  const clock = new FakeClock();
  const up = scriptedFetch(clock);
  up.plan.push(
    async () => up.token(),
    () => Promise.reject(new ImdsError('upstream_unavailable')),
  );
  const cache = cacheWith(clock, up.fetch);
  await cache.prefetch(['a', 'b']);
  t.equal((await cache.getToken(request('a'))).result, 'hit');
  t.equal((await cache.getToken(request('b'))).result, 'miss', 'a failed prefetch just means a miss later');
  t.match(logs.join(''), /prefetch failed/);
});
