// The HIMDS emulator must be faithful to what a real Arc agent does on the wire (docs/protocol.md#1-himds-the-upstream): every other
// test and the demo lean on it, so a drift here would hide bugs in the proxy.
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { HIMDS_API_VERSIONS, HimdsEmulator, type EmulatorOptions } from '../../src/emulator/himds.js';
import { ARM, get, LOOPBACK, raw, request, type Reply } from '../fixtures/stack.js';

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TOKEN = '/metadata/identity/oauth2/token';
const tokenUrl = (emulator: HimdsEmulator, extra = '', apiVersion = '2020-06-01') =>
  `${emulator.url}${TOKEN}?api-version=${apiVersion}&resource=${encodeURIComponent(ARM)}${extra}`;
const IDENTITY_NOT_FOUND = {
  error: 'identity_not_found',
  error_description: 'Identity not found: error acquiring access token: requested identity was not found',
  error_codes: [404],
};

async function startEmulator(t: Test, options: Partial<EmulatorOptions> = {}): Promise<{ emulator: HimdsEmulator; tokensDir: string }> {
  const tokensDir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-emu-test-'));
  const emulator = await HimdsEmulator.start({ tokensDir, ...options }, LOOPBACK);
  t.teardown(async () => {
    await emulator.close();
    await rm(tokensDir, { recursive: true, force: true });
  });
  return { emulator, tokensDir };
}

/** Poll a condition until it holds or the deadline passes (for effects with no event to await, e.g. a timer deleting a file). */
async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function realmOf(reply: Reply): string {
  const header = reply.headers['www-authenticate'];
  if (typeof header !== 'string') throw new Error(`no Www-Authenticate header (status ${reply.status})`);
  const m = /^Basic realm=(.+)$/.exec(header);
  if (!m) throw new Error(`unexpected Www-Authenticate: ${header}`);
  return m[1]!;
}

/** The full two-leg flow; returns the 200 (or whatever the second leg answered). */
async function fetchToken(url: string): Promise<{ first: Reply; second: Reply; key: string; realm: string }> {
  const first = await get(url);
  if (first.status !== 401) throw new Error(`first leg: expected 401, got ${first.status} ${first.text}`);
  const realm = realmOf(first);
  const key = await readFile(realm, 'utf8');
  const second = await get(url, { Metadata: 'true', Authorization: `Basic ${key}` });
  return { first, second, key, realm };
}

function jwtClaims(token: string): Record<string, unknown> {
  const parts = token.split('.');
  if (parts.length !== 3) throw new Error(`not a JWT: ${parts.length} parts`);
  return JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as Record<string, unknown>;
}

