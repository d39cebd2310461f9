// The entry point's process-wide V8 settings (src/node-flags.ts): which command needs the runtime options, how
// missing ones are found, and, on a Node that has process.execve, that `node dist/cli.js` started without them
// runs with them (the same PID), while `probe` is never re-executed. Loopback only.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, stat, symlink } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { RUNTIME_OPTIONS, commandOf, missingRuntimeOptions } from '../src/node-flags.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'cli.js');
if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run 'npm run build' first (npm test does it as pretest)`);
const HAS_EXECVE = typeof (process as { execve?: unknown }).execve === 'function';

t.test('the command is read as cli.ts reads it', async (t) => {
  t.equal(commandOf([]), 'serve', 'no command: serve');
  t.equal(commandOf(['--listen', '127.0.0.1:0']), 'serve', 'options only: serve');
  t.equal(commandOf(['probe', '--url', 'x']), 'probe');
  t.equal(commandOf(['emulate-himds']), 'emulate-himds');
  for (const help of ['--help', '-h', 'help', '--version', '-v']) t.equal(commandOf([help]), 'help', `${help}: not a long-running command`);
});

t.test('missing runtime options: from the command line, either spelling, any value, negated or not', async (t) => {
  t.same(missingRuntimeOptions([]), [...RUNTIME_OPTIONS], 'none given: all');
  t.same(missingRuntimeOptions([...RUNTIME_OPTIONS]), [], 'all given');
  t.same(
    missingRuntimeOptions(['--max_semi_space_size=1', '--min_semi_space_size=1', '--heap_growing_percent=50', '--no_maglev', '--liftoff_only']),
    [],
    'underscores are the same flags',
  );
  t.same(
    missingRuntimeOptions(['--liftoff-only', '--enable-source-maps']),
    RUNTIME_OPTIONS.filter((o) => o !== '--liftoff-only'),
    'only what is missing',
  );
  t.same(
    missingRuntimeOptions(['--max-semi-space-size=4', '--min-semi-space-size=2', '--heap-growing-percent=100']),
    ['--no-maglev', '--liftoff-only'],
    "another value is the operator's choice",
  );
  t.same(
    missingRuntimeOptions(['--no-liftoff-only', '--maglev']),
    RUNTIME_OPTIONS.slice(0, 3),
    "negated, or not negated where ours is: the operator's choice",
  );
  t.same(
    missingRuntimeOptions(['--optimize-for-size']),
    [...RUNTIME_OPTIONS],
    'the option an earlier version ran with is not one of them: all are added',
  );
  t.same(
    missingRuntimeOptions(['--liftoff-only-x', '--maglevx', '--heap-growing-percentage=1']),
    [...RUNTIME_OPTIONS],
    'a longer flag name is not the option',
  );
});

t.test('node accepts every runtime option, and refuses all but the first in NODE_OPTIONS: the command line is their place', async (t) => {
  const ok = spawnSync(process.execPath, [...RUNTIME_OPTIONS, '-e', '0'], { encoding: 'utf8' });
  t.equal(ok.status, 0, `node ${RUNTIME_OPTIONS.join(' ')} starts (${ok.stderr.trim()})`);
  for (const option of RUNTIME_OPTIONS.slice(1)) {
    const result = spawnSync(process.execPath, ['-e', '0'], { env: { ...process.env, NODE_OPTIONS: option }, encoding: 'utf8' });
    t.not(result.status, 0, `${option} in NODE_OPTIONS: node does not start`);
    t.match(result.stderr, /not allowed in NODE_OPTIONS/, '...and says why');
  }
});

function cmdline(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
}

/** An emulator started by `argv` (its command line up to the CLI's arguments); resolves once it listens. */
async function emulatorVia(t: Test, argv: string[]): Promise<{ cmdline: string[]; stop: () => Promise<unknown> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-flags-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` };
  delete env.NODE_OPTIONS;
  const child = spawn(argv[0]!, [...argv.slice(1), 'emulate-himds', '--listen', '127.0.0.1:0', '--tokens-dir', dir], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise((resolve) => child.once('close', resolve));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  const listening = await new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no listening line within 8 s')), 8000);
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!line.includes('HIMDS emulator listening')) return;
      clearTimeout(timer);
      resolve(JSON.parse(line) as Record<string, unknown>);
    });
  });
  t.match(listening.url, /^http:\/\/127\.0\.0\.1:\d+$/, 'it serves');
  return {
    cmdline: cmdline(child.pid!),
    stop: () => {
      child.kill('SIGTERM');
      return exited;
    },
  };
}

const withOptions = (t: Test, argv: string[], script: string) => {
  t.same(
    argv.slice(1, 1 + RUNTIME_OPTIONS.length),
    [...RUNTIME_OPTIONS],
    `the process the spawned PID now runs has the runtime options (${argv.join(' ')})`,
  );
  t.ok(argv.includes(script) && argv.includes('emulate-himds'), 'and the same script and arguments');
};

const NO_EXECVE = 'process.execve is not in this Node (before 22.15): it runs on without them';

t.test(
  'node dist/cli.js emulate-himds without the options runs with them, in the same process',
  { skip: HAS_EXECVE ? false : NO_EXECVE },
  async (t) => {
    const emulator = await emulatorVia(t, [process.execPath, CLI]);
    withOptions(t, emulator.cmdline, CLI);
    t.equal(await emulator.stop(), 0, 'and exits 0 on SIGTERM, as before');
  },
);

t.test('the bin as npm installs it: a link to dist/cli.js', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-bin-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const bin = path.join(dir, 'arc-imds-proxy');
  await symlink(CLI, bin);
  t.ok((await stat(CLI)).mode & 0o111, 'dist/cli.js is executable (the build makes it so, as npm does on install)');

  await t.test('run directly: its shebang starts node with the runtime options', async (t) => {
    const emulator = await emulatorVia(t, [bin]);
    withOptions(t, emulator.cmdline, bin);
    t.equal(await emulator.stop(), 0, 'exits 0 on SIGTERM');
  });
  await t.test('given to node without them: re-executed with them', { skip: HAS_EXECVE ? false : NO_EXECVE }, async (t) => {
    const emulator = await emulatorVia(t, [process.execPath, bin]);
    withOptions(t, emulator.cmdline, bin);
    t.equal(await emulator.stop(), 0, 'exits 0 on SIGTERM');
  });
});

t.test('node dist/cli.js --help and --version print and exit 0 (not long-running commands: no re-exec)', async (t) => {
  for (const flag of ['--help', '--version']) {
    const r = spawnSync(process.execPath, [CLI, flag], { encoding: 'utf8', timeout: 8000 });
    t.equal(r.status, 0, `${flag}: exit 0`);
    t.ok(r.stdout.length > 0 && r.stderr === '', `${flag}: prints, nothing on stderr`);
  }
});

t.test('probe is never re-executed (it runs every 10 s)', async (t) => {
  // A listener that never answers: the probe waits on it, and its command line can be read meanwhile.
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => sockets.add(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const connected = new Promise((resolve) => server.once('connection', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const child = spawn(process.execPath, [CLI, 'probe', '--url', `http://127.0.0.1:${port}/readyz`, '--timeout', '5s'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise((resolve) => child.once('close', resolve));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  await connected;
  const argv = cmdline(child.pid!);
  t.ok(argv.includes('probe'), `the probe is waiting for its answer (${argv.join(' ')})`);
  t.notOk(
    argv.some((a) => RUNTIME_OPTIONS.some((o) => a.startsWith(o.split('=')[0]!))),
    'with no runtime options added',
  );
});
