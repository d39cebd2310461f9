// A role loads only its own code (issue 15): the shipped program is a bundle (scripts/bundle.mjs) whose entry,
// dist/cli.js, holds the command line and every command's option table, and each command loads what it runs
// when it runs. Two views of it:
//   - esbuild's metafile of this build (dist/bundle-meta.json): which sources each output file holds and what it
//     imports, statically or when run; the modules a command loads are the import() calls in its own source;
//   - real processes started from dist/cli.js (an emulator, a relay on a unix socket, a sidecar in front of it,
//     a token through both and a scrape), each reporting the Node built-ins it loaded when it exits.
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { Child, ROOT, builtCli } from './fixtures/process.js';
import { ARM, get } from './fixtures/stack.js';

interface Output {
  imports: { path: string; kind: string; external?: boolean }[];
  inputs: Record<string, unknown>;
  entryPoint?: string;
}
const CLI = builtCli();
const meta = JSON.parse(readFileSync(path.join(ROOT, 'dist', 'bundle-meta.json'), 'utf8')) as { outputs: Record<string, Output> };
const ENTRY = 'dist/cli.js';

/** The output files loaded once these are: their static imports, transitively. */
function loadedWith(roots: readonly string[]): Set<string> {
  const loaded = new Set<string>();
  const next = [...roots];
  while (next.length > 0) {
    const file = next.pop()!;
    if (loaded.has(file)) continue;
    loaded.add(file);
    for (const i of meta.outputs[file]!.imports) if (i.kind === 'import-statement' && !i.external) next.push(i.path);
  }
  return loaded;
}
/** The sources (src/... and node_modules/...) those output files hold. */
const sourcesOf = (files: Set<string>) => new Set([...files].flatMap((f) => Object.keys(meta.outputs[f]!.inputs)));
/** The package a node_modules source belongs to, or the source itself. */
const unitOf = (source: string) => /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(source)?.[1] ?? source;