t.test('the 401 key-file challenge, byte for byte', async (t) => {
  const { emulator, tokensDir } = await startEmulator(t);
  const answer = await raw(
    emulator.address.port,
    `GET ${TOKEN}?api-version=2020-06-01&resource=${encodeURIComponent(ARM)} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nConnection: close\r\n\r\n`,
  );
  t.match(answer, /^HTTP\/1\.1 401 /, '401');
  // Case-sensitive on purpose: HIMDS sends the Go casing, and no quotes around the realm.
  const header = /\r\nWww-Authenticate: ([^\r\n]*)\r\n/.exec(answer);
  t.ok(header, 'header name in Go casing (Www-Authenticate)');
  const value = header?.[1] ?? '';
  const m = /^Basic realm=(.*)$/.exec(value);
  t.ok(m, `Basic realm=…: ${value}`);
  const realm = m?.[1] ?? '';
  t.notMatch(realm, /["']/, 'no quotes');
  t.equal(path.dirname(realm), tokensDir, 'the key file is directly in the tokens dir');
  const name = path.basename(realm);
  t.match(name, /\.key$/, '.key');
  t.match(name.slice(0, -4), GUID, 'GUID-named');

  const bodyText = answer.slice(answer.indexOf('\r\n\r\n') + 4);
  t.match(answer, /\r\nContent-Type: application\/json/i, 'JSON content type');
  t.doesNotThrow(() => JSON.parse(bodyText), 'the 401 body is JSON (msal-node parses every body)');

  const st = await stat(realm);
  t.ok(st.isFile(), 'key file exists and is a regular file');
  t.equal(st.mode & 0o777, 0o640, 'mode 0640');
  const key = await readFile(realm, 'utf8');
  t.ok(key.length > 0, 'not empty');
  t.notMatch(key, /\s/, 'no trailing newline or other whitespace');
  t.equal(emulator.stats().challenges, 1);
  t.equal(emulator.stats().keysOutstanding, 1);
});

t.test('presenting the key yields a token exactly in the HIMDS shape', async (t) => {
  const lifetime = 3600;
  const { emulator } = await startEmulator(t, { tokenLifetimeS: lifetime });
  const before = Math.floor(Date.now() / 1000);
  const { second, realm } = await fetchToken(tokenUrl(emulator));
  const after = Math.ceil(Date.now() / 1000);
  t.equal(second.status, 200);
  t.match(second.headers['content-type'], /^application\/json/);
  t.equal(second.text, JSON.stringify(JSON.parse(second.text)), 'compact JSON');
  const body = second.json as Record<string, unknown>;
  for (const [k, v] of Object.entries(body)) t.type(v, 'string', `${k} is a string`);
  t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'expires_on', 'not_before', 'refresh_token', 'resource', 'token_type']);
  t.equal(body.refresh_token, '');
  t.equal(body.resource, '', 'resource is EMPTY, as real HIMDS sends it');
  t.equal(body.token_type, 'Bearer');
  t.notOk('client_id' in body, 'no client_id for the system identity');
  t.equal(body.expires_in, String(lifetime), 'expires_in is the token lifetime');
  const expiresOn = Number(body.expires_on);
  t.ok(expiresOn >= before + lifetime && expiresOn <= after + lifetime, `expires_on ≈ now + lifetime (${expiresOn})`);
  const notBefore = Number(body.not_before);
  t.ok(notBefore >= before && notBefore <= after, 'not_before ≈ now');
  const claims = jwtClaims(body.access_token as string);
  t.equal(claims.aud, ARM, 'the JWT audience is the requested resource');
  t.equal(claims.exp, expiresOn);
  t.match(claims.appid, GUID, 'system identity has an app id');

  t.notOk(existsSync(realm), 'the key file is deleted when used');
  const stats = emulator.stats();
  t.equal(stats.tokenRequests, 2);
  t.equal(stats.challenges, 1);
  t.equal(stats.tokensIssued, 1);
  t.equal(stats.rejectedKeys, 0);
  t.equal(stats.keysOutstanding, 0);
  t.same(stats.lastTokenQuery, { 'api-version': '2020-06-01', resource: ARM }, 'last query as received (decoded)');

  const other = await fetchToken(`${emulator.url}${TOKEN}?api-version=2020-06-01&resource=api%3A%2F%2Fsomething`);
  t.equal(jwtClaims(other.second.json.access_token).aud, 'api://something', 'aud follows the resource');
  t.equal(other.second.json.resource, '', 'resource still empty');
});

t.test('a key is single use', async (t) => {
  const { emulator } = await startEmulator(t);
  const url = tokenUrl(emulator);
  const { second, key, realm } = await fetchToken(url);
  t.equal(second.status, 200);
  const replay = await get(url, { Metadata: 'true', Authorization: `Basic ${key}` });
  t.equal(replay.status, 401, 'second use of the same key is challenged again');
  const newRealm = realmOf(replay);
  t.not(newRealm, realm, 'with a fresh key file');
  t.ok(existsSync(newRealm));
  t.equal(emulator.stats().rejectedKeys, 1, 'counted as a rejected key');

  const wrong = await get(url, { Metadata: 'true', Authorization: 'Basic not-a-key' });
  t.equal(wrong.status, 401, 'an unknown key is challenged');
  const notBasic = await get(url, { Metadata: 'true', Authorization: `Bearer ${await readFile(newRealm, 'utf8')}` });
  t.equal(notBasic.status, 401, 'a valid key under another scheme is not accepted');
  t.equal(emulator.stats().rejectedKeys, 3);
  t.equal(emulator.stats().tokensIssued, 1);
});

