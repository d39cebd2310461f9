// A rolling restart under load fails no request: SIGTERM makes /readyz 503, stops accepting, lets in-flight
// requests finish, removes socket files and exits 0. And `probe`, the health check for images without curl.
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { HimdsEmulator } from '../../src/emulator/himds.js';
import { builtCli, Child, runToEnd, type LogLine, type Ran } from '../fixtures/process.js';
import { get, LOOPBACK } from '../fixtures/stack.js';

const CLI = builtCli();

/** The built CLI at --log-level info; killed in teardown whatever happens to the test. */
function cli(t: Test, args: string[]): Child & { waitFor(msg: string): Promise<LogLine> } {
  const p = new Child('cli', [process.execPath, CLI, ...args], { env: { ...process.env, ARC_IMDS_LOG_LEVEL: 'info' }, t });
  return Object.assign(p, { waitFor: (msg: string) => p.logLine(msg, 10_000) });
}

function run(args: string[]): Promise<Ran> {
  return runToEnd('cli', [process.execPath, CLI, ...args], { timeoutMs: 10_000 });
}

t.test('SIGTERM under load: zero failed in-flight requests, readyz 503 while draining, exit 0', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-drain-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Slow upstream: every cold request is in flight for ~2 x 400 ms.
  const emulator = await HimdsEmulator.start({ tokensDir: path.join(dir, 'tokens') }, LOOPBACK);
  t.teardown(() => emulator.close());
  const socket = path.join(dir, 'run', 'imds.sock');
  const proxy = cli(t, [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--listen',
    `unix:${socket}`,
    '--admin-listen',
    '127.0.0.1:0',
    '--upstream',
    emulator.url,
    '--tokens-dir',
    path.join(dir, 'tokens'),
  ]);
  const listening = await proxy.waitFor('listening');
  const admin = await proxy.waitFor('admin listening: /metrics /healthz /readyz');
  const base = `http://${listening.address}`;
  const adminBase = `http://${admin.address}`;
  await proxy.waitFor('ready: a token can be minted');
  t.equal((await get(`${adminBase}/readyz`, {})).status, 200);
  emulator.faults.latencyMs = 400;

  const inFlight = Array.from({ length: 40 }, (_, i) =>
    get(`${base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://r${i}.example`).then(
      (r) => r.status,
      (err: Error) => `failed: ${err.message}`,
    ),
  );
  await new Promise((r) => setTimeout(r, 150)); // all 40 have reached the proxy and wait on upstream
  proxy.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 100));
  const draining = await get(`${adminBase}/readyz`, {});
  t.equal(draining.status, 503, 'readyz 503 while draining (the admin listener stays up)');
  t.match(draining.json, { ready: false, reason: /draining/ });
  await t.rejects(get(`${base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x`), 'new connections are refused');

  const statuses = await Promise.all(inFlight);
  t.same(statuses, Array(40).fill(200), 'every in-flight request finished with 200');
  t.same(await proxy.exited, { code: 0, signal: null }, 'exit 0');
  t.notOk(existsSync(socket), 'the socket file is removed');
  t.ok(proxy.logLines('drained and stopped').length > 0);
});

t.test('--shutdown-timeout bounds the drain', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-drain-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const emulator = await HimdsEmulator.start({ tokensDir: dir, latencyMs: 20_000 }, LOOPBACK);
  t.teardown(() => emulator.close());
  const proxy = cli(t, [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--admin-listen',
    'off',
    '--upstream',
    emulator.url,
    '--tokens-dir',
    dir,
    '--shutdown-timeout',
    '300ms',
    '--upstream-timeout',
    '30s',
    '--request-timeout',
    '30s',
  ]);
  const listening = await proxy.waitFor('listening');
  const stuck = get(`http://${listening.address}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x`).catch((e: Error) => e);
  await new Promise((r) => setTimeout(r, 100));
  const started = performance.now();
  proxy.child.kill('SIGTERM');
  t.same(await proxy.exited, { code: 0, signal: null });
  t.ok(performance.now() - started < 5000, 'did not wait for the 20 s upstream');
  t.type(await stuck, Error, 'the request still in flight past the timeout was cut');
});

t.test('probe', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-probe-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const emulator = await HimdsEmulator.start({ tokensDir: dir }, LOOPBACK);
  t.teardown(() => emulator.close());
  const proxy = cli(t, [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--admin-listen',
    '127.0.0.1:0',
    '--upstream',
    emulator.url,
    '--tokens-dir',
    dir,
    '--readiness-interval',
    '200ms',
  ]);
  const admin = await proxy.waitFor('admin listening: /metrics /healthz /readyz');
  await proxy.waitFor('ready: a token can be minted');
  const base = `http://${admin.address}`;

  const ok = await run(['probe', '--url', base]);
  t.equal(ok.code, 0, 'a base URL: its /readyz');
  t.match(ok.stdout, /^ready: a token can be minted$/m);
  t.equal((await run(['probe', '--url', `${base}/readyz`])).code, 0, 'a full /readyz URL');

  await emulator.down();
  await proxy.waitFor('not ready');
  const notReady = await run(['probe', '--url', base]);
  t.equal(notReady.code, 1);
  t.match(notReady.stderr, /^arc-imds-proxy: not ready \(503\): .*connection refused/m);

  const nobody = await run(['probe', '--url', 'http://127.0.0.1:9', '--timeout', '1s']);
  t.equal(nobody.code, 1);
  t.match(nobody.stderr, /no answer from http:\/\/127\.0\.0\.1:9\/readyz: ECONNREFUSED/);
  const bad = await run(['probe', '--url', 'ftp://x']);
  t.equal(bad.code, 2, 'a bad URL is bad configuration');
});
