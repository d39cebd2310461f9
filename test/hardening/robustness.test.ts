// One misbehaving client must not hurt the proxy or anyone else on it: abandoned fetches, log floods, forced
// refreshes during an outage, a relay with a resource policy, upstream statuses, resource patterns and
// api-versions. Real sockets, the emulator (or a scripted upstream) behind the real proxy.
import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { parseServe } from '../../src/commands/serve.js';
import { ConfigError } from '../../src/options/parser.js';
import { isAcceptedApiVersion } from '../../src/imds/gate.js';
import { ResourcePolicy } from '../../src/imds/policy.js';
import { createLogger } from '../../src/observability/log.js';
import { startProxy } from '../../src/server/proxy.js';
import { readKeyFile } from '../../src/upstream/challenge.js';
import { armTokenPath, get, raw, scriptedUpstream, startStack, tokenPath, type Stack } from '../fixtures/stack.js';

const waitUntil = async (what: string, ok: () => boolean | Promise<boolean>, ms = 10_000) => {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

/** Send a token request and hang up after `ms`, before any answer. */
function abandon(port: number, resource: string, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      path: tokenPath(`api-version=2018-02-01&resource=${encodeURIComponent(resource)}`),
      headers: { Metadata: 'true' },
      agent: false,
    });
    req.on('error', () => resolve());
    req.on('response', () => resolve());
    req.end();
    setTimeout(() => {
      req.destroy();
      resolve();
    }, ms);
  });
}

const metric = async (stack: Stack, name: string) => {
  const text = await stack.proxy.metrics.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
};

t.test('abandoned requests against a hung HIMDS: dropped before they reach it, bounded, and a cached token still served', async (t) => {
  const stack = await startStack({ proxy: { upstreamConcurrency: 4, upstreamQueue: 20, upstreamTimeoutMs: 10_000, requestTimeoutMs: 20_000 } });
  t.teardown(stack.close);
  t.equal((await stack.get(armTokenPath())).status, 200, 'a token cached before the hang');
  const before = stack.emulator.stats().challenges;
  // Hung: accepts, and answers nothing for 3 s (longer than any client here waits).
  stack.emulator.faults.latencyMs = 3000;

  // Waves of clients asking for new resources and hanging up after 100 ms.
  for (let wave = 0; wave < 5; wave++) {
    await Promise.all(Array.from({ length: 40 }, (_, i) => abandon(stack.port, `https://wave${wave}-${i}.example/`, 100)));
  }
  await waitUntil('abandoned fetches to be dropped', async () => (await metric(stack, 'arc_imds_upstream_fetches_in_flight')) === 0);

  // Live clients beyond concurrency + queue get a fast 503 with Retry-After; the cached token is still served.
  const live = Array.from({ length: 24 }, (_, i) => stack.get(tokenPath(`api-version=2018-02-01&resource=https://live${i}.example/`)));
  await waitUntil('the queue to fill', async () => (await metric(stack, 'arc_imds_upstream_fetches_in_flight')) === 24);
  const started = performance.now();
  const refused = await stack.get(tokenPath('api-version=2018-02-01&resource=https://one-more.example/'));
  t.equal(refused.status, 503, 'beyond the bound: 503');
  t.equal(refused.json.error, 'temporarily_unavailable');
  t.equal(refused.headers['retry-after'], '1');
  t.ok(performance.now() - started < 2000, 'answered at once, not queued');
  t.equal((await stack.get(armTokenPath())).status, 200, 'the cached token is served throughout');

  // HIMDS recovers: the queued live requests are served.
  stack.emulator.faults.latencyMs = 0;
  const answers = await Promise.all(live);
  t.ok(answers.filter((a) => a.status === 200).length >= 20, 'queued live requests are served once HIMDS answers');
  const fresh = await stack.get(tokenPath('api-version=2018-02-01&resource=https://after.example/'));
  t.equal(fresh.status, 200, 'a new resource is served after recovery');
  // Every request that reached the hung HIMDS has had its answer by now (key files are written when HIMDS
  // gets round to a request, whether or not anyone still waits for it).
  const challenges = stack.emulator.stats().challenges - before;
  t.ok(challenges <= 4 * 5 + 25, `HIMDS wrote ${challenges} key files for 225 distinct resources, 200 of them abandoned`);
});

