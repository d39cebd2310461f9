// The built CLI (dist/cli.js), as an operator runs it: help and version, configuration from flags and ARC_IMDS_*
// variables with every problem reported at once, exit codes, and a real `serve` in front of a real
// `emulate-himds`, both as child processes. Everything listens on and talks to 127.0.0.1 only.
import t, { type Test } from 'tap';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Child, builtCli, cleanEnv, runToEnd, type Exit, type Ran } from './fixtures/process.js';
import { ARM, get } from './fixtures/stack.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = builtCli();
const { version } = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
const PREFIX = 'arc-imds-proxy: ';
const TOKEN_QUERY = `/metadata/identity/oauth2/token?api-version=2018-02-01&resource=${encodeURIComponent(ARM)}`;

/** The test's environment, with no admin listener unless a test asks: its fixed default port would collide
 * between concurrent serves. */
const testEnv = (extra: Record<string, string> = {}) => cleanEnv({ ARC_IMDS_ADMIN_LISTEN: 'off', ...extra });

/** Start the CLI; it is killed in teardown whatever happens to the test. */
function start(t: Test, args: string[], env: NodeJS.ProcessEnv = testEnv()): Child {
  return new Child('cli', [process.execPath, CLI, ...args], { env, t });
}

/** Run the CLI to completion (killed after timeoutMs). */
function run(t: Test, args: string[], env: NodeJS.ProcessEnv = testEnv(), timeoutMs = 8000): Promise<Ran> {
  return runToEnd('cli', [process.execPath, CLI, ...args], { env, t, timeoutMs });
}

function stderrLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l !== '');
}

/** Stop a running child with a signal; resolves with its exit (a kill after timeoutMs fails the test). */
async function stop(s: Child, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 8000): Promise<Exit> {
  const { killed, ...exit } = await s.stop(signal, timeoutMs);
  if (killed) throw new Error(`did not exit within ${timeoutMs} ms of ${signal}`);
  return exit;
}

const portOf = (listening: Record<string, any>) => Number(/^127\.0\.0\.1:(\d+)$/.exec(String(listening.address))?.[1]);

const SERVE_FLAGS = [
  'listen',
  'upstream',
  'tokens-dir',
  'himds-api-version',
  'upstream-timeout',
  'request-timeout',
  'cache-max-entries',
  'min-remaining',
  'refresh-ratio',
  'refresh-before',
  'force-refresh-interval',
  'upstream-concurrency',
  'upstream-queue',
  'prefetch',
  'admin-listen',
  'readiness-interval',
  'readiness-resource',
  'shutdown-timeout',
  'allow-resource',
  'rate-limit',
  'concurrency-limit',
  'max-connections',
  'headers-timeout',
  'socket-mode',
  'socket-group',
  'workload',
  'allow-host-netns',
  'log-level',
];
const WEBHOOK_FLAGS = [
  'listen',
  'tls-cert',
  'tls-key',
  'tls-reload-interval',
  'image',
  'image-pull-policy',
  'socket-dir',
  'admin-port',
  'loopback-port',
  'sidecar-cpu-request',
  'sidecar-memory-request',
  'sidecar-memory-limit',
  'sidecar-log-level',
  'max-request-bytes',
  'log-level',
];
const EMULATOR_FLAGS = [
  'listen',
  'tokens-dir',
  'token-lifetime',
  'key-ttl',
  'latency',
  'fail-next',
  'fail-status',
  'startup-unavailable',
  'user-assigned',
  'log-level',
];
const DEMO_FLAGS = ['log-level'];
const NETNS_SETUP_FLAGS = ['address', 'allow-host-netns'];
const PROBE_FLAGS = ['url', 'timeout'];
const envOf = (flag: string) => `ARC_IMDS_${flag.toUpperCase().replaceAll('-', '_')}`;

t.test('--version and --help', async (t) => {
  for (const arg of ['--version', '-v']) {
    const r = await run(t, [arg]);
    t.equal(r.code, 0, `${arg}: exit 0`);
    t.equal(r.stdout, `${version}\n`, `${arg}: prints the package.json version`);
    t.equal(r.stderr, '');
  }
  for (const arg of ['--help', '-h', 'help']) {
    const r = await run(t, [arg]);
    t.equal(r.code, 0, `${arg}: exit 0`);
    t.match(r.stdout, /^Usage: arc-imds-proxy /, `${arg}: usage`);
    for (const command of ['serve', 'emulate-himds', 'demo']) t.match(r.stdout, new RegExp(`^  ${command} `, 'm'), `${arg}: lists ${command}`);
  }
});

