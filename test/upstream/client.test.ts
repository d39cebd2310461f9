// The upstream client on its own, against real loopback servers: what it reads of an answer, and how each way
// an upstream call can end (a deadline, a caller giving up, a body too big) leaves the connection pool.
import { getEventListeners } from 'node:events';
import http from 'node:http';
import type net from 'node:net';
import t, { type Test } from 'tap';
import { Metrics } from '../../src/observability/metrics.js';
import { headerValue, MAX_UPSTREAM_BODY, UpstreamClient } from '../../src/upstream/client.js';
import { UpstreamFailure } from '../../src/values/failures.js';
import { parseUpstream } from '../../src/values/parsers.js';
import { scriptedUpstream } from '../fixtures/stack.js';

type Upstream = Awaited<ReturnType<typeof scriptedUpstream>>;

/** A scripted loopback upstream, closed when the test ends. */
async function upstream(t: Test, handler: Parameters<typeof scriptedUpstream>[0]): Promise<Upstream> {
  const server = await scriptedUpstream(handler);
  t.teardown(server.close);
  return server;
}

/** The request targets the upstream received, in order. */
const paths = (server: Upstream) => server.requests.map((req) => req.url);

/** A client of `server` with metrics of its own: `outcomes()` lists the requests it counted, by leg and outcome. */
function client(
  t: Test,
  server: Pick<Upstream, 'url'>,
  options: { attemptTimeoutMs?: number; connections?: number } = {},
): UpstreamClient & { outcomes(): Promise<string[]> } {
  const metrics = new Metrics('test', { cacheEntries: () => 0, earliestExpirySeconds: () => undefined, fetchesInFlight: () => 0, ready: () => true });
  const c = new UpstreamClient(parseUpstream(server.url), {
    attemptTimeoutMs: options.attemptTimeoutMs ?? 5000,
    connections: options.connections ?? 2,
    metrics,
  });
  t.teardown(() => c.close(0));
  return Object.assign(c, {
    async outcomes() {
      const { values } = await metrics.upstreamRequests.get();
      return values.flatMap((v) => Array.from({ length: v.value }, () => `${v.labels.leg} ${v.labels.outcome}`)).sort();
    },
  });
}

/** The caller's signal of most calls: never aborted. Every call must leave no listener on it. */
const never = new AbortController().signal;

/** The failure a call ended with (the test fails if it succeeded). */
async function failureOf(t: Test, call: Promise<unknown>): Promise<UpstreamFailure> {
  try {
    await call;
  } catch (err) {
    t.type(err, UpstreamFailure, 'a typed upstream failure');
    return err as UpstreamFailure;
  }
  t.fail('expected the call to fail');
  throw new Error('unreachable');
}

t.test('an answer is read whole: status, headers by lower-case name, body', async (t) => {
  const server = await upstream(t, (req, res) => {
    res.setHeader('X-Echo', req.headers.metadata ?? '');
    res.setHeader('Set-Cookie', ['a=1', 'b=2']);
    res.writeHead(401, { 'WWW-Authenticate': 'Basic realm=/x/y.key' });
    res.end('{"error":"unauthorized"}');
  });
  const answer = await client(t, server).get('challenge', '/metadata/identity/oauth2/token?x=1', { Metadata: 'true' }, never);
  t.equal(answer.status, 401);
  t.equal(answer.body, '{"error":"unauthorized"}');
  t.equal(headerValue(answer.headers, 'www-authenticate'), 'Basic realm=/x/y.key');
  t.equal(headerValue(answer.headers, 'x-echo'), 'true', 'our headers were sent');
  t.same(answer.headers['set-cookie'], ['a=1', 'b=2'], 'a repeated header is a list');
  t.same(paths(server), ['/metadata/identity/oauth2/token?x=1']);
});

t.test('a body split over many chunks arrives whole; an informational answer before it is skipped', async (t) => {
  const body = 'é'.repeat(20_000); // 40,000 bytes of two-byte characters, cut at arbitrary points
  const server = await upstream(t, (_req, res) => {
    res.writeEarlyHints({ link: '</x>; rel=preload' });
    res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
    const bytes = Buffer.from(body);
    for (let at = 0; at < bytes.length; at += 999) res.write(bytes.subarray(at, at + 999));
    res.end();
  });
  const answer = await client(t, server).get('token', '/t', {}, never);
  t.equal(answer.status, 200, 'the final status, not 103');
  t.equal(answer.body, body, 'decoded once, whole: no character broken at a chunk boundary');
});

t.test('a body over the bound fails, and its connection is not reused', async (t) => {
  const server = await upstream(t, (req, res) => {
    if (req.url === '/huge') {
      res.writeHead(200);
      res.end('x'.repeat(MAX_UPSTREAM_BODY + 1));
    } else res.end('ok');
  });
  const c = client(t, server, { connections: 1 });
  const failure = await failureOf(t, c.get('token', '/huge', {}, never));
  t.equal(failure.kind, 'bad_body');
  t.match(failure.message, `larger than ${MAX_UPSTREAM_BODY} bytes`);
  t.equal((await c.get('token', '/after', {}, never)).body, 'ok', 'the next request is answered');
  t.equal(server.connections(), 2, 'on a new connection: the half-read one was closed');
  t.same(await c.outcomes(), ['token 2xx', 'token error'], 'each request counted once');
});

