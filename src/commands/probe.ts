// `probe`: exit 0 when an admin listener's /readyz says ready (src/observability/probe.ts), for health checks
// in images without curl.
import type { ProbeConfig } from '../observability/probe.js';
import { envName, type OptionSpec, type Parsed } from '../options/parser.js';
import { DEFAULT_ADMIN } from '../values/addresses.js';
import { parseListenAddress, positiveDuration, probeUrl } from '../values/parsers.js';
import { defineCommand, parseCommand } from './command.js';

export const PROBE_OPTIONS: readonly OptionSpec[] = [
  {
    flag: 'url',
    key: 'url',
    value: 'URL',
    default: `http://${DEFAULT_ADMIN}`,
    parse: probeUrl,
    help: 'the admin listener (its /readyz is asked), or a full /readyz URL',
  },
  { flag: 'timeout', key: 'timeoutMs', value: 'DURATION', default: '3s', parse: positiveDuration, help: 'give up after this' },
];

/** In the same container as `serve`, the probe follows its ARC_IMDS_ADMIN_LISTEN unless told otherwise. */
function check(config: Record<string, unknown>, problems: string[], argv: readonly string[], env: NodeJS.ProcessEnv): void {
  const urlGiven = argv.some((a) => a === '--url' || a.startsWith('--url=')) || (env[envName('url')] ?? '') !== '';
  const admin = env[envName('admin-listen')];
  if (urlGiven || !admin || admin === 'off') return;
  try {
    const address = parseListenAddress(admin);
    if (address.kind === 'tcp') {
      const host = address.host === '0.0.0.0' ? '127.0.0.1' : address.host === '::' ? '::1' : address.host;
      config.url = `http://${host.includes(':') ? `[${host}]` : host}:${address.port}/readyz`;
    } else {
      problems.push(`${envName('admin-listen')}: the probe cannot reach a unix socket; give --url`);
    }
  } catch (err) {
    problems.push(`${envName('admin-listen')}: ${(err as Error).message}`);
  }
}

export function parseProbe(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<ProbeConfig> {
  return parseCommand<ProbeConfig>({ options: PROBE_OPTIONS, check }, argv, env);
}

/** Not ready: exit status 1 with the reason (an error with this code; see src/cli.ts). */
export class NotReady extends Error {
  readonly code = 'probe_not_ready';
  constructor(message: string) {
    super(message);
    this.name = 'NotReady';
  }
}

export const probeCommand = defineCommand<ProbeConfig>({
  name: 'probe',
  summary: "exit 0 when an admin listener's /readyz says ready (for health checks without curl)",
  description: "Exit 0 when the admin listener's /readyz is ready, else 1 with the reason.",
  options: PROBE_OPTIONS,
  check,
  async start(config) {
    const { probe } = await import('../observability/probe.js');
    const result = await probe(config);
    if (!result.ok) throw new NotReady(result.message);
    process.stdout.write(`${result.message}\n`);
    return undefined;
  },
});
