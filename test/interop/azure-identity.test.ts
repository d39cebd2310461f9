// Interop: the real @azure/identity 4.13.1 ManagedIdentityCredential (which delegates to its own nested
// @azure/msal-node 5.6.0) against the real proxy in front of the real HIMDS emulator.
//
// The credential finds the proxy through AZURE_POD_IDENTITY_AUTHORITY_HOST (IMDS source). Every request the
// proxy receives is recorded from inside this process (node:diagnostics_channel), so the tests can assert
// exactly what the SDK sent, and every outgoing client request is checked to stay on 127.0.0.1.
//
// Facts about the SDK these tests rely on, measured rather than assumed:
// - msal-node keeps its token cache and its chosen managed identity source in STATIC fields: every credential
//   in this process shares one cache and the endpoint chosen by the first getToken. Hence one stack for the
//   whole file, and a fresh identity id or resource wherever a network call is needed.
// - getToken never passes forceRefresh: a cached token is returned without any request.
import t from 'tap';
import { createDefaultHttpClient, createHttpHeaders, createPipelineRequest } from '@azure/core-rest-pipeline';
import { ManagedIdentityCredential } from '@azure/identity';
import { claimsOf, isolateSdkEnvironment, settle, watchProxy } from '../fixtures/interop.js';
import { get, startStack, TOKEN_PATH } from '../fixtures/stack.js';

isolateSdkEnvironment();

const stack = await startStack();
t.teardown(() => stack.close());
// Set before any credential exists. IPv4 loopback: @azure/identity cannot reach [::1].
process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = stack.url;

const ARM_SCOPE = 'https://management.azure.com/.default';
const ARM = 'https://management.azure.com';
const DAY_MS = 86_400_000;
const METADATA_BODY = { error: 'invalid_request', error_description: 'Required metadata header not specified' };
const IDENTITY_NOT_FOUND = { error: 'invalid_request', error_description: 'Identity not found' };

const { seen, offLoopback, observed, recorder, counters } = watchProxy(stack);

let armToken = '';

t.test('system-assigned: getToken returns the token the emulator issued, 24 h lifetime', async (t) => {
  const delta = counters();
  const requests = recorder();
  const credential = new ManagedIdentityCredential();
  const started = Date.now();
  const token = await credential.getToken(ARM_SCOPE);
  await settle();

  t.match(token.token, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'a compact JWT');
  const claims = claimsOf(token.token);
  t.equal(claims.aud, ARM, 'audience is the resource the SDK derived from the scope (no /.default, no slash)');
  t.match(claims.iss, /^https:\/\/sts\.windows\.net\//);
  t.equal(token.tokenType, 'Bearer');
  // msal-node recomputes it as requestTime + (expires_on - now): equal to exp up to the second boundary.
  t.ok(Math.abs(token.expiresOnTimestamp - claims.exp * 1000) <= 2000, 'expiresOn is the token exp (expires_on passed through)');
  t.ok(Math.abs(token.expiresOnTimestamp - (started + DAY_MS)) < 60_000, 'expires about 24 h from now');
  // msal-node: refresh_in = expires_in / 2 when expires_in > 2 h.
  t.ok(token.refreshAfterTimestamp !== undefined, 'refreshAfterTimestamp set');
  t.ok(Math.abs(token.refreshAfterTimestamp! - (started + DAY_MS / 2)) < 60_000, 'refresh after about 12 h');

  const wire = requests();
  t.equal(wire.length, 1, 'one request reached the proxy');
  const [request] = wire;
  t.equal(request?.method, 'GET');
  t.equal(request?.path, `${TOKEN_PATH}/`, 'msal-node appends / to the token path (AZURE_POD_IDENTITY_AUTHORITY_HOST)');
  t.same(request?.query, { 'api-version': '2018-02-01', resource: ARM }, 'IMDS api-version and the resource, nothing else');
  t.match(request?.url, /resource=https%3A%2F%2Fmanagement\.azure\.com$/, 'resource percent-encoded');
  t.equal(request?.headers.metadata, 'true');
  t.equal(request?.headers['content-type'], 'application/x-www-form-urlencoded;charset=utf-8', 'form content type on a bodiless GET');
  t.equal(request?.headers['content-length'], undefined, 'no body');
  t.equal(request?.headers['x-client-sku'], 'msal.js.node');
  t.equal(request?.headers['x-client-ver'], '5.6.0', "@azure/identity's nested msal-node");
  t.match(request?.headers['user-agent'], /^azsdk-js-identity\/4\.13\.1 /);
  t.equal(request?.status, 200);

  t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 }, 'one upstream token: challenge + authorized retry');
  const upstream = stack.emulator.stats();
  t.same(upstream.lastTokenQuery, { 'api-version': '2020-06-01', resource: ARM }, 'proxy asked HIMDS with its own api-version');
  t.equal(upstream.keysOutstanding, 0, 'the key file was used');
  armToken = token.token;
});

