// The entry point's process-wide V8 settings (src/node-flags.ts): which command needs the runtime options, how
// missing ones are found, and, on a Node that has process.execve, that `node dist/cli.js` started without them
// runs with them (the same PID), while `probe` is never re-executed. Loopback only.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import t from 'tap';
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

t.test('missing runtime options: from the command line, either spelling, negated or not', async (t) => {
  t.same(missingRuntimeOptions([]), [...RUNTIME_OPTIONS], 'none given: all');
  t.same(missingRuntimeOptions([...RUNTIME_OPTIONS]), [], 'all given');
  t.same(missingRuntimeOptions(['--optimize_for_size', '--liftoff_only']), [], 'underscores are the same flags');
  t.same(missingRuntimeOptions(['--liftoff-only', '--enable-source-maps']), ['--optimize-for-size'], 'only what is missing');
  t.same(
    missingRuntimeOptions(['--max-semi-space-size=2', '--min-semi-space-size=2']),
    [...RUNTIME_OPTIONS],
    'the heap options earlier images ran with: both are added',
  );
  t.same(missingRuntimeOptions(['--no-liftoff-only', '--no-optimize-for-size']), [], "a negated flag is the operator's choice");
  t.same(missingRuntimeOptions(['--optimize-for-size-x', '--liftoff-only-x']), [...RUNTIME_OPTIONS], 'a longer flag name is not the option');
});

t.test('node refuses the runtime options in NODE_OPTIONS, so the command line is the only place for them', async (t) => {
  for (const option of RUNTIME_OPTIONS) {
    const result = spawnSync(process.execPath, ['-e', '0'], { env: { ...process.env, NODE_OPTIONS: option }, encoding: 'utf8' });
    t.not(result.status, 0, `${option} in NODE_OPTIONS: node does not start`);
    t.match(result.stderr, /not allowed in NODE_OPTIONS/, '...and says why');
  }
});

function cmdline(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
}

t.test(
  'node dist/cli.js emulate-himds without the options runs with them, in the same process',
  { skip: HAS_EXECVE ? false : 'process.execve is not in this Node (before 22.15): it runs on without them' },
  async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-flags-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.NODE_OPTIONS;
    const child = spawn(process.execPath, [CLI, 'emulate-himds', '--listen', '127.0.0.1:0', '--tokens-dir', dir], {
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
    const argv = cmdline(child.pid!);
    t.same(
      argv.slice(1, 1 + RUNTIME_OPTIONS.length),
      [...RUNTIME_OPTIONS],
      `the process the spawned PID now runs has the runtime options (${argv.join(' ')})`,
    );
    t.ok(argv.includes(CLI) && argv.includes('emulate-himds'), 'and the same script and arguments');
    child.kill('SIGTERM');
    t.equal(await exited, 0, 'and exits 0 on SIGTERM, as before');
  },
);

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
