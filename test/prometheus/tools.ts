// The real Prometheus tools for test/prometheus/*: Debian's `prometheus` package (prometheus and promtool),
// fetched without installing it by scripts/debian-packages into a directory outside the clone, and the shipped
// monitoring objects turned into what a Prometheus server reads: the PrometheusRule's groups as a rule file,
// and the PodMonitors as the scrape jobs the Prometheus Operator generates from them.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';
import { KUBERNETES_DIR, ROOT, renderKustomization, yamlDocument, yamlDocuments } from '../fixtures/deploy.js';

/** Where the package is unpacked; DEST/usr/bin holds the programs. CI and developers share it. */
export const DEBIAN_DIR = process.env.ARC_IMDS_DEBIAN_DIR ?? '/var/cache/arc-imds-proxy/debian';
const SUITE = 'bookworm';
const HOW = `run: scripts/debian-packages ${SUITE} ${DEBIAN_DIR} prometheus (as root; or set ARC_IMDS_DEBIAN_DIR to a directory holding usr/bin/prometheus and usr/bin/promtool)`;

export interface Tools {
  readonly prometheus: string;
  readonly promtool: string;
}

/**
 * The tools, fetched when missing (the script is idempotent; flock keeps two test files from fetching into the
 * same directory at once). Returns a reason to skip instead when they cannot be had here.
 */
export function prometheusTools(): Tools | { skip: string } {
  const bin = path.join(DEBIAN_DIR, 'usr', 'bin');
  const tools = { prometheus: path.join(bin, 'prometheus'), promtool: path.join(bin, 'promtool') };
  const present = () => existsSync(tools.prometheus) && existsSync(tools.promtool);
  if (present()) return tools;
  if (process.getuid?.() !== 0) return { skip: `Prometheus tools missing and fetching them needs root; ${HOW}` };
  try {
    execFileSync('mkdir', ['-p', DEBIAN_DIR]);
    execFileSync('flock', [`${DEBIAN_DIR}.lock`, path.join(ROOT, 'scripts', 'debian-packages'), SUITE, DEBIAN_DIR, 'prometheus'], {
      stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000,
    });
  } catch (err) {
    return { skip: `could not fetch Debian's prometheus package (${(err as Error).message.split('\n')[0]}); ${HOW}` };
  }
  return present() ? tools : { skip: `the prometheus package did not hold both programs; ${HOW}` };
}

export const MONITORING_DIR = path.join(KUBERNETES_DIR, 'monitoring');
export const DASHBOARD_FILE = path.join(MONITORING_DIR, 'grafana-dashboard.json');

/**
 * The objects of the monitoring directory's YAML files (PodMonitors, PrometheusRule), in the namespace its
 * kustomization puts them in. Read file by file, so that it works whether the directory is a Kustomization or a
 * Component.
 */
export function monitoringObjects(): any[] {
  const kustomization = yamlDocument(path.join(MONITORING_DIR, 'kustomization.yaml'));
  const namespace: string = kustomization.namespace ?? 'arc-imds-system';
  return readdirSync(MONITORING_DIR)
    .filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml')
    .flatMap((f) => yamlDocuments(path.join(MONITORING_DIR, f)))
    .map((o) => ({ ...o, metadata: { namespace, ...o.metadata } }));
}

/** The whole deployment, rendered (the pods the PodMonitors select). */
export const deploymentObjects = () => renderKustomization(KUBERNETES_DIR);

export interface RuleGroup {
  name: string;
  interval?: string;
  rules: Record<string, any>[];
}

/** The PrometheusRule's spec.groups: exactly what the Operator writes into the rule file Prometheus loads. */
export function shippedRuleGroups(): RuleGroup[] {
  const rules = monitoringObjects().filter((o) => o.kind === 'PrometheusRule');
  if (rules.length !== 1) throw new Error(`expected one PrometheusRule, found ${rules.length}`);
  return structuredClone(rules[0].spec.groups);
}

export const ruleFile = (groups: readonly RuleGroup[]) => stringify({ groups }, { lineWidth: 0 });

export interface PodTarget {
  /** What Kubernetes discovery knows of the pod (role: pod): one entry per container port. */
  readonly namespace: string;
  readonly pod: string;
  readonly labels: Record<string, string>;
  readonly containers: { name: string; init: boolean; ports: { name?: string; containerPort: number }[] }[];
  /** Where each named port really listens here (the pod IP is 127.0.0.1 in the test). */
  readonly addressOf: (port: { name?: string; containerPort: number }) => string;
}

/** Kubernetes discovery's label-name sanitising: every character outside [a-zA-Z0-9_] becomes '_'. */
const sanitize = (name: string) => name.replace(/[^a-zA-Z0-9_]/g, '_');

