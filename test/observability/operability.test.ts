// Operability end to end: what a Prometheus scrape shows after a real session, readiness that means "a token
// can be minted", the audit trail, and that no log line ever holds a secret.
import { chmod, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import t from 'tap';
import { HimdsEmulator } from '../../src/emulator/himds.js';
import { Audit, MAX_TRIPLES } from '../../src/observability/audit.js';
import { createLogger } from '../../src/observability/log.js';
import { tokenRequest } from '../../src/values/token.js';
import { armTokenPath, get, LOOPBACK, scriptedUpstream, startStack, tokenPath } from '../fixtures/stack.js';

const ADMIN = { adminListen: { kind: 'tcp', host: '127.0.0.1', port: 0 } as const };
const adminUrl = (stack: Awaited<ReturnType<typeof startStack>>) => {
  const a = stack.proxy.adminAddress!;
  return `http://127.0.0.1:${a.kind === 'tcp' ? a.port : 0}`;
};
/** The value of one sample in Prometheus text, or undefined. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}
async function untilReady(url: string, want: boolean) {
  for (let i = 0; i < 100; i++) {
    const r = await get(`${url}/readyz`, {});
    if ((r.status === 200) === want) return r;
    await new Promise((resolve) => setTimeout(resolve, 30));
  }
  return get(`${url}/readyz`, {});
}

t.test('a scrape after a session shows the cache, upstream and challenge health', async (t) => {
  const stack = await startStack({ proxy: ADMIN });
  t.teardown(stack.close);
  const url = adminUrl(stack);
  await untilReady(url, true);
  const before = stack.emulator.stats();
  await Promise.all(Array.from({ length: 5 }, () => stack.get(armTokenPath()))); // 1 miss + 4 coalesced
  await stack.get(armTokenPath()); // hit
  await stack.get(armTokenPath(), {}); // no Metadata: rejected at the gate
  await stack.get('/metadata/instance/compute?api-version=2021-02-01');
  await stack.get('/nope?api-version=2021-02-01');

  const scrape = await get(`${url}/metrics`, {});
  t.equal(scrape.status, 200);
  t.match(scrape.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  const m = scrape.text;
  t.equal(sample(m, 'arc_imds_requests_total', 'route="token",code="200"'), 6);
  t.equal(sample(m, 'arc_imds_requests_total', 'route="none",code="400"'), 1, 'gate rejections');
  t.equal(sample(m, 'arc_imds_requests_total', 'route="none",code="404"'), 1);
  t.equal(sample(m, 'arc_imds_requests_total', 'route="instance",code="200"'), 1);
  t.equal(sample(m, 'arc_imds_token_cache_results_total', 'result="miss"'), 1);
  t.equal(sample(m, 'arc_imds_token_cache_results_total', 'result="coalesced"'), 4);
  t.equal(sample(m, 'arc_imds_token_cache_results_total', 'result="hit"'), 1);
  t.equal(stack.emulator.stats().tokensIssued - before.tokensIssued, 1);
  t.ok((sample(m, 'arc_imds_upstream_requests_total', 'leg="challenge",outcome="401"') ?? 0) >= 2, 'challenge legs (the request and readiness)');
  t.equal(sample(m, 'arc_imds_upstream_requests_total', 'leg="token",outcome="2xx"'), 1);
  t.equal(sample(m, 'arc_imds_upstream_requests_total', 'leg="passthrough",outcome="2xx"'), 1);
  t.match(m, /^arc_imds_request_duration_seconds_bucket\{le="0\.0001",route="token"\} \d+$/m, 'sub-millisecond buckets');
  t.match(m, /^arc_imds_upstream_request_duration_seconds_count\{leg="token"\} 1$/m);
  t.equal(sample(m, 'arc_imds_token_cache_entries'), 1);
  const earliest = sample(m, 'arc_imds_token_earliest_expiry_seconds')!;
  t.ok(earliest > 86_000 && earliest <= 86_400, `seconds until the earliest token expires (${earliest})`);
  t.equal(sample(m, 'arc_imds_upstream_fetches_in_flight'), 0);
  t.equal(sample(m, 'arc_imds_ready'), 1);
  t.match(m, /^arc_imds_build_info\{version="\d+\.\d+\.\d+",node="v\d+\.\d+\.\d+"\} 1$/m);
  t.match(m, /^process_cpu_user_seconds_total /m, 'default process metrics, unprefixed');
  t.match(m, /^nodejs_eventloop_lag_seconds /m);
  t.notMatch(m, /management\.azure\.com|127\.0\.0\.1/, 'no resource or client in any label');

  const health = await get(`${url}/healthz`, {});
  t.same([health.status, health.json], [200, { status: 'ok' }]);
  t.equal((await get(`${url}/other`, {})).status, 404);
  t.equal((await get(`${url}/metrics`, {}, 'POST')).status, 405);
  t.equal((await stack.get('/metrics')).status, 404, 'the admin endpoints are not on the IMDS listener');
});

t.test('challenge failures are counted by reason', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-obs-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const upstream = await scriptedUpstream((_req, res) => {
    res.writeHead(401, { 'Www-Authenticate': 'Basic realm=/etc/passwd' });
    res.end('{}');
  });
  t.teardown(upstream.close);
  const stack = await startStack({ upstream: upstream.url, proxy: { ...ADMIN, tokensDir: dir } });
  t.teardown(stack.close);
  t.equal((await stack.get(armTokenPath())).status, 500);
  const m = (await get(`${adminUrl(stack)}/metrics`, {})).text;
  t.ok((sample(m, 'arc_imds_challenge_failures_total', 'reason="bad_realm"') ?? 0) >= 1);
  t.equal(sample(m, 'arc_imds_requests_total', 'route="token",code="500"'), 1);
});

t.test('readiness means "a token can be minted"', async (t) => {
  const stack = await startStack({ proxy: { ...ADMIN, readinessIntervalMs: 100 } });
  t.teardown(stack.close);
  const url = adminUrl(stack);
  const ready = await untilReady(url, true);
  t.match(ready.json, { status: 'ready', ready: true, reason: 'a token can be minted' });
  t.equal(stack.emulator.stats().tokensIssued, 0, 'checking readiness minted nothing');

  await stack.emulator.down();
  const down = await untilReady(url, false);
  t.equal(down.status, 503);
  // A pooled connection may be cut as HIMDS goes down (reset) before a new one is refused: both say it is down.
  t.match(down.json, { status: 'not_ready', ready: false, reason: /connection refused|was reset/ });
  await stack.emulator.up();
  t.equal((await untilReady(url, true)).status, 200, 'ready again when HIMDS is back');

  const before = stack.emulator.stats().challenges;
  for (let i = 0; i < 20; i++) await get(`${url}/readyz`, {});
  t.ok(stack.emulator.stats().challenges - before <= 2, 'probes answer from the last check, not from HIMDS');
});

t.test(
  'not ready when the key files cannot be read (as an unprivileged user)',
  { skip: process.getuid?.() !== 0 ? 'needs root to drop to nobody' : false },
  async (t) => {
    // The built proxy, as nobody, against a tokens directory only root can read.
    const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-perm-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    await chmod(dir, 0o700);
    const emulator = await HimdsEmulator.start({ tokensDir: dir }, LOOPBACK); // root writes the keys
    t.teardown(() => emulator.close());
    const script = `
    const { parseServe } = await import(${JSON.stringify(path.resolve('dist/commands/serve.js'))});
    const { startProxy } = await import(${JSON.stringify(path.resolve('dist/server/proxy.js'))});
    const { createLogger } = await import(${JSON.stringify(path.resolve('dist/observability/log.js'))});
    const { config } = parseServe(['--listen', '127.0.0.1:0', '--admin-listen', 'off', '--upstream', ${JSON.stringify(emulator.url)}, '--tokens-dir', ${JSON.stringify(dir)}], {});
    const proxy = await startProxy(config, createLogger('silent'));
    // One check while still root: whatever that path loads lazily (undici loads its HTTP parser on the first
    // connection) is loaded before the drop, since the checkout may not be readable by nobody (CI clones into
    // a 0700 temporary directory).
    await proxy.readiness.checkNow();
    if (!proxy.readiness.state.ready) throw new Error('not ready even as root: ' + proxy.readiness.state.reason);
    process.setgid(65534); process.setuid(65534);
    await proxy.readiness.checkNow();
    console.log(JSON.stringify(proxy.readiness.state));
    await proxy.close();
    process.exit(0);`;
    // Asynchronously: the emulator in this process must keep answering while the child runs.
    const child = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const c = spawn(process.execPath, ['--input-type=module', '-e', script], { timeout: 15_000 });
      let stdout = '';
      let stderr = '';
      c.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      c.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      c.on('close', (status) => resolve({ status, stdout, stderr }));
    });
    t.equal(child.status, 0, child.stderr);
    const state = JSON.parse(child.stdout.trim().split('\n').pop() ?? '{}');
    t.equal(state.ready, false);
    t.match(state.reason, /permission denied reading key files in .*: run as root or in the himds group/);
  },
);

t.test('the audit trail: first sight, then at most one line a minute with the count', async (t) => {
  const lines: any[] = [];
  const log = createLogger('info', { write: (l: string) => void lines.push(JSON.parse(l)) });
  let now = 1_000_000;
  const audit = new Audit(log, () => now);
  t.teardown(() => audit.stop());
  const system = tokenRequest('https://vault.azure.net');
  const uami = tokenRequest('https://vault.azure.net', { kind: 'client_id', value: 'abc' });
  audit.served('10.0.0.5', system);
  // Another request object for the same subject (another URL asking for the same thing) counts as the same.
  for (let i = 0; i < 9; i++) audit.served('10.0.0.5', i % 2 ? system : tokenRequest('https://vault.azure.net', undefined, true));
  audit.served('10.0.0.5', uami);
  t.same(
    lines.map((l) => [l.audit, l.selector]),
    [
      ['first', 'system'],
      ['first', 'client_id=abc'],
    ],
    'one line per new triple, none per hit',
  );
  now += 60_000;
  audit.served('10.0.0.5', system);
  t.match(lines[2], { audit: 'count', client: '10.0.0.5', resource: 'https://vault.azure.net', selector: 'system', count: 10, sinceS: 60 });
  audit.served('10.0.0.5', uami);
  audit.flush();
  t.match(lines[3], { audit: 'count', selector: 'client_id=abc', count: 1 }, 'flush reports what no request would');
  t.equal(lines.length, 4);
  audit.served('10.0.0.6', system);
  t.match(lines[4], { audit: 'first', client: '10.0.0.6', selector: 'system' }, 'another client is another triple');
});

t.test('the audit trail is bounded: the oldest triple is reported, then forgotten', async (t) => {
  const lines: any[] = [];
  const log = createLogger('info', { write: (l: string) => void lines.push(JSON.parse(l)) });
  const audit = new Audit(log, () => 1_000_000);
  t.teardown(() => audit.stop());
  const oldest = tokenRequest('https://oldest.example');
  audit.served('10.0.0.1', oldest);
  audit.served('10.0.0.1', oldest);
  for (let i = 1; i < MAX_TRIPLES; i++) audit.served(`10.1.${i >> 8}.${i & 255}`, oldest);
  t.equal(lines.length, MAX_TRIPLES, 'one first line per triple');
  audit.served('10.0.0.2', tokenRequest('https://newest.example'));
  t.match(lines.at(-2), { audit: 'count', client: '10.0.0.1', resource: 'https://oldest.example', count: 1 }, 'the evicted count is not lost');
  t.match(lines.at(-1), { audit: 'first', client: '10.0.0.2' });
  audit.served('10.1.0.1', oldest);
  t.equal(lines.length, MAX_TRIPLES + 2, 'a remembered triple is still counted, not first-seen again');
  audit.served('10.0.0.1', oldest);
  t.match(lines.at(-1), { audit: 'first', client: '10.0.0.1' }, 'the forgotten triple is new again');
});

t.test('no log line ever holds a secret', async (t) => {
  const stack = await startStack({ proxy: { ...ADMIN, logLevel: 'trace' } });
  t.teardown(stack.close);
  const url = adminUrl(stack);
  await untilReady(url, true);
  // Capture every key the emulator writes, as it writes it.
  const keys = new Set<string>();
  const watch = setInterval(async () => {
    for (const name of await readdir(stack.tokensDir).catch(() => [])) {
      const text = await readFile(path.join(stack.tokensDir, name), 'utf8').catch(() => '');
      if (text) keys.add(text);
    }
  }, 1);
  t.teardown(() => clearInterval(watch));
  stack.emulator.faults.latencyMs = 30; // keys live long enough to be seen
  const tokens: string[] = [];
  for (const r of ['https://management.azure.com/', 'https://vault.azure.net', 'https://storage.azure.com/']) {
    const reply = await stack.get(tokenPath(`api-version=2018-02-01&resource=${encodeURIComponent(r)}`));
    tokens.push(reply.json.access_token);
    await stack.get(tokenPath(`api-version=2018-02-01&resource=${encodeURIComponent(r)}`));
  }
  await stack.get(armTokenPath('&client_id=5d2a8c3e-3e4b-4c2a-9a7e-1f2d3c4b5a69'));
  stack.emulator.faults.userAssigned = 'ignore';
  await stack.get(armTokenPath('&object_id=9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d')); // an error
  stack.emulator.faults.failNext = 3;
  await stack.get(tokenPath('api-version=2018-02-01&resource=https://fail.example'));
  await stack.get(armTokenPath(), {});
  clearInterval(watch);
  t.ok(keys.size >= 3, `keys were captured (${keys.size})`);
  t.equal(tokens.filter(Boolean).length, 3);
  const all = stack.logs.join('');
  t.ok(stack.logs.length > 20, `a full session was logged (${stack.logs.length} lines)`);
  t.match(all, /"msg":"token fetched from upstream"/);
  t.match(all, /"msg":"request failed"/);
  t.match(all, /"audit":"first"/);
  for (const token of tokens) {
    t.notOk(all.includes(token), 'no token');
    t.notOk(all.includes(token.split('.')[2]!), 'not even its signature');
  }
  for (const key of keys) {
    t.notOk(all.includes(key), 'no key contents');
    t.notOk(all.includes(`Basic ${key}`), 'no Authorization value');
  }
  t.notMatch(all, /Basic [0-9a-f]{16,}/, 'no Authorization header at all');
});
