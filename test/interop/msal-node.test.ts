// Interop: the real @azure/msal-node 7.2.3 ManagedIdentityApplication.
//
// 1. IMDS source, pointed at the real proxy (in front of the real HIMDS emulator) through
//    AZURE_POD_IDENTITY_AUTHORITY_HOST: system-assigned, user-assigned by client id / object id / resource id
//    with a UAMI-aware agent (echo), and fail-closed with a legacy agent (ignore) and with not-found.
// 2. Azure Arc source, straight against the BUILT emulator, in a child process (test/fixtures/msal-arc.mjs)
//    run as root in a private mount namespace with a tmpfs on /var/opt: msal-node only reads key files from
//    exactly /var/opt/azcmagent/tokens/. That proves the emulator is what msal-node expects of HIMDS; the child
//    also runs the built proxy with its DEFAULT tokens directory against it.
//
// msal-node keeps its token cache and its managed identity source (endpoint included) in STATIC fields: one
// stack for the whole file, and `forceRefresh: true` wherever a network call is wanted.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ManagedIdentityApplication } from '@azure/msal-node';
import { claimsOf, isolateSdkEnvironment, settle, watchProxy } from '../fixtures/interop.js';
import { startStack, TOKEN_PATH } from '../fixtures/stack.js';

isolateSdkEnvironment();

const stack = await startStack();
t.teardown(() => stack.close());
process.env.AZURE_POD_IDENTITY_AUTHORITY_HOST = stack.url;

const ARM = 'https://management.azure.com';
const DAY_MS = 86_400_000;
const IDENTITY_NOT_FOUND = { error: 'invalid_request', error_description: 'Identity not found' };
const REPO = fileURLToPath(new URL('../..', import.meta.url));

const { offLoopback, observed, recorder, counters } = watchProxy(stack);

const UAMI = {
  client_id: { option: 'userAssignedClientId', id: '1c1c1c1c-0000-4000-8000-000000000011', claim: 'appid' },
  object_id: { option: 'userAssignedObjectId', id: '2d2d2d2d-0000-4000-8000-000000000022', claim: 'oid' },
  msi_res_id: {
    option: 'userAssignedResourceId',
    id: '/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uami-msal',
    claim: 'xms_mirid',
  },
} as const;

/** Other identities for the fail-closed cases, so no cache (the SDK's, or a future proxy cache) can answer. */
const LEGACY_IDS = {
  client_id: '3e3e3e3e-0000-4000-8000-000000000033',
  object_id: '4f4f4f4f-0000-4000-8000-000000000044',
  msi_res_id:
    '/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uami-legacy',
} as const;

function userAssignedApp(param: keyof typeof UAMI, id: string = UAMI[param].id): ManagedIdentityApplication {
  return new ManagedIdentityApplication({ managedIdentityIdParams: { [UAMI[param].option]: id } });
}

t.test('msal-node picks the IMDS source', async (t) => {
  t.equal(new ManagedIdentityApplication().getManagedIdentitySource(), 'DefaultToImds');
});