t.test('a flood of new resources against a stuck HIMDS: every refusal is a 503, one warning line for them all', async (t) => {
  const stack = await startStack({ proxy: { upstreamConcurrency: 1, upstreamQueue: 2, upstreamTimeoutMs: 10_000, requestTimeoutMs: 20_000 } });
  t.teardown(stack.close);
  stack.emulator.faults.latencyMs = 3000;
  const held = Array.from({ length: 3 }, (_, i) => abandon(stack.port, `https://held-${i}.example/`, 1500));
  await waitUntil('the bound to be reached', async () => (await metric(stack, 'arc_imds_upstream_fetches_in_flight')) === 3);
  const logged = stack.logs.length;
  const refused = await Promise.all(
    Array.from({ length: 50 }, (_, i) => stack.get(tokenPath(`api-version=2018-02-01&resource=https://flood-${i}.example/`))),
  );
  t.ok(
    refused.every((r) => r.status === 503 && r.headers['retry-after'] === '1'),
    'each refused at once with a 503',
  );
  const warnings = stack.logs.slice(logged).filter((l) => l.includes('request failed'));
  t.equal(warnings.length, 1, 'one warning line, not one per refused request');
  t.match(warnings[0], /"code":"upstream_saturated"/);
  await Promise.all(held);
  stack.emulator.faults.latencyMs = 0;
});

t.test('a flood of failing client requests does not flood the log at info', async (t) => {
  const stack = await startStack({ proxy: { allowResource: ['https://management.azure.com/'], logLevel: 'info' } });
  t.teardown(stack.close);
  // The stack's logger writes debug lines too: count only what an info logger would write.
  const infoBytes = () => stack.logs.filter((l) => JSON.parse(l).level !== 'debug').reduce((n, l) => n + l.length, 0);
  const start = infoBytes();
  const long = 'x'.repeat(7000);
  for (let i = 0; i < 100; i++) {
    await stack.get(tokenPath(`api-version=2018-02-01&resource=https://refused.example/${long}${i}`.slice(0, 8000)));
    await stack.get(tokenPath(`api-version=2018-02-01&resource=&pad=${long}`));
  }
  const written = infoBytes() - start;
  t.ok(written < 2000, `200 failing 8 KB requests wrote ${written} bytes at info and above`);
  t.ok(
    stack.logs.some((l) => l.includes('request refused')),
    'they are still there at debug',
  );
  const longest = Math.max(...stack.logs.filter((l) => l.includes('request refused')).map((l) => l.length));
  t.ok(longest < 1000, `a debug line carries at most a clipped URL (${longest} characters)`);

  // An upstream failure stays a warning, with the URL clipped.
  await stack.emulator.down();
  const down = await stack.get(tokenPath(`api-version=2018-02-01&resource=${encodeURIComponent('https://management.azure.com/')}&pad=${long}`));
  t.equal(down.status, 503);
  const warn = stack.logs.find((l) => l.includes('"level":"warn"') && l.includes('request failed'));
  t.ok(warn, 'upstream failures are logged as warnings');
  t.ok(warn!.length < 1000, 'with the URL clipped');
  t.match(warn!, /…\(\d+ more\)/, 'saying how much was cut');
});

t.test('upstream statuses: 502 and 504 keep their status; a refused upstream says when to retry', async (t) => {
  let status = 502;
  const upstream = await scriptedUpstream((_req, res) => {
    res.writeHead(status, { 'Content-Type': 'text/html' });
    res.end('<html>bad gateway</html>');
  });
  const stack = await startStack({ upstream: upstream.url });
  t.teardown(async () => {
    await stack.close();
    await upstream.close();
  });
  for (const s of [502, 504, 500, 507]) {
    status = s;
    const r = await stack.get(tokenPath('api-version=2018-02-01&resource=https://x.example/'));
    t.equal(r.status, s, `upstream ${s}: the client gets ${s}`);
    t.equal(r.json.error, 'upstream_error');
  }
  await upstream.close();
  const refused = await stack.get(tokenPath('api-version=2018-02-01&resource=https://x.example/'));
  t.equal(refused.status, 503, 'upstream refuses connections');
  t.equal(refused.headers['retry-after'], '1', 'with Retry-After');
});

