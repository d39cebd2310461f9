// `arc-imds-proxy webhook`: parse, print help, or start the HTTPS listener (src/cli.ts only dispatches here).
import { helpText } from '../config.js';
import { createLogger } from '../observability/log.js';
import { WEBHOOK_OPTIONS, parseWebhook } from './options.js';
import { startWebhook, type RunningWebhook } from './server.js';

export async function runWebhook(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<RunningWebhook | undefined> {
  const { config, help } = parseWebhook(argv, env);
  if (help) {
    process.stdout.write(helpText('webhook', 'Mutating admission webhook: inject the sidecar into pods labelled arc-imds-proxy/inject: "true".', WEBHOOK_OPTIONS));
    return undefined;
  }
  return startWebhook(config, createLogger(config.logLevel));
}
