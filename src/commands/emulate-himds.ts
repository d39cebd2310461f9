// `emulate-himds`: the built-in HIMDS emulator (src/emulator/himds.ts), for development and tests.
import type { EmulatorOptions } from '../emulator/himds.js';
import { USER_ASSIGNED_MODES } from '../emulator/modes.js';
import { logLevelOption, type OptionSpec, type Parsed } from '../options/parser.js';
import { DEFAULT_TOKENS_DIR, type TcpAddress } from '../values/addresses.js';
import {
  httpStatus,
  oneOf,
  parseDuration,
  parseTcpAddress,
  parseTokensDir,
  positiveDuration,
  positiveInt,
  type LogLevel,
} from '../values/parsers.js';
import { defineCommand, parseCommand } from './command.js';

/** The emulator's own options, plus where it listens and how it logs. */
export interface EmulatorConfig extends EmulatorOptions {
  readonly listen: TcpAddress;
  readonly logLevel: LogLevel;
}

export const EMULATOR_OPTIONS: readonly OptionSpec[] = [
  {
    flag: 'listen',
    key: 'listen',
    value: 'ADDR',
    default: '127.0.0.1:40342',
    parse: parseTcpAddress,
    help: 'HOST:PORT to serve the emulated HIMDS on',
  },
  {
    flag: 'tokens-dir',
    key: 'tokensDir',
    value: 'DIR',
    default: DEFAULT_TOKENS_DIR,
    parse: parseTokensDir,
    help: 'where challenge key files are written (created if missing)',
  },
  {
    flag: 'token-lifetime',
    key: 'tokenLifetimeS',
    value: 'DURATION',
    default: '24h',
    parse: (t) => Math.round(positiveDuration(t) / 1000),
    help: 'lifetime of issued tokens',
  },
  { flag: 'key-ttl', key: 'keyTtlMs', value: 'DURATION', default: '30s', parse: positiveDuration, help: 'an unused key file is deleted after this' },
  { flag: 'latency', key: 'latencyMs', value: 'DURATION', default: '0', parse: parseDuration, help: 'delay before every answer' },
  { flag: 'fail-next', key: 'failNext', value: 'N', default: '0', parse: positiveInt, help: 'answer the next N requests with --fail-status' },
  { flag: 'fail-status', key: 'failStatus', value: 'STATUS', default: '503', parse: httpStatus, help: 'status used by --fail-next' },
  {
    flag: 'startup-unavailable',
    key: 'startupUnavailableMs',
    value: 'DURATION',
    default: '0',
    parse: parseDuration,
    help: 'answer 503 for this long after start, as HIMDS does after boot',
  },
  {
    flag: 'user-assigned',
    key: 'userAssigned',
    value: 'MODE',
    default: 'echo',
    parse: oneOf(USER_ASSIGNED_MODES),
    help: 'user-assigned selectors: echo (new agents), ignore (legacy agents), not-found',
  },
  logLevelOption,
];

export function parseEmulator(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<EmulatorConfig> {
  return parseCommand<EmulatorConfig>({ options: EMULATOR_OPTIONS }, argv, env);
}

export const emulateHimds = defineCommand<EmulatorConfig>({
  name: 'emulate-himds',
  summary: 'run the built-in HIMDS emulator, for development and tests',
  description: 'Run the built-in Arc HIMDS emulator.',
  options: EMULATOR_OPTIONS,
  async start(config) {
    const [{ HimdsEmulator }, { createLogger }] = await Promise.all([import('../emulator/himds.js'), import('../observability/log.js')]);
    const log = createLogger(config.logLevel);
    const emulator = await HimdsEmulator.start(config, config.listen);
    log.info({ url: emulator.url, tokensDir: config.tokensDir }, 'HIMDS emulator listening');
    return emulator;
  },
});
