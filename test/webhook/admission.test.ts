// The webhook over real HTTPS (a CA and a certificate made with openssl for this test): AdmissionReviews as
// the API server sends them, the returned JSONPatch applied with an RFC 6902 library (rfc6902), the patched pod
// validated against the Kubernetes schemas (kubernetes-models) and compared with the hand-written example
// workload, deploy/kubernetes/examples/workload/deployment.yaml. Everything on 127.0.0.1.
import path from 'node:path';
import t from 'tap';
import { applyPatch, type Operation } from 'rfc6902';
import { Pod } from 'kubernetes-models/v1/Pod';
import { createLogger } from '../../src/observability/log.js';
import { parseWebhook } from '../../src/commands/webhook.js';
import { startWebhook } from '../../src/webhook/server.js';
import { KUBERNETES_DIR, invocationProblems, yamlDocument } from '../fixtures/deploy.js';
import { httpsRequest, makePki, podReview, postReview } from '../fixtures/webhook.js';

const EXAMPLE = path.join(KUBERNETES_DIR, 'examples', 'workload', 'deployment.yaml');
const INJECT = 'arc-imds-proxy/inject';
const SIDECAR_LABEL = 'arc-imds-proxy/sidecar';
const OURS = ['netns-setup', 'arc-imds-sidecar'];

const pki = makePki();
t.teardown(() => pki.remove());
const { cert, key } = pki.issue('server');
const MAX = 65_536;
const { config } = parseWebhook(
  ['--listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key, '--image', 'arc-imds-proxy', '--max-request-bytes', String(MAX)],
  {},
);
const logs: any[] = [];
const webhook = await startWebhook(config, createLogger('info', { write: (line: string) => void logs.push(JSON.parse(line)) }));
t.teardown(() => webhook.close());
const base = webhook.url;

/** The example's pod template as a Pod: what the webhook should produce. */
function examplePod(): any {
  const template = structuredClone(yamlDocument(EXAMPLE).spec.template);
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { ...template.metadata, generateName: 'example-app-', namespace: 'team-a' },
    spec: template.spec,
  };
}

/** The example without what the webhook injects, opted in by label: what a user writes. */
function userPod(): any {
  const pod = examplePod();
  const spec = pod.spec;
  spec.initContainers = spec.initContainers.filter((c: any) => !OURS.includes(c.name));
  if (spec.initContainers.length === 0) delete spec.initContainers;
  spec.volumes = spec.volumes.filter((v: any) => v.name !== 'arc-imds-run');
  if (spec.volumes.length === 0) delete spec.volumes;
  spec.securityContext.sysctls = spec.securityContext.sysctls.filter((s: any) => s.name !== 'net.ipv4.ip_unprivileged_port_start');
  if (spec.securityContext.sysctls.length === 0) delete spec.securityContext.sysctls;
  delete pod.metadata.labels[SIDECAR_LABEL];
  pod.metadata.labels[INJECT] = 'true';
  return pod;
}

async function mutate(pod: any, namespace?: string, operation?: string) {
  const review = podReview(pod, namespace, operation);
  const reply = await postReview(base, pki.ca, review);
  const response = reply.json?.response;
  let ops: Operation[] | undefined;
  if (response?.patch !== undefined) ops = JSON.parse(Buffer.from(response.patch, 'base64').toString('utf8'));
  const patched = structuredClone(pod);
  const errors = ops ? applyPatch(patched, ops).filter((e) => e !== null) : [];
  return { reply, review, response, ops, patched, errors };
}

const validates = (pod: any) => {
  new Pod(structuredClone(pod)).validate();
  return true;
};

