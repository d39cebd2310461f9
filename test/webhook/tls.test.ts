// Certificate rotation without a restart: the files are replaced, and a new TLS connection gets the new
// certificate; a half-written pair is refused (the previous one kept) until the key matches. And the CLI:
// help, missing or unreadable certificate files (exit 2, a message naming them), a real `webhook` process
// answering over HTTPS and stopping on SIGTERM. Certificates from the real openssl CLI; all on 127.0.0.1.
import { spawn } from 'node:child_process';
import { copyFileSync, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { X509Certificate } from 'node:crypto';
import t from 'tap';
import { ConfigError } from '../../src/options/parser.js';
import { createLogger } from '../../src/observability/log.js';
import { parseWebhook } from '../../src/commands/webhook.js';
import { startWebhook } from '../../src/webhook/server.js';
import { httpsRequest, makePki } from '../fixtures/webhook.js';

const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));
const pki = makePki();
t.teardown(() => pki.remove());
const first = pki.issue('first');
const second = pki.issue('second');
const fingerprint = (pem: Buffer) => new X509Certificate(pem).fingerprint256;
const serving = { cert: path.join(pki.dir, 'tls.crt'), key: path.join(pki.dir, 'tls.key') };
copyFileSync(first.cert, serving.cert);
copyFileSync(first.key, serving.key);

const args = (extra: string[] = []) => [
  '--listen',
  '127.0.0.1:0',
  '--tls-cert',
  serving.cert,
  '--tls-key',
  serving.key,
  '--image',
  'arc-imds-proxy',
  ...extra,
];

t.test('rotation: new files, a new connection sees the new certificate, no restart', async (t) => {
  const { config } = parseWebhook(args(['--tls-reload-interval', '100ms']), {});
  const logs: any[] = [];
  const webhook = await startWebhook(config, createLogger('info', { write: (l: string) => void logs.push(JSON.parse(l)) }));
  t.teardown(() => webhook.close());
  const health = () => httpsRequest(`${webhook.url}/healthz`, pki.ca);
  const waitFor = async (want: string) => {
    for (let i = 0; i < 100; i++) {
      const reply = await health();
      if (reply.fingerprint256 === want) return reply;
      await new Promise((r) => setTimeout(r, 50));
    }
    return health();
  };
  t.equal((await health()).fingerprint256, fingerprint(first.pem), 'serves the first certificate');

  // Half-rotated: the new certificate with the old key. Refused; the first one is still served.
  copyFileSync(second.cert, serving.cert);
  await webhook.reloadCertificate();
  const during = await health();
  t.equal(during.status, 200, 'still answering');
  t.equal(during.fingerprint256, fingerprint(first.pem), 'a certificate without its key is not taken');
  t.ok(
    logs.some((l) => l.level === 'warn' && /not the private key of/.test(l.problem)),
    'and the mismatch is logged',
  );

  copyFileSync(second.key, serving.key);
  const after = await waitFor(fingerprint(second.pem));
  t.equal(after.fingerprint256, fingerprint(second.pem), 'by the timer alone: the second certificate on a new connection');
  t.equal(after.status, 200);
  t.ok(
    logs.some((l) => l.msg === 'serving certificate reloaded' && l.certificate.fingerprint256 === fingerprint(second.pem)),
    'the reload is logged',
  );
  t.notOk(JSON.stringify(logs).includes('PRIVATE KEY'), 'the key is never logged');

  copyFileSync(first.cert, serving.cert);
  copyFileSync(first.key, serving.key);
  t.equal((await waitFor(fingerprint(first.pem))).fingerprint256, fingerprint(first.pem), 'and back again');
});

t.test('HTTPS only: a plain HTTP request gets no answer', async (t) => {
  const { config } = parseWebhook(args(), {});
  const webhook = await startWebhook(config, createLogger('silent'));
  t.teardown(() => webhook.close());
  const outcome = await new Promise<string>((resolve) => {
    const req = http.request({ host: '127.0.0.1', port: webhook.port, path: '/healthz', agent: false }, (res) =>
      resolve(`answered ${res.statusCode}`),
    );
    req.on('error', (err) => resolve(`error ${(err as NodeJS.ErrnoException).code ?? err.message}`));
    req.end();
  });
  t.notMatch(outcome, /^answered 200/, `plain HTTP is not served (${outcome})`);
  t.equal((await httpsRequest(`${webhook.url}/healthz`, pki.ca)).status, 200, 'HTTPS is');
});

