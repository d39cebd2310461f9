// The token endpoint end to end against the emulator: the IMDS response shape, selectors, fail-closed
// user-assigned identities, and exactly what is forwarded upstream.
import t from 'tap';
import { ARM, armTokenPath, startStack, tokenPath } from '../fixtures/stack.js';

const claims = (jwt: string) => JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8'));

t.test('the IMDS token response', async (t) => {
  const stack = await startStack({ emulator: { tokenLifetimeS: 3600 } });
  t.teardown(stack.close);
  const reply = await stack.get(armTokenPath());
  t.equal(reply.status, 200);
  t.equal(reply.headers['content-type'], 'application/json; charset=utf-8');
  const body = reply.json;
  t.same(Object.keys(body), ['access_token', 'client_id', 'expires_in', 'expires_on', 'ext_expires_in', 'not_before', 'resource', 'token_type']);
  for (const [k, v] of Object.entries(body)) t.type(v, 'string', `${k} is a string`);
  t.equal(body.resource, ARM, "resource echoes the request, not HIMDS's empty string");
  t.equal(body.token_type, 'Bearer');
  const now = Math.floor(Date.now() / 1000);
  t.ok(Math.abs(Number(body.expires_on) - (now + 3600)) <= 2, 'expires_on from upstream');
  t.ok(Math.abs(Number(body.expires_in) - (Number(body.expires_on) - now)) <= 1, 'expires_in recomputed from expires_on');
  t.equal(body.ext_expires_in, body.expires_in);
  t.equal(claims(body.access_token).aud, ARM, "the emulator's token for this resource");
  t.equal(body.client_id, claims(body.access_token).appid, 'client_id from the JWT appid claim');
  t.equal(stack.emulator.stats().lastTokenQuery?.['api-version'], '2020-06-01', 'HIMDS api-version upstream');
});

t.test('resource is echoed verbatim, however it was encoded', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  for (const [query, expected] of [
    [`resource=${encodeURIComponent(ARM)}`, ARM],
    ['resource=https://management.azure.com/', ARM],
    ['resource=https://vault.azure.net', 'https://vault.azure.net'],
    [`resource=${encodeURIComponent('api://ünïcode/ x')}`, 'api://ünïcode/ x'],
    ['resource=https%3a%2f%2fstorage.azure.com%2f', 'https://storage.azure.com/'],
  ] as const) {
    const reply = await stack.get(tokenPath(`api-version=2018-02-01&${query}`));
    t.equal(reply.json.resource, expected, query);
    t.equal(claims(reply.json.access_token).aud, expected, `${query}: upstream got the decoded resource`);
  }
});

t.test('request errors', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  const missing = await stack.get(tokenPath('api-version=2018-02-01'));
  t.equal(missing.status, 400);
  t.match(missing.json.error_description, /resource/);
  t.equal((await stack.get(tokenPath('api-version=2018-02-01&resource='))).status, 400, 'empty resource');
  t.equal((await stack.get(tokenPath(`api-version=2018-02-01&resource=${'r'.repeat(2049)}`))).status, 400, 'absurd resource');
  const conflict = await stack.get(armTokenPath('&client_id=a&object_id=b'));
  t.equal(conflict.status, 400);
  t.match(conflict.json.error_description, /Only one of/);
  t.equal((await stack.get(armTokenPath('&msi_res_id=a&mi_res_id=b'))).status, 400, 'msi_res_id and mi_res_id');
  t.equal((await stack.get(armTokenPath(`&client_id=${'c'.repeat(1025)}`))).status, 400, 'absurd selector');
  t.equal(stack.emulator.stats().tokenRequests, 0, 'none reached the upstream');
});