t.test('an unused key expires after keyTtlMs', async (t) => {
  const { emulator } = await startEmulator(t, { keyTtlMs: 200 });
  const url = tokenUrl(emulator);
  const first = await get(url);
  t.equal(first.status, 401);
  const realm = realmOf(first);
  const key = await readFile(realm, 'utf8');
  t.ok(existsSync(realm), 'present right after the challenge');
  await waitFor(() => !existsSync(realm), 3000, 'the key file to be deleted');
  t.pass('the key file is deleted after the ttl');
  t.equal(emulator.stats().keysOutstanding, 0);
  const late = await get(url, { Metadata: 'true', Authorization: `Basic ${key}` });
  t.equal(late.status, 401, 'an expired key is refused');
  t.equal(emulator.stats().rejectedKeys, 1);
  t.equal(emulator.stats().tokensIssued, 0);
});

t.test('request validation', async (t) => {
  const { emulator } = await startEmulator(t);
  const noMetadata = await get(tokenUrl(emulator), {});
  t.equal(noMetadata.status, 400, 'missing Metadata -> 400');
  t.same(noMetadata.json, { error: 'invalid_request', error_description: 'Required metadata header not specified' });
  t.equal((await get(tokenUrl(emulator), { Metadata: 'false' })).status, 400, 'Metadata: false -> 400');

  for (const v of ['2018-02-01', '2021-02-01', '', 'latest']) {
    const r = await get(tokenUrl(emulator, '', v));
    t.equal(r.status, 400, `api-version '${v}' -> 400`);
    t.type(r.json, 'object');
  }
  const none = await get(`${emulator.url}${TOKEN}?resource=x`);
  t.equal(none.status, 400, 'no api-version -> 400');
  t.same([...HIMDS_API_VERSIONS].sort(), ['2019-08-15', '2019-11-01', '2020-06-01']);
  for (const v of ['2019-08-15', '2019-11-01', '2020-06-01']) {
    const r = await get(tokenUrl(emulator, '', v));
    t.equal(r.status, 401, `api-version ${v} is accepted (challenged)`);
  }
  const noResource = await get(`${emulator.url}${TOKEN}?api-version=2020-06-01`);
  t.equal(noResource.status, 400, 'no resource -> 400');
  t.equal((await get(tokenUrl(emulator), { Metadata: 'true' }, 'POST')).status, 405, 'POST -> 405');
  t.equal((await get(`${emulator.url}/metadata/nothing?api-version=2020-06-01`)).status, 404, 'unknown path -> 404');
  t.equal(emulator.stats().tokensIssued, 0);
});

t.test('user-assigned identities: echo mode (new agents)', async (t) => {
  const { emulator } = await startEmulator(t, { userAssigned: 'echo' });
  const system = await fetchToken(tokenUrl(emulator));
  const systemAppId = jwtClaims(system.second.json.access_token).appid;
  const systemOid = jwtClaims(system.second.json.access_token).oid;

  const clientId = '0f5d9b2c-1111-4222-8333-944455556666';
  const byClient = await fetchToken(tokenUrl(emulator, `&client_id=${clientId}`));
  t.equal(byClient.second.status, 200);
  t.equal(byClient.second.json.client_id, clientId, 'client_id echoed');
  t.equal(byClient.second.json.resource, '');
  t.equal(jwtClaims(byClient.second.json.access_token).appid, clientId, 'appid claim = client_id');
  t.not(clientId, systemAppId);

  const objectId = 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee';
  const byObject = await fetchToken(tokenUrl(emulator, `&object_id=${objectId}`));
  t.equal(byObject.second.json.object_id, objectId, 'object_id echoed');
  t.notOk('client_id' in byObject.second.json);
  t.equal(jwtClaims(byObject.second.json.access_token).oid, objectId, 'oid claim = object_id');

  const resId = '/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ua';
  const byRes = await fetchToken(tokenUrl(emulator, `&msi_res_id=${encodeURIComponent(resId)}`));
  t.equal(byRes.second.json.msi_res_id, resId, 'msi_res_id echoed');
  t.equal(jwtClaims(byRes.second.json.access_token).xms_mirid, resId);
  for (const [k, v] of Object.entries(byRes.second.json)) t.type(v, 'string', `${k} is a string`);

  const legacy = await fetchToken(tokenUrl(emulator, `&mi_res_id=${encodeURIComponent(resId)}`));
  t.equal(legacy.second.status, 200, 'mi_res_id is silently ignored');
  t.notOk('mi_res_id' in legacy.second.json, 'not echoed');
  t.notOk('msi_res_id' in legacy.second.json);
  t.notOk('client_id' in legacy.second.json);
  const legacyClaims = jwtClaims(legacy.second.json.access_token);
  t.equal(legacyClaims.appid, systemAppId, 'system identity');
  t.equal(legacyClaims.oid, systemOid, 'system identity');
  t.not(legacyClaims.xms_mirid, resId);
});