t.test('a sidecar behind a relay restricted by --allow-resource becomes ready', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-policy-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const himds = await startStack();
  t.teardown(himds.close);
  const socket = path.join(dir, 'relay.sock');
  const quiet = createLogger('silent');
  const relay = await startProxy(
    parseServe(
      [
        '--listen',
        `unix:${socket}`,
        '--upstream',
        himds.emulator.url,
        '--tokens-dir',
        himds.tokensDir,
        '--admin-listen',
        'off',
        '--allow-resource',
        'https://vault.azure.net*',
        '--readiness-resource',
        'https://vault.azure.net',
      ],
      {},
    ).config,
    quiet,
  );
  t.teardown(() => relay.close());
  const sidecar = await startProxy(
    parseServe(['--listen', '127.0.0.1:0', '--upstream', `unix:${socket}`, '--admin-listen', '127.0.0.1:0'], {}).config,
    quiet,
  );
  t.teardown(() => sidecar.close());
  await waitUntil('the sidecar to be ready', () => sidecar.readiness.state.ready);
  t.match(sidecar.readiness.state.reason, /policy refuses https:\/\/management\.azure\.com\//, 'the reason says why');
  const port = sidecar.addresses[0]!.kind === 'tcp' ? sidecar.addresses[0]!.port : 0;
  t.equal(
    (await get(`http://127.0.0.1:${port}${tokenPath('api-version=2018-02-01&resource=https://vault.azure.net')}`)).status,
    200,
    'allowed resources are served',
  );
  t.equal((await get(`http://127.0.0.1:${port}${armTokenPath()}`)).status, 403, 'others are refused by the relay');

  // A local readiness resource refused by the local policy can never succeed: a configuration error.
  const sidecarWith = (extra: string[], env: NodeJS.ProcessEnv = {}) =>
    parseServe(['--listen', '127.0.0.1:0', '--upstream', `unix:${socket}`, '--allow-resource', 'https://vault.azure.net*', ...extra], env);
  t.throws(() => sidecarWith(['--readiness-resource', 'https://management.azure.com/']), ConfigError);
  t.throws(() => sidecarWith([], { ARC_IMDS_READINESS_RESOURCE: 'https://x/' }), ConfigError, 'from the environment too');
  // Not given: the first allowed resource, which the policy allows.
  const derived = sidecarWith(['--allow-resource', 'https://storage.azure.com/']).config;
  t.equal(derived.readinessResource, 'https://vault.azure.net', 'the readiness resource follows --allow-resource when not given');
  t.doesNotThrow(() => sidecarWith(['--readiness-resource', 'https://vault.azure.net']));
});

t.test('--allow-resource prefixes match up to a / or :, never across a host boundary', async (t) => {
  const policy = new ResourcePolicy(['https://vault.azure.net*', 'https://storage.azure.com/*', 'api://exact']);
  for (const ok of [
    'https://vault.azure.net',
    'https://vault.azure.net/',
    'https://vault.azure.net:443/x',
    'https://storage.azure.com/',
    'https://storage.azure.com/anything',
    'api://exact',
  ]) {
    t.ok(policy.allows(ok), `${ok} allowed`);
  }
  for (const no of [
    'https://vault.azure.net.evil.example',
    'https://vault.azure.netx',
    'https://vault.azure.net@evil.example',
    'https://storage.azure.com',
    'api://exact/more',
    'https://management.azure.com/',
  ]) {
    t.notOk(policy.allows(no), `${no} refused`);
  }
  t.ok(new ResourcePolicy([]).allows('anything'), 'no patterns: everything');
});

t.test("api-version: what IMDS accepts for each path, and IMDS's own 400 otherwise", async (t) => {
  t.ok(isAcceptedApiVersion('2018-02-01', 'token'));
  t.ok(isAcceptedApiVersion('2019-08-01', 'token'));
  t.notOk(isAcceptedApiVersion('2017-12-01', 'token'), 'tokens from 2018-02-01 on');
  t.ok(isAcceptedApiVersion('2017-03-01', 'instance'), 'instance metadata from 2017-03-01 on');
  t.ok(isAcceptedApiVersion('2025-04-07', 'instance'));
  for (const bad of ['2018-02-31', '2099-01-01', '2020-01-01', '2018-2-1', '', undefined]) {
    t.notOk(isAcceptedApiVersion(bad, 'instance'), `${bad} refused`);
    t.notOk(isAcceptedApiVersion(bad, 'token'), `${bad} refused for tokens`);
  }
  const stack = await startStack();
  t.teardown(stack.close);
  const old = await stack.get('/metadata/instance?api-version=2017-03-01');
  t.equal(old.status, 200, 'instance metadata with a 2017 version IMDS serves');
  for (const v of ['2018-02-31', '2099-01-01']) {
    const instance = await stack.get(`/metadata/instance?api-version=${v}`);
    t.equal(instance.status, 400);
    t.same(instance.json['newest-versions'], ['2025-04-07', '2024-07-17', '2024-03-15'], `${v}: IMDS's instance answer`);
    const token = await stack.get(tokenPath(`api-version=${v}&resource=https://x/`));
    t.equal(token.status, 400);
    t.equal(token.json.error, 'invalid_request', `${v}: the identity endpoint's answer`);
  }
  t.equal(stack.emulator.stats().tokenRequests, 0, 'refused requests never reach HIMDS');
});

