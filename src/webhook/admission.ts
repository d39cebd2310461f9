// AdmissionReview (admission.k8s.io/v1) in, AdmissionReview out: a pure function of the request body and the
// webhook's settings, with no I/O, so that every decision is testable on its own and over HTTPS alike.
//
// A pod is injected only when it asks (the label), is not in the node's network namespace, has not been
// injected already (reinvocation, or the hand-written pieces), and nothing it has collides with what would be
// added. Whatever is declined comes back allowed and unchanged, with a warning saying why; only annotations
// that cannot be honoured (a malformed --allow-resource list would silently widen access) deny the pod.
import { IMDS_ADDRESS } from '../values/addresses.js';
import {
  ADMIN_PORT_NAME,
  ANNOTATION,
  AUTHORITY_HOST_ENV,
  INJECT_LABEL,
  NETNS_SETUP,
  SIDECAR,
  SIDECAR_LABEL,
  SYSCTL,
  VOLUME,
  netnsSetupContainer,
  podChoices,
  sidecarContainer,
  sidecarListen,
  socketVolume,
  type PodChoices,
} from './injection.js';
import type { InjectionSettings } from './config.js';

export const API_VERSION = 'admission.k8s.io/v1';

/** An HTTP answer: the status, the JSON body, and what to log about the decision. */
export interface Answer {
  readonly status: number;
  readonly body: Record<string, unknown>;
  readonly log: Record<string, unknown>;
}

export type Operation = { op: 'add'; path: string; value: unknown };

/** Not an AdmissionReview the webhook can answer: HTTP 400 with this message. */
const badRequest = (message: string): Answer => ({ status: 400, body: { error: message }, log: { outcome: 'bad-request', reason: message } });

/** An object of the AdmissionReview's JSON: untrusted input, navigated with a check at each step. */
// biome-ignore lint/suspicious/noExplicitAny: each property read is checked where it is used
type JsonObject = Record<string, any>;

const isObject = (x: unknown): x is JsonObject => typeof x === 'object' && x !== null && !Array.isArray(x);
const list = (x: unknown): JsonObject[] => (Array.isArray(x) ? x.filter(isObject) : []);
/** RFC 6901: '~' and '/' in a key. */
const pointer = (key: string) => key.replaceAll('~', '~0').replaceAll('/', '~1');

export function admit(text: string, settings: InjectionSettings): Answer {
  let review: unknown;
  try {
    review = JSON.parse(text);
  } catch (err) {
    return badRequest(`the body is not JSON (${(err as Error).message}); expected an AdmissionReview`);
  }
  if (!isObject(review)) return badRequest('the body is not a JSON object; expected an AdmissionReview');
  if (review.kind !== 'AdmissionReview' || review.apiVersion !== API_VERSION) {
    return badRequest(
      `expected kind AdmissionReview, apiVersion ${API_VERSION}; got kind ${JSON.stringify(review.kind)}, apiVersion ${JSON.stringify(review.apiVersion)} (set admissionReviewVersions: ["v1"])`,
    );
  }
  const request = review.request;
  if (!isObject(request)) return badRequest('the AdmissionReview has no request');
  const uid = request.uid;
  if (typeof uid !== 'string' || uid === '') return badRequest('the AdmissionReview request has no uid');
  if (uid.length > 128) return badRequest('the AdmissionReview request uid is longer than 128 characters');

  const decision = decide(request, settings);
  const response: Record<string, unknown> = { uid, allowed: decision.allowed };
  if (decision.message !== undefined) response.status = { code: 400, message: decision.message };
  if (decision.patch) {
    response.patchType = 'JSONPatch';
    response.patch = Buffer.from(JSON.stringify(decision.patch)).toString('base64');
  }
  if (decision.warnings.length > 0) response.warnings = decision.warnings;
  const object = isObject(request.object) ? request.object : {};
  const log = {
    uid,
    namespace: request.namespace,
    pod: object.metadata?.name ?? object.metadata?.generateName,
    operation: request.operation,
    outcome: decision.outcome,
    reason: decision.reason,
  };
  return { status: 200, body: { apiVersion: API_VERSION, kind: 'AdmissionReview', response }, log };
}

