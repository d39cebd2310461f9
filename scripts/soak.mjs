// @ts-check
// npm run soak: mixed traffic through the built proxy against the emulator while upstream faults come and go.
// Both run as child processes (so the proxy's RSS is its own); everything stays on 127.0.0.1 and stops by
// itself after SOAK_SECONDS (default 600). Reports error counts, RSS over time and upstream fetch counts, and
// exits 1 on any unexpected error or memory growth.
//
// What counts as unexpected: no answer or a non-JSON answer from the proxy; a probe answered with anything
// but IMDS's 400; a valid request answered 4xx (other than throttling, which is off here); and any non-200
// for a resource whose token is cached and still valid: an upstream outage must be invisible for those.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { IMAGE_NODE_OPTIONS } from '../bench/lib.mjs';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 600);
// Whatever happens, the children go with us.
const killAll = () => {
  for (const child of children) child.kill('SIGKILL');
};
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));
process.on('uncaughtException', (err) => {
  console.error(err);
  process.exit(1);
});
process.on('unhandledRejection', (err) => {
  console.error(err);
  process.exit(1);
});
const WORKERS = Number(process.env.SOAK_WORKERS ?? 16);
const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const tokensDir = mkdtempSync(path.join(os.tmpdir(), 'arc-imds-soak-'));
const children = new Set();

function start(args) {
  // The proxy runs with the node options of the image, as in production.
  const nodeArgs = args[0] === 'serve' ? IMAGE_NODE_OPTIONS : [];
  const child = spawn(process.execPath, [...nodeArgs, CLI, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    let buffer = '';
    const timer = setTimeout(() => reject(new Error(`no start within 10 s: ${args.join(' ')}`)), 10_000);
    child.stdout.setEncoding('utf8').on('data', (d) => {
      buffer += d;
      const m = /"(?:url|address)":"(?:http:\/\/)?(127\.0\.0\.1:\d+)"[^\n]*"msg":"(?:HIMDS emulator listening|listening)"/.exec(buffer);
      if (m) {
        clearTimeout(timer);
        child.stdout.resume();
        resolve({ child, address: m[1] });
      }
    });
  });
}

/**
 * @param {number} port
 * @param {string} pathAndQuery
 * @param {Record<string, string>} [headers]
 * @param {string} [method]
 * @param {string} [body]
 */
function request(port, pathAndQuery, headers = { Metadata: 'true' }, method = 'GET', body) {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, path: pathAndQuery, method, headers, agent, timeout: 20_000 }, (res) => {
      let text = '';
      res
        .setEncoding('utf8')
        .on('data', (c) => (text += c))
        .on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ status: 0, text: err.message }));
    req.end(body);
  });
}

const agent = new http.Agent({ keepAlive: true, maxSockets: WORKERS });
// MB (10^6 bytes), as npm run bench reports them; the kernel's kB are KiB.
const rssOf = (pid) => (Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024) / 1e6;

let emulator = await start(['emulate-himds', '--listen', '127.0.0.1:0', '--tokens-dir', tokensDir, '--token-lifetime', '6m', '--log-level', 'info']);
const emulatorPort = Number(emulator.address.split(':')[1]);
const proxy = await start([
  'serve',
  '--listen',
  '127.0.0.1:0',
  '--admin-listen',
  'off',
  '--upstream',
  `http://${emulator.address}`,
  '--tokens-dir',
  tokensDir,
  '--min-remaining',
  '30s',
  '--refresh-before',
  '2m',
  '--upstream-timeout',
  '1s',
  '--request-timeout',
  '4s',
  '--log-level',
  'info',
]);
const port = Number(proxy.address.split(':')[1]);

const counts = { requests: 0, ok: 0, expectedErrors: 0, unexpected: 0 };
const unexpectedSamples = [];
const served = new Map(); // resource -> expires_on (s) of the last token seen for it
let fetchesBeforeRestarts = 0;
const rss = [];
const HOT = Array.from({ length: 20 }, (_, i) => `https://hot-${i}.example`);
let cold = 0;

function unexpected(what, reply) {
  counts.unexpected++;
  if (unexpectedSamples.length < 20) unexpectedSamples.push(`${what}: ${reply.status} ${reply.text.slice(0, 160)}`);
}

