#!/usr/bin/env node
// Where the proxy's time goes under load: `node --cpu-prof dist/cli.js serve` in front of the emulator, driven
// by autocannon from this process, stopped with SIGTERM (the profile is written on exit), then summarised:
// self time by function (mapped back to src/ through dist's source maps), inclusive time of the frames on
// the request path, and self time by package. Not part of `npm run bench`; run it after a missed target:
//
//   npm run build && node bench/profile.mjs [hit|probe|cold|ceiling] [seconds] [connections]
//   PROFILE_RATE=8000 node bench/profile.mjs hit 10 100    (a fixed request rate instead of as fast as possible)
//
// `ceiling` profiles the bare node:http server (bench/ceiling.mjs) under the same load, for comparison.
//
// The .cpuprofile is kept in bench/results/ (ignored by git) for Chrome DevTools / speedscope.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { SourceMap } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { writeFile } from 'node:fs/promises';
import { CLI, ROOT, cannon, startCeiling, startEmulator, startProxy, timedGet, tokenPath } from './lib.mjs';

const [what = 'hit', secondsArg = '10', connectionsArg = '100'] = process.argv.slice(2);
const SECONDS = Number(secondsArg);
const CONNECTIONS = Number(connectionsArg);
const ARM = 'https://management.azure.com/';

if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run 'npm run build' first`);
if (!['hit', 'probe', 'cold', 'ceiling'].includes(what))
  throw new Error('usage: node bench/profile.mjs [hit|probe|cold|ceiling] [seconds] [connections]');

// ---------------------------------------------------------------------------------------------------------
// Summarising a .cpuprofile
// ---------------------------------------------------------------------------------------------------------

const maps = new Map();
function sourceMapFor(url) {
  if (!maps.has(url)) {
    let map;
    try {
      const file = fileURLToPath(url);
      map = new SourceMap(JSON.parse(readFileSync(`${file}.map`, 'utf8')));
    } catch {
      map = undefined;
    }
    maps.set(url, map);
  }
  return maps.get(url);
}

/** `function (where)`, with dist/ locations mapped back to src/. */
function describe(frame) {
  const name = frame.functionName || '(anonymous)';
  if (!frame.url) return name;
  let where;
  if (frame.url.startsWith('file://')) {
    const file = fileURLToPath(frame.url);
    const rel = path.relative(ROOT, file);
    const map = rel.startsWith('dist') ? sourceMapFor(frame.url) : undefined;
    const entry = map?.findEntry(frame.lineNumber, frame.columnNumber);
    if (entry?.originalSource) {
      const src = entry.originalSource.startsWith('file://')
        ? fileURLToPath(entry.originalSource)
        : path.resolve(path.dirname(file), entry.originalSource);
      where = `${path.relative(ROOT, src)}:${entry.originalLine + 1}`;
    } else {
      where = `${rel.replace(/^node_modules\//, '')}:${frame.lineNumber + 1}`;
    }
  } else {
    where = `${frame.url}:${frame.lineNumber + 1}`;
  }
  return `${name} (${where})`;
}

function packageOf(frame) {
  const url = frame.url;
  if (!url) return frame.functionName.startsWith('(') ? frame.functionName : 'native';
  if (url.startsWith('node:')) {
    const m = /^node:(?:internal\/)?([a-z_]+)/.exec(url);
    return `node:${m?.[1] ?? url}`;
  }
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1];
  if (url.includes('/dist/')) return 'arc-imds-proxy (dist/)';
  return url;
}

export function summarise(profile, top = 30, requests = 0) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map();
  const inclusive = new Map();
  const packages = new Map();
  let total = 0;
  let idle = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    // timeDeltas[i + 1] is the time until the next sample: what sample i stands for.
    const dt = profile.timeDeltas[i + 1] ?? 0;
    const node = byId.get(profile.samples[i]);
    if (node.callFrame.functionName === '(idle)') {
      idle += dt;
      continue;
    }
    total += dt;
    const key = describe(node.callFrame);
    self.set(key, (self.get(key) ?? 0) + dt);
    const pkg = packageOf(node.callFrame);
    packages.set(pkg, (packages.get(pkg) ?? 0) + dt);
    const seen = new Set();
    for (let id = node.id; id !== undefined; id = parent.get(id)) {
      const k = describe(byId.get(id).callFrame);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + dt);
    }
  }
  // Percent of busy time, and (when the request count is known) microseconds per request.
  const pct = (x) => `${((100 * x) / total).toFixed(1).padStart(5)}%${requests ? ` ${(x / requests).toFixed(2).padStart(6)} µs/req` : ''}`;
  const sorted = (m) => [...m.entries()].sort((a, b) => b[1] - a[1]);
  const lines = [];
  lines.push(
    `busy ${(total / 1e6).toFixed(2)} s, idle ${(idle / 1e6).toFixed(2)} s (percentages are of busy time)${requests ? `; ${requests} requests: ${(total / requests).toFixed(1)} µs of main-thread time each` : ''}`,
  );
  lines.push('', 'self time by package / category:');
  for (const [k, v] of sorted(packages).slice(0, 15)) lines.push(`  ${pct(v)}  ${k}`);
  lines.push('', `top ${top} functions by self time:`);
  for (const [k, v] of sorted(self).slice(0, top)) lines.push(`  ${pct(v)}  ${k}`);
  lines.push('', 'inclusive time of our code and the libraries it calls (top 40):');
  const ours = sorted(inclusive).filter(([k]) => /\(src\/|prom-client|pino|lru-cache|undici|AbortSignal|timeout/i.test(k));
  for (const [k, v] of ours.slice(0, 40)) lines.push(`  ${pct(v)}  ${k}`);
  return { text: lines.join('\n'), total, self: sorted(self), inclusive: sorted(inclusive), packages: sorted(packages) };
}

