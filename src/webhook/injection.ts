// What the webhook adds to a pod, and nothing else: the same pieces deploy/kubernetes/examples/workload has by
// hand (test/webhook compares them). Every injected container carries its own security context, so the
// application's containers and the pod's security context are left as they are (only the sysctl is pod-level).
import { IMDS_ADDRESS } from '../values/addresses.js';
import { quantity, resourcePattern } from '../values/parsers.js';
import type { InjectionSettings } from './config.js';

/** The opt-in label (also the MutatingWebhookConfiguration's objectSelector). */
export const INJECT_LABEL = 'arc-imds-proxy/inject';
/** Added to injected pods: monitoring/podmonitor-sidecars.yaml scrapes the pods that carry it. */
export const SIDECAR_LABEL = 'arc-imds-proxy/sidecar';

export const ANNOTATION = {
  /** `false`: no netns-setup (no NET_ADMIN); the sidecar listens on 127.0.0.1:PORT instead of 169.254.169.254:80. */
  netAdmin: 'arc-imds-proxy/net-admin',
  /** The sidecar's --allow-resource list, comma- or space-separated. */
  allowResource: 'arc-imds-proxy/allow-resource',
  cpuRequest: 'arc-imds-proxy/sidecar-cpu-request',
  cpuLimit: 'arc-imds-proxy/sidecar-cpu-limit',
  memoryRequest: 'arc-imds-proxy/sidecar-memory-request',
  memoryLimit: 'arc-imds-proxy/sidecar-memory-limit',
} as const;

