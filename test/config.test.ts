// Configuration parsing in process: value parsers, precedence, and every problem reported at once.
import t from 'tap';
import { parseServe } from '../src/commands/serve.js';
import { ConfigError } from '../src/options/parser.js';
import { parseDuration, parseListenAddress, parseUpstream } from '../src/values/parsers.js';

const problemsOf = (argv: string[], env: NodeJS.ProcessEnv = {}): string[] => {
  try {
    parseServe(argv, env);
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return [...err.problems];
    throw err;
  }
};

t.test('durations', async (t) => {
  t.equal(parseDuration('300'), 300_000, 'plain seconds');
  t.equal(parseDuration('300s'), 300_000);
  t.equal(parseDuration('5m'), 300_000);
  t.equal(parseDuration('1h'), 3_600_000);
  t.equal(parseDuration('250ms'), 250);
  t.equal(parseDuration('1.5s'), 1500);
  for (const bad of ['', 'm', '5 m', '-5s', '5d', '1e3']) t.throws(() => parseDuration(bad), `'${bad}' refused`);
  t.equal(parseDuration(`${'24d'.replace('d', '')}h`), 86_400_000);
  t.throws(() => parseDuration('600h'), /too long \(at most 24 days\)/, 'longer than a Node timer can hold');
});

t.test('addresses', async (t) => {
  t.same(parseListenAddress('127.0.0.1:0'), { kind: 'tcp', host: '127.0.0.1', port: 0 });
  t.same(parseListenAddress('[::1]:8080'), { kind: 'tcp', host: '::1', port: 8080 });
  t.same(parseListenAddress('unix:/run/arc-imds/imds.sock'), { kind: 'unix', path: '/run/arc-imds/imds.sock' });
  t.same(parseUpstream('unix:/run/arc-imds/imds.sock'), { kind: 'unix', path: '/run/arc-imds/imds.sock', origin: 'http://localhost' });
  for (const bad of [
    'localhost:80',
    '127.0.0.1',
    '127.0.0.1:65536',
    '1.2.3.256:80',
    ':80',
    'unix:run/x.sock',
    `unix:/${'x'.repeat(107)}`,
    'unix:/run/dir/',
  ]) {
    t.throws(() => parseListenAddress(bad), `listen '${bad}' refused`);
  }
  t.equal(parseUpstream('http://localhost:40342').origin, 'http://127.0.0.1:40342', 'localhost is IPv4 loopback');
  t.equal(parseUpstream('http://127.0.0.1:40342/').origin, 'http://127.0.0.1:40342');
  for (const bad of ['https://127.0.0.1:1', 'http://127.0.0.1:1/path', 'http://u:p@127.0.0.1:1', 'http://127.0.0.1:1?q', 'nope']) {
    t.throws(() => parseUpstream(bad), `upstream '${bad}' refused`);
  }
});

t.test('serve defaults', async (t) => {
  // The defaults alone describe the host namespace answering 169.254.169.254: refused (below).
  const { config } = parseServe(['--allow-host-netns'], {});
  t.same(config.listen, [{ kind: 'tcp', host: '169.254.169.254', port: 80 }]);
  t.equal(config.upstream.origin, 'http://127.0.0.1:40342');
  t.equal(config.tokensDir, '/var/opt/azcmagent/tokens');
  t.equal(config.minRemainingMs, 300_000);
  t.equal(config.refreshBeforeMs, 600_000);
  t.equal(config.refreshRatio, 0.5);
  t.equal(config.forceRefreshIntervalMs, 30_000);
  t.equal(config.cacheMaxEntries, 1000);
  t.equal(config.upstreamConcurrency, 16);
  t.same(config.prefetch, []);
  t.equal(config.socketMode, 0o660);
  t.equal(config.socketGroup, undefined);
  t.equal(config.allowHostNetns, true);
  t.ok(Object.isFrozen(config), 'frozen');
});

t.test('precedence: flag, then ARC_IMDS_*, then IMDS_ENDPOINT, then default', async (t) => {
  const env = {
    ARC_IMDS_LISTEN: '127.0.0.1:0',
    ARC_IMDS_UPSTREAM: 'http://127.0.0.1:2',
    IMDS_ENDPOINT: 'http://localhost:3',
    ARC_IMDS_PREFETCH: 'a, b,,',
  };
  t.equal(parseServe(['--upstream', 'http://127.0.0.1:1'], env).config.upstream.origin, 'http://127.0.0.1:1');
  t.equal(parseServe([], env).config.upstream.origin, 'http://127.0.0.1:2');
  t.equal(parseServe([], { ARC_IMDS_LISTEN: '127.0.0.1:0', IMDS_ENDPOINT: 'http://localhost:3' }).config.upstream.origin, 'http://127.0.0.1:3');
  t.equal(parseServe(['--listen', '127.0.0.1:0'], { ARC_IMDS_ALLOW_HOST_NETNS: 'yes' }).config.allowHostNetns, true, 'switches from the environment');
  t.same(parseServe([], env).config.prefetch, ['a', 'b'], 'repeatable options from the environment are comma-separated');
  t.same(parseServe(['--prefetch', 'x', '--prefetch', 'y'], env).config.prefetch, ['x', 'y']);
});

