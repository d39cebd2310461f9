// The token cache end to end, against the real emulator and its counters: storms cost one upstream fetch,
// an upstream outage is invisible while cached tokens are valid, forced refreshes are limited, prefetch warms.
import http from 'node:http';
import t from 'tap';
import { ARM, armTokenPath, startStack, tokenPath } from '../fixtures/stack.js';

/** n concurrent requests, each on its own connection. */
async function burst(port: number, path: string, n: number) {
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  try {
    return await Promise.all(
      Array.from(
        { length: n },
        () =>
          new Promise<{ status: number; token: string }>((resolve, reject) => {
            http
              .get({ host: '127.0.0.1', port, path, headers: { Metadata: 'true' }, agent }, (res) => {
                let text = '';
                res.setEncoding('utf8');
                res.on('data', (c: string) => (text += c));
                res.on('end', () => resolve({ status: res.statusCode!, token: (JSON.parse(text) as { access_token?: string }).access_token ?? '' }));
              })
              .on('error', reject);
          }),
      ),
    );
  } finally {
    agent.destroy();
  }
}

t.test('1,000 concurrent cold requests for one resource: one upstream fetch; a second burst: none', async (t) => {
  // Upstream latency keeps the first fetch in flight while the whole burst arrives.
  const stack = await startStack({ emulator: { latencyMs: 300 } });
  t.teardown(stack.close);
  const first = await burst(stack.port, armTokenPath(), 1000);
  t.ok(
    first.every((r) => r.status === 200),
    'all 1,000 answered 200',
  );
  t.equal(new Set(first.map((r) => r.token)).size, 1, 'all got the same token');
  t.same(
    { tokensIssued: stack.emulator.stats().tokensIssued, challenges: stack.emulator.stats().challenges },
    { tokensIssued: 1, challenges: 1 },
    'the emulator issued one token after one challenge',
  );
  const second = await burst(stack.port, armTokenPath(), 1000);
  t.ok(
    second.every((r) => r.status === 200 && r.token === first[0]!.token),
    'the second burst: the cached token',
  );
  t.equal(stack.emulator.stats().tokensIssued, 1, 'and no upstream fetch');
});

t.test('an upstream outage is invisible while cached tokens are valid', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  const before = await stack.get(armTokenPath());
  t.equal(before.status, 200);
  await stack.emulator.down();
  const during = await stack.get(armTokenPath());
  t.equal(during.status, 200, 'HIMDS down: the cached token is served');
  t.equal(during.json.access_token, before.json.access_token);
  const uncached = await stack.get(tokenPath('api-version=2018-02-01&resource=https://vault.azure.net'));
  t.equal(uncached.status, 503, 'a resource never fetched gets a retryable 503');
  await stack.emulator.up();
  t.equal((await stack.get(tokenPath('api-version=2018-02-01&resource=https://vault.azure.net'))).status, 200, 'and works once HIMDS is back');
});

t.test('bypass_cache and token_sha256_to_refresh fetch anew, at most once per interval', async (t) => {
  const stack = await startStack({ proxy: { forceRefreshIntervalMs: 60_000 } });
  t.teardown(stack.close);
  const first = await stack.get(armTokenPath());
  const soon = await stack.get(armTokenPath('&bypass_cache=true'));
  t.equal(soon.json.access_token, first.json.access_token, 'right after a fetch: the newest token, no fetch');
  t.equal(stack.emulator.stats().tokensIssued, 1);

  const fresh = await startStack({ proxy: { forceRefreshIntervalMs: 0 } });
  t.teardown(fresh.close);
  const a = await fresh.get(armTokenPath());
  const b = await fresh.get(armTokenPath('&bypass_cache=true'));
  const c = await fresh.get(armTokenPath('&token_sha256_to_refresh=0123abcd'));
  const d = await fresh.get(armTokenPath());
  t.not(b.json.access_token, a.json.access_token, 'bypass_cache fetched a new token');
  t.not(c.json.access_token, b.json.access_token, 'token_sha256_to_refresh too');
  t.equal(d.json.access_token, c.json.access_token, 'and the newest is what plain requests get');
  t.equal(fresh.emulator.stats().tokensIssued, 3);
  t.match(fresh.logs.join(''), /"result":"forced"/, 'forced fetches are logged as such');
});

t.test('expires_in is recomputed whenever a cached token is served', async (t) => {
  const stack = await startStack({ emulator: { tokenLifetimeS: 7200 } });
  t.teardown(stack.close);
  const a = await stack.get(armTokenPath());
  await new Promise((r) => setTimeout(r, 1100));
  const b = await stack.get(armTokenPath());
  t.equal(b.json.access_token, a.json.access_token);
  t.equal(b.json.expires_on, a.json.expires_on);
  t.ok(Number(b.json.expires_in) < Number(a.json.expires_in), `expires_in went down (${a.json.expires_in} -> ${b.json.expires_in})`);
});

t.test('tokens that would be stale on arrival are not cached', async (t) => {
  const stack = await startStack({ emulator: { tokenLifetimeS: 120 } }); // less than --min-remaining (5 min)
  t.teardown(stack.close);
  t.equal((await stack.get(armTokenPath())).status, 200, 'the requester gets it');
  t.equal((await stack.get(armTokenPath())).status, 200);
  t.equal(stack.emulator.stats().tokensIssued, 2, 'but every request fetches');
  t.match(stack.logs.join(''), /expires within --min-remaining; not caching it/);
});

t.test('--prefetch: the first real request is a hit', async (t) => {
  const stack = await startStack({ proxy: { prefetch: [ARM, 'https://vault.azure.net'] } });
  t.teardown(stack.close);
  for (let i = 0; i < 50 && stack.emulator.stats().tokensIssued < 2; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(stack.emulator.stats().tokensIssued, 2, 'both fetched at start');
  t.equal((await stack.get(armTokenPath())).status, 200);
  t.equal(stack.emulator.stats().tokensIssued, 2, 'the first request was served from the cache');
  t.notMatch(stack.logs.join(''), /"msg":"token fetched from upstream"/, 'no request-driven fetch');
});