t.test('each command documents every flag and its ARC_IMDS_* variable', async (t) => {
  const cases: [string, string[]][] = [
    ['serve', SERVE_FLAGS],
    ['emulate-himds', EMULATOR_FLAGS],
    ['demo', DEMO_FLAGS],
    ['netns-setup', NETNS_SETUP_FLAGS],
    ['probe', PROBE_FLAGS],
    ['webhook', WEBHOOK_FLAGS],
  ];
  const results = await Promise.all(cases.map(([command]) => run(t, [command, '--help'])));
  cases.forEach(([command, flags], i) => {
    const r = results[i]!;
    t.equal(r.code, 0, `${command} --help: exit 0`);
    t.equal(r.stderr, '');
    t.match(r.stdout, new RegExp(`^Usage: arc-imds-proxy ${command} \\[options\\]`), `${command}: usage line`);
    for (const flag of flags) {
      t.match(r.stdout, new RegExp(`^  --${flag}( [A-Z][A-Z0-9]*)? `, 'm'), `${command}: --${flag}`);
      t.match(r.stdout, new RegExp(`\\benv ${envOf(flag)}\\b`), `${command}: ${envOf(flag)}`);
    }
    const documented = [...r.stdout.matchAll(/^ {2}--([a-z-]+)/gm)].map((m) => m[1]).filter((f) => f !== 'help');
    t.same(documented, flags, `${command}: exactly these flags`);
    t.match(r.stdout, /^ {2}--help\b/m, `${command}: --help`);
  });
  t.match(results[0]!.stdout, /\$IMDS_ENDPOINT/, 'serve help names IMDS_ENDPOINT as the upstream default');
  t.match(results[0]!.stdout, /\(default 169\.254\.169\.254:80\)/, 'serve help shows the listen default');
});

t.test('unknown command and unknown flag', async (t) => {
  const unknown = await run(t, ['frobnicate']);
  t.equal(unknown.code, 2, 'unknown command: exit 2');
  t.same(stderrLines(unknown.stderr), [`${PREFIX}unknown command 'frobnicate' (try --help)`], 'one line');
  t.equal(unknown.stdout, '');

  const flag = await run(t, ['serve', '--bogus']);
  t.equal(flag.code, 2, 'unknown flag: exit 2');
  const lines = stderrLines(flag.stderr);
  t.equal(lines.length, 1, 'one line');
  t.match(lines[0], /^arc-imds-proxy: .*--bogus/);
  t.equal(flag.stdout, '', 'nothing started');

  const bare = await run(t, ['--bogus']);
  t.equal(bare.code, 2, 'unknown flag for the default command (serve): exit 2');
  t.match(bare.stderr, /--bogus/);

  const positional = await run(t, ['serve', 'extra']);
  t.equal(positional.code, 2, 'stray positional argument: exit 2');
  t.match(positional.stderr, /extra/);
});