t.test('IMDS, system-assigned: acquireToken through the proxy', async (t) => {
  const app = new ManagedIdentityApplication();
  const delta = counters();
  const requests = recorder();
  const started = Date.now();
  const result = await app.acquireToken({ resource: ARM });
  await settle();

  t.equal(result.fromCache, false, 'first call went to the network');
  t.equal(result.tokenType, 'Bearer');
  t.match(result.accessToken, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'a compact JWT');
  const claims = claimsOf(result.accessToken);
  t.equal(claims.aud, ARM, 'the token is for the resource asked for');
  const expiresOn = result.expiresOn?.getTime() ?? 0;
  t.ok(Math.abs(expiresOn - claims.exp * 1000) <= 2000, 'expiresOn is the token exp (msal-node reads expires_on)');
  t.ok(Math.abs(expiresOn - (started + DAY_MS)) < 60_000, 'about 24 h from now');
  t.ok(Math.abs((result.refreshOn?.getTime() ?? 0) - (started + DAY_MS / 2)) < 60_000, 'refreshOn about 12 h from now');

  const wire = requests();
  t.equal(wire.length, 1, 'one request');
  const request = wire[0];
  t.equal(request?.path, `${TOKEN_PATH}/`, 'token path with the / msal-node appends');
  t.same(request?.query, { 'api-version': '2018-02-01', resource: ARM });
  t.match(request?.url, /resource=https%3A%2F%2Fmanagement\.azure\.com$/, 'resource percent-encoded');
  t.equal(request?.headers.metadata, 'true');
  t.equal(request?.headers['x-client-sku'], 'msal.js.node');
  t.equal(request?.headers['x-client-ver'], '7.2.3');
  t.match(request?.headers['x-ms-client-request-id'], /^[0-9a-f-]{36}$/);
  t.equal(request?.headers['content-type'], 'application/x-www-form-urlencoded;charset=utf-8');
  t.equal(request?.headers['content-length'], undefined, 'no body');
  t.equal(request?.status, 200);
  t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 });
  t.same(stack.emulator.stats().lastTokenQuery, { 'api-version': '2020-06-01', resource: ARM });

  // msal-node caches under the `resource` of the response: the proxy echoes the request's, so this is a hit.
  const cached = await app.acquireToken({ resource: ARM });
  t.equal(cached.fromCache, true, 'second call: from the msal-node cache');
  t.equal(cached.accessToken, result.accessToken);
  const viaDefault = await new ManagedIdentityApplication().acquireToken({ resource: `${ARM}/.default` });
  t.equal(viaDefault.accessToken, result.accessToken, '/.default is stripped: same cache entry, another instance');
  t.equal(requests().length, 1, 'no further request');

  const refreshed = await app.acquireToken({ resource: ARM, forceRefresh: true });
  await settle();
  t.equal(refreshed.fromCache, false, 'forceRefresh goes to the network');
  t.equal(requests().length, 2);
  t.same(requests()[1]?.query, { 'api-version': '2018-02-01', resource: ARM }, 'forceRefresh adds nothing to the query');
  // It asks for no fresh token (no bypass_cache), so the proxy's cache answers: HIMDS is not asked again.
  t.equal(refreshed.accessToken, result.accessToken, "the proxy's cached token");
  t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 });
});

t.test('IMDS, the resource is echoed verbatim so msal-node caches a trailing-slash resource too', async (t) => {
  const app = new ManagedIdentityApplication();
  const requests = recorder();
  const first = await app.acquireToken({ resource: `${ARM}/` });
  t.equal(first.fromCache, false);
  t.equal(claimsOf(first.accessToken).aud, `${ARM}/`, 'the slash reaches HIMDS');
  const second = await app.acquireToken({ resource: `${ARM}/` });
  t.equal(second.fromCache, true, 'cache hit under the same resource string');
  await settle();
  t.equal(requests().length, 1);
  t.same(requests()[0]?.query.resource, `${ARM}/`);
  // What msal-node got: the IMDS body, resource verbatim.
  const reply = await stack.get(requests()[0]!.url);
  t.equal(reply.status, 200);
  t.equal(reply.json.resource, `${ARM}/`);
  t.same(Object.keys(reply.json), [
    'access_token',
    'client_id',
    'expires_in',
    'expires_on',
    'ext_expires_in',
    'not_before',
    'resource',
    'token_type',
  ]);
});

t.test('IMDS, user-assigned with a UAMI-aware agent (echo)', async (t) => {
  stack.emulator.faults.userAssigned = 'echo';
  for (const param of Object.keys(UAMI) as (keyof typeof UAMI)[]) {
    const { id, claim } = UAMI[param];
    const delta = counters();
    const requests = recorder();
    const result = await userAssignedApp(param).acquireToken({ resource: ARM, forceRefresh: true });
    await settle();
    t.equal(claimsOf(result.accessToken)[claim], id, `${param}: the user-assigned identity's token`);
    const wire = requests();
    t.equal(wire.length, 1, `${param}: one request`);
    t.same(wire[0]?.query, { 'api-version': '2018-02-01', resource: ARM, [param]: id }, `${param}: sent as ${param}`);
    t.equal(wire[0]?.status, 200);
    t.equal(stack.emulator.stats().lastTokenQuery?.[param], id, `${param}: forwarded upstream unchanged`);
    t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 });
  }
});

