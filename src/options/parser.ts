// The generic option parser every command uses: each option is declared once (flag, environment variable,
// default, help, value parser); argv and the environment are parsed into a frozen object, with precedence flag,
// then ARC_IMDS_* variable, then default; every problem is reported at once; help text is generated from the
// same declarations, so --help, the parser and the docs cannot drift apart.
import { parseArgs } from 'node:util';
import { IMDS_ADDRESS } from '../values/addresses.js';
import { LOG_LEVELS, oneOf, yesNo } from '../values/parsers.js';

/** One option of a command. `env` is derived: ARC_IMDS_ + the flag in capitals with '_'. */
export interface OptionSpec {
  readonly flag: string;
  readonly key: string;
  readonly value: string; // placeholder in help; '' for a switch
  readonly help: string;
  readonly parse: (text: string) => unknown;
  readonly default?: string;
  readonly multiple?: boolean;
  /** A switch: `--flag` alone, or true/false in the environment. */
  readonly boolean?: boolean;
}

/** Bad configuration: every problem, one line each. The CLI prints them and exits 2. */
export class ConfigError extends Error {
  readonly code = 'config_invalid';
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export function envName(flag: string): string {
  return `ARC_IMDS_${flag.toUpperCase().replaceAll('-', '_')}`;
}

export interface Parsed<T> {
  readonly config: T;
  readonly help: boolean;
}

/**
 * Parse argv for one command against its option table. Precedence: flag, then ARC_IMDS_* variable, then the
 * default. Returns the values and every problem found (the caller adds its own checks, then throws them all).
 */
export function parseOptions(
  specs: readonly OptionSpec[],
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): { config: Record<string, unknown>; problems: string[]; help: boolean } {
  const problems: string[] = [];
  // Every flag is collected as a list, so a single-value flag given twice is caught instead of silently
  // taking the last one.
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = { help: { type: 'boolean' } };
  for (const s of specs) options[s.flag] = { type: s.boolean ? 'boolean' : 'string', multiple: true };

  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }));
  } catch (err) {
    return { config: {}, problems: [(err as Error).message.replace(/\. To specify.*$/s, '')], help: false };
  }
  if (values.help === true) return { config: {}, problems, help: true };

  const config: Record<string, unknown> = {};
  for (const s of specs) {
    const given = values[s.flag] as (string | boolean)[] | undefined;
    const fromFlag = given?.map(String);
    const fromEnv = env[envName(s.flag)];
    let texts: string[] | undefined;
    let source: string;
    if (fromFlag !== undefined) {
      texts = fromFlag;
      source = `--${s.flag}`;
    } else if (fromEnv !== undefined && fromEnv !== '') {
      texts = s.multiple
        ? fromEnv
            .split(',')
            .map((x) => x.trim())
            .filter((x) => x !== '')
        : [fromEnv];
      source = envName(s.flag);
    } else {
      texts = s.default === undefined ? undefined : [s.default];
      source = `--${s.flag} default`;
    }
    if (texts === undefined) {
      if (s.multiple) config[s.key] = [];
      continue;
    }
    if (texts.length === 0) {
      problems.push(`${source}: no value given`);
      continue;
    }
    if (!s.multiple && texts.length > 1) {
      problems.push(`${source}: given ${texts.length} times; it takes one value`);
      continue;
    }
    const parsed: unknown[] = [];
    for (const text of texts) {
      try {
        parsed.push(s.parse(text));
      } catch (err) {
        problems.push(`${source}: ${(err as Error).message}`);
      }
    }
    config[s.key] = s.multiple ? parsed : parsed[0];
  }
  return { config, problems, help: false };
}

// Problems quote what was given; a control character in it must not break "one line per problem".
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const printable = (line: string) => line.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

export function finish<T>(config: Record<string, unknown>, problems: readonly string[], help: boolean): Parsed<T> {
  if (!help && problems.length > 0) throw new ConfigError(problems.map(printable));
  return { config: Object.freeze(config) as T, help };
}

/** Help text for one command, generated from its option table so it cannot drift from the parser. */
export function helpText(command: string, summary: string, specs: readonly OptionSpec[]): string {
  const lefts = specs.map((s) => `  --${s.flag}${s.value ? ` ${s.value}` : ''}`);
  const width = Math.max(...lefts.map((l) => l.length)) + 2;
  const rows = specs.map((s, i) => {
    const def = s.default !== undefined ? ` (default ${s.default})` : '';
    return `${lefts[i]!.padEnd(width)}${s.help}${def}\n${''.padEnd(width)}env ${envName(s.flag)}`;
  });
  return `Usage: arc-imds-proxy ${command} [options]\n\n${summary}\n\nOptions:\n${rows.join('\n')}\n${'  --help'.padEnd(width)}show this help\n`;
}

// Options more than one command has.

export const allowHostNetnsOption: OptionSpec = {
  flag: 'allow-host-netns',
  key: 'allowHostNetns',
  value: '',
  boolean: true,
  default: 'false',
  parse: yesNo,
  help: `allow answering ${IMDS_ADDRESS} where HIMDS is on loopback (the host network namespace), which breaks Arc onboarding`,
};

export const logLevelOption: OptionSpec = {
  flag: 'log-level',
  key: 'logLevel',
  value: 'LEVEL',
  default: 'info',
  parse: oneOf(LOG_LEVELS),
  help: `log level: ${LOG_LEVELS.join(', ')}`,
};
