// The runtime stage's file tree without a container engine: the deps stage's pruning, exactly as the
// Dockerfile writes it, run by sh on a copy of this checkout's production dependencies, then the image's
// programs run from that pruned tree (dist/ without source maps, as the build stage leaves it): the emulator,
// a relay in front of it (key-file challenge: undici), a sidecar in front of the relay (unix socket), a token
// through both, and a scrape of the sidecar's /metrics (prom-client). Loopback and unix sockets only.
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import t, { type Test } from 'tap';
import { ARM, get } from '../fixtures/stack.js';
import { ROOT, parseDockerfile, read } from '../fixtures/deploy.js';

const dockerfile = parseDockerfile(read('Dockerfile'));
const depsRun = dockerfile.stages.flatMap((s) => s.instructions).find((i) => i.keyword === 'RUN' && /npm ci\b.*--omit=dev/.test(i.args))?.args ?? '';
const buildPrune = dockerfile.stages.flatMap((s) => s.instructions).find((i) => i.keyword === 'RUN' && /find dist .*\.map/.test(i.args))?.args ?? '';

/** Every production package directory (npm's own answer), relative to node_modules. */
function productionPackages(): string[] {
  const out = execFileSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], { cwd: ROOT, encoding: 'utf8' });
  return out
    .split('\n')
    .filter((p) => p.includes(`${path.sep}node_modules${path.sep}`))
    .map((p) => p.slice(p.lastIndexOf(`node_modules${path.sep}`) + 'node_modules/'.length));
}

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

t.test("the deps stage prunes what never runs, and the image's programs run from what is left", async (t) => {
  t.match(depsRun, /&& cd node_modules/, 'the deps stage prunes node_modules after npm ci');
  t.match(buildPrune, /^find dist -name '\*\.map' -delete$/, 'the build stage drops source maps');
  const app = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-image-tree-'));
  t.teardown(() => rm(app, { recursive: true, force: true }));
  for (const pkg of productionPackages()) cpSync(path.join(ROOT, 'node_modules', pkg), path.join(app, 'node_modules', pkg), { recursive: true });
  cpSync(path.join(ROOT, 'package.json'), path.join(app, 'package.json'));
  cpSync(path.join(ROOT, 'dist'), path.join(app, 'dist'), { recursive: true });
  const before = files(path.join(app, 'node_modules'));
  // The Dockerfile's own commands, from `cd node_modules` on (npm ci is what the copy above stands for).
  execFileSync('sh', ['-c', depsRun.slice(depsRun.indexOf('cd node_modules'))], { cwd: app, stdio: 'pipe' });
  execFileSync('sh', ['-c', buildPrune], { cwd: app, stdio: 'pipe' });
  const after = files(path.join(app, 'node_modules'));
  t.ok(after.length < before.length, `files pruned: ${before.length} -> ${after.length}`);
  t.same(
    after.filter((f) => /\.(d\.[cm]?ts|map|md)$/.test(f)),
    [],
    'no type declarations, source maps or markdown left',
  );
  t.ok(
    after.some((f) => /undici[\\/]LICENSE$/.test(f)),
    'licence files stay',
  );
  t.same(
    files(path.join(app, 'dist')).filter((f) => f.endsWith('.map')),
    [],
    'dist/ has no source maps',
  );

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
  t.equal(reply.status, 200, `a token through sidecar and relay from the pruned tree${reply.status === 200 ? '' : `: ${reply.text}`}`);
  t.ok(reply.json.access_token, '...with an access_token');
  const metrics = await get(`http://${admin!.address}/metrics`, {});
  t.equal(metrics.status, 200, "the sidecar's /metrics answers");
  for (const name of ['arc_imds_requests_total', 'process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds']) {
    t.match(metrics.text, new RegExp(`^${name}[ {]`, 'm'), `...with ${name}`);
  }
});