t.test('every problem at once', async (t) => {
  const problems = problemsOf(
    [
      '--listen',
      '127.0.0.1:0',
      '--refresh-ratio',
      '1.5',
      '--cache-max-entries',
      '0',
      '--min-remaining',
      '20m',
      '--prefetch',
      'a\u0007b',
      '--upstream-concurrency',
      'x',
    ],
    { IMDS_ENDPOINT: 'ftp://x' },
  );
  t.match(problems, [
    /--cache-max-entries: '0' is not between 1 and/,
    /--refresh-ratio: '1.5' is not a fraction/,
    /--upstream-concurrency/,
    /--prefetch: 'a\\u0007b' is not a resource/,
    /IMDS_ENDPOINT: 'ftp:\/\/x': only http:\/\//,
    /--refresh-before must be longer than --min-remaining/,
  ]);
  t.equal(problems.length, 6, problems.join('\n'));
  t.same(problemsOf(['--listen', '127.0.0.1:0', '--min-remaining', '10m']), [
    '--refresh-before must be longer than --min-remaining, or tokens would stop being served before they are refreshed',
  ]);
  t.same(problemsOf(['--listen', '127.0.0.1:0', '--upstream', 'http://127.0.0.1:1', '--upstream', 'http://127.0.0.1:2']), [
    '--upstream: given 2 times; it takes one value',
  ]);
  t.same(problemsOf([], { ARC_IMDS_LISTEN: ' , ' }), ['ARC_IMDS_LISTEN: no value given']);
  t.match(problemsOf(['positional']), [/^Unexpected argument 'positional'/]);
});

t.test('never answer 169.254.169.254 in the host network namespace', async (t) => {
  const refused = problemsOf([]);
  t.equal(refused.length, 1, 'the bare defaults are refused');
  t.match(refused[0], /--listen 169\.254\.169\.254: refusing, because the upstream is on loopback .* Arc onboarding/);
  t.equal(problemsOf(['--upstream', 'http://127.0.0.2:40342']).length, 1, 'any loopback upstream');
  t.same(problemsOf(['--upstream', 'unix:/run/arc-imds/imds.sock']), [], 'a sidecar (relay upstream over a socket) may');
  t.same(problemsOf(['--listen', 'unix:/run/arc-imds/imds.sock']), [], 'a relay on a socket may');
  t.same(problemsOf(['--allow-host-netns']), [], 'the override, for a private namespace');
  t.same(problemsOf(['--listen', 'unix:/run/a.sock', '--upstream', 'unix:/run/a.sock']), [
    '--upstream /run/a.sock: the same socket as a --listen address',
  ]);
});

t.test('socket options', async (t) => {
  const base = ['--listen', 'unix:/run/a.sock'];
  t.equal(parseServe([...base, '--socket-mode', '600'], {}).config.socketMode, 0o600);
  t.equal(parseServe([...base, '--socket-group', 'root'], {}).config.socketGroup, 0, 'a group name from /etc/group');
  t.equal(parseServe([...base, '--socket-group', '4242'], {}).config.socketGroup, 4242);
  t.match(problemsOf([...base, '--socket-mode', '0777', '--socket-group', 'no-such-group-here']), [/execute bits/, /no such group/]);
  t.match(problemsOf([...base, '--socket-mode', '999']), [/not an octal file mode/]);
});

t.test('probe follows ARC_IMDS_ADMIN_LISTEN unless told otherwise', async (t) => {
  const { parseProbe } = await import('../src/commands/probe.js');
  t.equal(parseProbe([], {}).config.url, 'http://127.0.0.1:9464/readyz', 'the default admin address');
  t.equal(parseProbe([], { ARC_IMDS_ADMIN_LISTEN: '0.0.0.0:9500' }).config.url, 'http://127.0.0.1:9500/readyz', 'all interfaces: ask loopback');
  t.equal(parseProbe([], { ARC_IMDS_ADMIN_LISTEN: '[::]:9500' }).config.url, 'http://[::1]:9500/readyz');
  t.equal(
    parseProbe(['--url', 'http://127.0.0.1:1'], { ARC_IMDS_ADMIN_LISTEN: '0.0.0.0:9500' }).config.url,
    'http://127.0.0.1:1/readyz',
    '--url wins',
  );
  t.equal(
    parseProbe([], { ARC_IMDS_URL: 'http://127.0.0.1:2/readyz', ARC_IMDS_ADMIN_LISTEN: '0.0.0.0:9500' }).config.url,
    'http://127.0.0.1:2/readyz',
  );
  t.throws(() => parseProbe([], { ARC_IMDS_ADMIN_LISTEN: 'unix:/run/a.sock' }), /cannot reach a unix socket/);
});