t.test('bad configuration: every problem at once, one line each, exit 2', async (t) => {
  const [serve, emulator, fromEnv, serveLevel] = await Promise.all([
    run(t, ['serve', '--listen', 'nope', '--upstream', 'https://127.0.0.1:40342', '--tokens-dir', 'relative/tokens', '--log-level', 'loud']),
    run(t, ['emulate-himds', '--listen', 'localhost:1', '--fail-status', '200', '--user-assigned', 'maybe', '--key-ttl', '0']),
    run(t, ['serve'], testEnv({ ARC_IMDS_LOG_LEVEL: 'loud', ARC_IMDS_TOKENS_DIR: 'rel', ARC_IMDS_LISTEN: '127.0.0.1:0,bad' })),
    run(
      t,
      ['serve', '--listen', '127.0.0.1:8080', '--listen', '127.0.0.1:8080', '--request-timeout', '1s', '--upstream-timeout', '5s'],
      testEnv({ IMDS_ENDPOINT: 'https://localhost:40342' }),
    ),
  ]);

  t.equal(serve.code, 2, 'serve: exit 2');
  t.equal(serve.stdout, '', 'serve: nothing started');
  const lines = stderrLines(serve.stderr);
  t.equal(lines.length, 4, `serve: four problems, four lines:\n${serve.stderr}`);
  for (const l of lines) t.ok(l.startsWith(PREFIX), `prefixed: ${l}`);
  t.ok(
    lines.some((l) => /--listen: 'nope' is not HOST:PORT/.test(l)),
    'bad --listen',
  );
  t.ok(
    lines.some((l) => /--upstream: .*only http:\/\//.test(l)),
    'https upstream',
  );
  t.ok(
    lines.some((l) => /--tokens-dir: 'relative\/tokens' must be an absolute path/.test(l)),
    'relative tokens dir',
  );
  t.ok(
    lines.some((l) => /--log-level: 'loud' is not one of/.test(l)),
    'bad log level',
  );

  t.equal(emulator.code, 2, 'emulate-himds: exit 2');
  const emuLines = stderrLines(emulator.stderr);
  t.equal(emuLines.length, 4, `emulate-himds: four lines:\n${emulator.stderr}`);
  t.ok(
    emuLines.some((l) => /--listen: .*must be an IP address/.test(l)),
    'a name is not an address',
  );
  t.ok(
    emuLines.some((l) => /--fail-status: .*400-599/.test(l)),
    'fail-status range',
  );
  t.ok(
    emuLines.some((l) => /--user-assigned: 'maybe'/.test(l)),
    'user-assigned mode',
  );
  t.ok(
    emuLines.some((l) => /--key-ttl: .*greater than zero/.test(l)),
    'zero ttl',
  );

  t.equal(fromEnv.code, 2, 'from the environment: exit 2');
  const envLines = stderrLines(fromEnv.stderr);
  t.equal(envLines.length, 3, `three lines naming the variables:\n${fromEnv.stderr}`);
  t.ok(
    envLines.some((l) => l.startsWith(`${PREFIX}ARC_IMDS_LOG_LEVEL: `)),
    'ARC_IMDS_LOG_LEVEL named',
  );
  t.ok(
    envLines.some((l) => l.startsWith(`${PREFIX}ARC_IMDS_TOKENS_DIR: `)),
    'ARC_IMDS_TOKENS_DIR named',
  );
  t.ok(
    envLines.some((l) => l.startsWith(`${PREFIX}ARC_IMDS_LISTEN: 'bad'`)),
    'the bad one of two ARC_IMDS_LISTEN addresses',
  );

  t.equal(serveLevel.code, 2, 'serve-level checks: exit 2');
  const serveLines = stderrLines(serveLevel.stderr);
  t.equal(serveLines.length, 3, `three lines:\n${serveLevel.stderr}`);
  t.ok(
    serveLines.some((l) => /IMDS_ENDPOINT: .*only http:\/\//.test(l)),
    'bad IMDS_ENDPOINT',
  );
  t.ok(
    serveLines.some((l) => /--listen: 127\.0\.0\.1:8080 is given twice/.test(l)),
    'duplicate listener',
  );
  t.ok(
    serveLines.some((l) => /--request-timeout must not be shorter than --upstream-timeout/.test(l)),
    'timeouts',
  );
});

t.test('all problems at once, across option parsing and serve checks', async (t) => {
  const r = await run(
    t,
    ['serve', '--log-level', 'loud', '--request-timeout', '1s', '--upstream-timeout', '5s'],
    testEnv({ IMDS_ENDPOINT: 'https://localhost:40342' }),
  );
  t.equal(r.code, 2, 'exit 2');
  t.match(r.stderr, /--log-level: 'loud'/, 'the option problem is reported');
  t.equal(stderrLines(r.stderr).length, 3, `log level, IMDS_ENDPOINT and the timeouts together:\n${r.stderr}`);
});

t.test('an ARC_IMDS_LISTEN naming no address is a configuration error', async (t) => {
  const r = await run(t, ['serve', '--upstream', 'http://127.0.0.1:40342'], testEnv({ ARC_IMDS_LISTEN: ' , ' }), 5000);
  t.not(r.signal, 'SIGKILL', 'does not hang');
  t.equal(r.code, 2, `exit 2 (got ${r.code}), stderr: ${r.stderr}`);
  t.match(r.stderr, /ARC_IMDS_LISTEN/, 'the variable is named');
});

t.test('environment variables, precedence, and IMDS_ENDPOINT', async (t) => {
  // Two listeners from one comma-separated variable; the upstream from ARC_IMDS_UPSTREAM.
  const two = start(
    t,
    ['serve'],
    testEnv({
      ARC_IMDS_LISTEN: '127.0.0.1:0, 127.0.0.1:0',
      ARC_IMDS_UPSTREAM: 'http://127.0.0.1:40399',
      IMDS_ENDPOINT: 'http://localhost:40342',
    }),
  );
  // Flags win over the environment: the env values would fail (an absent address) or point elsewhere.
  const flagsWin = start(
    t,
    ['serve', '--listen', '127.0.0.1:0', '--upstream', 'http://127.0.0.1:40398'],
    testEnv({
      ARC_IMDS_LISTEN: '192.0.2.1:0',
      ARC_IMDS_UPSTREAM: 'http://127.0.0.1:40397',
    }),
  );
  // IMDS_ENDPOINT (set by the Arc agent) is the upstream when nothing else is; localhost becomes 127.0.0.1.
  const imdsEndpoint = start(t, ['serve', '--listen', '127.0.0.1:0'], testEnv({ IMDS_ENDPOINT: 'http://localhost:40396' }));
  const byDefault = start(t, ['serve', '--listen', '127.0.0.1:0'], testEnv());

  await two.logLine('listening', 8000, () => two.logLines('listening').length >= 2);
  const lines = two.logLines('listening');
  t.equal(lines.length, 2, 'two listeners');
  const ports = lines.map(portOf);
  t.ok(
    ports.every((p) => p > 0),
    `bound ports ${ports.join(', ')}`,
  );
  t.not(ports[0], ports[1], 'on two ports');
  for (const l of lines) t.equal(l.upstream, 'http://127.0.0.1:40399', 'ARC_IMDS_UPSTREAM wins over IMDS_ENDPOINT');
  for (const port of ports) {
    const probe = await get(`http://127.0.0.1:${port}/metadata/identity/oauth2/token`, {});
    t.equal(probe.status, 400, `listener ${port} answers`);
  }

  const fw = await flagsWin.logLine('listening');
  t.match(fw.address, /^127\.0\.0\.1:\d+$/, '--listen wins over ARC_IMDS_LISTEN');
  t.equal(fw.upstream, 'http://127.0.0.1:40398', '--upstream wins over ARC_IMDS_UPSTREAM');
  t.equal(flagsWin.logLines('listening').length, 1);

  const ie = await imdsEndpoint.logLine('listening');
  t.equal(ie.upstream, 'http://127.0.0.1:40396', 'IMDS_ENDPOINT with localhost -> 127.0.0.1');
  const def = await byDefault.logLine('listening');
  t.equal(def.upstream, 'http://127.0.0.1:40342', 'default upstream is HIMDS on IPv4 loopback');
  t.equal(def.tokensDir, '/var/opt/azcmagent/tokens', 'default tokens dir');

  // A round trip above proves each child is in its event loop with its signal handlers installed.
  await get(`http://127.0.0.1:${portOf(fw)}/`, {});
  await get(`http://127.0.0.1:${portOf(ie)}/`, {});
  await get(`http://127.0.0.1:${portOf(def)}/`, {});
  const exits = await Promise.all([stop(two, 'SIGTERM'), stop(flagsWin, 'SIGTERM'), stop(imdsEndpoint, 'SIGINT'), stop(byDefault, 'SIGTERM')]);
  t.same(
    exits,
    [
      { code: 0, signal: null },
      { code: 0, signal: null },
      { code: 0, signal: null },
      { code: 0, signal: null },
    ],
    'SIGTERM and SIGINT -> exit 0',
  );
  for (const s of [two, flagsWin, imdsEndpoint, byDefault]) t.equal(s.stderr, '', 'nothing on stderr');
});

t.test('serve in front of emulate-himds serves a token end to end', async (t) => {
  const tokensDir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-cli-test-'));
  t.teardown(() => rm(tokensDir, { recursive: true, force: true }));
  const emulator = start(t, ['emulate-himds', '--listen', '127.0.0.1:0', '--tokens-dir', tokensDir, '--user-assigned', 'echo']);
  const emuLine = await emulator.logLine('HIMDS emulator listening');
  const emuUrl = String(emuLine.url);
  t.match(emuUrl, /^http:\/\/127\.0\.0\.1:\d+$/, 'emulator URL from its log line');
  t.equal(emuLine.tokensDir, tokensDir);

  const proxy = start(t, ['serve', '--listen', '127.0.0.1:0', '--upstream', emuUrl, '--tokens-dir', tokensDir]);
  const listening = await proxy.logLine('listening');
  t.equal(listening.upstream, emuUrl);
  t.equal(listening.tokensDir, tokensDir);
  const base = `http://127.0.0.1:${portOf(listening)}`;

  const before = Math.floor(Date.now() / 1000);
  const token = await get(`${base}${TOKEN_QUERY}`);
  t.equal(token.status, 200, `token: ${token.text}`);
  t.match(token.headers['content-type'], /^application\/json; charset=utf-8$/);
  t.equal(token.json.resource, ARM, 'resource echoes the request');
  t.equal(token.json.token_type, 'Bearer');
  for (const [k, v] of Object.entries(token.json as Record<string, unknown>)) t.type(v, 'string', `${k} is a string`);
  const expiresIn = Number(token.json.expires_in);
  t.ok(expiresIn > 86_000 && expiresIn <= 86_400, `expires_in ~24 h (${expiresIn})`);
  t.ok(Number(token.json.expires_on) >= before + 86_000, 'expires_on in ~24 h');
  const claims = JSON.parse(Buffer.from(String(token.json.access_token).split('.')[1]!, 'base64url').toString('utf8'));
  t.equal(claims.aud, ARM, 'a token minted by the emulator for the resource');

  const clientId = '0f5d9b2c-1111-4222-8333-944455556666';
  const ua = await get(`${base}${TOKEN_QUERY}&client_id=${clientId}`);
  t.equal(ua.status, 200, `user-assigned: ${ua.text}`);
  t.equal(ua.json.client_id, clientId);

  const compute = await get(`${base}/metadata/instance/compute?api-version=2021-02-01`);
  t.equal(compute.status, 200);
  t.match(compute.json.resourceId, /Microsoft\.HybridCompute\/machines/);

  const stats = await get(`${emuUrl}/__emulator/stats`, {});
  t.ok(stats.json.challenges >= 1, 'the proxy answered the key-file challenge');
  t.ok(stats.json.tokensIssued >= 1);
  t.equal(stats.json.rejectedKeys, 0);
  t.equal(stats.json.keysOutstanding, 0);

  t.same(await stop(proxy), { code: 0, signal: null }, 'serve: SIGTERM -> exit 0');
  t.same(await stop(emulator), { code: 0, signal: null }, 'emulate-himds: SIGTERM -> exit 0');
  t.same(await readdir(tokensDir), [], 'no key files left behind');
  t.equal(proxy.stderr, '');
  t.equal(emulator.stderr, '');
});

t.test('listen failures', async (t) => {
  const absent = '192.0.2.1';
  const local = Object.values(os.networkInterfaces())
    .flat()
    .some((i) => i?.address === absent);
  t.test('an address not on this host -> exit 2 with the fix', { skip: local ? `${absent} is configured on this host` : false }, async (t) => {
    // Binding to an absent address fails in the kernel: no packet is ever sent.
    const r = await run(t, ['serve', '--listen', `${absent}:0`, '--upstream', 'http://127.0.0.1:40342']);
    t.equal(r.code, 2);
    const lines = stderrLines(r.stderr);
    t.equal(lines.length, 1, 'one line');
    t.match(lines[0], /192\.0\.2\.1 is not an address/);
    t.match(lines[0], `ip addr add ${absent}/32 dev lo`);
    t.equal(r.stdout, '', 'never listening');
  });

  t.test('address in use -> exit 1', async (t) => {
    const blocker = net.createServer();
    await new Promise<void>((resolve, reject) => {
      blocker.once('error', reject);
      blocker.listen(0, '127.0.0.1', () => resolve());
    });
    t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
    const port = (blocker.address() as net.AddressInfo).port;
    const unused = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-cli-test-'));
    t.teardown(() => rm(unused, { recursive: true, force: true }));
    const [serve, second, emulator] = await Promise.all([
      run(t, ['serve', '--listen', `127.0.0.1:${port}`, '--upstream', 'http://127.0.0.1:40342']),
      // The first listener starts, the second fails: the process still exits 1.
      run(t, ['serve', '--listen', '127.0.0.1:0', '--listen', `127.0.0.1:${port}`, '--upstream', 'http://127.0.0.1:40342']),
      run(t, ['emulate-himds', '--listen', `127.0.0.1:${port}`, '--tokens-dir', unused]),
    ]);
    t.equal(serve.code, 1, 'serve: exit 1');
    t.same(stderrLines(serve.stderr), [`${PREFIX}cannot listen on 127.0.0.1:${port}: the address is already in use by another process`]);
    t.equal(second.code, 1, 'serve with two listeners: exit 1');
    t.match(second.stderr, `cannot listen on 127.0.0.1:${port}`);
    t.equal(emulator.code, 1, 'emulate-himds: exit 1');
    t.match(emulator.stderr, /EADDRINUSE|in use/);
    t.equal(stderrLines(emulator.stderr).length, 1, 'one line');
  });
});
