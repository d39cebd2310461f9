// The benchmark runner (bench/run.mjs, `npm run bench`) end to end at its smallest scale (BENCH_SMOKE=1: a few
// hundred requests per scenario): it starts every server as a child process, measures every scenario, prints
// the table and writes valid JSON. No timing is asserted here: speed targets belong to `npm run bench`.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { RUNTIME_OPTIONS } from '../src/node-flags.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const RUNNER = path.join(ROOT, 'bench', 'run.mjs');
const CLI = path.join(ROOT, 'dist', 'cli.js');

if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run 'npm run build' first (npm test does it as pretest)`);

const SCENARIOS = ['abuse', 'ceiling', 'coldMiss', 'hit', 'memory', 'probe', 'startup', 'storm', 'twoHops'];
const TARGETS = [
  'abandoned_cached_served',
  'abandoned_challenges',
  'abandoned_in_flight',
  'abandoned_recovery',
  'abandoned_rss',
  'cold_miss_overhead',
  'hit_p99_10',
  'hit_throughput_ratio',
  'probe_p99_hung',
  'ready',
  'rss_connections',
  'rss_growth',
  'rss_idle',
  'storm_fetches',
  'log_flood',
].sort();

function runBench(out: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    // Nothing of tap's instrumentation or of an ARC_IMDS_* environment reaches the runner.
    if (k.startsWith('ARC_IMDS_') || k === 'NODE_OPTIONS' || k === 'NODE_V8_COVERAGE' || k.startsWith('BENCH_')) continue;
    env[k] = v;
  }
  const child = spawn(process.execPath, [RUNNER], {
    cwd: ROOT,
    env: { ...env, BENCH_SMOKE: '1', BENCH_OUT: out },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve) => {
    // The runner has its own watchdog (90 s at this scale); this one only guards against a runner that hangs.
    const timer = setTimeout(() => child.kill('SIGKILL'), 100_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

t.test('npm run bench at smoke scale: every scenario measured, the table printed, the JSON written', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-bench-test-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'bench.json');

  const { code, stdout, stderr } = await runBench(out);
  t.equal(code, 0, `the runner exits 0${code === 0 ? '' : `: ${stderr.slice(-3000)}`}`);

  const result = JSON.parse(await readFile(out, 'utf8'));
  t.equal(result.mode, 'smoke');
  t.same(Object.keys(result.scenarios).sort(), SCENARIOS, 'every scenario is in the JSON');
  t.same(result.targets.map((x: { id: string }) => x.id).sort(), TARGETS, 'every target is in the JSON');
  t.equal(result.method.proxyNodeOptions, RUNTIME_OPTIONS.join(' '), "proxies ran with the image's node options");
  for (const target of result.targets) {
    t.ok(['PASS', 'MISS'].includes(target.result), `${target.id}: PASS or MISS`);
    t.type(target.value, 'number', `${target.id}: a number`);
    t.ok(Number.isFinite(target.value), `${target.id}: a finite number`);
  }
  for (const c of ['1', '10', '100']) {
    t.ok(result.scenarios.ceiling[c].rps > 0, `ceiling measured at ${c} connections`);
    t.ok(result.scenarios.hit[c].rps > 0 && result.scenarios.hit[c].ratio > 0, `cached hits measured at ${c} connections`);
  }
  t.equal(result.scenarios.storm.upstreamFetches, 1, 'the storm cost one upstream fetch (correctness, not speed)');
  // Without dropping abandoned fetches all 100 would still be queued behind the hung emulator.
  t.ok(result.scenarios.abuse.abandoned.inFlight <= 10, 'abandoned requests leave (almost) no fetch in flight (correctness, not speed)');
  t.equal(result.scenarios.abuse.flood.stdoutBytes, 0, 'failing client requests write nothing at info');
  t.equal(result.scenarios.twoHops.sidecarMissRelayHit.upstreamFetches, 0, 'a sidecar miss that the relay has cached costs HIMDS nothing');
  t.ok(
    result.scenarios.memory.withConnectionsMB > 0 &&
      result.scenarios.memory.leak.atEndMB > 0 &&
      result.scenarios.memory.ceiling.withConnectionsMB > 0,
    'RSS read from /proc',
  );
  t.ok(result.machine.nproc > 0 && typeof result.machine.cpu === 'string', 'the machine is recorded');
  t.equal(result.runtimes.length, 1, "at smoke scale: the runner's own node only (no download in tests)");
  t.equal(result.runtimes[0].node, process.version, '...which is this node');
  t.same(result.runtimes[0].targets, result.targets, "the top-level figures are the first runtime's");
  const deployed = result.scenarios.memory.deployed;
  t.ok(
    deployed.sidecar.idleMB > 0 && deployed.bare.idleMB > 0 && deployed.sidecar.relayIdleMB > 0,
    'the sidecar as deployed, the relay and the bare server: RSS read from /proc',
  );

  t.match(stdout, /\| scenario \| figure \| Node \d+ \(v[\d.]+\) \| target \| result \(Node \d+\) \|/, 'the table is printed, a column per runtime');
  for (const row of result.table) t.ok(stdout.includes(`| ${row.scenario} | ${row.figure} |`), `printed: ${row.scenario}: ${row.figure}`);
});
