// Process-wide V8 settings, in force however the program is started: the image's ENTRYPOINT, `npm start`, the
// `arc-imds-proxy` bin (its shebang carries them) or a plain `node dist/cli.js`. cli.ts imports this module
// first, so it runs before anything else is evaluated. docs/performance.md has the measurements.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';

/**
 * A fixed 2 MB young generation (V8 semi-space). Without it Node 24 grows the semi-spaces to 64 MB under a burst
 * of connections (Node 20: 16 MB) and keeps them. V8 sizes the heap before any JavaScript runs, so these must
 * be on node's command line: set later with setFlagsFromString they change nothing (measured with
 * v8.getHeapSpaceStatistics(): new_space still grows to 128 MB on Node 24), and NODE_OPTIONS refuses the
 * second. The Dockerfile's ENTRYPOINT, `npm start` and the bin's shebang carry exactly these (tests check it).
 */
export const HEAP_OPTIONS = ['--max-semi-space-size=2', '--min-semi-space-size=2'] as const;

/** The commands that run for long enough for the heap options to matter. `probe` runs every 10 s: no re-exec. */
const LONG_RUNNING = new Set(['serve', 'emulate-himds', 'demo', 'webhook']);

/** The command `argv` (process.argv.slice(2)) runs, as cli.ts reads it: the first word, `serve` by default. */
export function commandOf(argv: readonly string[]): string {
  const first = argv[0];
  if (first === undefined) return 'serve';
  if (['--help', '-h', 'help', '--version', '-v'].includes(first)) return 'help';
  return first.startsWith('-') ? 'serve' : first;
}

/** The heap options missing from how this node was started (its command line, or NODE_OPTIONS). */
export function missingHeapOptions(execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  const given = [...execArgv, ...(nodeOptions ?? '').split(/\s+/)].map((a) =>
    a.replace(/^--([^=]*)/, (_m, name: string) => `--${name.replaceAll('_', '-')}`),
  );
  return HEAP_OPTIONS.filter((option) => {
    const name = option.slice(0, option.indexOf('='));
    return !given.some((a) => a === name || a.startsWith(`${name}=`));
  });
}

/** Whether this process runs cli.ts (dist/cli.js, or the bin's link to it), not a test that imports this module. */
function isTheEntryPoint(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(new URL('./cli.js', import.meta.url)));
  } catch {
    return false;
  }
}

/**
 * Started without the heap options for a long-running command: replace this process with node started with
 * them (same PID, so signals and a container's PID 1 are unaffected; about 40 ms). process.execve exists from
 * Node 22.15 / 23.11 on (the image runs Node 24); on an older Node the process runs on without them.
 */
function reexecWithHeapOptions(): void {
  if (!isTheEntryPoint() || !LONG_RUNNING.has(commandOf(process.argv.slice(2)))) return;
  const missing = missingHeapOptions(process.execArgv, process.env.NODE_OPTIONS);
  const execve = (process as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
  if (missing.length === 0 || typeof execve !== 'function') return;
  execve(process.execPath, [process.execPath, ...missing, ...process.execArgv, ...process.argv.slice(1)], process.env);
}

reexecWithHeapOptions();

// undici parses upstream answers with llhttp compiled to WebAssembly. V8 first runs it as baseline (Liftoff)
// code and later recompiles it optimised on a background thread, whose malloc arena then keeps about 10 MB
// resident for the life of the process (measured: RSS 65 -> 75 MB, at a moment that depends on load). Upstream
// answers are rare (a token per resource every few hours) and small, so baseline code is plenty. This one can
// be set at run time: it concerns WebAssembly only, and applies to modules compiled after it.
setFlagsFromString('--liftoff-only');
