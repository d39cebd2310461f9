// Process-wide V8 settings, in force however the program is started: the image's ENTRYPOINT, `npm start`, the
// `arc-imds-proxy` bin (its shebang carries them) or a plain `node dist/cli.js`. cli.ts imports this module
// first: it runs before any command is loaded (in the bundle only the chunks of option tables cli.js imports,
// which define values and do nothing, are evaluated before it). docs/performance.md has the measurements.
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';

/**
 * The node options the program runs with, on node's command line. The Dockerfile's ENTRYPOINT, `npm start` and
 * the bin's shebang carry exactly these (tests check it); `node dist/cli.js` started without them re-executes
 * itself with them (below). docs/performance.md has the measurements.
 *
 * - `--max-semi-space-size=1 --min-semi-space-size=1`: a young generation fixed at 1 MB semi-spaces. By default
 *   Node 24 grows it under a burst of connections and keeps it; a semi-space that V8 shrinks and regrows made
 *   cached-hit throughput flip between two levels ~20% apart from run to run.
 * - `--heap-growing-percent=50`: the old generation may grow by half of what survived the last full collection
 *   before the next one, instead of V8's larger default factors: a burst of abandoned requests (issue 12) costs
 *   about half the memory, for no measurable change in cached-hit throughput.
 * - `--no-maglev`: no mid-tier optimising compiler. The hot path is compiled by TurboFan as before; Maglev's own
 *   code (pages of the node binary) and output cost about 3 MB of idle RSS in every process.
 * - `--liftoff-only`: undici parses upstream answers with llhttp compiled to WebAssembly. V8 runs it as baseline
 *   (Liftoff) code and, once it has run enough, recompiles it optimised on a background thread, whose malloc
 *   arena then stays resident for good (about 10 MB on Node 24, from the first periodic readiness check on).
 *   Upstream answers are rare and small: baseline code is plenty. Node 24 ignores it when set at run time (V8
 *   freezes its flags once started).
 *
 * Not `--optimize-for-size`, which an earlier version used: it also made V8 compile the request path for size,
 * and cached-hit throughput fell by a fifth (docs/performance.md has the A/B). Node refuses every one of these
 * but the first in NODE_OPTIONS; V8 sizes the heap before any JavaScript runs: the command line is the place.
 */
export const RUNTIME_OPTIONS = [
  '--max-semi-space-size=1',
  '--min-semi-space-size=1',
  '--heap-growing-percent=50',
  '--no-maglev',
  '--liftoff-only',
] as const;

/** The commands that run for long enough for the runtime options to matter. `probe` runs every 10 s: no re-exec. */
const LONG_RUNNING = new Set(['serve', 'emulate-himds', 'demo', 'webhook']);

/** The command `argv` (process.argv.slice(2)) runs, as cli.ts reads it: the first word, `serve` by default. */
export function commandOf(argv: readonly string[]): string {
  const first = argv[0];
  if (first === undefined) return 'serve';
  if (['--help', '-h', 'help', '--version', '-v'].includes(first)) return 'help';
  return first.startsWith('-') ? 'serve' : first;
}

/** A node or V8 option's name without dashes, value or `no-`: `--no-maglev` and `--maglev` are both `maglev`. */
function optionName(arg: string): string {
  return arg.replace(/^--/, '').split('=')[0]!.replaceAll('_', '-').replace(/^no-/, '');
}

/**
 * The runtime options missing from node's command line (NODE_OPTIONS cannot carry them: node refuses all but
 * one there and does not start). An option given in any form (another value, negated, or not negated where ours
 * is) is the operator's choice: not missing.
 */
export function missingRuntimeOptions(execArgv: readonly string[]): string[] {
  const given = new Set(execArgv.filter((a) => a.startsWith('--')).map(optionName));
  return RUNTIME_OPTIONS.filter((option) => !given.has(optionName(option)));
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
 * Started without the runtime options for a long-running command: replace this process with node started with
 * them (same PID, so signals and a container's PID 1 are unaffected; one more node start-up). process.execve exists from
 * Node 22.15 / 23.11 on (the image runs Node 24); on an older Node the process runs on without them.
 */
function reexecWithRuntimeOptions(): void {
  if (!isTheEntryPoint() || !LONG_RUNNING.has(commandOf(process.argv.slice(2)))) return;
  const missing = missingRuntimeOptions(process.execArgv);
  const execve = (process as { execve?: (file: string, args: string[], env: NodeJS.ProcessEnv) => never }).execve;
  if (missing.length === 0 || typeof execve !== 'function') return;
  execve(process.execPath, [process.execPath, ...missing, ...process.execArgv, ...process.argv.slice(1)], process.env);
}

reexecWithRuntimeOptions();

// Where there is no re-exec (Node before 22.15), Node 20 does honour this one at run time (measured: no growth at
// the readiness checks). Elsewhere it is already on the command line; given negated, it is the operator's choice.
if (missingRuntimeOptions(process.execArgv).includes('--liftoff-only')) setFlagsFromString('--liftoff-only');