t.test('user-assigned identities: ignore mode (legacy agents)', async (t) => {
  const { emulator } = await startEmulator(t, { userAssigned: 'ignore' });
  const system = await fetchToken(tokenUrl(emulator));
  const systemAppId = jwtClaims(system.second.json.access_token).appid;
  const clientId = '0f5d9b2c-1111-4222-8333-944455556666';
  const r = await fetchToken(tokenUrl(emulator, `&client_id=${clientId}`));
  t.equal(r.second.status, 200);
  t.notOk('client_id' in r.second.json, 'no echo');
  t.equal(jwtClaims(r.second.json.access_token).appid, systemAppId, 'the system identity is returned');
  const o = await fetchToken(tokenUrl(emulator, '&object_id=aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee'));
  t.notOk('object_id' in o.second.json, 'no echo');
});

t.test('user-assigned identities: not-found mode', async (t) => {
  const { emulator } = await startEmulator(t, { userAssigned: 'not-found' });
  for (const selector of ['client_id=abc', 'object_id=abc', 'msi_res_id=%2Fsubscriptions%2Fx']) {
    const r = await fetchToken(tokenUrl(emulator, `&${selector}`));
    t.equal(r.second.status, 404, `${selector}: 404`);
    t.equal(r.second.text, JSON.stringify(IDENTITY_NOT_FOUND), `${selector}: the exact HIMDS body`);
    t.notOk(existsSync(r.realm), 'the key was still consumed');
  }
  const system = await fetchToken(tokenUrl(emulator));
  t.equal(system.second.status, 200, 'no selector: the system identity works');
  const legacy = await fetchToken(tokenUrl(emulator, '&mi_res_id=abc'));
  t.equal(legacy.second.status, 200, 'mi_res_id is not a selector, even in not-found mode');
  t.equal(emulator.stats().tokensIssued, 2);
});

t.test('503 during start-up, with Retry-After, then recovery', async (t) => {
  const { emulator } = await startEmulator(t, { startupUnavailableMs: 400 });
  const first = await get(tokenUrl(emulator));
  t.equal(first.status, 503);
  t.equal(first.headers['retry-after'], '1');
  t.type(first.json, 'object');
  t.equal((await get(`${emulator.url}/metadata/instance/compute?api-version=2020-06-01`)).status, 503, 'every endpoint');
  let last = first;
  await waitFor(
    async () => {
      last = await get(tokenUrl(emulator));
      return last.status !== 503;
    },
    5000,
    'the start-up window to end',
  );
  t.equal(last.status, 401, 'challenged normally afterwards');
  t.ok(emulator.stats().injectedFailures >= 2);
  t.equal(emulator.stats().challenges, 1);
});

t.test('failNext / failStatus, from options and from POST /__emulator/faults', async (t) => {
  const { emulator } = await startEmulator(t, { failNext: 2, failStatus: 500 });
  for (const i of [1, 2]) {
    const r = await get(tokenUrl(emulator));
    t.equal(r.status, 500, `request ${i} fails with failStatus`);
    t.equal(r.json?.error, 'injected_failure');
  }
  t.equal((await get(tokenUrl(emulator))).status, 401, 'then normal again');
  t.equal(emulator.stats().injectedFailures, 2);
  t.equal(emulator.stats().challenges, 1);

  const patched = await postFaults(emulator, JSON.stringify({ failNext: 1, failStatus: 429 }));
  t.equal(patched.status, 200);
  t.match(patched.json, { failNext: 1, failStatus: 429 }, 'the new switches are returned');
  t.equal((await get(`${emulator.url}/metadata/identity/info?api-version=2020-06-01`)).status, 429);
  t.equal((await get(`${emulator.url}/metadata/identity/info?api-version=2020-06-01`)).status, 200);
  t.equal(emulator.faults.failNext, 0);
});