t.test('a labelled pod comes back as the hand-written example, schema-valid', async (t) => {
  const before = userPod();
  t.ok(validates(before), 'the pod before is a valid Pod');
  const { reply, review, response, ops, patched, errors } = await mutate(before);
  t.equal(reply.status, 200);
  t.equal(reply.json.apiVersion, 'admission.k8s.io/v1');
  t.equal(reply.json.kind, 'AdmissionReview');
  t.equal(response.uid, review.request.uid, "the answer carries the request's uid");
  t.equal(response.allowed, true);
  t.equal(response.patchType, 'JSONPatch');
  t.notOk(response.warnings, 'no warnings');
  t.ok(
    ops!.every((o) => o.op === 'add'),
    'only add operations: nothing the pod has is replaced or removed',
  );
  t.same(errors, [], 'the patch applies cleanly (rfc6902)');
  t.ok(validates(patched), 'the patched pod is a valid Pod (kubernetes-models)');

  const expected = examplePod();
  expected.metadata.labels[INJECT] = 'true';
  t.same(patched.spec.initContainers, expected.spec.initContainers, 'init containers: netns-setup and the sidecar, exactly as the example');
  t.same(patched, expected, 'the whole pod is the example (plus the opt-in label)');
  t.same(patched.spec.containers, before.spec.containers, "the app's containers are unchanged");
  t.same(
    { ...patched.spec.securityContext, sysctls: undefined },
    { ...before.spec.securityContext, sysctls: undefined },
    "the pod's security context is unchanged but for the sysctl",
  );
  const log = logs.find((l) => l.uid === review.request.uid);
  t.match(log, { msg: 'admission', outcome: 'injected', namespace: 'team-a', pod: 'example-app-' }, 'the decision is logged');

  const again = await mutate(patched);
  t.equal(again.response.allowed, true);
  t.equal(again.response.patch, undefined, 'reinvocation: an injected pod gets no second copy');
  t.notOk(again.response.warnings, 'and no warning');
  const handWritten = examplePod();
  handWritten.metadata.labels[INJECT] = 'true';
  t.equal((await mutate(handWritten)).response.patch, undefined, 'the hand-written example itself, labelled, gets nothing');
});

t.test('what the sidecar runs is a valid serve command line, with the workload from the downward API', async (t) => {
  const { patched } = await mutate(userPod());
  const sidecar = patched.spec.initContainers.find((c: any) => c.name === 'arc-imds-sidecar');
  const env = Object.fromEntries(sidecar.env.filter((e: any) => e.value !== undefined).map((e: any) => [e.name, e.value]));
  t.same(invocationProblems(sidecar.args, env), [], sidecar.args.join(' '));
  t.same(
    sidecar.env.slice(1),
    [
      { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'ARC_IMDS_WORKLOAD', value: '$(POD_NAMESPACE)/$(POD_NAME)' },
    ],
    'POD_NAMESPACE and POD_NAME (fieldRef) defined before ARC_IMDS_WORKLOAD refers to them',
  );
});

t.test('unlabelled pods, other kinds and other operations come back unchanged, without warnings', async (t) => {
  const cases: [string, any, string?][] = [];
  const unlabelled = userPod();
  delete unlabelled.metadata.labels[INJECT];
  cases.push(['no label', unlabelled]);
  const no = userPod();
  no.metadata.labels[INJECT] = 'false';
  cases.push(['label "false"', no]);
  const bare = userPod();
  delete bare.metadata.labels;
  cases.push(['no labels at all', bare]);
  cases.push(['an UPDATE', userPod(), 'UPDATE']);
  for (const [what, pod, operation] of cases) {
    const { reply, response } = await mutate(pod, 'team-a', operation);
    t.equal(reply.status, 200, what);
    t.same(response, { uid: response.uid, allowed: true }, `${what}: allowed, no patch, no warning`);
  }
  const review = podReview(userPod());
  review.request.kind = { group: 'apps', version: 'v1', kind: 'Deployment' };
  const reply = await postReview(base, pki.ca, review);
  t.same(reply.json.response, { uid: review.request.uid, allowed: true }, 'a Deployment: allowed, no patch');
});

