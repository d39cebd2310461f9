// `netns-setup`: lo up and 169.254.169.254/32 on it, in this network namespace (src/host/netns.ts).
import type { NetnsSetupConfig } from '../host/netns.js';
import { allowHostNetnsOption, type OptionSpec, type Parsed } from '../options/parser.js';
import { IMDS_ADDRESS } from '../values/addresses.js';
import { ipv4 } from '../values/parsers.js';
import { defineCommand, parseCommand } from './command.js';

export const NETNS_SETUP_OPTIONS: readonly OptionSpec[] = [
  {
    flag: 'address',
    key: 'addresses',
    value: 'IPV4',
    multiple: true,
    default: IMDS_ADDRESS,
    parse: ipv4,
    help: 'address to add to lo as /32; repeatable',
  },
  allowHostNetnsOption,
];

export function parseNetnsSetup(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<NetnsSetupConfig> {
  return parseCommand<NetnsSetupConfig>({ options: NETNS_SETUP_OPTIONS }, argv, env);
}

export const netnsSetupCommand = defineCommand<NetnsSetupConfig>({
  name: 'netns-setup',
  summary: 'bring lo up and add 169.254.169.254/32 to it in this network namespace (needs NET_ADMIN)',
  description: "Prepare the application's network namespace to answer 169.254.169.254 (idempotent).",
  options: NETNS_SETUP_OPTIONS,
  async start(config) {
    const { netnsSetup } = await import('../host/netns.js');
    for (const line of await netnsSetup(config)) process.stdout.write(`netns-setup: ${line}\n`);
    return undefined;
  },
});