interface Decision {
  readonly allowed: boolean;
  readonly outcome: 'injected' | 'skipped' | 'declined' | 'denied';
  readonly reason: string;
  readonly patch?: Operation[];
  readonly warnings: string[];
  readonly message?: string;
}

const skip = (reason: string): Decision => ({ allowed: true, outcome: 'skipped', reason, warnings: [] });
const decline = (reason: string, warnings: string[]): Decision => ({ allowed: true, outcome: 'declined', reason, warnings });

function decide(request: JsonObject, settings: InjectionSettings): Decision {
  const kind = request.kind;
  if (!isObject(kind) || kind.kind !== 'Pod' || (kind.group ?? '') !== '' || (request.subResource ?? '') !== '') return skip('not a pod');
  if (request.operation !== 'CREATE') return skip(`operation ${String(request.operation)}`);
  const pod = request.object;
  if (!isObject(pod) || !isObject(pod.spec)) {
    return { allowed: false, outcome: 'denied', reason: 'no pod', warnings: [], message: 'arc-imds-proxy: request.object is not a Pod with a spec' };
  }
  const metadata = isObject(pod.metadata) ? pod.metadata : {};
  const labels = isObject(metadata.labels) ? metadata.labels : {};
  if (labels[INJECT_LABEL] !== 'true') return skip(`not labelled ${INJECT_LABEL}: "true"`);
  const spec = pod.spec;

  if (spec.hostNetwork === true) {
    return decline('hostNetwork', [
      `arc-imds-proxy: not injected: a hostNetwork pod shares the node's network namespace (${IMDS_ADDRESS} there breaks Arc ` +
        "onboarding); use the node's HIMDS: IDENTITY_ENDPOINT and IMDS_ENDPOINT http://127.0.0.1:40342 (docs/kubernetes.md)",
    ]);
  }
  if (injected(spec, settings)) return skip('already injected');

  const annotations = isObject(metadata.annotations) ? metadata.annotations : {};
  const { choices, problems } = podChoices(annotations, settings);
  if (problems.length > 0) {
    return { allowed: false, outcome: 'denied', reason: 'annotations', warnings: [], message: `arc-imds-proxy: ${problems.join('; ')}` };
  }
  const conflicts = conflictsOf(spec, settings, choices);
  if (conflicts.length > 0)
    return decline(
      'conflict',
      conflicts.map((c) => `arc-imds-proxy: not injected: ${c}`),
    );
  return { allowed: true, outcome: 'injected', reason: choices.mode, patch: patchFor(pod, settings, choices), warnings: [] };
}

/** Our sidecar and our socket volume are there already: a reinvocation, or a pod written by hand like the example. */
function injected(spec: JsonObject, settings: InjectionSettings): boolean {
  const sidecar = list(spec.initContainers).find((c) => c.name === SIDECAR);
  const volume = list(spec.volumes).find((v) => v.name === VOLUME);
  return (
    sidecar?.restartPolicy === 'Always' && Array.isArray(sidecar.args) && sidecar.args[0] === 'serve' && volume?.hostPath?.path === settings.socketDir
  );
}