// ---------------------------------------------------------------------------------------------------------

async function main() {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-profile-'));
  const profDir = path.join(tmp, 'prof');
  const tokensDir = path.join(tmp, 'tokens');
  const emulator = await startEmulator(tokensDir);
  try {
    // 100 µs sampling (the default is 1 ms): a cached hit is tens of microseconds.
    const nodeArgs = ['--cpu-prof', '--cpu-prof-interval', '100', '--cpu-prof-dir', profDir];
    let requests = 0;
    let proxy;
    if (what === 'ceiling') {
      // The same bytes as a cached answer from the real proxy.
      const real = await startProxy('proxy', { upstream: emulator.url, tokensDir });
      const bodyFile = path.join(tmp, 'body.json');
      try {
        await timedGet({ url: real.url, path: tokenPath(ARM) });
        await writeFile(bodyFile, (await timedGet({ url: real.url, path: tokenPath(ARM) })).body);
      } finally {
        await real.stop();
      }
      proxy = await startCeiling(bodyFile, nodeArgs);
    } else {
      proxy = await startProxy('proxy', { upstream: emulator.url, tokensDir, nodeArgs });
    }
    try {
      await timedGet({ url: proxy.url, path: tokenPath(ARM) });
      const base = { url: proxy.url, connections: CONNECTIONS, duration: SECONDS, serverPid: proxy.pid };
      let run;
      const rate = process.env.PROFILE_RATE ? { overallRate: Number(process.env.PROFILE_RATE) } : {};
      if (what === 'hit' || what === 'ceiling') run = await cannon({ ...base, ...rate, path: tokenPath(ARM) });
      else if (what === 'probe') run = await cannon({ ...base, ...rate, path: tokenPath(ARM), headers: {}, expect: 400 });
      else {
        // Cold misses: a new resource on every request (autocannon's [<id>] replacement).
        run = await new Promise((resolve, reject) => {
          let n = 0;
          const started = performance.now();
          const next = async () => {
            while (performance.now() - started < SECONDS * 1000) {
              await timedGet({ url: proxy.url, path: tokenPath(`https://bench.example/profile/${n++}`) });
            }
          };
          Promise.all(Array.from({ length: CONNECTIONS }, next)).then(
            () => resolve({ rps: n / SECONDS, requests: n, p50: NaN, p99: NaN, serverCpu: NaN }),
            reject,
          );
        });
      }
      // Everything the process answered, warm-up included, is in the profile.
      requests = run.requests + 1;
      process.stdout.write(
        `${what}, ${CONNECTIONS} connections, ${SECONDS} s: ${Math.round(run.rps)} req/s, p50 ${run.p50?.toFixed?.(3)} ms, p99 ${run.p99?.toFixed?.(3)} ms, proxy CPU ${run.serverCpu?.toFixed?.(2)} cores\n\n`,
      );
    } finally {
      await proxy.stop(15_000);
    }
    const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
    if (!file) throw new Error('no .cpuprofile written');
    const out = path.join(ROOT, 'bench', 'results', `profile-${what}.cpuprofile`);
    await mkdir(path.dirname(out), { recursive: true });
    await copyFile(path.join(profDir, file), out);
    const { text } = summarise(JSON.parse(readFileSync(out, 'utf8')), 30, requests);
    process.stdout.write(`${text}\n\nprofile: ${path.relative(ROOT, out)}\n`);
  } finally {
    await emulator.stop();
    await rm(tmp, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    process.stderr.write(`${err.stack ?? err}\n`);
    process.exitCode = 1;
  });
}
