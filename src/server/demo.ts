// `demo`: the real proxy in front of the built-in HIMDS emulator, on free loopback ports, with a private
// temporary tokens directory. No root, no Arc agent, nothing outside 127.0.0.1.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { HimdsEmulator } from '../emulator/himds.js';
import type { Logger } from '../observability/log.js';
import { startProxy, type ServeConfig } from './proxy.js';

/** `serve`'s configuration for this upstream and tokens directory, from serve's own option table. */
export type ServeConfigFor = (upstream: string, tokensDir: string) => ServeConfig;

export interface RunningDemo {
  readonly proxyUrl: string;
  readonly emulatorUrl: string;
  readonly instructions: string;
  close(): Promise<void>;
}

export async function startDemo(serveConfigFor: ServeConfigFor, log: Logger): Promise<RunningDemo> {
  const tokensDir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-demo-'));
  const loopback = { kind: 'tcp', host: '127.0.0.1', port: 0 } as const;
  const emulator = await HimdsEmulator.start({ tokensDir }, loopback);
  const serve = serveConfigFor(emulator.url, tokensDir);
  const proxy = await startProxy(serve, log).catch(async (err: unknown) => {
    await emulator.close();
    await rm(tokensDir, { recursive: true, force: true });
    throw err;
  });
  const bound = proxy.addresses[0]!;
  const proxyUrl = `http://127.0.0.1:${bound.kind === 'tcp' ? bound.port : 0}`;
  const admin = proxy.adminAddress;
  const adminUrl = `http://127.0.0.1:${admin?.kind === 'tcp' ? admin.port : 0}`;
  const instructions = [
    '',
    'arc-imds-proxy demo: the proxy is serving the Azure IMDS contract in front of the built-in HIMDS emulator.',
    `  proxy (IMDS contract):  ${proxyUrl}`,
    `  HIMDS emulator:         ${emulator.url}   (key files in ${tokensDir})`,
    '',
    'Get a token (the proxy answers the HIMDS key-file challenge for you):',
    `  curl -s -H 'Metadata: true' '${proxyUrl}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F'`,
    'Instance metadata, passed through from HIMDS:',
    `  curl -s -H 'Metadata: true' '${proxyUrl}/metadata/instance/compute?api-version=2021-02-01'`,
    'Rejected without the Metadata header (what SDK probes rely on):',
    `  curl -s -i '${proxyUrl}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/'`,
    'Metrics and readiness (the admin listener):',
    `  curl -s ${adminUrl}/metrics | grep ^arc_imds_`,
    `  curl -s ${adminUrl}/readyz`,
    'Point an Azure SDK at it (JavaScript, Python and .NET honour this variable):',
    `  export AZURE_POD_IDENTITY_AUTHORITY_HOST=${proxyUrl}`,
    '',
    'Press Ctrl-C to stop.',
    '',
  ].join('\n');
  return {
    proxyUrl,
    emulatorUrl: emulator.url,
    instructions,
    async close() {
      await proxy.close();
      await emulator.close();
      await rm(tokensDir, { recursive: true, force: true });
    },
  };
}
