// The runtime stage's file tree without a container engine: the build stage's command that picks what ships
// (the bundle, without source maps), exactly as the Dockerfile writes it, run by sh on this checkout's dist/,
// then the image's programs run from what it leaves, with package.json beside it and no node_modules anywhere
// above it: the emulator, a relay in front of it (key-file challenge: undici), a sidecar in front of the relay
// (unix socket), a token through both, and a scrape of the sidecar's /metrics (prom-client). Loopback and unix
// sockets only.
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import t, { type Test } from 'tap';
import { ARM, get } from '../fixtures/stack.js';
import { ROOT, parseDockerfile, read } from '../fixtures/deploy.js';

const dockerfile = parseDockerfile(read('Dockerfile'));
const pickRun = dockerfile.stages.flatMap((s) => s.instructions).find((i) => i.keyword === 'RUN' && /\bout\/dist\b/.test(i.args))?.args ?? '';

function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.join(d.parentPath, d.name));
}

/** Start a program of the pruned tree; resolves with the log lines starting with each of `waitFor`, in order. */
function startFrom(t: Test, app: string, args: string[], ...waitFor: string[]): Promise<Record<string, any>[]> {
  const child = spawn(process.execPath, [path.join(app, 'dist', 'cli.js'), ...args], {
    cwd: app,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH ?? '' },
  });
  const exited = new Promise((resolve) => child.once('close', resolve));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const seen: Record<string, any>[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${args[0]}: no '${waitFor[seen.length]}' within 10 s: ${stderr}`)), 10_000);
    child.once('close', (code) => reject(new Error(`${args[0]} exited ${code}: ${stderr}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (!line.startsWith('{')) return;
      const parsed = JSON.parse(line) as Record<string, any>;
      if (typeof parsed.msg === 'string' && parsed.msg.startsWith(waitFor[seen.length]!)) seen.push(parsed);
      if (seen.length === waitFor.length) {
        clearTimeout(timer);
        resolve(seen);
      }
    });
  });
}

t.test("the build stage ships the bundle only, and the image's programs run from it with no node_modules", async (t) => {
  t.match(pickRun, /^mkdir -p out\/dist && cp /, "the build stage's command that fills out/dist (what the runtime stage copies)");
  const work = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-image-tree-'));
  t.teardown(() => rm(work, { recursive: true, force: true }));
  for (const above of [work, path.dirname(work), '/']) t.notOk(existsSync(path.join(above, 'node_modules')), `no node_modules in ${above}`);
  cpSync(path.join(ROOT, 'dist'), path.join(work, 'dist'), { recursive: true });
  execFileSync('sh', ['-c', pickRun], { cwd: work, stdio: 'pipe' });
  const app = path.join(work, 'out');
  cpSync(path.join(ROOT, 'package.json'), path.join(app, 'package.json'));
  const shipped = files(path.join(app, 'dist')).map((f) => path.relative(app, f));
  t.ok(shipped.includes(path.join('dist', 'cli.js')), 'dist/cli.js');
  t.ok(shipped.includes(path.join('dist', 'THIRD-PARTY-LICENSES.txt')), "dist/THIRD-PARTY-LICENSES.txt (the bundled packages' licences)");
  t.same(
    shipped.filter(
      (f) => f !== path.join('dist', 'cli.js') && f !== path.join('dist', 'THIRD-PARTY-LICENSES.txt') && !/^dist[\\/]chunks[\\/][^\\/]+\.js$/.test(f),
    ),
    [],
    "nothing else but dist/chunks/*.js: no source maps, none of tsc's module files",
  );
  const licences = readFileSync(path.join(app, 'dist', 'THIRD-PARTY-LICENSES.txt'), 'utf8');
  for (const dep of ['undici', 'pino', 'prom-client', 'lru-cache']) t.match(licences, new RegExp(`^${dep}@\\d`, 'm'), `...with ${dep}'s licence`);

  const tokens = path.join(app, 'tokens');
  const [emulator] = await startFrom(t, app, ['emulate-himds', '--listen', '127.0.0.1:0', '--tokens-dir', tokens], 'HIMDS emulator listening');
  const socket = path.join(app, 'run', 'imds.sock');
  await startFrom(
    t,
    app,
    ['serve', '--listen', `unix:${socket}`, '--upstream', emulator!.url, '--tokens-dir', tokens, '--admin-listen', 'off'],
    'listening',
  );
  t.ok(existsSync(socket), 'the relay listens on its unix socket');
  const [sidecar, admin] = await startFrom(
    t,
    app,
    ['serve', '--listen', '127.0.0.1:0', '--upstream', `unix:${socket}`, '--tokens-dir', path.join(app, 'none'), '--admin-listen', '127.0.0.1:0'],
    'listening',
    'admin listening',
  );
  const reply = await get(`http://${sidecar!.address}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=${encodeURIComponent(ARM)}`);
  t.equal(reply.status, 200, `a token through sidecar and relay from the shipped tree${reply.status === 200 ? '' : `: ${reply.text}`}`);
  t.ok(reply.json.access_token, '...with an access_token');
  const metrics = await get(`http://${admin!.address}/metrics`, {});
  t.equal(metrics.status, 200, "the sidecar's /metrics answers");
  for (const name of ['arc_imds_requests_total', 'process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds']) {
    t.match(metrics.text, new RegExp(`^${name}[ {]`, 'm'), `...with ${name}`);
  }
});
