#!/usr/bin/env -S node --max-semi-space-size=2 --min-semi-space-size=2
// arc-imds-proxy <command>: parse, wire, run until a signal. Everything else lives in the modules it calls.
// First: process-wide V8 settings (and a re-exec with the heap options when they are missing).
import './node-flags.js';
import {
  ConfigError, DEMO_OPTIONS, EMULATOR_OPTIONS, NETNS_SETUP_OPTIONS, PROBE_OPTIONS, SERVE_OPTIONS, helpText, parseDemo,
  parseEmulator, parseNetnsSetup, parseProbe, parseServe,
} from './config.js';
import { VERSION } from './version.js';
// Each command loads what it runs, when it runs: `serve` never loads the emulator, `probe` not the proxy.
// (Loaded modules are resident memory for the life of a sidecar, and start-up time for every probe.)


const USAGE = `Usage: arc-imds-proxy [command] [options]

Azure VM IMDS managed-identity endpoint for containers on Azure Arc-enabled machines.

Commands:
  serve            serve the IMDS contract, backed by Arc HIMDS or a relay (the default command)
  emulate-himds    run the built-in HIMDS emulator, for development and tests
  demo             the proxy in front of the emulator on free loopback ports; prints curl commands
  netns-setup      bring lo up and add 169.254.169.254/32 to it in this network namespace (needs NET_ADMIN)
  probe            exit 0 when an admin listener's /readyz says ready (for health checks without curl)

Run 'arc-imds-proxy <command> --help' for a command's options. --version prints the version.
`;

interface Running {
  close(): Promise<void>;
}

type Command = (argv: string[]) => Promise<Running | undefined>;

const COMMANDS: Record<string, Command> = {
  async serve(argv) {
    const { config, help } = parseServe(argv, process.env);
    if (help) return void process.stdout.write(helpText('serve', 'Serve the Azure IMDS token contract, backed by Arc HIMDS (or a relay).', SERVE_OPTIONS));
    const [{ startProxy }, { createLogger }] = await Promise.all([import('./proxy.js'), import('./observability/log.js')]);
    return startProxy(config, createLogger(config.logLevel));
  },
  async 'emulate-himds'(argv) {
    const { config, help } = parseEmulator(argv, process.env);
    if (help) return void process.stdout.write(helpText('emulate-himds', 'Run the built-in Arc HIMDS emulator.', EMULATOR_OPTIONS));
    const [{ HimdsEmulator }, { createLogger }] = await Promise.all([import('./emulator/himds.js'), import('./observability/log.js')]);
    const log = createLogger(config.logLevel);
    const emulator = await HimdsEmulator.start(config, config.listen);
    log.info({ url: emulator.url, tokensDir: config.tokensDir }, 'HIMDS emulator listening');
    return emulator;
  },
  async 'netns-setup'(argv) {
    const { config, help } = parseNetnsSetup(argv, process.env);
    if (help) return void process.stdout.write(helpText('netns-setup', "Prepare the application's network namespace to answer 169.254.169.254 (idempotent).", NETNS_SETUP_OPTIONS));
    const { netnsSetup } = await import('./netns.js');
    for (const line of await netnsSetup(config)) process.stdout.write(`netns-setup: ${line}\n`);
    return undefined;
  },
  async probe(argv) {
    const { config, help } = parseProbe(argv, process.env);
    if (help) return void process.stdout.write(helpText('probe', "Exit 0 when the admin listener's /readyz is ready, else 1 with the reason.", PROBE_OPTIONS));
    const { probe } = await import('./probe.js');
    const result = await probe(config);
    if (!result.ok) fail(result.message, 1);
    process.stdout.write(`${result.message}\n`);
    return undefined;
  },
  async demo(argv) {
    const { config, help } = parseDemo(argv, process.env);
    if (help) return void process.stdout.write(helpText('demo', 'Run the proxy in front of the HIMDS emulator on free loopback ports.', DEMO_OPTIONS));
    const [{ startDemo }, { createLogger }] = await Promise.all([import('./demo.js'), import('./observability/log.js')]);
    const demo = await startDemo(config, createLogger(config.logLevel));
    process.stdout.write(demo.instructions);
    return demo;
  },
};

function fail(message: string, code: number): never {
  process.stderr.write(`${message.split('\n').map((line) => `arc-imds-proxy: ${line}`).join('\n')}\n`);
  process.exit(code);
}

async function main(argv: string[]): Promise<void> {
  const first = argv[0];
  if (first === '--version' || first === '-v') return void process.stdout.write(`${VERSION}\n`);
  if (first === '--help' || first === '-h' || first === 'help') return void process.stdout.write(USAGE);
  const named = first !== undefined && !first.startsWith('-');
  const name = named ? first : 'serve';
  const command = COMMANDS[name];
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
    running = await command(named ? argv.slice(1) : argv);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message, 2);
    // By name: the modules that define these errors are loaded only by the commands that throw them.
    const named = err as { name?: string; config?: boolean; exitCode?: number; message?: string };
    if (named.name === 'ListenError') fail(named.message ?? '', named.config ? 2 : 1);
    if (named.name === 'NetnsSetupError') fail(named.message ?? '', named.exitCode ?? 1);
    const code = (err as NodeJS.ErrnoException).code;
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
