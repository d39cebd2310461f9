#!/usr/bin/env -S node --max-semi-space-size=1 --min-semi-space-size=1 --heap-growing-percent=50 --no-maglev --liftoff-only
// arc-imds-proxy <command>: dispatch to the command (src/commands/), run it until a signal, and turn what it
// throws into an exit status by the error's stable code. Nothing else lives here.
// First: process-wide V8 settings (and a re-exec with the runtime options when they are missing).
import './node-flags.js';
import { EXIT_STATUS, type Command, type Running } from './commands/command.js';
import { demo } from './commands/demo.js';
import { emulateHimds } from './commands/emulate-himds.js';
import { netnsSetupCommand } from './commands/netns-setup.js';
import { probeCommand } from './commands/probe.js';
import { serve } from './commands/serve.js';
import { webhook } from './commands/webhook.js';
import { VERSION } from './version.js';
// Command modules hold only their option tables: each loads what it runs when it runs (`serve` never loads the
// emulator, `probe` not the proxy). Loaded modules are resident memory for the life of a sidecar, and start-up
// time for every probe.

const COMMANDS: readonly Command[] = [serve, emulateHimds, demo, netnsSetupCommand, probeCommand, webhook];

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 4;
  return `Usage: arc-imds-proxy [command] [options]

Azure VM IMDS managed-identity endpoint for containers on Azure Arc-enabled machines.

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)} ${c.summary}`).join('\n')}

Run 'arc-imds-proxy <command> --help' for a command's options. --version prints the version.
`;
}

function fail(message: string, code: number): never {
  process.stderr.write(
    `${message
      .split('\n')
      .map((line) => `arc-imds-proxy: ${line}`)
      .join('\n')}\n`,
  );
  process.exit(code);
}

async function main(argv: string[]): Promise<void> {
  const first = argv[0];
  if (first === '--version' || first === '-v') return void process.stdout.write(`${VERSION}\n`);
  if (first === '--help' || first === '-h' || first === 'help') return void process.stdout.write(usage());
  const named = first !== undefined && !first.startsWith('-');
  const name = named ? first : 'serve';
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) fail(`unknown command '${name}' (try --help)`, 2);

  // Signal handlers first: a supervisor may signal the moment it sees the 'listening' line.
  let running: Running | undefined;
  let stopping: NodeJS.Signals | undefined;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = signal;
    if (running) close(running, signal);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  try {
    running = await command.run(named ? argv.slice(1) : argv, process.env);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    const status = typeof code === 'string' ? EXIT_STATUS[code] : undefined;
    if (status !== undefined) fail((err as Error).message, status);
    if (code === 'EACCES' || code === 'EADDRINUSE') fail((err as Error).message, 1);
    throw err;
  }
  if (!running) return;
  if (stopping) close(running, stopping);
}

function close(app: Running, signal: NodeJS.Signals): void {
  app.close().then(
    () => process.exit(0),
    (err: unknown) => fail(`error while stopping on ${signal}: ${(err as Error).message}`, 1),
  );
}

main(process.argv.slice(2)).catch((err: unknown) => fail(`fatal: ${(err as Error).stack ?? String(err)}`, 1));