t.test('a tokens directory behind a symlink works; a key file that is a symlink stays refused', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-link-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // As when /var/opt/azcmagent is a link to another disk: HIMDS names key files under the linked path.
  const real = path.join(dir, 'real');
  const linked = path.join(dir, 'tokens');
  await mkdir(real);
  await symlink(real, linked);
  const stack = await startStack({ emulator: { tokensDir: linked }, proxy: { tokensDir: linked } });
  t.teardown(stack.close);
  t.equal((await stack.get(armTokenPath())).status, 200, 'key files in a symlinked tokens directory are read');
  const keyLink = path.join(linked, 'evil.key');
  await symlink('/etc/hostname', keyLink);
  t.throws(
    () => readKeyFile(keyLink, linked),
    { name: 'ChallengeError', reason: 'symlink' } as never,
    'a key file that is itself a symlink is refused',
  );
});

t.test('absolute-form requests (a client using the proxy as its HTTP proxy): IMDS answered, other hosts refused', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  // Raw requests to 127.0.0.1 only: the absolute form names 169.254.169.254, but nothing connects there.
  const imds = await raw(
    stack.port,
    `GET http://169.254.169.254${armTokenPath()} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n`,
  );
  t.match(imds, /^HTTP\/1\.1 200 /, 'the IMDS host in absolute form is answered like the origin form');
  t.match(imds, /"access_token":/);
  const before = stack.emulator.stats().tokenRequests;
  for (const host of ['management.azure.com', 'example.com:80', '127.0.0.1:40342']) {
    const other = await raw(
      stack.port,
      `GET http://${host}/metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nHost: ${host}\r\nMetadata: true\r\nConnection: close\r\n\r\n`,
    );
    t.match(other, /^HTTP\/1\.1 403 /, `${host}: refused`);
    t.match(other, /not a general HTTP proxy/);
  }
  t.equal(stack.emulator.stats().tokenRequests + stack.emulator.stats().metadataRequests, before + 0, 'nothing was forwarded');
});

t.test('the relay names the workload a sidecar says it serves', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-workload-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const himds = await startStack();
  t.teardown(himds.close);
  const socket = path.join(dir, 'relay.sock');
  const lines: string[] = [];
  const relay = await startProxy(
    parseServe(['--listen', `unix:${socket}`, '--upstream', himds.emulator.url, '--tokens-dir', himds.tokensDir, '--admin-listen', 'off'], {}).config,
    createLogger('info', { write: (l: string) => void lines.push(l) }),
  );
  t.teardown(() => relay.close());
  const quiet = createLogger('silent');
  const sidecars = await Promise.all(
    [['--workload', 'shop/cart-7d9f'], []].map((extra) =>
      startProxy(parseServe(['--listen', '127.0.0.1:0', '--upstream', `unix:${socket}`, '--admin-listen', 'off', ...extra], {}).config, quiet),
    ),
  );
  t.teardown(() => Promise.all(sidecars.map((s) => s.close())));
  for (const s of sidecars) {
    const port = s.addresses[0]!.kind === 'tcp' ? s.addresses[0]!.port : 0;
    t.equal((await get(`http://127.0.0.1:${port}${armTokenPath()}`)).status, 200);
  }
  const audit = lines.map((l) => JSON.parse(l)).filter((l) => l.audit === 'first');
  t.same(audit.map((l) => l.client).sort(), ['unix', 'unix:shop/cart-7d9f'], 'one audit line per workload; the one without --workload is plain unix');
  t.throws(() => parseServe(['--workload', 'not a name'], {}), ConfigError, 'a malformed --workload is a configuration error');
});