t.test('repeated getToken: served by the SDK cache, across credential instances', async (t) => {
  t.ok(armToken, 'needs the token of the first test');
  const delta = counters();
  const requests = recorder();
  const credential = new ManagedIdentityCredential();
  for (let i = 0; i < 3; i++) {
    const again = await credential.getToken(ARM_SCOPE);
    t.equal(again.token, armToken, `call ${i + 1}: same token`);
  }
  const other = await new ManagedIdentityCredential().getToken([ARM_SCOPE]);
  t.equal(other.token, armToken, 'a new credential instance shares the (static) msal-node cache');
  const noSuffix = await credential.getToken(ARM);
  t.equal(noSuffix.token, armToken, 'the scope without /.default maps to the same resource');
  t.equal(requests().length, 0, 'no request reached the proxy');
  t.same(delta(), { tokensIssued: 0, challenges: 0, tokenRequests: 0 });

  // A new resource is a cache miss: one proxy request, one upstream token.
  const vault = await credential.getToken('https://vault.azure.net/.default');
  t.equal(claimsOf(vault.token).aud, 'https://vault.azure.net');
  t.not(vault.token, armToken);
  const vaultAgain = await credential.getToken('https://vault.azure.net/.default');
  t.equal(vaultAgain.token, vault.token, 'and is cached from then on');
  await settle();
  t.same(
    requests().map((r) => [r.query.resource, r.status]),
    [['https://vault.azure.net', 200]],
  );
  t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 });
});

t.test('concurrent first calls are not coalesced by the SDK, but by the proxy: one upstream token', async (t) => {
  const delta = counters();
  const requests = recorder();
  const credentials = Array.from({ length: 4 }, () => new ManagedIdentityCredential());
  const tokens = await Promise.all(credentials.map((c) => c.getToken('https://graph.microsoft.com/.default')));
  await settle();
  for (const token of tokens) t.equal(claimsOf(token.token).aud, 'https://graph.microsoft.com');
  const wire = requests();
  t.equal(wire.length, 4, 'the SDK sent four requests');
  t.ok(
    wire.every((r) => r.status === 200),
    'all answered 200',
  );
  t.equal(delta().tokensIssued, 1, 'the proxy fetched one upstream token for all of them');
  t.equal(new Set(tokens.map((x) => x.token)).size, 1, 'and all four got it');
});