/** The output file whose entry point a command's `import('../x.js')` names. */
function chunkFor(source: string): string {
  const found = Object.entries(meta.outputs).find(([, o]) => o.entryPoint === source);
  if (!found) throw new Error(`no output has ${source} as its entry point`);
  return found[0];
}
/** What `src/commands/NAME.ts` loads when it runs: its import() calls, as sources. */
function runsWith(command: string): string[] {
  const file = path.join('src', 'commands', `${command}.ts`);
  const text = readFileSync(path.join(ROOT, file), 'utf8');
  return [...text.matchAll(/import\('(\.\.\/[^']+)\.js'\)/g)].map((m) => path.posix.join('src/commands', `${m[1]}.ts`));
}

const RUNTIME_ROOMS = [
  'src/server/',
  'src/upstream/',
  'src/tokens/',
  'src/observability/',
  'src/host/',
  'src/emulator/himds.ts',
  'src/webhook/server.ts',
];

t.test('the entry holds the command line and option tables only: no dependency, no runtime', async (t) => {
  const sources = [...sourcesOf(loadedWith([ENTRY]))];
  t.ok(
    sources.includes('src/cli.ts') && sources.includes('src/commands/serve.ts'),
    `the entry holds cli.ts and the commands (${sources.length} sources)`,
  );
  t.same(
    sources.filter((s) => s.includes('node_modules/')),
    [],
    'no dependency (every command, the probe every 10 s included, loads it)',
  );
  t.same(
    sources.filter((s) => RUNTIME_ROOMS.some((room) => s.startsWith(room))),
    [],
    `none of ${RUNTIME_ROOMS.join(', ')}`,
  );
});

// For each command: what it must never load. `demo` runs the emulator and the proxy together: not listed.
/** The proxy's own dependencies and entry: only `serve` (and `demo`) may load them. */
const PROXY = ['undici', 'prom-client', 'lru-cache', 'src/server/proxy.ts'];
const NEVER: Record<string, { units: string[]; why: string }> = {
  serve: {
    units: [
      'src/emulator/himds.ts',
      'src/server/demo.ts',
      'src/observability/probe.ts',
      'src/webhook/server.ts',
      'src/webhook/admission.ts',
      'src/webhook/tls.ts',
    ],
    why: 'the sidecar and the relay: no emulator, demo, probe client or webhook',
  },
  probe: {
    units: ['pino', ...PROXY, 'src/tokens/cache.ts'],
    why: 'the health check, every 10 s in every container: node:http and nothing else of ours',
  },
  'emulate-himds': { units: [...PROXY, 'src/tokens/cache.ts', 'src/webhook/server.ts'], why: 'the emulator: no proxy, no upstream client' },
  webhook: { units: [...PROXY, 'src/tokens/cache.ts', 'src/emulator/himds.ts'], why: 'the admission webhook: no proxy, no emulator' },
  'netns-setup': {
    units: [...PROXY, 'src/emulator/himds.ts', 'src/webhook/server.ts'],
    why: 'the one-shot that adds the address: no proxy, no emulator, no webhook',
  },
};

for (const [command, never] of Object.entries(NEVER)) {
  t.test(`${command} loads only its own code: ${never.why}`, async (t) => {
    const sources = runsWith(command);
    t.ok(sources.length > 0, `${command} loads ${sources.join(', ')} when it runs`);
    const units = new Set([...sourcesOf(loadedWith([ENTRY, ...sources.map(chunkFor)]))].map(unitOf));
    t.ok(
      sources.every((s) => units.has(s)),
      'those modules are in what it loads',
    );
    t.same(
      never.units.filter((u) => units.has(u)),
      [],
      `none of ${never.units.join(', ')}`,
    );
  });
}

t.test('serve loads the upstream client without node:http2 (and TLS with it)', async (t) => {
  const sources = sourcesOf(loadedWith([ENTRY, ...runsWith('serve').map(chunkFor)]));
  t.ok(
    [...sources].some((s) => s.includes('node_modules/undici/')),
    'undici is in it',
  );
  t.ok(sources.has('not-built-in:http2'), "undici's require('node:http2') is the bundle's stand-in that fails, as on a Node without HTTP/2");
});

t.test('the running processes load no built-in they do not use', async (t) => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-bundle-'));
  t.teardown(() => rm(work, { recursive: true, force: true }));
  const preload = path.join(ROOT, 'test', 'fixtures', 'loaded-builtins.mjs');
  // Through env -i, which execs node in its own place (same PID): tap wraps this process's spawn to preload its
  // coverage hooks (node:crypto, the inspector) into every child through NODE_OPTIONS, which would be counted here.
  const start = (name: string, args: string[]) =>
    new Child(
      name,
      [
        'env',
        '-i',
        `PATH=${process.env.PATH ?? ''}`,
        `ARC_IMDS_TEST_BUILTINS_FILE=${path.join(work, `${name}.json`)}`,
        process.execPath,
        '--import',
        preload,
        CLI,
        ...args,
      ],
      { t },
    );
  const tokens = path.join(work, 'tokens');
  const socket = path.join(work, 'relay.sock');
  const emulator = start('emulator', ['emulate-himds', '--listen', '127.0.0.1:0', '--tokens-dir', tokens]);
  const himds = String((await emulator.logLine('HIMDS emulator listening')).url);
  const relay = start('relay', ['serve', '--listen', `unix:${socket}`, '--upstream', himds, '--tokens-dir', tokens, '--admin-listen', 'off']);
  await relay.logLine('listening');
  const sidecar = start('sidecar', [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--upstream',
    `unix:${socket}`,
    '--tokens-dir',
    path.join(work, 'no-keys'),
    '--admin-listen',
    '127.0.0.1:0',
  ]);
  const port = /:(\d+)$/.exec(String((await sidecar.logLine('listening')).address))![1];
  const adminPort = /:(\d+)$/.exec(String((await sidecar.logLine('admin listening: /metrics /healthz /readyz')).address))![1];
  const token = await get(`http://127.0.0.1:${port}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=${encodeURIComponent(ARM)}`);
  t.equal(token.status, 200, 'a token through the sidecar and the relay (the relay answered the key-file challenge)');
  t.equal((await get(`http://127.0.0.1:${adminPort}/metrics`, {})).status, 200, "a scrape of the sidecar's metrics");
  for (const c of [sidecar, relay, emulator]) t.same(await c.stop(), { code: 0, signal: null, killed: false }, `${c.label} exits 0 on SIGTERM`);

  const loaded = async (name: string) => new Set(JSON.parse(await readFile(path.join(work, `${name}.json`), 'utf8')) as string[]);
  const [side, rel] = [await loaded('sidecar'), await loaded('relay')];
  t.ok(side.has('http') && rel.has('http'), 'the lists are real: both loaded node:http');
  t.ok(rel.has('crypto'), 'the relay loaded node:crypto (it binds a unix socket: a random temporary name)');
  const neverLoaded = (set: Set<string>, names: string[]) => names.filter((n) => set.has(n));
  t.same(neverLoaded(side, ['http2', 'tls', 'https', 'zlib', 'crypto']), [], 'the sidecar: no HTTP/2, TLS, HTTPS, zlib or crypto');
  t.same(neverLoaded(rel, ['http2', 'tls', 'https', 'zlib']), [], 'the relay: no HTTP/2, TLS, HTTPS or zlib');
});
