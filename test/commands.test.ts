// The commands in process (the CLI runs them in child processes, which coverage cannot see): each one's --help
// from its own table, and the ones safe to run here run for real on loopback and stop.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { demo } from '../src/commands/demo.js';
import { emulateHimds } from '../src/commands/emulate-himds.js';
import { netnsSetupCommand } from '../src/commands/netns-setup.js';
import { NotReady, probeCommand } from '../src/commands/probe.js';
import { serve } from '../src/commands/serve.js';
import { ConfigError } from '../src/options/parser.js';
import { get } from './fixtures/stack.js';

/** What a command writes to stdout while `work` runs. */
async function stdoutOf<T>(work: () => Promise<T>): Promise<{ result: T; out: string }> {
  let out = '';
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  }) as typeof process.stdout.write;
  try {
    return { result: await work(), out };
  } finally {
    process.stdout.write = write;
  }
}

t.test('every command prints its help from its own option table', async (t) => {
  for (const command of [serve, emulateHimds, demo, netnsSetupCommand, probeCommand]) {
    const { result, out } = await stdoutOf(() => command.run(['--help'], {}));
    t.equal(result, undefined, `${command.name} --help: nothing keeps running`);
    t.match(out, new RegExp(`^Usage: arc-imds-proxy ${command.name} \\[options\\]`), `${command.name}: usage`);
    for (const option of command.options) t.match(out, `--${option.flag}`, `${command.name}: --${option.flag}`);
  }
});

t.test('bad options: a ConfigError with every problem, nothing started', async (t) => {
  await t.rejects(emulateHimds.run(['--listen', 'nope', '--key-ttl', '0'], {}), ConfigError);
  await t.rejects(probeCommand.run(['--url', 'ftp://x'], {}), ConfigError);
  await t.rejects(netnsSetupCommand.run(['--address', '300.1.1.1'], {}), ConfigError);
});

t.test('emulate-himds, demo and probe run for real on loopback', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-commands-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const emulator = await emulateHimds.run(['--listen', '127.0.0.1:0', '--tokens-dir', path.join(dir, 'tokens'), '--log-level', 'silent'], {});
  t.ok(emulator, 'the emulator keeps running');
  await emulator!.close();

  const { result: running, out } = await stdoutOf(() => demo.run(['--log-level', 'silent'], {}));
  t.teardown(() => running?.close());
  const admin = /curl -s (http:\/\/127\.0\.0\.1:\d+)\/readyz/.exec(out)?.[1];
  t.ok(admin, 'the demo prints its admin address');
  const token = /curl -s -H 'Metadata: true' '(http:\/\/127\.0\.0\.1:\d+\/metadata\/identity\/oauth2\/token[^']+)'/.exec(out)?.[1];
  t.equal((await get(token!)).status, 200, 'the demo serves a token');
  // Ready once its first check has passed; until then the probe says why not.
  let ready = false;
  for (let i = 0; i < 100 && !ready; i++) {
    try {
      const { out: said } = await stdoutOf(() => probeCommand.run(['--url', admin!], {}));
      t.match(said, /^ready: /, 'probe: ready');
      ready = true;
    } catch (err) {
      t.type(err, NotReady);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  t.ok(ready, 'the probe saw the demo ready');
  await running!.close();
  await t.rejects(probeCommand.run(['--url', admin!, '--timeout', '1s'], {}), NotReady, 'stopped: not ready, with the reason');
});
