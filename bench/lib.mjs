// Helpers for the benchmark runner: child processes (every server under test runs in its own process, the load
// generator is the runner), timed HTTP requests, autocannon with microsecond latencies, percentiles, and what
// /proc says about a process (RSS, CPU time). Loopback and unix sockets only.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { WebSocket } from 'undici';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const CLI = path.join(ROOT, 'dist', 'cli.js');
export const CEILING = path.join(ROOT, 'bench', 'ceiling.mjs');
/**
 * The node options the image runs the proxy with (between `node` and the script in the Dockerfile's
 * ENTRYPOINT): each proxy under test runs with them, as in production. The emulator and the ceiling run with
 * node's defaults.
 */
export const IMAGE_NODE_OPTIONS = (() => {
  const line = /^ENTRYPOINT (\[.*\])$/m.exec(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'));
  const argv = line ? JSON.parse(line[1]) : [];
  if (argv[0] !== 'node' || argv.at(-1) !== '/app/dist/cli.js') throw new Error('Dockerfile: ENTRYPOINT is not ["node", ..., "/app/dist/cli.js"]');
  return argv.slice(1, -1);
})();
export const TOKEN_PATH = '/metadata/identity/oauth2/token';
export const tokenPath = (resource, apiVersion = '2018-02-01') => `${TOKEN_PATH}?api-version=${apiVersion}&resource=${encodeURIComponent(resource)}`;

// ---------------------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------------------

/** Every child still running; killed (by PID) on the way out whatever happens. */
const children = new Set();

/** The node binary servers under test are started with (bench/runtimes.mjs; the runner's own by default). */
let serverNode = process.execPath;
export function useNode(node) {
  serverNode = node;
}

/** The environment without anything that would configure the proxy, or instrument it, behind our back. */
export function childEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('ARC_IMDS_') || k === 'IMDS_ENDPOINT' || k === 'IDENTITY_ENDPOINT') continue;
    if (k === 'NODE_OPTIONS' || k === 'NODE_V8_COVERAGE' || /^_?TAP/.test(k)) continue;
    if (/^(https?_proxy|all_proxy|no_proxy)$/i.test(k)) continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Start `node ...args`, reading its JSON log lines. `waitFor(pred)` resolves with the first line (seen so far or
 * later) that matches. Only the last few hundred lines are kept.
 */