t.test('latencyMs delays answers (not the control endpoints)', async (t) => {
  const { emulator } = await startEmulator(t, { latencyMs: 300 });
  let started = performance.now();
  const r = await get(`${emulator.url}/metadata/identity/info?api-version=2020-06-01`);
  t.equal(r.status, 200);
  t.ok(performance.now() - started >= 280, 'delayed by about latencyMs');
  started = performance.now();
  t.equal((await get(`${emulator.url}/__emulator/stats`, {})).status, 200);
  t.ok(performance.now() - started < 250, 'stats are not delayed');
  t.equal((await postFaults(emulator, '{"latencyMs":0}')).status, 200);
  started = performance.now();
  await get(`${emulator.url}/metadata/identity/info?api-version=2020-06-01`);
  t.ok(performance.now() - started < 250, 'latency switched off at run time');
});

t.test('down() refuses connections until up()', async (t) => {
  const { emulator } = await startEmulator(t);
  const port = emulator.address.port;
  t.equal((await get(tokenUrl(emulator))).status, 401);
  await emulator.down();
  await t.rejects(get(tokenUrl(emulator)), { code: 'ECONNREFUSED' }, 'connection refused while down');
  await emulator.up();
  t.equal(emulator.address.port, port, 'same port after up()');
  const { second } = await fetchToken(tokenUrl(emulator));
  t.equal(second.status, 200, 'serving again');
});

