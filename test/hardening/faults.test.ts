// Fault injection: a HIMDS that behaves until told to misbehave. For every fault: what the client gets, that
// the process stays up, that the token cached before the fault keeps being served, and the metric and log
// line an operator would see.
import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { get, startStack, tokenPath } from '../fixtures/stack.js';

type Fault =
  | 'none'
  | 'refuse'
  | 'reset'
  | 'reset-mid-body'
  | 'hang'
  | 'non-json'
  | 'huge'
  | 'html'
  | 'missing-fields'
  | 'expired'
  | 'far-future'
  | 'no-realm'
  | 'second-401'
  | 'flap'
  | 'key-deleted'
  | 'key-symlink'
  | 'key-unreadable'
  | 'garbage-http';

/** A scripted HIMDS on a raw TCP server (so it can also speak broken HTTP). */
async function misbehavingHimds(tokensDir: string) {
  let fault: Fault = 'none';
  let authorized = 0;
  const keys = new Set<string>();
  const server = http.createServer(async (req, res) => {
    const auth = req.headers.authorization;
    const reply = (status: number, body: string, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
      res.end(body);
    };
    const token = (expiresOn: number) =>
      JSON.stringify({
        access_token: `tok-${randomBytes(6).toString('hex')}`,
        expires_on: String(expiresOn),
        expires_in: '3600',
        resource: '',
        token_type: 'Bearer',
      });
    const now = Math.floor(Date.now() / 1000);
    if (!auth || fault === 'second-401') {
      if (fault === 'no-realm') return reply(401, '{"error":"unauthorized"}');
      const key = randomBytes(16).toString('hex');
      const file = path.join(tokensDir, `${randomUUID()}.key`);
      await writeFile(file, key, { mode: 0o640 });
      keys.add(key);
      if (fault === 'key-deleted') await unlink(file);
      if (fault === 'key-symlink') {
        await unlink(file);
        await symlink('/etc/hostname', file);
      }
      if (fault === 'key-unreadable') await chmod(file, 0o000);
      return reply(401, '{}', { 'Www-Authenticate': `Basic realm=${file}` });
    }
    if (!keys.delete(auth.slice('Basic '.length))) return reply(401, '{}');
    authorized++;
    switch (fault) {
      case 'hang':
        return; // never answers
      case 'reset':
        return req.socket.destroy();
      case 'reset-mid-body':
        res.writeHead(200, { 'Content-Length': '500' });
        res.write('{"access_token":"');
        return setTimeout(() => req.socket.destroy(), 10);
      case 'non-json':
        return reply(200, 'this is not json');
      case 'huge':
        return reply(200, JSON.stringify({ access_token: 'x'.repeat(200_000), expires_on: String(now + 3600) }));
      case 'html':
        return reply(200, '<html><body>Login</body></html>', { 'Content-Type': 'text/html' });
      case 'missing-fields':
        return reply(200, '{"token_type":"Bearer"}');
      case 'expired':
        return reply(200, token(now - 10));
      case 'far-future':
        return reply(200, token(now + 10 * 365 * 86400));
      // Every other authorized request fails: half of all attempts.
      case 'flap':
        return authorized % 2 === 1 ? reply(503, '{"error":"busy"}') : reply(200, token(now + 3600));
      default:
        return reply(200, token(now + 3600));
    }
  });
  // 'garbage-http' and 'refuse' are below the HTTP server.
  const sockets = new Set<net.Socket>();
  const front = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    if (fault === 'refuse') return socket.destroy();
    if (fault === 'garbage-http') {
      socket.end('SMTP READY\r\n\r\n');
      return;
    }
    server.emit('connection', socket);
  });
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(front.address() as net.AddressInfo).port}`,
    // A new fault applies to new connections too: drop the kept-alive ones.
    set: (f: Fault) => {
      fault = f;
      for (const socket of sockets) socket.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        front.close(() => resolve());
      }),
  };
}

interface Case {
  fault: Fault;
  status: number | number[];
  body: RegExp;
  /** Prometheus sample that must have grown. */
  metric: RegExp;
  log: RegExp;
}

const CASES: Case[] = [
  {
    fault: 'refuse',
    status: 503,
    body: /temporarily_unavailable.*(reset|refused)/,
    metric: /arc_imds_upstream_requests_total\{leg="challenge",outcome="(reset|refused|error)"\}/,
    log: /upstream token attempt failed; retrying/,
  },
  {
    fault: 'garbage-http',
    status: [502, 503],
    body: /upstream/,
    metric: /arc_imds_upstream_requests_total\{leg="challenge",outcome="(error|reset)"\}/,
    log: /request failed/,
  },
  { fault: 'reset', status: 503, body: /reset/, metric: /arc_imds_upstream_requests_total\{leg="token",outcome="reset"\}/, log: /retrying/ },
  {
    fault: 'reset-mid-body',
    status: 503,
    body: /reset|in time/,
    metric: /arc_imds_upstream_requests_total\{leg="token",outcome="(reset|timeout)"\}/,
    log: /retrying/,
  },
  {
    fault: 'hang',
    status: 503,
    body: /in time/,
    metric: /arc_imds_upstream_requests_total\{leg="token",outcome="timeout"\}/,
    log: /no answer from .* in time/,
  },
  {
    fault: 'non-json',
    status: 502,
    body: /not a JSON object/,
    metric: /arc_imds_upstream_requests_total\{leg="token",outcome="2xx"\}/,
    log: /upstream_bad_response/,
  },
  {
    fault: 'huge',
    status: 502,
    body: /larger than 65536 bytes/,
    metric: /arc_imds_upstream_requests_total\{leg="token",outcome="error"\}/,
    log: /upstream_bad_response/,
  },
  { fault: 'html', status: 502, body: /not a JSON object/, metric: /outcome="2xx"/, log: /upstream_bad_response/ },
  { fault: 'missing-fields', status: 502, body: /no access_token/, metric: /outcome="2xx"/, log: /upstream_bad_response/ },
  { fault: 'expired', status: 502, body: /already expired/, metric: /outcome="2xx"/, log: /already expired/ },
  { fault: 'far-future', status: 502, body: /absurdly far ahead/, metric: /outcome="2xx"/, log: /absurdly far ahead/ },
  {
    fault: 'no-realm',
    status: 500,
    body: /without a (single Www-Authenticate header|Basic realm)/,
    metric: /arc_imds_challenge_failures_total\{reason="bad_realm"\}/,
    log: /challenge_failed/,
  },
  {
    fault: 'second-401',
    status: 500,
    body: /rejected the key/,
    metric: /arc_imds_challenge_failures_total\{reason="key_rejected"\}/,
    log: /rejected the key/,
  },
  {
    fault: 'key-deleted',
    status: 500,
    body: /does not exist/,
    metric: /arc_imds_challenge_failures_total\{reason="missing"\}/,
    log: /does not exist/,
  },
  { fault: 'key-symlink', status: 500, body: /symbolic link/, metric: /arc_imds_challenge_failures_total\{reason="symlink"\}/, log: /symbolic link/ },
];
// A key root cannot be denied: only meaningful unprivileged; as root the file mode is no obstacle.
if (process.getuid?.() !== 0) {
  CASES.push({ fault: 'key-unreadable', status: 500, body: /permission denied/, metric: /reason="permission"/, log: /permission denied/ });
}

t.test('every fault: a defined answer, the process up, the cached token still served, a metric and a log line', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-faults-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const himds = await misbehavingHimds(dir);
  t.teardown(himds.close);
  const stack = await startStack({
    upstream: himds.url,
    proxy: {
      tokensDir: dir,
      upstreamTimeoutMs: 300,
      requestTimeoutMs: 2000,
      adminListen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
      readinessIntervalMs: 3_600_000,
    },
  });
  t.teardown(stack.close);
  const admin = stack.proxy.adminAddress!;
  const adminUrl = `http://127.0.0.1:${admin.kind === 'tcp' ? admin.port : 0}`;

  const cached = await stack.get(tokenPath('api-version=2018-02-01&resource=https://cached.example'));
  t.equal(cached.status, 200, 'a token is cached before the faults');

  let n = 0;
  for (const c of CASES) {
    himds.set(c.fault);
    const logsBefore = stack.logs.length;
    const metricsBefore = (await get(`${adminUrl}/metrics`, {})).text;
    const reply = await stack.get(tokenPath(`api-version=2018-02-01&resource=https://fresh-${n++}.example`));
    t.ok(([] as number[]).concat(c.status).includes(reply.status), `${c.fault}: status ${c.status} (got ${reply.status})`);
    t.match(JSON.stringify(reply.json), c.body, `${c.fault}: an IMDS-shaped body that says what happened`);
    t.type(reply.json?.error, 'string', `${c.fault}: JSON with an error code`);
    const again = await stack.get(tokenPath('api-version=2018-02-01&resource=https://cached.example'));
    t.equal(again.json?.access_token, cached.json.access_token, `${c.fault}: the cached token is still served`);
    const metricsAfter = (await get(`${adminUrl}/metrics`, {})).text;
    const grew = metricsAfter.split('\n').some((line) => {
      if (!c.metric.test(line)) return false;
      const name = line.slice(0, line.lastIndexOf(' '));
      const before = metricsBefore.split('\n').find((l) => l.startsWith(`${name} `));
      return Number(line.split(' ').pop()) > Number(before?.split(' ').pop() ?? 0);
    });
    t.ok(grew, `${c.fault}: metric ${c.metric} grew`);
    t.match(stack.logs.slice(logsBefore).join(''), c.log, `${c.fault}: log line`);
    t.equal((await get(`${adminUrl}/healthz`, {})).status, 200, `${c.fault}: the process is up`);
  }

  himds.set('none');
  t.equal((await stack.get(tokenPath('api-version=2018-02-01&resource=https://after.example'))).status, 200, 'recovered once the upstream behaves');
});

t.test('503 at start, then recovery; 50% flapping is absorbed by retries', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-flap-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const himds = await misbehavingHimds(dir);
  t.teardown(himds.close);
  const stack = await startStack({ upstream: himds.url, proxy: { tokensDir: dir } });
  t.teardown(stack.close);
  himds.set('flap');
  const replies = [];
  for (let i = 0; i < 20; i++) replies.push(await stack.get(tokenPath(`api-version=2018-02-01&resource=https://flap-${i}.example`)));
  t.same(
    replies.map((r) => r.status),
    Array(20).fill(200),
    'every request succeeded through the flapping',
  );

  const starting = await startStack({ emulator: { startupUnavailableMs: 400 } });
  t.teardown(starting.close);
  const early = await starting.get(tokenPath('api-version=2018-02-01&resource=https://early.example'));
  t.ok(early.status === 200 || early.status === 503, 'during start-up: retried, or a retryable 503');
  await new Promise((r) => setTimeout(r, 450));
  t.equal((await starting.get(tokenPath('api-version=2018-02-01&resource=https://later.example'))).status, 200, 'then served');
});
