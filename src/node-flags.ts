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
 * - `--optimize-for-size`: V8 favours memory over speed where it has the choice. It fixes the young generation
 *   small (Node 24: 1 MB semi-spaces) (by default Node 24 grows them to 64 MB under a burst of connections and keeps them; a
 *   semi-space that V8 shrinks and regrows made cached-hit throughput flip between two levels ~20% apart from run
 *   to run), and it collects and shrinks the old generation sooner: 5,000 abandoned requests added 25 MB instead
 *   of 43-49 MB (Node 24). Cached-hit throughput measured the same as with the fixed 2 MB semi-spaces this
 *   replaces. V8 sizes the heap before any JavaScript runs, so it must be on the command line.
 * - `--liftoff-only`: undici parses upstream answers with llhttp compiled to WebAssembly. V8 runs it as baseline
 *   (Liftoff) code and, once it has run enough, recompiles it optimised on a background thread, whose malloc
 *   arena then keeps about 10 MB resident for good (Node 24: idle RSS 65 -> 77 MB at the second readiness check,
 *   10 s after start). Upstream answers are rare and small: baseline code is plenty. Node 24 ignores it when set
 *   at run time (V8 freezes its flags once started), so it is on the command line with the other.
 */
export const RUNTIME_OPTIONS = ['--optimize-for-size', '--liftoff-only'] as const;

/** The commands that run for long enough for the runtime options to matter. `probe` runs every 10 s: no re-exec. */
const LONG_RUNNING = new Set(['serve', 'emulate-himds', 'demo', 'webhook']);

/** The command `argv` (process.argv.slice(2)) runs, as cli.ts reads it: the first word, `serve` by default. */
export function commandOf(argv: readonly string[]): string {
  const first = argv[0];
  if (first === undefined) return 'serve';
  if (['--help', '-h', 'help', '--version', '-v'].includes(first)) return 'help';
  return first.startsWith('-') ? 'serve' : first;
}

/**
 * The runtime options missing from node's command line (NODE_OPTIONS cannot carry them: node refuses both there
 * and does not start). A flag given negated (`--no-liftoff-only`) is the operator's choice: not missing.
 */
export function missingRuntimeOptions(execArgv: readonly string[]): string[] {
  const given = execArgv.map((a) => a.replace(/^--([^=]*)/, (_m, name: string) => `--${name.replaceAll('_', '-')}`));
  return RUNTIME_OPTIONS.filter((option) => {
    const name = option.split('=')[0]!;
    const negated = `--no-${name.slice(2)}`;
    return !given.some((a) => a === name || a.startsWith(`${name}=`) || a === negated);
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
 * Started without the runtime options for a long-running command: replace this process with node started with
 * them (same PID, so signals and a container's PID 1 are unaffected; about 40 ms). process.execve exists from
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
