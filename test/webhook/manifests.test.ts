// deploy/kubernetes for the webhook: each component renders on its own (kubectl kustomize where kubectl
// exists, and the offline renderer, which must agree); the MutatingWebhookConfiguration, Service, Deployment,
// PodDisruptionBudget and Certificate agree with each other and with the code; the example overlay sets the
// image, the himds gid and the node label; the relay survives busy nodes. And the webhook configured exactly
// as its rendered Deployment is turns the example workload, stripped of its hand-written pieces, back into it.
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import t from 'tap';
import { applyPatch } from 'rfc6902';
import { admit } from '../../src/webhook/admission.js';
import { INJECT_LABEL, SIDECAR_LABEL } from '../../src/webhook/injection.js';
import { parseWebhook } from '../../src/commands/webhook.js';
import {
  COMPONENTS,
  KUBERNETES_DIR,
  composition,
  flagValue,
  imageReplacement,
  kubectlKustomize,
  kubectlPath,
  objectKey,
  portOf,
  renderKustomization,
  splitCommand,
} from '../fixtures/deploy.js';
import { SERVICE_NAME, podReview } from '../fixtures/webhook.js';

const kubectl = kubectlPath();
const render = (dir: string) => {
  const offline = renderKustomization(dir);
  if (!kubectl) return { objects: offline, agree: true };
  const objects = kubectlKustomize(kubectl, dir);
  const agree =
    objects.length === offline.length &&
    objects.every((o) =>
      isDeepStrictEqual(
        o,
        offline.find((x) => objectKey(x) === objectKey(o)),
      ),
    );
  return { objects, agree };
};
const find = (objects: any[], kind: string, name?: string) =>
  objects.find((o) => o.kind === kind && (name === undefined || o.metadata.name === name));

t.test('each component renders on its own with base (kubectl kustomize and the offline renderer agree)', async (t) => {
  for (const c of COMPONENTS) {
    const one = composition([c]);
    t.teardown(() => one.remove());
    const { objects, agree } = render(one.dir);
    t.ok(objects.length > (c === 'image' ? 1 : 2), `base + ${c}: ${objects.length} objects`);
    t.ok(agree, `base + ${c}: ${kubectl ? 'kubectl and the offline renderer produce the same objects' : 'rendered offline (no kubectl here)'}`);
  }
  const base = render(path.join(KUBERNETES_DIR, 'base')).objects;
  t.same(base.map(objectKey).sort(), ['DaemonSet/arc-imds-system/arc-imds-relay', 'Namespace//arc-imds-system'], 'base is the relay alone');
});

const everything = composition(COMPONENTS, { replacements: imageReplacement() });
t.teardown(() => everything.remove());
const objects = render(everything.dir).objects;
const config = find(objects, 'MutatingWebhookConfiguration');
const deployment = find(objects, 'Deployment', 'arc-imds-webhook');
const service = find(objects, 'Service', 'arc-imds-webhook');
const container = deployment.spec.template.spec.containers[0];
const env = Object.fromEntries(container.env.map((e: any) => [e.name, e.value]));