t.test('user-assigned, emulator echoes the identity (UAMI-aware agent)', async (t) => {
  stack.emulator.faults.userAssigned = 'echo';
  const cases = [
    { name: 'clientId', options: { clientId: 'a1a1a1a1-0000-4000-8000-000000000001' }, param: 'client_id', claim: 'appid' },
    { name: 'objectId', options: { objectId: 'b2b2b2b2-0000-4000-8000-000000000002' }, param: 'object_id', claim: 'oid' },
    {
      name: 'resourceId',
      options: {
        resourceId:
          '/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uami-echo',
      },
      param: 'msi_res_id',
      claim: 'xms_mirid',
    },
  ] as const;
  for (const c of cases) {
    const id = Object.values(c.options)[0]!;
    const delta = counters();
    const requests = recorder();
    const token = await new ManagedIdentityCredential(c.options as any).getToken(ARM_SCOPE);
    await settle();
    t.equal(claimsOf(token.token)[c.claim], id, `${c.name}: the token is the user-assigned identity's`);
    t.not(token.token, armToken, `${c.name}: not the cached system-assigned token`);
    const wire = requests();
    t.equal(wire.length, 1, `${c.name}: one request`);
    t.same(wire[0]?.query, { 'api-version': '2018-02-01', resource: ARM, [c.param]: id }, `${c.name}: sent as ${c.param}`);
    t.equal(wire[0]?.status, 200);
    t.equal(stack.emulator.stats().lastTokenQuery?.[c.param], id, `${c.name}: forwarded upstream as ${c.param}`);
    t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 });
  }
});

t.test('user-assigned, legacy agent ignores the selector: the proxy fails closed, getToken rejects', async (t) => {
  stack.emulator.faults.userAssigned = 'ignore';
  t.teardown(() => {
    stack.emulator.faults.userAssigned = 'echo';
  });
  const cases = [
    { name: 'clientId', options: { clientId: 'c3c3c3c3-0000-4000-8000-000000000003' }, param: 'client_id' },
    { name: 'objectId', options: { objectId: 'd4d4d4d4-0000-4000-8000-000000000004' }, param: 'object_id' },
    {
      name: 'resourceId',
      options: {
        resourceId:
          '/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uami-legacy',
      },
      param: 'msi_res_id',
    },
  ] as const;
  for (const c of cases) {
    const id = Object.values(c.options)[0]!;
    const delta = counters();
    const requests = recorder();
    const started = performance.now();
    const error: any = await new ManagedIdentityCredential(c.options as any).getToken(ARM_SCOPE).then(
      (token) => ({ name: 'no error', message: `got a token for ${claimsOf(token.token).appid}` }),
      (err: unknown) => err,
    );
    const elapsed = performance.now() - started;
    await settle();
    t.equal(error.name, 'CredentialUnavailableError', `${c.name}: getToken rejects`);
    t.match(error.message, /Identity not found/, `${c.name}: with the IMDS reason`);
    t.ok(elapsed < 3000, `${c.name}: at once, a 400 is not retried (${Math.round(elapsed)} ms)`);
    const wire = requests();
    t.equal(wire.length, 1, `${c.name}: exactly one request, no retries`);
    t.equal(wire[0]?.query[c.param], id);
    t.equal(wire[0]?.status, 400, `${c.name}: the proxy answered 400`);
    // The legacy agent did hand out a token (the machine's); the proxy refused to pass it on.
    t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 }, `${c.name}: upstream issued the machine token`);

    // Replay the SDK's exact request by hand to see the body it got.
    const replayHeaders: Record<string, string> = {};
    for (let i = 0; i < (wire[0]?.rawHeaders.length ?? 0); i += 2) {
      const name = wire[0]!.rawHeaders[i]!;
      if (!/^(host|connection)$/i.test(name)) replayHeaders[name] = wire[0]!.rawHeaders[i + 1]!;
    }
    const replay = await get(stack.url + wire[0]!.url, replayHeaders);
    t.equal(replay.status, 400);
    t.same(replay.json, IDENTITY_NOT_FOUND, `${c.name}: IMDS "Identity not found" body`);
    t.notMatch(replay.text, /eyJ/, 'no token material in the answer');
  }
  t.ok(
    stack.logs.some((l) => l.includes('"code":"identity_not_found"')),
    'the proxy logged why',
  );

  // The system-assigned identity is unaffected by the legacy agent (new resource: a cache miss).
  const system = await new ManagedIdentityCredential().getToken('https://database.windows.net/.default');
  t.equal(claimsOf(system.token).aud, 'https://database.windows.net');
});