function conflictsOf(spec: JsonObject, settings: InjectionSettings, choices: PodChoices): string[] {
  const out: string[] = [];
  const inits = list(spec.initContainers);
  const all = [...inits, ...list(spec.containers)];
  const names = [choices.mode === 'link-local' ? NETNS_SETUP : undefined, SIDECAR].filter((n) => n !== undefined);
  for (const c of all) if (names.includes(c.name)) out.push(`the pod already has a container named ${c.name}`);
  if (list(spec.volumes).some((v) => v.name === VOLUME)) out.push(`the pod already has a volume named ${VOLUME}`);
  const ports = new Map<number, string>([[settings.adminPort, "the sidecar's admin port"]]);
  if (choices.mode === 'link-local') ports.set(80, `the sidecar's ${IMDS_ADDRESS}:80`);
  else ports.set(settings.loopbackPort, `the sidecar's ${sidecarListen(settings, choices.mode)}`);
  for (const c of all) {
    for (const p of list(c.ports)) {
      const what = ports.get(p.containerPort);
      if (what) out.push(`container ${c.name} uses port ${p.containerPort}, ${what}`);
      if (p.name === ADMIN_PORT_NAME) out.push(`container ${c.name} has a port named ${ADMIN_PORT_NAME}, the sidecar's`);
    }
  }
  if (choices.mode === 'link-local') {
    const sysctl = list(spec.securityContext?.sysctls).find((s) => s.name === SYSCTL.name);
    if (sysctl && sysctl.value !== SYSCTL.value)
      out.push(`the pod sets ${SYSCTL.name}=${sysctl.value}; the sidecar needs ${SYSCTL.value} to bind port 80`);
  } else {
    for (const c of all) {
      if (list(c.env).some((e) => e.name === AUTHORITY_HOST_ENV)) out.push(`container ${c.name} sets ${AUTHORITY_HOST_ENV} already`);
    }
  }
  return out;
}

/** RFC 6902 operations, all `add`, none touching what the pod already has (lists are appended to or created). */
function patchFor(pod: JsonObject, settings: InjectionSettings, choices: PodChoices): Operation[] {
  const spec = pod.spec;
  const ops: Operation[] = [];
  const ours = [...(choices.mode === 'link-local' ? [netnsSetupContainer(settings)] : []), sidecarContainer(settings, choices)];
  // First among the init containers: the application's own init containers get IMDS too.
  if (Array.isArray(spec.initContainers)) {
    for (const [i, c] of ours.entries()) ops.push({ op: 'add', path: `/spec/initContainers/${i}`, value: c });
  } else ops.push({ op: 'add', path: '/spec/initContainers', value: ours });

  if (Array.isArray(spec.volumes)) ops.push({ op: 'add', path: '/spec/volumes/-', value: socketVolume(settings) });
  else ops.push({ op: 'add', path: '/spec/volumes', value: [socketVolume(settings)] });

  if (choices.mode === 'link-local') {
    const sysctls = spec.securityContext?.sysctls;
    if (!isObject(spec.securityContext)) ops.push({ op: 'add', path: '/spec/securityContext', value: { sysctls: [{ ...SYSCTL }] } });
    else if (!Array.isArray(sysctls)) ops.push({ op: 'add', path: '/spec/securityContext/sysctls', value: [{ ...SYSCTL }] });
    else if (!sysctls.some((s) => s?.name === SYSCTL.name)) ops.push({ op: 'add', path: '/spec/securityContext/sysctls/-', value: { ...SYSCTL } });
  } else {
    // Without NET_ADMIN nothing answers 169.254.169.254: the SDKs are pointed at the sidecar instead.
    const env = { name: AUTHORITY_HOST_ENV, value: `http://${sidecarListen(settings, choices.mode)}` };
    for (const field of ['initContainers', 'containers'] as const) {
      const containers: unknown[] = Array.isArray(spec[field]) ? spec[field] : [];
      for (const [i, c] of containers.entries()) {
        if (!isObject(c)) continue;
        // Init-container indexes have moved by the containers inserted before them.
        const at = field === 'initContainers' ? i + ours.length : i;
        if (Array.isArray(c.env)) ops.push({ op: 'add', path: `/spec/${field}/${at}/env/-`, value: { ...env } });
        else ops.push({ op: 'add', path: `/spec/${field}/${at}/env`, value: [{ ...env }] });
      }
    }
  }
  ops.push({ op: 'add', path: `/metadata/labels/${pointer(SIDECAR_LABEL)}`, value: 'true' });
  return ops;
}

export { ANNOTATION, INJECT_LABEL };
