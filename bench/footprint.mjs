#!/usr/bin/env node
// `node bench/footprint.mjs` (after `npm run build`): where a process's resident memory is, for each role as
// deployed and a bare node:http server, on each runtime bench/run.mjs measures (BENCH_RUNTIMES as there).
// About 20 s per runtime; loopback and unix sockets only. For each process, after one token and one scrape and
// 12 s idle (past the proxies' first periodic readiness check, 10 s after start, as bench/run.mjs waits):
//   rss   VmRSS
//   anon  RssAnon: private to the process (V8 heap, malloc, stacks): what each more sidecar costs
//   file  RssFile: pages of the node binary and libraries it touched, shared by every process that maps the
//         same file (in containers: the same image layer), so charged once, not per sidecar
//   threads
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { killAllChildren, startCeiling, startEmulator, startProxy, timedGet, tokenPath, useNode } from './lib.mjs';
import { runtimes } from './runtimes.mjs';

const say = (msg) => process.stderr.write(`[footprint] ${msg}\n`);
process.on('exit', killAllChildren);

function memoryOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kB = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  // The kernel's kB are KiB; figures are MB (10^6 bytes), as in npm run bench.
  const mb = (key) => Math.round((kB(key) * 1024) / 1e5) / 10;
  return { rss: mb('VmRSS'), anon: mb('RssAnon'), file: mb('RssFile'), threads: kB('Threads') };
}

async function measure(runtime) {
  useNode(runtime.node);
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-footprint-'));
  const started = [];
  try {
    const emulator = await startEmulator(path.join(tmp, 'tokens'));
    started.push(emulator);
    const socket = path.join(tmp, 'relay', 'imds.sock');
    const relay = await startProxy('relay', { listen: `unix:${socket}`, upstream: emulator.url, tokensDir: path.join(tmp, 'tokens') });
    started.push(relay);
    const sidecar = await startProxy('sidecar', { upstream: `unix:${socket}`, tokensDir: path.join(tmp, 'none'), admin: true });
    started.push(sidecar);
    const answer = await timedGet({ url: sidecar.url, path: tokenPath('https://management.azure.com/'), agent: false });
    if (answer.status !== 200) throw new Error(`sidecar answered ${answer.status}: ${answer.body}`);
    await timedGet({ url: sidecar.adminUrl, path: '/metrics', headers: {}, agent: false });
    const body = path.join(tmp, 'body.json');
    await writeFile(body, answer.body);
    const bare = await startCeiling(body);
    started.push(bare);
    await timedGet({ url: bare.url, path: '/', agent: false });
    await sleep(12_000);
    return {
      runtime: `${runtime.label} ${runtime.version}`,
      sidecar: memoryOf(sidecar.pid),
      relay: memoryOf(relay.pid),
      emulator: memoryOf(emulator.pid),
      bare: memoryOf(bare.pid),
    };
  } finally {
    await Promise.all(started.map((c) => c.stop()));
    await rm(tmp, { recursive: true, force: true });
  }
}

const rows = [];
for (const runtime of runtimes({ mode: 'full', say })) rows.push(await measure(runtime));
const lines = ['| runtime | process | RSS | anon (private) | file (shared) | threads | over bare: RSS · anon |', '|---|---|---|---|---|---|---|'];
for (const r of rows) {
  for (const name of ['sidecar', 'relay', 'emulator', 'bare']) {
    const m = r[name];
    const over = name === 'bare' ? '' : `+${(m.rss - r.bare.rss).toFixed(1)} · +${(m.anon - r.bare.anon).toFixed(1)} MB`;
    lines.push(
      `| ${r.runtime} | ${name === 'bare' ? 'bare node:http' : name} | ${m.rss} MB | ${m.anon} MB | ${m.file} MB | ${m.threads} | ${over} |`,
    );
  }
}
process.stdout.write(`${lines.join('\n')}\n`);