t.test('exactly the bound is accepted', async (t) => {
  const server = await upstream(t, (_req, res) => res.end('y'.repeat(MAX_UPSTREAM_BODY)));
  t.equal((await client(t, server).get('token', '/', {}, never)).body.length, MAX_UPSTREAM_BODY);
});

t.test('the attempt deadline ends a hung request; the pool goes on', async (t) => {
  const server = await upstream(t, (req, res) => {
    if (req.url === '/stall') {
      // Headers and half the body, then nothing.
      res.writeHead(200, { 'Content-Length': '100' });
      res.write('{"access');
    } else if (req.url !== '/hang') res.end('ok');
  });
  const c = client(t, server, { attemptTimeoutMs: 200, connections: 1 });
  const failure = await failureOf(t, c.get('token', '/hang', {}, never));
  t.equal(failure.kind, 'timeout', 'no answer at all');
  t.match(failure.message, /no answer from http:\/\/127\.0\.0\.1:\d+ in time/);
  t.equal((await failureOf(t, c.get('token', '/stall', {}, never))).kind, 'timeout', 'an answer that stalls mid-body');
  t.equal((await c.get('token', '/after', {}, never)).body, 'ok', 'the next request is answered');
  t.equal(server.connections(), 3, 'each on a new connection: a hung one is closed');
  t.same(await c.outcomes(), ['token 2xx', 'token timeout', 'token timeout'], 'each request counted once');
});

t.test("the caller's signal", async (t) => {
  t.test('already aborted: nothing is sent', async (t) => {
    const server = await upstream(t, (_req, res) => res.end('ok'));
    const failure = await failureOf(t, client(t, server).get('token', '/', {}, AbortSignal.abort()));
    t.equal(failure.kind, 'timeout');
    t.equal(server.requests.length, 0, 'the upstream saw no request');
  });

  t.test('aborted while the request waits for a connection: it ends at once and is never sent', async (t) => {
    let release: (() => void) | undefined;
    const server = await upstream(t, (req, res) => {
      if (req.url === '/slow') release = () => res.end('slow');
      else res.end('ok');
    });
    const c = client(t, server, { connections: 1 });
    const slow = c.get('token', '/slow', {}, never);
    while (release === undefined) await new Promise((resolve) => setImmediate(resolve));
    const caller = new AbortController();
    const queued = c.get('token', '/queued', {}, caller.signal);
    caller.abort();
    // The request ahead is answered only after release(): the queued one must end before that.
    const ended = await Promise.race([
      failureOf(t, queued),
      new Promise<'still waiting'>((resolve) => setTimeout(resolve, 10_000, 'still waiting').unref()),
    ]);
    t.not(ended, 'still waiting', 'it ended while the only connection was still busy');
    if (ended !== 'still waiting') t.equal(ended.kind, 'timeout');
    t.equal(getEventListeners(caller.signal, 'abort').length, 0, 'no listener left on its signal');
    release();
    t.equal((await slow).body, 'slow', 'the request ahead of it is unaffected');
    t.equal((await c.get('token', '/after', {}, never)).body, 'ok');
    t.same(paths(server), ['/slow', '/after'], 'the abandoned request never reached the upstream');
    t.same(await c.outcomes(), ['token 2xx', 'token 2xx', 'token timeout'], 'each request counted once');
  });

  t.test('aborted mid-request: it ends, and the pool goes on', async (t) => {
    const server = await upstream(t, (req, res) => {
      if (req.url !== '/hang') res.end('ok');
    });
    const c = client(t, server, { connections: 1 });
    const caller = new AbortController();
    const hung = c.get('token', '/hang', {}, caller.signal);
    while (server.requests.length === 0) await new Promise((resolve) => setImmediate(resolve));
    caller.abort();
    t.equal((await failureOf(t, hung)).kind, 'timeout');
    t.equal((await c.get('token', '/after', {}, never)).body, 'ok');
  });
});

/** A loopback port that was listening a moment ago and is not any more: nothing answers there. */
function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = http.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

t.test('connection failures are told apart', async (t) => {
  const server = await upstream(t, (req) => req.socket.destroy());
  const reset = await failureOf(t, client(t, server).get('token', '/', {}, never));
  t.equal(reset.kind, 'reset', 'a connection closed without an answer');

  const nobody = { url: `http://127.0.0.1:${await closedPort()}` };
  const refused = await failureOf(t, client(t, nobody).get('token', '/', {}, never));
  t.equal(refused.kind, 'refused', 'nothing listening');
  t.match(refused.message, /connection refused by http:\/\/127\.0\.0\.1:\d+/);
});

// Last, after every call above that used it (tap runs a file's tests in order).
t.test("no call left a listener on the caller's signal", async (t) => {
  t.equal(getEventListeners(never, 'abort').length, 0);
});