t.test('user-assigned identities', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  const clientId = '5d2a8c3e-3e4b-4c2a-9a7e-1f2d3c4b5a69';
  const objectId = '9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d';
  const resId = '/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app';

  const byClient = await stack.get(armTokenPath(`&client_id=${clientId}`));
  t.equal(byClient.status, 200, 'client_id echoed by a UAMI-aware agent');
  t.equal(byClient.json.client_id, clientId);
  t.equal(stack.emulator.stats().lastTokenQuery?.client_id, clientId, 'forwarded upstream');

  const byObject = await stack.get(armTokenPath(`&object_id=${objectId}`));
  t.equal(byObject.status, 200);
  t.equal(claims(byObject.json.access_token).oid, objectId);

  const system = await stack.get(armTokenPath());
  t.not(byObject.json.client_id, system.json.client_id, "a user-assigned token names its own client id, not the machine's");
  const byObjectAgain = await stack.get(armTokenPath(`&object_id=${objectId}`));
  t.equal(byObjectAgain.json.client_id, byObject.json.client_id, 'consistently');

  const byRes = await stack.get(armTokenPath(`&msi_res_id=${encodeURIComponent(resId)}`));
  t.equal(byRes.status, 200);
  t.equal(claims(byRes.json.access_token).xms_mirid, resId);

  const legacySpelling = await stack.get(armTokenPath(`&mi_res_id=${encodeURIComponent(resId)}`));
  t.equal(legacySpelling.status, 200, 'mi_res_id (old msal-node) is honoured');
  const forwarded = stack.emulator.stats().lastTokenQuery!;
  t.equal(forwarded.msi_res_id, resId, 'as msi_res_id, the spelling HIMDS knows');
  t.notOk('mi_res_id' in forwarded, 'never as mi_res_id, which HIMDS silently ignores');

  const echoCase = await stack.get(armTokenPath(`&client_id=${clientId.toUpperCase()}`));
  t.equal(echoCase.status, 200, 'the echo is compared case-insensitively (GUIDs)');

  const empty = await stack.get(tokenPath('api-version=2018-02-01&resource=https://vault.azure.net&client_id='));
  t.equal(empty.status, 200, 'an empty selector is the system-assigned identity');
  t.notOk('client_id' in stack.emulator.stats().lastTokenQuery!, 'and no selector is forwarded');

  // Identities not asked for before: a token the agent did confirm stays cached and served, rightly.
  stack.emulator.faults.userAssigned = 'ignore';
  const legacy = await stack.get(armTokenPath('&client_id=6e6e6e6e-0000-4000-8000-000000000066'));
  t.equal(legacy.status, 400, 'a legacy agent returns the machine identity: fail closed');
  t.same(legacy.json, { error: 'invalid_request', error_description: 'Identity not found' });
  t.equal((await stack.get(armTokenPath())).status, 200, 'system-assigned still works on a legacy agent');

  stack.emulator.faults.userAssigned = 'not-found';
  const notFound = await stack.get(armTokenPath('&object_id=7f7f7f7f-0000-4000-8000-000000000077'));
  t.equal(notFound.status, 400, 'HIMDS identity_not_found becomes IMDS Identity not found');
  t.same(notFound.json, { error: 'invalid_request', error_description: 'Identity not found' });
});

t.test("only the resource, the selector, HIMDS's api-version and a forced refresh go upstream", async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  const reply = await stack.get(armTokenPath('&bypass_cache=true&xms_cc=cp1&token_sha256_to_refresh=abc&extra=1'), {
    Metadata: 'true',
    Authorization: 'Bearer client-secret',
    Cookie: 'a=b',
  });
  t.equal(reply.status, 200);
  // bypass_cache is passed on so a relay (or HIMDS) fetches anew too; xms_cc, the token hash and extras are not.
  t.same(stack.emulator.stats().lastTokenQuery, { 'api-version': '2020-06-01', resource: ARM, bypass_cache: 'true' });
  await stack.get(tokenPath('api-version=2018-02-01&resource=https://vault.azure.net&xms_cc=cp1&extra=1'));
  t.same(stack.emulator.stats().lastTokenQuery, { 'api-version': '2020-06-01', resource: 'https://vault.azure.net' });
});