export function spawnNode(name, args, { env = {}, nodeArgs = [] } = {}) {
  const started = performance.now();
  const child = spawn(serverNode, [...nodeArgs, ...args], { cwd: ROOT, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const lines = [];
  const waiters = new Set();
  let stderr = '';
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      children.delete(child);
      for (const w of waiters) w.reject(new Error(`${name} exited (${code ?? signal}) before it logged what we waited for: ${stderr.slice(-2000)}`));
      waiters.clear();
      resolve({ code, signal });
    });
  });
  child.once('error', (err) => {
    for (const w of waiters) w.reject(err);
    waiters.clear();
  });
  readline.createInterface({ input: child.stdout }).on('line', (text) => {
    let line;
    try {
      line = JSON.parse(text);
    } catch {
      line = { msg: text };
    }
    line.__at = performance.now();
    lines.push(line);
    if (lines.length > 500) lines.splice(0, lines.length - 200);
    for (const w of waiters) {
      if (w.pred(line)) {
        waiters.delete(w);
        w.resolve(line);
      }
    }
  });
  child.stderr.setEncoding('utf8').on('data', (d) => {
    stderr = (stderr + d).slice(-8000);
  });
  return {
    name,
    child,
    pid: child.pid,
    started,
    exited,
    stderr: () => stderr,
    /** The first match of `re` in what the child wrote to stderr, waiting up to timeoutMs. */
    async stderrMatch(re, timeoutMs = 10_000) {
      const until = performance.now() + timeoutMs;
      for (;;) {
        const m = re.exec(stderr);
        if (m) return m;
        if (performance.now() > until) throw new Error(`${name}: ${re} not on stderr within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    waitFor(pred, timeoutMs = 10_000) {
      const seen = lines.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const w = {
          pred,
          resolve: (l) => {
            clearTimeout(timer);
            resolve(l);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`${name}: no matching log line within ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`));
        }, timeoutMs);
        waiters.add(w);
      });
    },
    /** SIGTERM, then SIGKILL if it has not exited within graceMs. Only this child, by its PID. */
    async stop(graceMs = 3000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      let timer;
      const outcome = await Promise.race([exited, new Promise((r) => (timer = setTimeout(() => r('timeout'), graceMs)))]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        child.kill('SIGKILL');
        return exited;
      }
      return outcome;
    },
  };
}

/** Last resort (exit, signals, a watchdog): SIGKILL every child we started and that is still running. */
export function killAllChildren() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  children.clear();
}

/** The HIMDS emulator from dist/, on a free loopback port. */
export async function startEmulator(tokensDir, extra = []) {
  const p = spawnNode('emulator', [CLI, 'emulate-himds', '--listen', '127.0.0.1:0', '--tokens-dir', tokensDir, ...extra]);
  try {
    const line = await p.waitFor((l) => l.msg === 'HIMDS emulator listening');
    return Object.assign(p, { url: line.url });
  } catch (err) {
    await p.stop();
    throw err;
  }
}

/**
 * `arc-imds-proxy serve` from dist/, production defaults but for listen/upstream/tokens dir and the admin
 * listener (off, unless `admin`: then on a free loopback port, as `adminUrl`).
 */
export async function startProxy(name, { listen = '127.0.0.1:0', upstream, tokensDir, extra = [], nodeArgs = [], cli = CLI, admin = false }) {
  const args = [
    cli,
    'serve',
    '--listen',
    listen,
    '--upstream',
    upstream,
    '--tokens-dir',
    tokensDir,
    '--admin-listen',
    admin ? '127.0.0.1:0' : 'off',
    ...extra,
  ];
  const p = spawnNode(name, args, { nodeArgs: [...IMAGE_NODE_OPTIONS, ...nodeArgs] });
  try {
    const line = await p.waitFor((l) => l.msg === 'listening');
    const adminUrl = admin ? `http://${(await p.waitFor((l) => l.msg.startsWith('admin listening'))).address}` : undefined;
    const address = line.address;
    const url = address.startsWith('unix:') ? undefined : `http://${address}`;
    return Object.assign(p, {
      address,
      url,
      adminUrl,
      socketPath: address.startsWith('unix:') ? address.slice(5) : undefined,
      listeningAt: line.__at,
    });
  } catch (err) {
    await p.stop();
    throw err;
  }
}

/** The ceiling: a bare node:http server answering every request with `body` (see ceiling.mjs). */
export async function startCeiling(bodyFile, nodeArgs = []) {
  const p = spawnNode('ceiling', [CEILING], { env: { BENCH_BODY_FILE: bodyFile }, nodeArgs });
  try {
    const line = await p.waitFor((l) => l.msg === 'listening');
    return Object.assign(p, { url: `http://127.0.0.1:${line.port}`, listeningAt: line.__at });
  } catch (err) {
    await p.stop();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------------------

/** Bytes in a megabyte, as every memory figure of the bench reports them (the kernel's "kB" is 1024 bytes). */
export const MB = 1e6;

/** Resident set size of a process, MB (VmRSS in /proc/PID/status, whose kB are KiB). */
export function rssMB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return (Number(m[1]) * 1024) / MB;
}

const CLK_TCK = 100;
/** User + system CPU seconds a process has used so far. */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[0] is state (field 3); utime is field 14, stime field 15.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** CPU seconds of the whole machine that were busy (not idle or iowait) so far, from /proc/stat. */
export function machineBusySeconds() {
  const [, ...ticks] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).map(Number);
  const [user, nice, system, _idle, _iowait, irq, softirq, steal] = ticks;
  return (user + nice + system + irq + softirq + steal) / CLK_TCK;
}

/** CPU seconds of this process and of its children that have exited (and been waited for). */
export function ownCpuSeconds() {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
}

/**
 * V8 heap in use right after a full garbage collection, MB, asked of a child started with
 * --inspect=127.0.0.1:0 through its inspector (loopback only). What a leak leaves behind, whatever the heap's
 * sizing heuristics do to RSS.
 */
export async function heapAfterGcMB(child) {
  const [url] = await child.stderrMatch(/ws:\/\/127\.0\.0\.1:\d+\/[0-9a-f-]+/);
  const ws = new WebSocket(url);
  const pending = new Map();
  let id = 0;
  ws.addEventListener('message', (event) => {
    const msg = JSON.parse(String(event.data));
    pending.get(msg.id)?.(msg);
    pending.delete(msg.id);
  });
  const call = (method, params = {}) =>
    new Promise((resolve, reject) => {
      const n = ++id;
      const timer = setTimeout(() => reject(new Error(`inspector: ${method} timed out`)), 10_000);
      pending.set(n, (msg) => {
        clearTimeout(timer);
        if (msg.error) reject(new Error(`inspector: ${msg.error.message}`));
        else resolve(msg.result);
      });
      ws.send(JSON.stringify({ id: n, method, params }));
    });
  await new Promise((resolve, reject) => {
    ws.addEventListener('open', resolve, { once: true });
    ws.addEventListener('error', () => reject(new Error('inspector: cannot connect')), { once: true });
  });
  try {
    await call('HeapProfiler.collectGarbage');
    await call('HeapProfiler.collectGarbage');
    const { result } = await call('Runtime.evaluate', { expression: 'process.memoryUsage().heapUsed', returnByValue: true });
    return result.value / MB;
  } finally {
    ws.close();
  }
}

export function machine() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown';
  const nproc = cpuinfo.split('\n').filter((l) => /^processor\s*:/.test(l)).length;
  const memTotal = /^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1];
  return {
    nproc,
    cpu: model,
    memGB: memTotal ? Math.round(Number(memTotal) / 1024 / 1024) : undefined,
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
  };
}

