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
// The webhook is measured the same way, after one AdmissionReview over HTTPS (a certificate made with openssl).
// The one-shot commands are measured by their peak (VmHWM, written at exit by bench/peak-rss.mjs): the probe
// against the sidecar's admin listener, and, as root, netns-setup in a network namespace made for it (only
// `lo`, which it gives 169.254.169.254/32) and deleted afterwards.
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CLI,
  IMAGE_NODE_OPTIONS,
  killAllChildren,
  spawnNode,
  startCeiling,
  startEmulator,
  startProxy,
  timedGet,
  tokenPath,
  useNode,
} from './lib.mjs';
import { runtimes } from './runtimes.mjs';

const PEAK = path.join(path.dirname(new URL(import.meta.url).pathname), 'peak-rss.mjs');

const say = (msg) => process.stderr.write(`[footprint] ${msg}\n`);
process.on('exit', killAllChildren);

function memoryOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kB = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  // The kernel's kB are KiB; figures are MB (10^6 bytes), as in npm run bench.
  const mb = (key) => Math.round((kB(key) * 1024) / 1e5) / 10;
  return { rss: mb('VmRSS'), anon: mb('RssAnon'), file: mb('RssFile'), threads: kB('Threads') };
}

/** A webhook with a certificate made here, after one AdmissionReview for a pod that opts in. */
async function startWebhook(tmp) {
  const cert = path.join(tmp, 'tls.crt');
  const key = path.join(tmp, 'tls.key');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=localhost',
    ],
    { stdio: 'ignore', timeout: 30_000 },
  );
  const args = [CLI, 'webhook', '--listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key, '--image', 'arc-imds-proxy:bench'];
  const webhook = spawnNode('webhook', args, { nodeArgs: IMAGE_NODE_OPTIONS });
  const { url } = await webhook.waitFor((l) => l.msg === 'admission webhook listening');
  const review = {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: '00000000-0000-4000-8000-000000000001',
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      namespace: 'bench',
      operation: 'CREATE',
      object: {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'app', labels: { 'arc-imds-proxy/inject': 'true' } },
        spec: { containers: [{ name: 'app', image: 'app' }] },
      },
    },
  };
  const status = await new Promise((resolve, reject) => {
    // Loopback, and the certificate was made a moment ago for this request: nothing to verify it against.
    const req = https.request(
      `${url}/mutate`,
      { method: 'POST', rejectUnauthorized: false, headers: { 'Content-Type': 'application/json' } },
      (res) => {
        res.resume();
        res.once('end', () => resolve(res.statusCode));
      },
    );
    req.once('error', reject);
    req.end(JSON.stringify(review));
  });
  if (status !== 200) throw new Error(`webhook answered ${status}`);
  return webhook;
}

/** Peak RSS, MB, of a one-shot `cli.js ...args` on this runtime, run as `prefix... node ...`; its exit status must be 0. */
async function peakOf(runtime, tmp, name, args, prefix = []) {
  const out = path.join(tmp, `${name}.peak`);
  const argv = [...prefix, runtime.node, ...IMAGE_NODE_OPTIONS, '--import', PEAK, CLI, ...args];
  execFileSync(argv[0], argv.slice(1), { env: { PATH: process.env.PATH ?? '', BENCH_PEAK_RSS_FILE: out }, stdio: 'ignore', timeout: 30_000 });
  return Math.round((Number(await readFile(out, 'utf8')) * 1024) / 1e5) / 10;
}

/** netns-setup's peak in a network namespace made for it, deleted whatever happens; undefined when not root. */
async function netnsSetupPeak(runtime, tmp) {
  if (process.getuid?.() !== 0) {
    say('netns-setup: not root, so no network namespace to run it in: skipped');
    return undefined;
  }
  const ns = `arc-imds-footprint-${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns], { stdio: 'ignore' });
  try {
    return await peakOf(runtime, tmp, 'netns-setup', ['netns-setup', '--address', '169.254.169.254'], ['ip', 'netns', 'exec', ns]);
  } finally {
    execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  }
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
    const webhook = await startWebhook(tmp);
    started.push(webhook);
    await sleep(12_000);
    const peaks = {
      probe: await peakOf(runtime, tmp, 'probe', ['probe', '--url', sidecar.adminUrl]),
      'netns-setup': await netnsSetupPeak(runtime, tmp),
    };
    return {
      runtime: `${runtime.label} ${runtime.version}`,
      sidecar: memoryOf(sidecar.pid),
      relay: memoryOf(relay.pid),
      emulator: memoryOf(emulator.pid),
      webhook: memoryOf(webhook.pid),
      bare: memoryOf(bare.pid),
      peaks,
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
  for (const name of ['sidecar', 'relay', 'emulator', 'webhook', 'bare']) {
    const m = r[name];
    const over = name === 'bare' ? '' : `+${(m.rss - r.bare.rss).toFixed(1)} · +${(m.anon - r.bare.anon).toFixed(1)} MB`;
    lines.push(
      `| ${r.runtime} | ${name === 'bare' ? 'bare node:http' : name} | ${m.rss} MB | ${m.anon} MB | ${m.file} MB | ${m.threads} | ${over} |`,
    );
  }
}
lines.push('', '| runtime | one-shot command | peak RSS (VmHWM) |', '|---|---|---|');
for (const r of rows) {
  for (const [name, peak] of Object.entries(r.peaks))
    lines.push(`| ${r.runtime} | ${name} | ${peak === undefined ? 'not measured (needs root)' : `${peak} MB`} |`);
}
process.stdout.write(`${lines.join('\n')}\n`);