export const NETNS_SETUP = 'netns-setup';
export const SIDECAR = 'arc-imds-sidecar';
export const VOLUME = 'arc-imds-run';
export const ADMIN_PORT_NAME = 'imds-metrics';
/** Lets the non-root sidecar bind port 80 (a "safe" sysctl, allowed at every Pod Security level). */
export const SYSCTL = Object.freeze({ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' });
/** Where Azure SDKs look for IMDS instead of 169.254.169.254 (see docs/kubernetes.md for which do). */
export const AUTHORITY_HOST_ENV = 'AZURE_POD_IDENTITY_AUTHORITY_HOST';
/** The image's user and group; gid 65532 is also the group the relay gives its socket. */
const IMAGE_UID = 65532;

export type Mode = 'link-local' | 'loopback';

export interface PodChoices {
  readonly mode: Mode;
  readonly allowResource: readonly string[];
  readonly resources: { requests: Record<string, string>; limits: Record<string, string> };
}

const MAX_ALLOWED_RESOURCES = 64;

/** The pod's annotations read against the webhook's settings; every problem is collected, one line each. */
export function podChoices(annotations: Record<string, unknown>, settings: InjectionSettings): { choices: PodChoices; problems: string[] } {
  const problems: string[] = [];
  const text = (name: string): string | undefined => {
    const value = annotations[name];
    return typeof value === 'string' ? value.trim() : undefined;
  };
  let mode: Mode = 'link-local';
  const netAdmin = text(ANNOTATION.netAdmin);
  if (netAdmin === 'false') mode = 'loopback';
  else if (netAdmin !== undefined && netAdmin !== 'true') problems.push(`${ANNOTATION.netAdmin}: '${netAdmin}' is neither "true" nor "false"`);

  const allowResource: string[] = [];
  const list = text(ANNOTATION.allowResource);
  if (list !== undefined) {
    const items = list.split(/[\s,]+/).filter((x) => x !== '');
    if (items.length === 0) problems.push(`${ANNOTATION.allowResource}: empty (leave the annotation out to allow every resource)`);
    if (items.length > MAX_ALLOWED_RESOURCES) problems.push(`${ANNOTATION.allowResource}: more than ${MAX_ALLOWED_RESOURCES} resources`);
    for (const item of items.slice(0, MAX_ALLOWED_RESOURCES)) {
      try {
        allowResource.push(resourcePattern(item));
      } catch (err) {
        problems.push(`${ANNOTATION.allowResource}: ${(err as Error).message}`);
      }
    }
  }

  const requests: Record<string, string> = { cpu: settings.sidecarCpuRequest, memory: settings.sidecarMemoryRequest };
  const limits: Record<string, string> = { memory: settings.sidecarMemoryLimit };
  const quantities: [string, Record<string, string>, string][] = [
    [ANNOTATION.cpuRequest, requests, 'cpu'],
    [ANNOTATION.memoryRequest, requests, 'memory'],
    [ANNOTATION.cpuLimit, limits, 'cpu'],
    [ANNOTATION.memoryLimit, limits, 'memory'],
  ];
  for (const [name, target, key] of quantities) {
    const value = text(name);
    if (value === undefined) continue;
    try {
      target[key] = quantity(value);
    } catch (err) {
      problems.push(`${name}: ${(err as Error).message}`);
    }
  }
  return { choices: { mode, allowResource, resources: { requests, limits } }, problems };
}

/** The socket the relay listens on (base/relay-daemonset.yaml: --listen unix:/run/arc-imds/imds.sock). */
export const socketOf = (settings: InjectionSettings) => `${settings.socketDir}/imds.sock`;

/** The address the sidecar answers on in each mode. */
export function sidecarListen(settings: InjectionSettings, mode: Mode): string {
  return mode === 'loopback' ? `127.0.0.1:${settings.loopbackPort}` : `${IMDS_ADDRESS}:80`;
}

const dropAll = { drop: ['ALL'] };
const seccomp = { type: 'RuntimeDefault' };

/** `lo` up and 169.254.169.254/32 on it, in the pod's network namespace; then it exits. */
export function netnsSetupContainer(settings: InjectionSettings): Record<string, unknown> {
  return {
    name: NETNS_SETUP,
    image: settings.image,
    imagePullPolicy: settings.imagePullPolicy,
    args: ['netns-setup', '--address', IMDS_ADDRESS],
    // The CLI peaks at 52.7 MB (50.3 MiB) running netns-setup (bench/footprint.mjs, Node 24): the request covers it.
    resources: { requests: { cpu: '10m', memory: '64Mi' }, limits: { memory: '128Mi' } },
    securityContext: {
      // Root, because capabilities added for a non-root user are not effective; NET_ADMIN and nothing else.
      runAsUser: 0,
      runAsNonRoot: false,
      allowPrivilegeEscalation: false,
      privileged: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'], add: ['NET_ADMIN'] },
      seccompProfile: seccomp,
    },
  };
}

/** The native sidecar: serves IMDS in the pod through the node's relay. */
export function sidecarContainer(settings: InjectionSettings, choices: PodChoices): Record<string, unknown> {
  const args = [
    'serve',
    '--listen',
    sidecarListen(settings, choices.mode),
    '--upstream',
    `unix:${socketOf(settings)}`,
    '--admin-listen',
    `0.0.0.0:${settings.adminPort}`,
  ];
  for (const r of choices.allowResource) args.push('--allow-resource', r);
  return {
    name: SIDECAR,
    image: settings.image,
    imagePullPolicy: settings.imagePullPolicy,
    restartPolicy: 'Always',
    args,
    env: [
      { name: 'ARC_IMDS_LOG_LEVEL', value: settings.sidecarLogLevel },
      { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'ARC_IMDS_WORKLOAD', value: '$(POD_NAMESPACE)/$(POD_NAME)' },
    ],
    ports: [{ name: ADMIN_PORT_NAME, containerPort: settings.adminPort, protocol: 'TCP' }],
    startupProbe: { httpGet: { path: '/readyz', port: ADMIN_PORT_NAME }, periodSeconds: 2, timeoutSeconds: 3, failureThreshold: 150 },
    livenessProbe: { httpGet: { path: '/healthz', port: ADMIN_PORT_NAME }, periodSeconds: 10, timeoutSeconds: 3, failureThreshold: 3 },
    resources: structuredClone(choices.resources),
    securityContext: {
      runAsNonRoot: true,
      runAsUser: IMAGE_UID,
      runAsGroup: IMAGE_UID,
      allowPrivilegeEscalation: false,
      privileged: false,
      readOnlyRootFilesystem: true,
      capabilities: structuredClone(dropAll),
      seccompProfile: seccomp,
    },
    volumeMounts: [{ name: VOLUME, mountPath: settings.socketDir, readOnly: true }],
  };
}

/** The relay's socket directory; type Directory: kubelet retries the mount until the relay has created it. */
export function socketVolume(settings: InjectionSettings): Record<string, unknown> {
  return { name: VOLUME, hostPath: { path: settings.socketDir, type: 'Directory' } };
}