t.test('IMDS, user-assigned with a legacy agent (ignore): fail closed', async (t) => {
  stack.emulator.faults.userAssigned = 'ignore';
  t.teardown(() => {
    stack.emulator.faults.userAssigned = 'echo';
  });
  for (const param of Object.keys(UAMI) as (keyof typeof UAMI)[]) {
    const delta = counters();
    const requests = recorder();
    const started = performance.now();
    const error: any = await userAssignedApp(param, LEGACY_IDS[param])
      .acquireToken({ resource: ARM, forceRefresh: true })
      .then(
        (r) => ({ errorCode: 'no error', errorMessage: `got a token for ${claimsOf(r.accessToken).appid}` }),
        (err: unknown) => err,
      );
    const elapsed = performance.now() - started;
    await settle();
    t.equal(error.errorCode, 'invalid_request', `${param}: acquireToken rejects`);
    t.match(error.errorMessage, /Identity not found/, `${param}: with the IMDS reason`);
    t.ok(elapsed < 3000, `${param}: a 400 is not retried (${Math.round(elapsed)} ms)`);
    const wire = requests();
    t.equal(wire.length, 1, `${param}: exactly one request`);
    t.equal(wire[0]?.query[param], LEGACY_IDS[param], `${param}: the selector was sent`);
    t.equal(wire[0]?.status, 400);
    t.same(delta(), { tokensIssued: 1, challenges: 1, tokenRequests: 2 }, `${param}: the machine token was issued upstream, not passed on`);
    const replay = await stack.get(wire[0]!.url);
    t.same(replay.json, IDENTITY_NOT_FOUND, `${param}: the proxy's answer`);
  }
  // A token the SDK cached in the echo test is still served without forceRefresh, with no request: SDK behaviour.
  const requests = recorder();
  const cached = await userAssignedApp('client_id').acquireToken({ resource: ARM });
  t.equal(cached.fromCache, true, 'msal-node serves its cached user-assigned token without asking');
  t.equal(claimsOf(cached.accessToken).appid, UAMI.client_id.id);
  t.equal(requests().length, 0);
});

t.test('IMDS, user-assigned identity unknown upstream (404 identity_not_found): 400, no retries', async (t) => {
  stack.emulator.faults.userAssigned = 'not-found';
  t.teardown(() => {
    stack.emulator.faults.userAssigned = 'echo';
  });
  const delta = counters();
  const requests = recorder();
  const started = performance.now();
  // An identity never asked for before: a confirmed one would rightly be served from the proxy's cache.
  const error: any = await userAssignedApp('object_id', '5a5a5a5a-0000-4000-8000-000000000055')
    .acquireToken({ resource: ARM, forceRefresh: true })
    .then(
      () => ({ errorCode: 'no error' }),
      (err: unknown) => err,
    );
  await settle();
  t.equal(error.errorCode, 'invalid_request');
  t.match(error.errorMessage, /Identity not found/);
  t.ok(performance.now() - started < 3000, 'at once: the upstream 404 did not become a retried status');
  t.same(
    requests().map((r) => r.status),
    [400],
  );
  t.same(delta(), { tokensIssued: 0, challenges: 1, tokenRequests: 2 });
});

// ---------------------------------------------------------------------------------------------------------
// Arc mode, in a private mount namespace
// ---------------------------------------------------------------------------------------------------------

function arcSkipReason(): string | undefined {
  if (process.platform !== 'linux') return 'Arc-mode interop needs Linux (mount namespaces)';
  if (process.getuid?.() !== 0) return 'Arc-mode interop needs root: a private mount namespace with a tmpfs on /var/opt';
  if (!existsSync('/var/opt')) return '/var/opt does not exist on this host; not creating a mount point for the tmpfs';
  // The same unshare + tmpfs mount, doing nothing else: tells whether this host/container allows it.
  const probe = spawnSync('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount -t tmpfs tmpfs /var/opt'], {
    timeout: 5000,
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
    encoding: 'utf8',
  });
  if (probe.error) return `unshare is not usable here: ${probe.error.message}`;
  if (probe.status !== 0) return `unshare --mount / mount -t tmpfs fail here (status ${probe.status}): ${probe.stderr.trim()}`;
  return undefined;
}

