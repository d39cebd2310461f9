// `netns-setup`: make the current network namespace answer 169.254.169.254 on its loopback, for an init
// container (or `ip netns exec`) before the sidecar starts. Idempotent. It refuses to run where HIMDS answers
// on loopback: that is the host's network namespace, where 169.254.169.254 must never be answered.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { somethingListens } from './listener-probe.js';

export interface NetnsSetupConfig {
  readonly addresses: readonly string[];
  readonly allowHostNetns: boolean;
}

const run = promisify(execFile);

/** Why netns-setup could not finish: a refusal the operator must decide on, or what the environment lacks. */
export type NetnsSetupErrorCode = 'netns_host_namespace' | 'netns_no_ip' | 'netns_no_permission' | 'netns_failed';

export class NetnsSetupError extends Error {
  readonly code: NetnsSetupErrorCode;
  constructor(code: NetnsSetupErrorCode, message: string) {
    super(message);
    this.name = 'NetnsSetupError';
    this.code = code;
  }
}

/** Whether HIMDS (or anything) listens on 127.0.0.1:40342 in this namespace: then it is the host's. */
export function himdsAnswersHere(): Promise<boolean> {
  return somethingListens({ host: '127.0.0.1', port: 40342 });
}

async function ip(args: string[]): Promise<string> {
  try {
    const { stdout } = await run('ip', args, { timeout: 10_000 });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new NetnsSetupError('netns_no_ip', "netns-setup needs the 'ip' command (iproute2) in this image");
    const why = (e.stderr ?? e.message).trim();
    if (/Operation not permitted|Permission denied/i.test(why)) {
      throw new NetnsSetupError(
        'netns_no_permission',
        `netns-setup needs NET_ADMIN in this network namespace (e.g. an init container with capabilities add: [NET_ADMIN]): 'ip ${args.join(' ')}': ${why}`,
      );
    }
    throw new NetnsSetupError('netns_failed', `'ip ${args.join(' ')}' failed: ${why}`);
  }
}

/** Bring lo up and add each address as a /32. Returns one line per thing done or found done. */
export async function netnsSetup(config: NetnsSetupConfig): Promise<string[]> {
  if (!config.allowHostNetns && (await himdsAnswersHere())) {
    throw new NetnsSetupError(
      'netns_host_namespace',
      'something answers on 127.0.0.1:40342 (HIMDS): this looks like the host network namespace, where answering ' +
        "169.254.169.254 makes Arc onboarding fail. Run netns-setup in the application's network namespace " +
        '(--allow-host-netns overrides this)',
    );
  }
  const done: string[] = [];
  await ip(['link', 'set', 'lo', 'up']);
  done.push('lo is up');
  const present = await ip(['-o', '-4', 'addr', 'show', 'dev', 'lo']);
  for (const address of config.addresses) {
    if (present.includes(` inet ${address}/32 `)) {
      done.push(`${address}/32 was already on lo`);
      continue;
    }
    try {
      await ip(['addr', 'add', `${address}/32`, 'dev', 'lo']);
      done.push(`added ${address}/32 to lo`);
    } catch (err) {
      // Another setup ran between the look and the add: the address is there, which is all we want.
      if (!(err instanceof NetnsSetupError && /File exists/.test(err.message))) throw err;
      done.push(`${address}/32 was already on lo`);
    }
  }
  return done;
}