t.test('the MutatingWebhookConfiguration', async (t) => {
  t.equal(config.apiVersion, 'admissionregistration.k8s.io/v1');
  t.equal(config.webhooks.length, 1, 'one webhook');
  const w = config.webhooks[0];
  t.match(w.name, /^[a-z0-9-]+(\.[a-z0-9-]+){2,}$/, 'a fully qualified name');
  t.same(w.admissionReviewVersions, ['v1'], 'AdmissionReview v1 only (what the webhook answers)');
  t.same(w.rules, [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' }], 'pod creation only');
  t.same(w.objectSelector, { matchLabels: { [INJECT_LABEL]: 'true' } }, `objectSelector: the label the webhook checks (${INJECT_LABEL})`);
  const excluded =
    w.namespaceSelector.matchExpressions.find((e: any) => e.key === 'kubernetes.io/metadata.name' && e.operator === 'NotIn')?.values ?? [];
  t.ok(excluded.includes('kube-system'), 'kube-system excluded');
  t.ok(excluded.includes(deployment.metadata.namespace), `its own namespace (${deployment.metadata.namespace}) excluded`);
  t.equal(w.failurePolicy, 'Fail', 'failurePolicy Fail (the trade-off is in the file and docs/kubernetes.md)');
  t.equal(w.reinvocationPolicy, 'IfNeeded');
  t.equal(w.sideEffects, 'None');
  t.ok(w.timeoutSeconds >= 1 && w.timeoutSeconds <= 10, `timeoutSeconds ${w.timeoutSeconds}`);
  t.same(
    w.clientConfig.service,
    { name: service.metadata.name, namespace: service.metadata.namespace, path: '/mutate', port: 443 },
    'calls the Service at /mutate',
  );
  t.equal(`${service.metadata.name}.${service.metadata.namespace}.svc`, SERVICE_NAME, 'the name the test certificates are made for');
  t.equal(
    config.metadata.annotations?.['cert-manager.io/inject-ca-from'],
    `${deployment.metadata.namespace}/arc-imds-webhook`,
    "cert-manager's CA injector fills caBundle",
  );
});

t.test('the webhook Deployment, Service, PodDisruptionBudget and certificate agree', async (t) => {
  const pod = deployment.spec.template.spec;
  t.equal(deployment.spec.replicas, 2, '2 replicas');
  t.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0, 'updates never take a replica away first');
  const pdb = find(objects, 'PodDisruptionBudget', 'arc-imds-webhook');
  t.same(pdb.spec.selector.matchLabels, deployment.spec.selector.matchLabels, "the PodDisruptionBudget selects the webhook's pods");
  t.equal(pdb.spec.minAvailable, 1, 'minAvailable 1');
  t.same(service.spec.selector, deployment.spec.template.metadata.labels, "the Service selects the webhook's pods");
  t.same(splitCommand(container.args).command, 'webhook', 'runs the webhook command');
  const listen = flagValue(container.args, 'listen')!;
  const https = container.ports.find((p: any) => p.name === service.spec.ports[0].targetPort);
  t.equal(https?.containerPort, portOf(listen), `the Service targets --listen's port (${listen})`);
  for (const probe of ['readinessProbe', 'livenessProbe']) {
    t.same(container[probe].httpGet, { scheme: 'HTTPS', path: '/healthz', port: https.name }, `${probe}: GET /healthz over HTTPS`);
  }
  const mount = container.volumeMounts.find((m: any) => m.name === 'tls');
  const secret = pod.volumes.find((v: any) => v.name === 'tls').secret;
  for (const [flag, key] of [
    ['tls-cert', 'tls.crt'],
    ['tls-key', 'tls.key'],
  ] as const) {
    const item = secret.items.find((i: any) => i.key === key);
    t.equal(flagValue(container.args, flag), `${mount.mountPath}/${item.path}`, `--${flag} is the Secret's ${key}`);
  }
  t.equal(mount.readOnly, true, 'mounted read-only');
  const cert = find(objects, 'Certificate', 'arc-imds-webhook');
  t.equal(cert.spec.secretName, secret.secretName, 'cert-manager writes the Secret the webhook reads');
  t.ok(cert.spec.dnsNames.includes(SERVICE_NAME), `the certificate names ${SERVICE_NAME}`);
  t.equal(find(objects, 'Issuer', cert.spec.issuerRef.name)?.metadata.namespace, cert.metadata.namespace, 'its issuer is there, in its namespace');
  t.equal(env.ARC_IMDS_IMAGE, container.image, "ARC_IMDS_IMAGE is the webhook's own image (the replacement)");
  t.notOk(pod.hostNetwork || pod.volumes.some((v: any) => v.hostPath), 'no host network, no hostPath: it needs no privilege');
});

t.test('the example overlay sets image, himds gid and node label', async (t) => {
  const { objects: overlay } = render(path.join(KUBERNETES_DIR, 'overlays', 'example'));
  const relay = find(overlay, 'DaemonSet', 'arc-imds-relay').spec.template.spec;
  const webhook = find(overlay, 'Deployment', 'arc-imds-webhook').spec.template.spec.containers[0];
  const images = [relay.containers[0].image, webhook.image, webhook.env.find((e: any) => e.name === 'ARC_IMDS_IMAGE').value];
  t.same(images, Array(3).fill('registry.example.com/arc-imds-proxy:0.1.0'), 'one image for the relay, the webhook and what it injects');
  t.same(relay.securityContext.supplementalGroups, [988], 'the himds gid');
  t.same(relay.nodeSelector, { 'kubernetes.io/os': 'linux', 'node.example.com/azure-arc': 'true' }, 'the node label');
  t.ok(find(overlay, 'MutatingWebhookConfiguration'), 'with the webhook');
  t.notOk(
    overlay.some((o) => o.apiVersion.startsWith('monitoring.coreos.com/')),
    'and no Prometheus Operator kinds (their CRDs may be missing)',
  );
});

t.test('the relay on busy nodes: node-critical priority, every taint tolerated, resources', async (t) => {
  const pod = find(objects, 'DaemonSet', 'arc-imds-relay').spec.template.spec;
  t.equal(pod.priorityClassName, 'system-node-critical');
  t.same(pod.tolerations, [{ operator: 'Exists' }], 'tolerates every taint');
  t.ok(pod.containers[0].resources.requests.memory && pod.containers[0].resources.limits.memory, 'memory request and limit');
});

t.test('the webhook as deployed turns the stripped example back into the example', async (t) => {
  const { config: settings } = parseWebhook(container.args.slice(1), env);
  const example = find(objects, 'Deployment', 'example-app');
  const expected = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: structuredClone(example.spec.template.metadata),
    spec: structuredClone(example.spec.template.spec),
  };
  expected.metadata.labels[INJECT_LABEL] = 'true';
  const before = structuredClone(expected);
  delete before.spec.initContainers;
  delete before.spec.volumes;
  delete before.spec.securityContext.sysctls;
  delete before.metadata.labels[SIDECAR_LABEL];
  const answer = admit(JSON.stringify(podReview(before)), settings);
  const ops = JSON.parse(Buffer.from((answer.body.response as any).patch, 'base64').toString('utf8'));
  t.same(
    applyPatch(before, ops).filter((e) => e !== null),
    [],
    'the patch applies',
  );
  t.same(before, expected, `the same pod, with the deployed image (${settings.image})`);
});