// ---------------------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------------------

/** One GET; resolves with status, headers, body and the time it took (ms, until the whole body). */
export function timedGet({ url, socketPath, path: p, headers = { Metadata: 'true' }, agent }) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const options = socketPath ? { socketPath, path: p, headers, agent } : { ...splitUrl(url), path: p, headers, agent };
    const req = http.get(options, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'), ms: performance.now() - started }),
      );
      res.on('error', reject);
    });
    req.setTimeout(30_000, () => req.destroy(new Error(`GET ${p}: no answer in 30 s`)));
    req.on('error', reject);
  });
}

function splitUrl(url) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port) };
}

/** A keep-alive agent with one connection: sequential latency samples on a warm connection. */
export function oneConnection() {
  return new http.Agent({ keepAlive: true, maxSockets: 1 });
}

export async function emulatorStats(emulatorUrl) {
  const r = await timedGet({ url: emulatorUrl, path: '/__emulator/stats', headers: {} });
  return JSON.parse(r.body);
}

export function setFaults(emulatorUrl, faults) {
  const body = JSON.stringify(faults);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        ...splitUrl(emulatorUrl),
        path: '/__emulator/faults',
        method: 'POST',
        agent: false,
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
      },
      (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`faults: ${res.statusCode}`))));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * What a client of HIMDS itself does, measured from here: GET (401 naming a key file), read the key file,
 * GET again with it (200). The emulator's own two-leg latency, with nothing of ours in between.
 */
