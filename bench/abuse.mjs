// Misbehaving clients against a shared relay (issue 12), measured on the built proxy and emulator:
//
//   abandoned  5,000 token requests for distinct resources, each hung up 200 ms after it was sent, against a
//              hung HIMDS (the emulator delays every answer by 30 s; 2 s in the smoke run). Reported: RSS added, fetches left in
//              flight, the key files HIMDS wrote for them (counted once every delayed answer has happened),
//              whether a cached token was served at once throughout, and how long a new resource takes once
//              HIMDS answers again.
//   logflood   3,000 failing requests with 8 KB URLs (a missing resource, a refused resource, a bad
//              api-version; 1,000 each) at --log-level info: the bytes the proxy wrote to stdout.
//
// Runs as part of `npm run bench` (bench/run.mjs, scenario 9, with its targets in the table) and alone:
// `node bench/abuse.mjs` (after `npm run build`).
// Loopback only; every count and wait is bounded; every child is stopped by its PID.
import http from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { emulatorStats, killAllChildren, round, rssMB, setFaults, startEmulator, startProxy, timedGet, tokenPath } from './lib.mjs';

export const ABUSE_TARGETS = {
  abandonedRssMB: 40,
  abandonedInFlight: 1000,
  abandonedChallenges: 100,
  recoverySeconds: 3,
  logFloodMB: 1,
};