interface ChildRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  killed: boolean;
}

function runArcChild(deadlineMs: number): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'unshare',
      // $0 is node itself: no PATH lookup inside the namespace.
      [
        '--mount',
        '--propagation',
        'private',
        '--',
        'sh',
        '-c',
        'mount -t tmpfs tmpfs /var/opt && exec "$0" test/fixtures/msal-arc.mjs',
        process.execPath,
      ],
      {
        cwd: REPO,
        // A clean environment: no AZURE_*/IDENTITY_*/proxy variables, no tap loaders in NODE_OPTIONS.
        env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', MSAL_ARC_DEADLINE_MS: String(deadlineMs - 3000) },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    let killed = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    // unshare and sh exec: this pid ends up being the node process itself.
    const timer = setTimeout(() => {
      killed = true;
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    }, deadlineMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, killed });
    });
  });
}

const arcSkip = arcSkipReason();
t.test(
  'Arc mode: msal-node straight against the built emulator, and the built proxy with the default tokens dir',
  arcSkip ? { skip: arcSkip } : {},
  async (t) => {
    const built = ['dist/emulator/himds.js', 'dist/server/proxy.js', 'dist/commands/serve.js', 'dist/observability/log.js'].every((f) =>
      existsSync(`${REPO}/${f}`),
    );
    if (!built) {
      t.fail('dist/ is not built: run `npm run build` (npm test does it as pretest)');
      return;
    }
    const hostAgentDir = existsSync('/var/opt/azcmagent');
    const hostTokensDir = existsSync('/var/opt/azcmagent/tokens');

    const run = await runArcChild(15_000);
    t.equal(run.killed, false, 'the child finished before its deadline');
    t.equal(run.code, 0, `the child exited 0${run.stderr ? `; stderr: ${run.stderr.slice(0, 2000)}` : ''}`);
    const line = run.stdout.split('\n').find((l) => l.startsWith('MSAL_ARC_RESULT '));
    t.ok(line, 'the child printed its result line');
    const r = JSON.parse(line?.slice('MSAL_ARC_RESULT '.length) ?? '{}');
    t.equal(r.error, undefined, `no error in the child${r.error ? `: ${r.error}` : ''}`);
    t.equal(r.steps?.at(-1), 'done', 'every step ran');

    // Nothing reached the host's /var/opt: the tmpfs lived in the child's mount namespace only.
    if (!hostTokensDir) t.notOk(existsSync('/var/opt/azcmagent/tokens'), 'host /var/opt/azcmagent/tokens was not created');
    if (!hostAgentDir) t.notOk(existsSync('/var/opt/azcmagent'), 'host /var/opt/azcmagent was not created');
    t.equal(r.sandbox?.varOpt, 'tmpfs', 'the child ran on a tmpfs /var/opt');

    t.equal(r.source, 'AzureArc', 'msal-node chose the Arc source from IDENTITY_ENDPOINT + IMDS_ENDPOINT');

    // System-assigned, through the key-file challenge.
    const s = r.system ?? {};
    t.equal(s.aud, ARM, 'system-assigned token for the resource');
    t.equal(s.fromCache, false);
    t.equal(s.tokenType, 'Bearer');
    t.same([s.tokensIssued, s.challenges, s.tokenRequests, s.rejectedKeys], [1, 1, 2, 0], 'one challenge, one authorized retry, key accepted');
    t.ok(Math.abs(s.expiresOnMs - s.exp * 1000) <= 2000, 'msal-node read the emulator expires_on');
    t.ok(Math.abs(s.expiresOnMs - (s.startedMs + DAY_MS)) < 60_000, '24 h token');
    t.same(s.lastTokenQuery, { 'api-version': '2020-06-01', resource: ARM }, 'msal-node Arc sends api-version 2020-06-01');
    t.equal(s.cachedSame, true, 'second acquireToken served from the msal-node cache');
    t.equal(s.cachedUpstream, 0);

    // The wire, as the emulator saw it: 401 + realm, then the same request with Authorization: Basic.
    const emulatorWire = (r.wire ?? []).filter((w: any) => w.server === 'emulator');
    const [challenge, authorized] = emulatorWire;
    t.equal(challenge?.status, 401);
    t.match(challenge?.wwwAuthenticate, /^Basic realm=\/var\/opt\/azcmagent\/tokens\/[0-9a-f-]{36}\.key$/, 'realm in the real tokens dir');
    t.equal(challenge?.authorization, null);
    t.equal(challenge?.metadata, 'true');
    t.equal(authorized?.url, challenge?.url, 'the retry is the same request');
    t.equal(authorized?.authorization, 'Basic');
    t.equal(authorized?.status, 200);

    // User-assigned: msal-node 7.2.3 forwards client_id / object_id / msi_res_id and checks the echo.
    for (const param of ['client_id', 'object_id', 'msi_res_id']) {
      const u = r.userAssigned?.[param] ?? {};
      t.equal(u.ok, true, `${param}: acquired${u.message ? `: ${u.message}` : ''}`);
      t.equal(u.claim, u.forwarded, `${param}: the token is the identity forwarded`);
      t.ok(typeof u.claim === 'string' && u.claim.length > 0);
    }
    // A legacy agent (emulator 'ignore'): msal-node's own fail-closed check rejects the machine token.
    t.equal(r.legacy?.ok, false, 'legacy agent: msal-node refuses the token');
    t.equal(r.legacy?.errorCode, 'user_assigned_managed_identity_not_confirmed');
    t.equal(r.legacy?.tokensIssued, 1, 'the emulator did hand out the machine token, as a legacy agent does');

    // The proxy, configured by parseServe with no --tokens-dir, reads the same keys msal-node reads.
    t.equal(r.proxyTokensDir, '/var/opt/azcmagent/tokens', 'default tokens dir');
    t.equal(r.defaultTokensDir, r.proxyTokensDir);
    const p = r.proxy ?? {};
    t.equal(p.status, 200, `token through the proxy${p.error ? `: ${p.error}` : ''}`);
    t.equal(p.contentType, 'application/json; charset=utf-8');
    t.same(p.keys, ['access_token', 'client_id', 'expires_in', 'expires_on', 'ext_expires_in', 'not_before', 'resource', 'token_type']);
    t.equal(p.resource, `${ARM}/`, 'resource echoed verbatim');
    t.equal(p.aud, `${ARM}/`);
    t.equal(p.tokenType, 'Bearer');
    t.equal(p.clientId, p.systemAppid, 'client_id is the machine identity');
    t.ok(Number(p.expiresIn) > 86_000 && Number(p.expiresIn) <= 86_400, 'expires_in about 24 h');
    t.same([p.tokensIssued, p.challenges], [1, 1]);
    t.same(p.lastTokenQuery, { 'api-version': '2020-06-01', resource: `${ARM}/` });
    const proxyLegs = (r.wire ?? []).filter((w: any) => w.server === 'emulator' && /resource=https%3A%2F%2Fmanagement\.azure\.com%2F$/.test(w.url));
    t.same(
      proxyLegs.map((w: any) => [w.status, w.headerNames.filter((h: string) => !/^(host|connection)$/i.test(h))]),
      [
        [401, ['Metadata']],
        [200, ['Metadata', 'Authorization']],
      ],
      "the proxy sends HIMDS only Metadata (+ the key): nothing of the client's",
    );

    t.equal(r.keysOutstanding, 0, 'every key file was used');
    t.same(r.tokensDirLeft, [], 'and deleted');
    t.same(r.offLoopback, [], 'the child sent nothing off 127.0.0.1');
    t.ok(r.undiciRequests > 0, 'the child saw its fetch/undici requests (the loopback check is not vacuous)');
  },
);

t.test('every client request stayed on 127.0.0.1', async (t) => {
  t.ok(observed.undici > 0, 'msal-node requests were observed');
  t.same(offLoopback, [], 'no request to 169.254.169.254 or anywhere else');
});