export async function twoLegDirect(emulatorUrl, resource, agent) {
  const p = tokenPath(resource, '2020-06-01');
  const started = performance.now();
  const first = await timedGet({ url: emulatorUrl, path: p, agent });
  if (first.status !== 401) throw new Error(`emulator answered ${first.status} to the first leg`);
  const realm = /^basic realm=(.*)$/i.exec(first.headers['www-authenticate'] ?? '')?.[1];
  if (!realm) throw new Error('no realm in the challenge');
  const key = await readFile(realm, 'utf8');
  const second = await timedGet({ url: emulatorUrl, path: p, agent, headers: { Metadata: 'true', Authorization: `Basic ${key}` } });
  if (second.status !== 200) throw new Error(`emulator answered ${second.status} to the authorized leg`);
  return performance.now() - started;
}

// ---------------------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------------------

/** Nearest-rank percentile of an array of numbers (q in 0..1). */
export function percentile(values, q) {
  if (values.length === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1];
}

export const median = (values) => {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};

export const round = (x, digits = 3) => (Number.isFinite(x) ? Number(x.toFixed(digits)) : x);

// ---------------------------------------------------------------------------------------------------------
// autocannon
// ---------------------------------------------------------------------------------------------------------

/**
 * One autocannon run. Latencies are taken from its per-response event (fractional ms; its own histogram keeps
 * whole milliseconds only). Returns requests/s (responses with `expect` status), p50/p99 (ms), the count of
 * other statuses and errors, and the CPU the server process used meanwhile (share of one core).
 */
export function cannon({
  url,
  socketPath,
  path: p,
  headers = { Metadata: 'true' },
  connections,
  duration,
  amount,
  expect = 200,
  latencies = true,
  serverPid,
  overallRate,
  milestones = [],
}) {
  return new Promise((resolve, reject) => {
    const samples = latencies ? [] : undefined;
    let ok = 0;
    let other = 0;
    let last = 0;
    const cpu0 = serverPid ? cpuSeconds(serverPid) : 0;
    const self0 = process.cpuUsage();
    const busy0 = machineBusySeconds();
    const started = performance.now();
    const options = {
      url: url + p,
      connections,
      pipelining: 1,
      headers,
      timeout: 10,
      // autocannon stops only on a sampling tick: a short interval keeps the idle tail of an `amount` run short.
      sampleInt: 100,
      ...(socketPath ? { socketPath } : {}),
      ...(amount ? { amount } : { duration }),
      ...(overallRate ? { overallRate } : {}),
    };
    const instance = autocannon(options, (err, result) => {
      if (err) return reject(err);
      // Up to the last response: an `amount` run is idle between its last response and the next tick.
      const seconds = ((last || performance.now()) - started) / 1000;
      const self = process.cpuUsage(self0);
      const serverCpu = serverPid ? cpuSeconds(serverPid) - cpu0 : 0;
      const loadCpu = (self.user + self.system) / 1e6;
      resolve({
        rps: ok / seconds,
        p50: samples ? percentile(samples, 0.5) : undefined,
        p99: samples ? percentile(samples, 0.99) : undefined,
        requests: ok,
        other,
        errors: result.errors,
        timeouts: result.timeouts,
        seconds,
        serverCpu: serverPid ? serverCpu / seconds : undefined,
        loadCpu: loadCpu / seconds,
        // Cores other processes took meanwhile (the machine's busy time less ours): what a noisy neighbour cost.
        otherCores: Math.max(0, (machineBusySeconds() - busy0 - serverCpu - loadCpu) / seconds),
      });
    });
    // `milestones`: [{ at: n, fn }], fn called once when the n-th expected response arrives.
    const pending = [...milestones].sort((a, b) => a.at - b.at);
    instance.on('response', (_client, status, _bytes, ms) => {
      last = performance.now();
      if (status === expect) {
        ok++;
        samples?.push(ms);
        while (pending.length > 0 && pending[0].at <= ok) pending.shift().fn();
      } else other++;
    });
  });
}