t.test('sendProbeRequest: true, and the probe request the SDK would send', async (t) => {
  const requests = recorder();
  const delta = counters();
  const credential = new ManagedIdentityCredential({ sendProbeRequest: true } as any);
  const token = await credential.getToken('https://storage.azure.com/.default');
  await settle();
  t.equal(claimsOf(token.token).aud, 'https://storage.azure.com');
  const wire = requests();
  // With AZURE_POD_IDENTITY_AUTHORITY_HOST set, imdsMsi.isAvailable returns true without probing.
  t.same(
    wire.map((r) => r.headers.metadata),
    ['true'],
    'no probe was sent: one request, with Metadata',
  );
  t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 });

  // So send the probe by hand, as imdsMsi.js builds it: the bare token path, no query, Accept only, no
  // Metadata. The upstream is made slow: an answer that waited on it could not arrive inside the 1 s timeout.
  stack.emulator.faults.latencyMs = 5000;
  t.teardown(() => {
    stack.emulator.faults.latencyMs = 0;
  });
  const upstreamBefore = stack.emulator.stats().tokenRequests;
  const probeUrl = `${new URL(TOKEN_PATH, process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST)}`;
  t.equal(probeUrl, `${stack.url}${TOKEN_PATH}`);

  const probes = recorder();
  let started = performance.now();
  const plain = await get(probeUrl, { Accept: 'application/json' });
  const plainMs = performance.now() - started;
  t.equal(plain.status, 400, 'plain probe: 400');
  t.not(plain.status, 403);
  t.same(plain.json, METADATA_BODY, 'the IMDS missing-Metadata body');
  t.notMatch(plain.text, /unreachable/i);
  t.notMatch(plain.text, /Identity not found/, '.NET reads "Identity not found" as no IMDS');
  t.match(plain.headers['content-type'], /^application\/json/);
  t.ok(plainMs < 1000, `answered inside the SDK's 1 s probe timeout (${plainMs.toFixed(1)} ms)`);

  // The same request through the SDK's own transport (core-rest-pipeline), judged as isAvailable judges it.
  const request = createPipelineRequest({
    url: probeUrl,
    method: 'GET',
    headers: createHttpHeaders({ Accept: 'application/json' }),
    timeout: 1000,
    allowInsecureConnection: true,
  });
  started = performance.now();
  const response = await createDefaultHttpClient().sendRequest(request);
  const pipelineMs = performance.now() - started;
  t.equal(response.status, 400, 'pipeline probe: 400');
  const available = !(response.status === 403 && (response.bodyAsText ?? '').includes('unreachable'));
  t.ok(available, 'isAvailable would say: IMDS is available');
  t.same(JSON.parse(response.bodyAsText ?? ''), METADATA_BODY);
  t.ok(pipelineMs < 1000, `inside the probe timeout (${pipelineMs.toFixed(1)} ms)`);

  await settle();
  const wireProbes = probes();
  t.equal(wireProbes.length, 2);
  for (const p of wireProbes) {
    t.equal(p.url, TOKEN_PATH, 'bare path, no query');
    t.equal(p.headers.metadata, undefined, 'no Metadata header');
    t.equal(p.headers.accept, 'application/json');
    t.equal(p.status, 400);
  }
  t.equal(stack.emulator.stats().tokenRequests, upstreamBefore, 'the probe never reached the upstream');
});

t.test('every client request stayed on 127.0.0.1', async (t) => {
  t.ok(seen.length > 0 && observed.http >= seen.length, 'the SDK requests were observed (the check is not vacuous)');
  t.same(offLoopback, [], 'no request to 169.254.169.254 or anywhere else');
});