/** The targets kubernetes_sd_configs (role: pod) would produce for these pods, as file_sd target groups. */
export function podDiscovery(pods: readonly PodTarget[]): { targets: string[]; labels: Record<string, string> }[] {
  const groups: { targets: string[]; labels: Record<string, string> }[] = [];
  for (const pod of pods) {
    const podLabels: Record<string, string> = {};
    for (const [k, v] of Object.entries(pod.labels)) {
      podLabels[`__meta_kubernetes_pod_label_${sanitize(k)}`] = v;
      podLabels[`__meta_kubernetes_pod_labelpresent_${sanitize(k)}`] = 'true';
    }
    for (const c of pod.containers) {
      for (const port of c.ports) {
        groups.push({
          targets: [pod.addressOf(port)],
          labels: {
            __meta_kubernetes_namespace: pod.namespace,
            __meta_kubernetes_pod_name: pod.pod,
            __meta_kubernetes_pod_phase: 'Running',
            __meta_kubernetes_pod_ready: 'true',
            __meta_kubernetes_pod_container_name: c.name,
            __meta_kubernetes_pod_container_init: String(c.init),
            __meta_kubernetes_pod_container_port_name: port.name ?? '',
            __meta_kubernetes_pod_container_port_number: String(port.containerPort),
            __meta_kubernetes_pod_container_port_protocol: 'TCP',
            ...podLabels,
          },
        });
      }
    }
  }
  return groups;
}

const RELABEL_KEYS: Record<string, string> = {
  action: 'action', sourceLabels: 'source_labels', separator: 'separator', targetLabel: 'target_label', regex: 'regex',
  modulus: 'modulus', replacement: 'replacement',
};

/**
 * The scrape job the Prometheus Operator generates for one PodMonitor endpoint (pkg/prometheus/promcfg.go, as in
 * its golden test files): keep the pods whose labels match the selector and the container port named by the
 * endpoint, set namespace, container, pod, job (<namespace>/<name>) and endpoint, then the monitor's own
 * relabelings. The one difference: discovery is file_sd here (a file per job, holding the pods of the namespaces
 * its kubernetes_sd_configs would watch) instead of the Kubernetes API, with the same __meta_kubernetes_* labels.
 */
export function podMonitorJobs(monitor: any, sdFile: string, interval: string): { job: Record<string, unknown>; namespaces: string[] | 'any' }[] {
  const ns = monitor.spec.namespaceSelector;
  const namespaces: string[] | 'any' = ns?.any === true ? 'any' : (ns?.matchNames ?? [monitor.metadata.namespace]);
  return monitor.spec.podMetricsEndpoints.map((ep: any, i: number) => {
    const relabel: Record<string, unknown>[] = [{ source_labels: ['job'], target_label: '__tmp_prometheus_job_name' }];
    for (const [k, v] of Object.entries<string>(monitor.spec.selector.matchLabels ?? {})) {
      relabel.push({
        action: 'keep',
        source_labels: [`__meta_kubernetes_pod_label_${sanitize(k)}`, `__meta_kubernetes_pod_labelpresent_${sanitize(k)}`],
        regex: `(${v});true`,
      });
    }
    if (monitor.spec.selector.matchExpressions) throw new Error('matchExpressions: not translated here');
    relabel.push(
      { action: 'keep', source_labels: ['__meta_kubernetes_pod_container_port_name'], regex: ep.port },
      { action: 'drop', source_labels: ['__meta_kubernetes_pod_phase'], regex: '(Failed|Succeeded)' },
      { source_labels: ['__meta_kubernetes_namespace'], target_label: 'namespace' },
      { source_labels: ['__meta_kubernetes_pod_container_name'], target_label: 'container' },
      { source_labels: ['__meta_kubernetes_pod_name'], target_label: 'pod' },
      { target_label: 'job', replacement: `${monitor.metadata.namespace}/${monitor.metadata.name}` },
      { target_label: 'endpoint', replacement: ep.port },
    );
    for (const r of ep.relabelings ?? []) {
      relabel.push(Object.fromEntries(Object.entries(r).map(([k, v]) => {
        if (!RELABEL_KEYS[k]) throw new Error(`relabeling field ${k}: not translated here`);
        return [RELABEL_KEYS[k], v];
      })));
    }
    return {
      namespaces,
      job: {
        job_name: `podMonitor/${monitor.metadata.namespace}/${monitor.metadata.name}/${i}`,
        honor_labels: false,
        // The monitor says ep.interval (30s); the test scrapes every `interval` so that it runs in seconds.
        scrape_interval: interval,
        scrape_timeout: interval,
        metrics_path: ep.path ?? '/metrics',
        scheme: ep.scheme ?? 'http',
        file_sd_configs: [{ files: [sdFile], refresh_interval: '1s' }],
        relabel_configs: relabel,
      },
    };
  });
}