t.test('instance and identity endpoints', async (t) => {
  const { emulator } = await startEmulator(t);
  const compute = await get(`${emulator.url}/metadata/instance/compute?api-version=2020-06-01`);
  t.equal(compute.status, 200);
  t.notOk('www-authenticate' in compute.headers, 'not challenged');
  t.match(compute.json, {
    location: String,
    name: String,
    resourceGroupName: String,
    subscriptionId: String,
    vmId: String,
    osType: String,
  });
  t.match(compute.json.resourceId, /\/providers\/Microsoft\.HybridCompute\/machines\//);
  t.ok('tags' in compute.json);

  const instance = await get(`${emulator.url}/metadata/instance?api-version=2019-11-01`);
  t.equal(instance.status, 200);
  t.same(instance.json.compute, compute.json, 'the instance document holds the compute document');

  const info = await get(`${emulator.url}/metadata/identity/info?api-version=2020-06-01`);
  t.equal(info.status, 200);
  t.match(info.json.tenantId, GUID);
  t.equal((await get(`${emulator.url}/metadata/instance?api-version=2021-02-01`)).status, 400, 'instance api-version checked too');
  t.equal((await get(`${emulator.url}/metadata/instance/compute?api-version=2020-06-01`, {})).status, 400, 'Metadata required');
  const status = await get(`${emulator.url}/agentstatus`, {});
  t.equal(status.status, 200, '/agentstatus needs no Metadata');
  t.equal(emulator.stats().metadataRequests, 3);
  t.equal(emulator.stats().tokenRequests, 0);
});

function postFaults(emulator: HimdsEmulator, body: string): Promise<Reply> {
  return request(
    `${emulator.url}/__emulator/faults`,
    'POST',
    { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
    body,
  );
}

t.test('control endpoints: stats and faults', async (t) => {
  const { emulator } = await startEmulator(t);
  await fetchToken(tokenUrl(emulator));
  await get(`${emulator.url}/metadata/instance/compute?api-version=2020-06-01`);
  const stats = await get(`${emulator.url}/__emulator/stats`, {});
  t.equal(stats.status, 200);
  t.same(
    stats.json,
    {
      tokenRequests: 2,
      challenges: 1,
      tokensIssued: 1,
      rejectedKeys: 0,
      metadataRequests: 1,
      injectedFailures: 0,
      lastTokenQuery: { 'api-version': '2020-06-01', resource: ARM },
      keysOutstanding: 0,
    },
    'counters over HTTP',
  );
  t.same(stats.json, emulator.stats(), 'same as stats()');

  const set = await postFaults(emulator, JSON.stringify({ userAssigned: 'not-found', latencyMs: 0, failNext: 0, failStatus: 502 }));
  t.equal(set.status, 200);
  t.same(set.json, { latencyMs: 0, failNext: 0, failStatus: 502, userAssigned: 'not-found' });
  t.equal(emulator.faults.userAssigned, 'not-found', 'switch changed');
  const nf = await fetchToken(tokenUrl(emulator, '&client_id=abc'));
  t.equal(nf.second.status, 404, 'and it takes effect');

  const bogus = await postFaults(emulator, JSON.stringify({ userAssigned: 'maybe', failStatus: '500' }));
  t.equal(bogus.status, 400, 'an unknown mode or a non-number is refused');
  t.match(bogus.json.error_description, /must be/);
  t.equal(emulator.faults.userAssigned, 'not-found', 'and nothing changed');
  t.equal(emulator.faults.failStatus, 502);

  const badJson = await postFaults(emulator, '{not json');
  t.equal(badJson.status, 400, 'bad JSON -> 400');
  t.same(badJson.json, { error: 'invalid_json' });
  t.equal(emulator.faults.failStatus, 502, 'nothing changed');

  const tooLarge = await postFaults(emulator, JSON.stringify({ pad: 'x'.repeat(5000) }));
  t.equal(tooLarge.status, 413, 'an oversized body -> 413');

  const nullBody = await postFaults(emulator, 'null');
  t.equal(nullBody.status, 400, 'JSON that is not an object -> 400');
  const badStatus = await postFaults(emulator, JSON.stringify({ failStatus: 99 }));
  t.not(badStatus.status, 200, 'a failStatus that is not an HTTP error status is refused');
  t.equal(emulator.faults.failStatus, 502, 'a refused patch changes nothing');
  const mixed = await postFaults(emulator, JSON.stringify({ failNext: 2, latencyMs: -1 }));
  t.equal(mixed.status, 400, 'negative latency refused');
  t.equal(emulator.faults.failNext, 0, 'and the valid half of a bad patch is not applied');

  t.equal((await get(`${emulator.url}/__emulator/faults`, {})).status, 404, 'GET faults -> 404');
  t.equal((await get(`${emulator.url}/__emulator/stats`, {}, 'POST')).status, 404, 'POST stats -> 404');
  t.equal((await get(`${emulator.url}/__emulator/nothing`, {})).status, 404);
});

t.test('close() removes outstanding key files', async (t) => {
  const tokensDir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-emu-test-'));
  t.teardown(() => rm(tokensDir, { recursive: true, force: true }));
  const emulator = await HimdsEmulator.start({ tokensDir }, LOOPBACK);
  let closed = false;
  t.teardown(async () => {
    if (!closed) await emulator.close();
  });
  const realms = [realmOf(await get(tokenUrl(emulator))), realmOf(await get(tokenUrl(emulator)))];
  t.equal(realms.length, 2);
  t.same((await readdir(tokensDir)).sort(), realms.map((r) => path.basename(r)).sort(), 'two key files outstanding');
  t.equal(emulator.stats().keysOutstanding, 2);
  await emulator.close();
  closed = true;
  t.same(await readdir(tokensDir), [], 'all removed on close');
  t.equal(emulator.stats().keysOutstanding, 0);
  await t.rejects(get(tokenUrl(emulator)), { code: 'ECONNREFUSED' }, 'no longer listening');
});

t.test('start() creates a missing tokens dir', async (t) => {
  const parent = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-emu-test-'));
  t.teardown(() => rm(parent, { recursive: true, force: true }));
  const tokensDir = path.join(parent, 'nested', 'tokens');
  const emulator = await HimdsEmulator.start({ tokensDir }, LOOPBACK);
  t.teardown(() => emulator.close());
  t.ok((await stat(tokensDir)).isDirectory());
  const realm = realmOf(await get(tokenUrl(emulator)));
  t.equal(path.dirname(realm), tokensDir);
});