t.test('options: what is required, and bad certificate files stop it with the file named', async (t) => {
  t.throws(
    () => parseWebhook([], {}),
    new ConfigError([
      '--tls-cert is required (or ARC_IMDS_TLS_CERT)',
      '--tls-key is required (or ARC_IMDS_TLS_KEY)',
      '--image is required (or ARC_IMDS_IMAGE)',
    ]),
    'all three required options at once',
  );
  const fromEnv = parseWebhook([], {
    ARC_IMDS_TLS_CERT: 'a.crt',
    ARC_IMDS_TLS_KEY: 'a.key',
    ARC_IMDS_IMAGE: 'x/y:1',
    ARC_IMDS_LISTEN: '127.0.0.1:9443',
  }).config;
  t.match(
    fromEnv,
    { tlsCert: 'a.crt', tlsKey: 'a.key', image: 'x/y:1', listen: { host: '127.0.0.1', port: 9443 }, adminPort: 9464 },
    'from ARC_IMDS_* variables',
  );
  const problemsOf = (argv: string[]) => {
    try {
      parseWebhook(argv, {});
      return [];
    } catch (err) {
      return (err as ConfigError).problems;
    }
  };
  t.match(
    problemsOf(args(['--loopback-port', '9464', '--sidecar-memory-limit', 'big', '--image-pull-policy', 'Sometimes'])),
    [
      /--image-pull-policy: 'Sometimes' is not one of Always, IfNotPresent, Never/,
      /--sidecar-memory-limit: 'big' is not a Kubernetes quantity/,
      /--loopback-port must differ from --admin-port/,
    ],
    'bad values, each named',
  );
  t.match(
    problemsOf(['--tls-cert', '', '--tls-key', 'k', '--image', 'not an image', '--socket-dir', 'run/arc-imds', '--tls-reload-interval', '10ms']),
    [
      /--tls-cert: '' is not a file name/,
      /--tls-reload-interval: '10ms' is too short/,
      /--image: 'not an image' is not an image reference/,
      /--socket-dir: 'run\/arc-imds' must be an absolute path/,
    ],
    'file, interval, image and directory checked',
  );
  t.equal(parseWebhook(args(['--socket-dir', '/run//arc-imds/']), {}).config.socketDir, '/run/arc-imds', '--socket-dir normalised');
  t.match(
    problemsOf(['--listen', 'webhook:443', '--tls-cert', 'c', '--tls-key', 'k', '--image', 'i']),
    [/host must be an IP address/],
    '--listen HOST:PORT',
  );

  const start = (cert: string, key: string) =>
    startWebhook(parseWebhook(['--listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key, '--image', 'i'], {}).config, createLogger('silent'));
  await t.rejects(
    start(path.join(pki.dir, 'missing.crt'), first.key),
    { name: 'WebhookTlsError', message: /cannot read .*missing\.crt: ENOENT/ },
    'a missing file',
  );
  await t.rejects(
    start(first.key, first.key),
    { name: 'WebhookTlsError', message: /first\.key: not a PEM certificate/ },
    'a key where the certificate should be',
  );
  await t.rejects(
    start(first.cert, second.key),
    { name: 'WebhookTlsError', message: /second\.key: not the private key of .*first\.crt/ },
    'a key that does not match',
  );
});

t.test('the CLI: help, exit 2 on bad options, a real process that answers and stops on SIGTERM', async (t) => {
  const run = (argv: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [CLI, 'webhook', ...argv], { env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c) => (stdout += c));
      child.stderr.on('data', (c) => (stderr += c));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  const help = await run(['--help']);
  t.equal(help.code, 0, '--help: exit 0');
  for (const flag of ['--listen HOST:PORT', '--tls-cert FILE', '--tls-key FILE', '--image IMAGE', 'env ARC_IMDS_TLS_CERT'])
    t.match(help.stdout, flag, `help shows ${flag}`);
  const bad = await run(['--tls-cert', path.join(pki.dir, 'nope.crt'), '--tls-key', first.key, '--image', 'i', '--listen', '127.0.0.1:0']);
  t.equal(bad.code, 2, 'an unreadable certificate: exit 2');
  t.match(bad.stderr, /^arc-imds-proxy: --tls-cert\/--tls-key: cannot read .*nope\.crt: ENOENT/, bad.stderr.trim());

  const child = spawn(process.execPath, [CLI, 'webhook', ...args()], { env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (c) => {
      out += c;
      const m = /"url":"(https:\/\/127\.0\.0\.1:\d+)"/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`exited ${code}: ${out}`)));
  });
  const reply = await httpsRequest(`${url}/healthz`, pki.ca);
  t.equal(reply.status, 200, `the process answers GET /healthz on ${url}`);
  t.equal(reply.fingerprint256, new X509Certificate(readFileSync(serving.cert)).fingerprint256, 'with the certificate given');
  child.kill('SIGTERM');
  const [code] = await once(child, 'exit');
  t.equal(code, 0, 'SIGTERM: exit 0');
});