t.test('hostNetwork and conflicting pods come back unchanged, with a warning saying why', async (t) => {
  const cases: [string, (pod: any) => void, RegExp][] = [
    ['hostNetwork', (p) => (p.spec.hostNetwork = true), /hostNetwork pod shares the node's network namespace.*IDENTITY_ENDPOINT and IMDS_ENDPOINT/],
    [
      'an init container named netns-setup',
      (p) => (p.spec.initContainers = [{ name: 'netns-setup', image: 'busybox:1.37' }]),
      /a container named netns-setup/,
    ],
    [
      'a container named arc-imds-sidecar',
      (p) => p.spec.containers.push({ name: 'arc-imds-sidecar', image: 'busybox:1.37' }),
      /a container named arc-imds-sidecar/,
    ],
    ['a volume named arc-imds-run', (p) => (p.spec.volumes = [{ name: 'arc-imds-run', emptyDir: {} }]), /a volume named arc-imds-run/],
    [
      'port 80 in use',
      (p) => (p.spec.containers[0].ports = [{ containerPort: 80 }]),
      /container app uses port 80, the sidecar's 169\.254\.169\.254:80/,
    ],
    ['the admin port in use', (p) => (p.spec.containers[0].ports = [{ name: 'otel', containerPort: 9464 }]), /port 9464, the sidecar's admin port/],
    [
      'the sysctl set otherwise',
      (p) => (p.spec.securityContext.sysctls = [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '1024' }]),
      /ip_unprivileged_port_start=1024/,
    ],
  ];
  for (const [what, change, warning] of cases) {
    const pod = userPod();
    change(pod);
    const { reply, response } = await mutate(pod);
    t.equal(reply.status, 200, `${what}: 200`);
    t.equal(response.allowed, true, `${what}: allowed`);
    t.equal(response.patch, undefined, `${what}: no patch`);
    t.equal(response.warnings?.length, 1, `${what}: one warning`);
    t.match(response.warnings?.[0], /^arc-imds-proxy: not injected: /, `${what}: says it was not injected`);
    t.match(response.warnings?.[0], warning, `${what}: says why`);
    t.ok(
      response.warnings.every((w: string) => w.length <= 256),
      `${what}: within the API server's warning length`,
    );
  }
});

t.test('a pod with init containers, volumes and sysctls of its own: ours go first, theirs stay', async (t) => {
  const pod = userPod();
  pod.spec.initContainers = [{ name: 'migrate', image: 'busybox:1.37', command: ['true'] }];
  pod.spec.volumes = [{ name: 'data', emptyDir: {} }];
  pod.spec.securityContext.sysctls = [{ name: 'net.ipv4.ping_group_range', value: '0 2147483647' }];
  const { patched, errors } = await mutate(pod);
  t.same(errors, []);
  t.same(
    patched.spec.initContainers.map((c: any) => c.name),
    ['netns-setup', 'arc-imds-sidecar', 'migrate'],
    "ours first: the app's init containers get IMDS too",
  );
  t.same(
    patched.spec.volumes.map((v: any) => v.name),
    ['data', 'arc-imds-run'],
    'the socket volume appended',
  );
  t.same(
    patched.spec.securityContext.sysctls.map((s: any) => s.name),
    ['net.ipv4.ping_group_range', 'net.ipv4.ip_unprivileged_port_start'],
    'the sysctl appended',
  );
  t.ok(validates(patched), 'schema-valid');
  const bare = userPod();
  delete bare.spec.securityContext;
  const injected = await mutate(bare);
  t.same(
    injected.patched.spec.securityContext,
    { sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }] },
    'no pod security context: only the sysctl',
  );
  const already = userPod();
  already.spec.securityContext.sysctls = [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }];
  t.same(
    (await mutate(already)).patched.spec.securityContext.sysctls,
    already.spec.securityContext.sysctls,
    'the sysctl set to 0 already: not added twice',
  );
});

