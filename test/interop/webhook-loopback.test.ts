// The mode without NET_ADMIN, end to end with the real SDK clients: the webhook injects a pod annotated
// arc-imds-proxy/net-admin: "false"; a proxy is started with the injected sidecar's own --listen address (on
// 127.0.0.1, a free port given to the webhook as --loopback-port), in front of the HIMDS emulator; and the real
// @azure/identity ManagedIdentityCredential and @azure/msal-node ManagedIdentityApplication, with nothing but
// the AZURE_POD_IDENTITY_AUTHORITY_HOST value the webhook put into the app container, get their tokens from it.
// Every client request of this process is checked to stay on 127.0.0.1.
import net from 'node:net';
import t from 'tap';
import { applyPatch } from 'rfc6902';
import { ManagedIdentityCredential } from '@azure/identity';
import { ManagedIdentityApplication } from '@azure/msal-node';
import type { ListenAddress } from '../../src/values/addresses.js';
import { parseListenAddress } from '../../src/values/parsers.js';
import { admit } from '../../src/webhook/admission.js';
import { parseWebhook } from '../../src/commands/webhook.js';
import { claimsOf, isolateSdkEnvironment, settle, watchProxy } from '../fixtures/interop.js';
import { startStack, TOKEN_PATH } from '../fixtures/stack.js';
import { flagValue } from '../fixtures/deploy.js';
import { podReview } from '../fixtures/webhook.js';

isolateSdkEnvironment();

const freePort = await new Promise<number>((resolve, reject) => {
  const server = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = server.address() as net.AddressInfo;
    server.close(() => resolve(port));
  });
  server.on('error', reject);
});

const { config: settings } = parseWebhook(
  ['--tls-cert', 'unused.crt', '--tls-key', 'unused.key', '--image', 'arc-imds-proxy:test', '--loopback-port', String(freePort)],
  {},
);
const pod = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { generateName: 'app-', labels: { 'arc-imds-proxy/inject': 'true' }, annotations: { 'arc-imds-proxy/net-admin': 'false' } },
  spec: { containers: [{ name: 'app', image: 'node:24-slim' }] },
};
const answer = admit(JSON.stringify(podReview(pod)), settings);
const response = answer.body.response as any;
applyPatch(pod, JSON.parse(Buffer.from(response.patch, 'base64').toString('utf8')));
const injected = pod.spec as any;
const sidecar = injected.initContainers[0];
const authorityHost = injected.containers[0].env.find((e: any) => e.name === 'AZURE_POD_IDENTITY_AUTHORITY_HOST')?.value;

// Were the injected value missing or elsewhere, the SDKs would fall back to 169.254.169.254: never let them try.
if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(authorityHost ?? ''))
  throw new Error(`the webhook injected AZURE_POD_IDENTITY_AUTHORITY_HOST=${authorityHost}; not running the SDKs`);
const listen: ListenAddress = parseListenAddress(flagValue(sidecar.args, 'listen')!);
const stack = await startStack({ proxy: { listen: [listen] } });
t.teardown(() => stack.close());
process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = authorityHost;
const { offLoopback, observed, recorder } = watchProxy(stack);

t.test('what was injected', async (t) => {
  t.same(listen, { kind: 'tcp', host: '127.0.0.1', port: freePort }, `the sidecar listens on 127.0.0.1:${freePort}`);
  t.equal(authorityHost, `http://127.0.0.1:${freePort}`, 'the app is pointed at it');
  t.equal(stack.port, freePort, 'the proxy runs on the injected address');
});

t.test('@azure/identity ManagedIdentityCredential finds the sidecar through the injected variable', async (t) => {
  const requests = recorder();
  const token = await new ManagedIdentityCredential().getToken('https://management.azure.com/.default');
  await settle();
  t.equal(claimsOf(token.token).aud, 'https://management.azure.com', 'a token for the resource asked for');
  const wire = requests();
  t.ok(wire.length >= 1, 'it reached the proxy');
  t.ok(
    wire.every((r) => r.path.startsWith(TOKEN_PATH) && r.status === 200),
    'token requests, answered 200',
  );
});

t.test('@azure/msal-node ManagedIdentityApplication finds it too', async (t) => {
  const app = new ManagedIdentityApplication();
  t.equal(app.getManagedIdentitySource(), 'DefaultToImds', 'the IMDS source');
  const requests = recorder();
  const result = await app.acquireToken({ resource: 'https://vault.azure.net' });
  await settle();
  t.equal(claimsOf(result.accessToken).aud, 'https://vault.azure.net');
  t.equal(requests().length, 1, 'one request reached the proxy');
});

t.test('nothing left 127.0.0.1', async (t) => {
  t.ok(observed.http + observed.undici > 0, 'client requests were observed');
  t.same(offLoopback, [], 'none to 169.254.169.254 or anywhere else');
});