async function worker(until) {
  while (Date.now() < until) {
    const roll = Math.random();
    counts.requests++;
    if (roll < 0.08) {
      const reply = await request(port, '/metadata/identity/oauth2/token', { Accept: 'application/json' });
      if (reply.status === 400 && reply.text.includes('Required metadata header not specified')) counts.ok++;
      else unexpected('probe', reply);
      continue;
    }
    if (roll < 0.12) {
      // Hostile: must be refused, never crash anything.
      const reply = await request(
        port,
        '/metadata/identity/oauth2/token?api-version=2018-02-01&resource=a%00b&resource=c',
        { Metadata: 'true' },
        'POST',
        'x',
      );
      if (reply.status === 405) counts.ok++;
      else unexpected('hostile', reply);
      continue;
    }
    if (roll < 0.17) {
      const reply = await request(port, '/metadata/instance/compute?api-version=2021-02-01');
      if (reply.status === 200) counts.ok++;
      else if (reply.status >= 500)
        counts.expectedErrors++; // passthrough is not cached
      else unexpected('metadata', reply);
      continue;
    }
    const resource = roll < 0.27 ? `https://cold-${cold++ % 500}.example` : /** @type {string} */ (HOT[Math.floor(Math.random() * HOT.length)]);
    const extra = roll > 0.995 ? '&bypass_cache=true' : '';
    const reply = await request(port, `/metadata/identity/oauth2/token?api-version=2018-02-01&resource=${encodeURIComponent(resource)}${extra}`);
    let body;
    try {
      body = JSON.parse(reply.text);
    } catch {
      unexpected('token: not JSON', reply);
      continue;
    }
    const validUntil = served.get(resource);
    const cachedAndValid = validUntil !== undefined && validUntil - Date.now() / 1000 > 35; // > --min-remaining + slack
    if (reply.status === 200 && body.resource === resource) {
      counts.ok++;
      served.set(resource, Number(body.expires_on));
    } else if (reply.status >= 500 && !cachedAndValid && !extra) counts.expectedErrors++;
    else unexpected(cachedAndValid ? 'token: cached token not served during a fault' : 'token', reply);
  }
}

async function faults(until) {
  const control = (patch) => request(emulatorPort, '/__emulator/faults', { 'Content-Type': 'application/json' }, 'POST', JSON.stringify(patch));
  while (Date.now() < until) {
    await sleep(10_000);
    if (Date.now() >= until) break;
    await control({ failNext: 40, failStatus: 503 }); // a burst of 503s
    await sleep(5_000);
    await control({ latencyMs: 3_000 }); // hangs past --upstream-timeout
    await sleep(5_000);
    await control({ latencyMs: 0 });
    // Down: the emulator process goes away; back on the same port 5 s later.
    fetchesBeforeRestarts += JSON.parse((await request(emulatorPort, '/__emulator/stats', {})).text).tokensIssued;
    emulator.child.kill('SIGTERM');
    await new Promise((r) => emulator.child.once('exit', r));
    await sleep(5_000);
    emulator = await start([
      'emulate-himds',
      '--listen',
      `127.0.0.1:${emulatorPort}`,
      '--tokens-dir',
      tokensDir,
      '--token-lifetime',
      '6m',
      '--log-level',
      'info',
    ]);
    await sleep(5_000);
  }
}

const began = Date.now();
const until = began + SECONDS * 1000;
const sampler = setInterval(
  () => {
    const sample = {
      t: Math.round((Date.now() - began) / 1000),
      rssMb: Math.round(rssOf(proxy.child.pid) * 10) / 10,
      requests: counts.requests,
      unexpected: counts.unexpected,
    };
    rss.push(sample);
    process.stdout.write(`${JSON.stringify(sample)}\n`);
  },
  Math.min(10_000, Math.max(1000, SECONDS * 100)),
);

try {
  await Promise.all([...Array.from({ length: WORKERS }, () => worker(until)), faults(until)]);
} finally {
  clearInterval(sampler);
}
const fetches = fetchesBeforeRestarts + JSON.parse((await request(emulatorPort, '/__emulator/stats', {})).text).tokensIssued;
const proxyAlive = proxy.child.exitCode === null;
for (const child of children) child.kill('SIGTERM');
await sleep(500);
for (const child of children) child.kill('SIGKILL');
agent.destroy();
rmSync(tokensDir, { recursive: true, force: true });

// Memory: RSS under load is a garbage-collection sawtooth; what leaks shows in the troughs. Compare the lowest
// sample of the last third with the lowest of the middle third (the first third is warm-up).
const third = Math.max(1, Math.floor(rss.length / 3));
const middle = Math.min(...rss.slice(third, 2 * third).map((s) => s.rssMb));
const end = Math.min(...rss.slice(-third).map((s) => s.rssMb));
const growthMb = Math.round((end - middle) * 10) / 10;
const summary = {
  seconds: SECONDS,
  workers: WORKERS,
  ...counts,
  upstreamTokenFetches: fetches,
  distinctResources: served.size,
  rssMb: {
    min: Math.min(...rss.map((s) => s.rssMb)),
    max: Math.max(...rss.map((s) => s.rssMb)),
    troughMiddleThird: middle,
    troughLastThird: end,
    growthMb,
  },
  proxyAlive,
  unexpectedSamples,
};
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
const failed = counts.unexpected > 0 || !proxyAlive || growthMb > 15 || counts.ok === 0;
process.stdout.write(failed ? 'soak: FAILED\n' : 'soak: passed\n');
process.exit(failed ? 1 : 0);