t.test('annotations: the --allow-resource list and the sidecar resources', async (t) => {
  const pod = userPod();
  pod.metadata.annotations = {
    'arc-imds-proxy/allow-resource': 'https://vault.azure.net, https://storage.azure.com/*',
    'arc-imds-proxy/sidecar-cpu-request': '20m',
    'arc-imds-proxy/sidecar-cpu-limit': '500m',
    'arc-imds-proxy/sidecar-memory-request': '80Mi',
    'arc-imds-proxy/sidecar-memory-limit': '256Mi',
  };
  const { patched } = await mutate(pod);
  const sidecar = patched.spec.initContainers.find((c: any) => c.name === 'arc-imds-sidecar');
  t.same(
    sidecar.args.slice(-4),
    ['--allow-resource', 'https://vault.azure.net', '--allow-resource', 'https://storage.azure.com/*'],
    '--allow-resource, one per listed resource',
  );
  t.same(sidecar.resources, { requests: { cpu: '20m', memory: '80Mi' }, limits: { cpu: '500m', memory: '256Mi' } }, 'resources from the annotations');
  t.same(invocationProblems(sidecar.args, {}), [], 'a valid serve command line');
  t.ok(validates(patched), 'schema-valid');
  t.same(patched.metadata.annotations, pod.metadata.annotations, 'the annotations stay');

  const bad: [string, string, RegExp][] = [
    ['arc-imds-proxy/allow-resource', 'https://vault.azure.net/*x', /allow-resource: 'https:\/\/vault\.azure\.net\/\*x': \* may only end a prefix/],
    ['arc-imds-proxy/allow-resource', ' , ', /allow-resource: empty/],
    ['arc-imds-proxy/sidecar-memory-limit', 'lots', /sidecar-memory-limit: 'lots' is not a Kubernetes quantity/],
    ['arc-imds-proxy/net-admin', 'no', /net-admin: 'no' is neither "true" nor "false"/],
  ];
  for (const [name, value, message] of bad) {
    const p = userPod();
    p.metadata.annotations = { [name]: value };
    const { reply, response } = await mutate(p);
    t.equal(reply.status, 200, `${name}: ${value}: an answer`);
    t.equal(response.allowed, false, `${name}: ${value}: denied (an allow-list that cannot be honoured must not become "everything")`);
    t.equal(response.patch, undefined, 'no patch');
    t.equal(response.status?.code, 400);
    t.match(response.status?.message, message, 'the message names the annotation and the problem');
  }
});