/** One request on its own connection, destroyed `ms` after it was sent (or when answered). */
function hangUp(url, p, ms) {
  return new Promise((resolve) => {
    const u = new URL(url);
    const req = http.get({ host: u.hostname, port: Number(u.port), path: p, headers: { Metadata: 'true' }, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve('hung up'));
    setTimeout(() => req.destroy(), ms);
  });
}

async function metricValue(adminUrl, name) {
  const r = await timedGet({ url: adminUrl, path: '/metrics', headers: {} });
  const line = r.body.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

/** Run `count` tasks, `width` at a time. */
async function inWaves(count, width, task) {
  for (let i = 0; i < count; i += width) {
    await Promise.all(Array.from({ length: Math.min(width, count - i) }, (_, j) => task(i + j)));
  }
}

export async function abandonedFetches({ requests = 5000, width = 500, hangMs = 30_000 } = {}) {
  const tokensDir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-bench-abuse-'));
  const emulator = await startEmulator(tokensDir);
  const proxy = await startProxy('proxy', { upstream: emulator.url, tokensDir, admin: true });
  try {
    const cached = tokenPath('https://management.azure.com/');
    if ((await timedGet({ url: proxy.url, path: cached })).status !== 200) throw new Error('no token before the hang');
    await sleep(1000);
    const rssBefore = rssMB(proxy.pid);
    const challengesBefore = (await emulatorStats(emulator.url)).challenges;
    await setFaults(emulator.url, { latencyMs: hangMs });

    // Meanwhile a workload with a cached token keeps asking: every answer must be an immediate 200.
    let cachedServed = 0;
    let cachedWorst = 0;
    let cachedFailed = 0;
    let sending = true;
    const steady = (async () => {
      while (sending) {
        const r = await timedGet({ url: proxy.url, path: cached });
        if (r.status === 200) cachedServed++;
        else cachedFailed++;
        cachedWorst = Math.max(cachedWorst, r.ms);
        await sleep(20);
      }
    })();
    const started = performance.now();
    await inWaves(requests, width, (i) => hangUp(proxy.url, tokenPath(`https://abandoned-${i}.example/`), 200));
    const sendSeconds = (performance.now() - started) / 1000;
    await sleep(1000);
    const inFlight = await metricValue(proxy.adminUrl, 'arc_imds_upstream_fetches_in_flight');
    const rssAfter = rssMB(proxy.pid);
    sending = false;
    await steady;

    // HIMDS answers again: how long until a resource nobody asked for yet is served?
    await setFaults(emulator.url, { latencyMs: 0 });
    const recoveryStarted = performance.now();
    const fresh = await timedGet({ url: proxy.url, path: tokenPath('https://after-recovery.example/') });
    const recoverySeconds = (performance.now() - recoveryStarted) / 1000;
    // Every request that reached the hung HIMDS gets its (delayed) answer, and so its key file, by now.
    await sleep(hangMs + 2000);
    const challenges = (await emulatorStats(emulator.url)).challenges - challengesBefore - 1;
    return {
      requests,
      sendSeconds: round(sendSeconds, 1),
      rssBeforeMB: round(rssBefore, 1),
      rssAfterMB: round(rssAfter, 1),
      rssAddedMB: round(rssAfter - rssBefore, 1),
      inFlight,
      challenges,
      cachedServed,
      cachedFailed,
      cachedWorstMs: round(cachedWorst, 1),
      freshStatus: fresh.status,
      recoverySeconds: round(recoverySeconds, 3),
    };
  } finally {
    await proxy.stop();
    await emulator.stop();
    await rm(tokensDir, { recursive: true, force: true });
  }
}

export async function logFlood({ requests = 3000 } = {}) {
  const tokensDir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-bench-flood-'));
  const emulator = await startEmulator(tokensDir);
  const proxy = await startProxy('proxy', {
    upstream: emulator.url,
    tokensDir,
    extra: ['--log-level', 'info', '--allow-resource', 'https://management.azure.com/'],
  });
  let bytes = 0;
  proxy.child.stdout.on('data', (d) => (bytes += d.length));
  try {
    await sleep(500);
    const before = bytes;
    const pad = 'p'.repeat(8000);
    const kinds = [
      (i) => `/metadata/identity/oauth2/token?api-version=2018-02-01&pad=${i}${pad}`,
      (i) => `/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://refused.example/${i}&pad=${pad}`,
      (i) => `/metadata/identity/oauth2/token?api-version=2099-01-01&resource=https://x/&pad=${i}${pad}`,
    ];
    const statuses = {};
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    await inWaves(requests, 48, async (i) => {
      const p = kinds[i % kinds.length](i).slice(0, 8100);
      const r = await timedGet({ url: proxy.url, path: p, agent });
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    });
    agent.destroy();
    await sleep(500);
    return { requests, urlBytes: 8100, statuses, stdoutBytes: bytes - before, stdoutMB: round((bytes - before) / 1e6, 4) };
  } finally {
    await proxy.stop();
    await emulator.stop();
    await rm(tokensDir, { recursive: true, force: true });
  }
}

/** Each figure next to its target (bench/run.mjs puts them in its table). */
export function abuseTargets({ abandoned, flood }) {
  const row = (id, figure, value, unit, target, pass) => ({ id, figure, value, unit, target, pass });
  return [
    row(
      'abandoned_rss',
      `${abandoned.requests} abandoned distinct-resource requests, HIMDS hung: RSS added`,
      abandoned.rssAddedMB,
      'MB',
      `< ${ABUSE_TARGETS.abandonedRssMB} MB`,
      abandoned.rssAddedMB < ABUSE_TARGETS.abandonedRssMB,
    ),
    row(
      'abandoned_in_flight',
      'abandoned: upstream fetches left in flight',
      abandoned.inFlight,
      '',
      `<= ${ABUSE_TARGETS.abandonedInFlight}`,
      abandoned.inFlight <= ABUSE_TARGETS.abandonedInFlight,
    ),
    row(
      'abandoned_challenges',
      'abandoned: key files HIMDS wrote for them',
      abandoned.challenges,
      '',
      `<= ${ABUSE_TARGETS.abandonedChallenges}`,
      abandoned.challenges <= ABUSE_TARGETS.abandonedChallenges,
    ),
    row(
      'abandoned_cached_served',
      'abandoned: a cached token served meanwhile (failed answers)',
      abandoned.cachedFailed,
      '',
      '= 0',
      abandoned.cachedFailed === 0 && abandoned.cachedServed > 0,
    ),
    row(
      'abandoned_recovery',
      'abandoned: a new resource once HIMDS answers again',
      abandoned.recoverySeconds,
      's',
      `< ${ABUSE_TARGETS.recoverySeconds} s`,
      abandoned.freshStatus === 200 && abandoned.recoverySeconds < ABUSE_TARGETS.recoverySeconds,
    ),
    row(
      'log_flood',
      `${flood.requests} failing ${flood.urlBytes}-byte requests: stdout at info`,
      flood.stdoutMB,
      'MB',
      `< ${ABUSE_TARGETS.logFloodMB} MB`,
      flood.stdoutMB < ABUSE_TARGETS.logFloodMB,
    ),
  ];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const watchdog = setTimeout(() => {
    console.error('abuse bench: watchdog fired');
    killAllChildren();
    process.exit(1);
  }, 5 * 60_000);
  try {
    const result = { abandoned: await abandonedFetches(), flood: await logFlood() };
    console.log(JSON.stringify(result, null, 2));
    const rows = abuseTargets(result);
    for (const r of rows) console.log(`${r.pass ? 'PASS' : 'MISS'}  ${r.figure}: ${r.value} ${r.unit} (target ${r.target})`);
    process.exitCode = rows.every((r) => r.pass) ? 0 : 1;
  } finally {
    clearTimeout(watchdog);
    killAllChildren();
  }
}