t.test('without NET_ADMIN: no netns-setup, the sidecar on 127.0.0.1, the SDKs pointed at it', async (t) => {
  const pod = userPod();
  pod.metadata.annotations = { 'arc-imds-proxy/net-admin': 'false' };
  delete pod.spec.securityContext.sysctls;
  pod.spec.initContainers = [{ name: 'warm-up', image: 'busybox:1.37', command: ['true'] }];
  pod.spec.containers.push({ name: 'worker', image: 'busybox:1.37', env: [{ name: 'A', value: '1' }] });
  const { patched, errors, response } = await mutate(pod);
  t.same(errors, [], 'the patch applies');
  t.notOk(response.warnings, 'no warnings');
  t.ok(validates(patched), 'schema-valid');
  const names = patched.spec.initContainers.map((c: any) => c.name);
  t.same(names, ['arc-imds-sidecar', 'warm-up'], 'no netns-setup');
  const all = [...patched.spec.initContainers, ...patched.spec.containers];
  t.notOk(
    all.some((c: any) => c.securityContext?.capabilities?.add),
    'no capability added anywhere',
  );
  t.equal(patched.spec.securityContext.sysctls, undefined, 'no sysctl (the sidecar binds a high port)');
  const sidecar = patched.spec.initContainers[0];
  t.same(sidecar.args.slice(0, 3), ['serve', '--listen', '127.0.0.1:9469'], 'the sidecar listens on 127.0.0.1:9469');
  const env = Object.fromEntries(sidecar.env.filter((e: any) => e.value !== undefined).map((e: any) => [e.name, e.value]));
  t.same(invocationProblems(sidecar.args, env), [], 'a valid serve command line');
  const authority = (c: any) => c.env?.find((e: any) => e.name === 'AZURE_POD_IDENTITY_AUTHORITY_HOST')?.value;
  for (const c of [...patched.spec.initContainers.slice(1), ...patched.spec.containers]) {
    t.equal(authority(c), 'http://127.0.0.1:9469', `${c.name}: AZURE_POD_IDENTITY_AUTHORITY_HOST`);
  }
  t.equal(authority(sidecar), undefined, 'not in the sidecar itself');
  t.same(patched.spec.containers[1].env[0], { name: 'A', value: '1' }, "a container's own variables stay, first");

  const conflicting = structuredClone(pod);
  conflicting.spec.containers[1].env.push({ name: 'AZURE_POD_IDENTITY_AUTHORITY_HOST', value: 'http://10.0.0.1' });
  conflicting.spec.containers[0].ports = [{ containerPort: 80 }];
  const declined = await mutate(conflicting);
  t.equal(declined.response.patch, undefined, 'a container that sets the variable itself: not injected');
  t.match(
    declined.response.warnings,
    [/container worker sets AZURE_POD_IDENTITY_AUTHORITY_HOST already/],
    'said so (and port 80 is no conflict in this mode)',
  );
  const loopbackPort = structuredClone(pod);
  loopbackPort.spec.containers[1].ports = [{ containerPort: 9469 }];
  t.match((await mutate(loopbackPort)).response.warnings, [/port 9469, the sidecar's 127\.0\.0\.1:9469/], 'the loopback port in use: declined');
  t.equal((await mutate(patched)).response.patch, undefined, 'reinvocation: nothing more');
});

t.test('bad requests get a clear error and the webhook keeps answering', async (t) => {
  const post = (body: string, headers: Record<string, string> = { 'Content-Type': 'application/json' }) =>
    httpsRequest(`${base}/mutate`, pki.ca, { method: 'POST', headers, body });
  const review = podReview(userPod());
  const cases: [string, string, number, RegExp][] = [
    ['not JSON', '{"apiVersion": ', 400, /the body is not JSON .*expected an AdmissionReview/],
    ['a JSON array', '[]', 400, /not a JSON object/],
    [
      'wrong kind',
      JSON.stringify({ ...review, kind: 'Pod' }),
      400,
      /expected kind AdmissionReview, apiVersion admission\.k8s\.io\/v1; got kind "Pod"/,
    ],
    [
      'wrong version',
      JSON.stringify({ ...review, apiVersion: 'admission.k8s.io/v1beta1' }),
      400,
      /got kind "AdmissionReview", apiVersion "admission\.k8s\.io\/v1beta1" \(set admissionReviewVersions: \["v1"\]\)/,
    ],
    ['no request', JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' }), 400, /has no request/],
    ['no uid', JSON.stringify({ ...review, request: { ...review.request, uid: undefined } }), 400, /request has no uid/],
    ['an empty uid', JSON.stringify({ ...review, request: { ...review.request, uid: '' } }), 400, /request has no uid/],
    [
      'a uid of 129 characters',
      JSON.stringify({ ...review, request: { ...review.request, uid: 'u'.repeat(129) } }),
      400,
      /uid is longer than 128 characters/,
    ],
  ];
  for (const [what, body, status, message] of cases) {
    const reply = await post(body);
    t.equal(reply.status, status, `${what}: ${status}`);
    t.match(reply.json?.error, message, `${what}: ${reply.json?.error}`);
  }
  const huge = JSON.stringify({ ...review, padding: 'x'.repeat(MAX) });
  const tooLarge = await post(huge);
  t.equal(tooLarge.status, 413, 'a huge body (Content-Length): 413');
  t.match(tooLarge.json?.error, /larger than 65536 bytes \(--max-request-bytes\)/);
  const chunked = await httpsRequest(`${base}/mutate`, pki.ca, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' },
    body: huge,
  });
  t.equal(chunked.status, 413, 'a huge body without Content-Length (chunked): 413 too');
  const noObject = podReview(null);
  const denied = await postReview(base, pki.ca, noObject);
  t.same(
    denied.json.response,
    { uid: noObject.request.uid, allowed: false, status: { code: 400, message: 'arc-imds-proxy: request.object is not a Pod with a spec' } },
    'no pod in a pod review: denied, with the reason',
  );
  t.match(
    (await post(JSON.stringify(review), { 'Content-Type': 'text/plain' })).json,
    { error: /content-type text\/plain: send application\/json/ },
    'wrong content type: 415',
  );
  t.equal((await httpsRequest(`${base}/mutate`, pki.ca)).status, 405, 'GET /mutate: 405');
  t.equal((await httpsRequest(`${base}/healthz`, pki.ca, { method: 'POST' })).status, 405, 'POST /healthz: 405');
  const missing = await httpsRequest(`${base}/validate`, pki.ca);
  t.equal(missing.status, 404, 'an unknown path: 404');
  t.match(missing.json?.error, /POST \/mutate or GET \/healthz/);
  const health = await httpsRequest(`${base}/healthz`, pki.ca);
  t.same([health.status, health.json], [200, { status: 'ok' }], 'and it is still healthy');
  t.equal((await mutate(userPod())).response.allowed, true, 'and still injects');
  t.ok(
    logs.some((l) => l.level === 'warn' && /not JSON/.test(l.reason ?? '')),
    'refusals are logged as warnings',
  );
});
