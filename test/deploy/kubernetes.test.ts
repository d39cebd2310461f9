// deploy/kubernetes: rendered with `kubectl kustomize` where kubectl exists, and always by the small offline
// renderer in test/fixtures/deploy.ts (checked against kubectl's output when both run), then validated:
//   - against the Kubernetes schemas of kubernetes-models (types, enums, required fields), and for unknown
//     fields (which those schemas let through, e.g. a misspelt readOnlyRootFilesystem) by type-checking every
//     object against the same package's TypeScript interfaces;
//   - PodMonitor and PrometheusRule (CRDs, no schema there) by hand;
//   - for what no schema knows: the native sidecar, capabilities (NET_ADMIN only in netns-setup), probes, the
//     socket and tokens mounts, the admin port across args, probes and monitors, every flag and ARC_IMDS_*
//     variable against src/config.ts, and every metric the code registers shown on the dashboard. The PromQL
//     itself is checked by the real tools: promtool (test/prometheus/rules.test.ts) and a live Prometheus
//     (test/prometheus/live.test.ts), which evaluates every alert and dashboard query on real series.
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import t from 'tap';
import ts from 'typescript';
import {
  COMPONENTS,
  KUBERNETES_DIR,
  ROOT,
  codeMetrics,
  composition,
  imageReplacement,
  flagValue,
  invocationProblems,
  kubectlKustomize,
  kubectlPath,
  kustomizations,
  lastOf,
  metricNamesIn,
  objectKey,
  parseDockerfile,
  portOf,
  read,
  rel,
  renderKustomization,
  splitCommand,
  yamlDocument,
} from '../fixtures/deploy.js';

const IMDS = '169.254.169.254';
const NODE_LABEL = 'arc-imds-proxy/arc-enabled';
const runtime = parseDockerfile(read('Dockerfile')).stages.at(-1)!;
const IMAGE_USER = lastOf(runtime, 'USER')!.args.split(':');
const kubectl = kubectlPath();
const deployReadme = read('deploy/README.md');

// Everything at once, as an overlay composes it: base, every component, the image set last, the overlay's
// image replacement. (Removed at the end; the kustomizations in the repository are base and overlays/*.)
const everything = composition(COMPONENTS, { replacements: imageReplacement() });
t.teardown(() => everything.remove());
const dirs = [...kustomizations(), everything.dir];
t.same(
  kustomizations().map(rel),
  ['deploy/kubernetes/base', 'deploy/kubernetes/overlays/example'],
  'the Kustomizations: base (the relay alone) and the example overlay',
);
for (const c of COMPONENTS) t.equal(yamlDocument(path.join(KUBERNETES_DIR, c, 'kustomization.yaml')).kind, 'Component', `${c}: a Component`);

const offline = new Map(dirs.map((d) => [d, renderKustomization(d)]));

/** How the dashboard's panels name their data source: Grafana's variable reference. */
const DATASOURCE_VARIABLE = '$' + '{datasource}';

t.test(
  'kubectl kustomize renders every kustomization, exactly as the offline renderer does',
  { skip: kubectl ? false : 'kubectl is not installed here: validating the offline rendering only' },
  async (t) => {
    for (const dir of dirs) {
      const rendered = kubectlKustomize(kubectl!, dir);
      const ours = offline.get(dir)!;
      t.same(rendered.map(objectKey).sort(), ours.map(objectKey).sort(), `${rel(dir)}: the same objects`);
      for (const obj of rendered) {
        const mine = ours.find((o) => objectKey(o) === objectKey(obj));
        t.ok(isDeepStrictEqual(obj, mine), `${rel(dir)}: ${objectKey(obj)} identical`);
      }
    }
  },
);

const objects = kubectl ? kubectlKustomize(kubectl, everything.dir) : offline.get(everything.dir)!;
const BUILTIN = new Map([
  ['v1', 'v1'],
  ['apps/v1', 'apps/v1'],
  ['policy/v1', 'policy/v1'],
  ['admissionregistration.k8s.io/v1', 'admissionregistration.k8s.io/v1'],
]);

t.test('the composition of everything holds every object of each kustomization', async (t) => {
  const all = new Set(objects.map(objectKey));
  for (const [dir, list] of offline) for (const o of list) t.ok(all.has(objectKey(o)), `${objectKey(o)} (from ${rel(dir)})`);
});

t.test('built-in kinds validate against the Kubernetes schemas (kubernetes-models 4.5.1)', async (t) => {
  for (const obj of objects) {
    const dir = BUILTIN.get(obj.apiVersion);
    if (!dir) continue;
    const module = (await import(`kubernetes-models/${dir}/${obj.kind}`)) as Record<string, new (data: unknown) => { validate(): void }>;
    const Model = module[obj.kind];
    t.ok(Model, `${objectKey(obj)}: kubernetes-models knows ${obj.apiVersion} ${obj.kind}`);
    if (!Model) continue;
    t.doesNotThrow(() => new Model(structuredClone(obj)).validate(), `${objectKey(obj)}: valid`);
  }
  const ds = structuredClone(objects.find((o) => o.kind === 'DaemonSet'));
  ds.spec.template.spec.containers[0].securityContext.capabilities.drop = 'ALL';
  const { DaemonSet } = await import('kubernetes-models/apps/v1/DaemonSet');
  t.throws(() => new DaemonSet(ds).validate(), 'and a schema violation is caught (drop: ALL instead of [ALL])');
});

/** Type-check objects against kubernetes-models' interfaces: excess property checks find unknown fields. */
function unknownFields(list: readonly any[]): string[] {
  const file = path.join(ROOT, 'test', 'deploy', '__manifests__.ts');
  const imports: string[] = [];
  const decls: string[] = [];
  list.forEach((obj, i) => {
    const dir = BUILTIN.get(obj.apiVersion)!;
    imports.push(`import type { I${obj.kind} as T${i} } from 'kubernetes-models/${dir}/${obj.kind}';`);
    decls.push(`// ${objectKey(obj)}\nexport const o${i}: T${i} = ${JSON.stringify(obj, null, 2)};`);
  });
  const source = `${imports.join('\n')}\n${decls.join('\n')}\n`;
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  host.getSourceFile = (name, language, ...rest) =>
    name === file ? ts.createSourceFile(name, source, language) : getSourceFile(name, language, ...rest);
  host.fileExists = (name) => name === file || fileExists(name);
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
    const owner =
      source
        .split('\n')
        .slice(0, where + 1)
        .reverse()
        .find((l) => l.startsWith('// '))
        ?.slice(3) ?? '?';
    return `${owner}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`;
  });
}

t.test('built-in kinds have no unknown or misspelt fields', async (t) => {
  const builtin = objects.filter((o) => BUILTIN.has(o.apiVersion));
  const bad = structuredClone(objects.find((o) => o.kind === 'DaemonSet'));
  bad.spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem = true;
  const problems = unknownFields([...builtin, bad]);
  const badKey = objectKey(bad);
  t.same(problems.slice(0, problems.length - 1), [], 'every field is one Kubernetes has');
  t.equal(problems.length, 1, 'and exactly the one planted misspelling is caught');
  t.match(
    problems.at(-1),
    new RegExp(`${badKey}: .*'"?readOnlyRootFileSystem"?' does not exist`),
    'readOnlyRootFileSystem (for readOnlyRootFilesystem)',
  );
});

// ---------------------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------------------

const relaySet = objects.find((o) => o.kind === 'DaemonSet' && o.metadata.labels?.['app.kubernetes.io/component'] === 'relay');
const workload = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'example-app');
const imageComponent = yamlDocument(path.join(KUBERNETES_DIR, 'image', 'kustomization.yaml'));
const IMAGE = `${imageComponent.images[0].newName}:${imageComponent.images[0].newTag}`;
const ours = (c: any) => c.image === IMAGE;
const containersOf = (obj: any): any[] => [...(obj.spec.template.spec.initContainers ?? []), ...obj.spec.template.spec.containers];
const argsOf = (c: any): string[] => c.args ?? [];
const envOf = (c: any): Record<string, string> =>
  Object.fromEntries((c.env ?? []).filter((e: any) => e.value !== undefined).map((e: any) => [e.name, e.value]));
const portNamed = (c: any, port: string | number) => (typeof port === 'number' ? port : c.ports?.find((p: any) => p.name === port)?.containerPort);

/** Args with $(VAR) references expanded as kubelet does: only variables defined (earlier) in the container's env. */
function expandArgs(c: any): { args: string[]; undefinedVars: string[] } {
  const defined = new Map<string, string>();
  for (const e of c.env ?? [])
    defined.set(e.name, e.value ?? (e.valueFrom?.fieldRef?.fieldPath === 'status.hostIP' ? '192.0.2.10' : 'from-the-cluster'));
  const undefinedVars: string[] = [];
  const args = argsOf(c).map((a) =>
    a.replace(/\$\((\w+)\)/g, (_, v: string) => {
      if (!defined.has(v)) undefinedVars.push(v);
      return defined.get(v) ?? `$(${v})`;
    }),
  );
  return { args, undefinedVars };
}

t.test('every container of this image: its command line, variables, image and resources', async (t) => {
  t.ok(relaySet, 'a relay DaemonSet');
  t.ok(workload, 'an example workload Deployment');
  for (const obj of objects.filter((o) => o.spec?.template?.spec)) {
    for (const c of containersOf(obj)) {
      const where = `${objectKey(obj)} ${c.name}`;
      t.ok(c.resources?.requests && c.resources?.limits?.memory, `${where}: resource requests and a memory limit`);
      t.match(c.image, /^[\w.-]+(\/[\w.-]+)+:[\w.-]+$|^[\w.-]+:[\w.-]+$/, `${where}: an image with an explicit tag (${c.image})`);
      if (!ours(c)) continue;
      t.notOk(c.command, `${where}: the image's ENTRYPOINT (no command override)`);
      const { args, undefinedVars } = expandArgs(c);
      t.same(undefinedVars, [], `${where}: every $(VAR) in args is defined in env`);
      t.same(invocationProblems(args, envOf(c)), [], `${where}: ${argsOf(c).join(' ')}`);
    }
  }
  const imageUses = objects.flatMap((o) => (o.spec?.template ? containersOf(o) : [])).filter((c) => /arc-imds-proxy/.test(c.image));
  t.ok(imageUses.every(ours), `every arc-imds-proxy container uses the image set in image/kustomization.yaml (${IMAGE})`);
});

t.test('capabilities: NET_ADMIN in netns-setup only; everything else drops all, read-only, no escalation', async (t) => {
  for (const obj of objects.filter((o) => o.spec?.template?.spec)) {
    const pod = obj.spec.template.spec;
    for (const c of containersOf(obj)) {
      const where = `${objectKey(obj)} ${c.name}`;
      const sc = c.securityContext ?? {};
      const isNetnsSetup = ours(c) && splitCommand(argsOf(c)).command === 'netns-setup';
      t.same(sc.capabilities?.drop, ['ALL'], `${where}: drops every capability`);
      t.same(
        sc.capabilities?.add ?? [],
        isNetnsSetup ? ['NET_ADMIN'] : [],
        `${where}: ${isNetnsSetup ? 'adds NET_ADMIN, nothing else' : 'adds none'}`,
      );
      t.equal(sc.allowPrivilegeEscalation, false, `${where}: allowPrivilegeEscalation false`);
      t.equal(sc.readOnlyRootFilesystem, true, `${where}: read-only root filesystem`);
      t.notOk(sc.privileged, `${where}: not privileged`);
      const uid = sc.runAsUser ?? pod.securityContext?.runAsUser;
      const nonRoot = sc.runAsNonRoot ?? pod.securityContext?.runAsNonRoot;
      if (isNetnsSetup) t.equal(uid, 0, `${where}: uid 0, for NET_ADMIN to be effective (not for file access: nothing else is granted)`);
      else if (obj !== relaySet) t.ok(nonRoot === true && uid !== 0, `${where}: runs as non-root (uid ${uid})`);
    }
    t.notOk(pod.hostPID || pod.hostIPC, `${objectKey(obj)}: no host PID or IPC namespace`);
    t.equal(pod.automountServiceAccountToken, false, `${objectKey(obj)}: no service account token (no API access needed)`);
    t.equal(pod.securityContext?.seccompProfile?.type, 'RuntimeDefault', `${objectKey(obj)}: RuntimeDefault seccomp`);
    if (obj !== relaySet) t.notOk(pod.hostNetwork, `${objectKey(obj)}: not in the node's network namespace`);
  }
});

t.test('the relay DaemonSet', async (t) => {
  const pod = relaySet.spec.template.spec;
  const c = pod.containers.find(ours);
  const { args } = expandArgs(c);
  t.equal(pod.hostNetwork, true, "hostNetwork: HIMDS listens on the node's loopback only");
  t.equal(pod.dnsPolicy, 'ClusterFirstWithHostNet', 'dnsPolicy for a hostNetwork pod');
  t.equal(pod.nodeSelector?.[NODE_LABEL], 'true', `nodeSelector ${NODE_LABEL}=true (Arc-enabled nodes)`);
  t.match(deployReadme, new RegExp(`kubectl label node \\S+ ${NODE_LABEL}=true`), 'deploy/README.md documents the node label');
  t.equal(flagValue(args, 'upstream'), 'http://127.0.0.1:40342', "upstream: HIMDS on the node's loopback");

  const mountFor = (dir: string) => c.volumeMounts.find((m: any) => dir === m.mountPath || dir.startsWith(`${m.mountPath}/`));
  const volume = (name: string) => pod.volumes.find((v: any) => v.name === name);
  const tokensDir = flagValue(args, 'tokens-dir') ?? '/var/opt/azcmagent/tokens';
  const tokens = mountFor(tokensDir);
  t.equal(tokens?.mountPath, tokensDir, `the tokens directory is mounted at --tokens-dir (${tokensDir})`);
  t.equal(tokens?.readOnly, true, 'read-only');
  t.same(
    volume(tokens?.name)?.hostPath,
    { path: '/var/opt/azcmagent/tokens', type: 'Directory' },
    "from the node's /var/opt/azcmagent/tokens (must exist)",
  );

  const socket = (flagValue(args, 'listen') ?? '').replace(/^unix:/, '');
  t.match(flagValue(args, 'listen'), /^unix:\//, 'listens on a unix socket');
  const run = mountFor(path.dirname(socket));
  t.equal(run?.mountPath, path.dirname(socket), "the socket's directory is a mount");
  t.notOk(run?.readOnly, 'writable');
  t.equal(volume(run?.name)?.hostPath?.type, 'DirectoryOrCreate', 'a hostPath directory, created if missing');

  // Who may connect: --socket-mode 0660 and --socket-group G. The relay (uid 0 without CAP_CHOWN) can give the
  // socket only a group it is in, and the sidecars must be in it.
  t.equal(flagValue(args, 'socket-mode') ?? '0660', '0660', 'socket mode 0660');
  const group = Number(flagValue(args, 'socket-group'));
  const relayGroups = [pod.securityContext.runAsGroup, ...(pod.securityContext.supplementalGroups ?? [])];
  t.ok(relayGroups.includes(group), `--socket-group ${group} is one of the relay's groups (chown without CAP_CHOWN)`);
  const sidecarPod = workload.spec.template.spec;
  t.equal(sidecarPod.securityContext.runAsGroup, group, "the sidecars' gid is the socket's group");
  t.equal(String(group), IMAGE_USER[1], "which is the image's gid");
  t.ok((pod.securityContext.supplementalGroups ?? []).length >= 1, 'a supplementary group for himds (key files)');
  t.equal(pod.securityContext.runAsUser, 0, 'uid 0 (the owner of the hostPath directory kubelet creates) ...');
  t.same(c.securityContext.capabilities, { drop: ['ALL'] }, '... without any capability');

  const admin = flagValue(args, 'admin-listen')!;
  t.equal(argsOf(c)[argsOf(c).indexOf('--admin-listen') + 1], '$(HOST_IP):9464', "admin on the node's IP");
  t.same((c.env ?? []).find((e: any) => e.name === 'HOST_IP')?.valueFrom, { fieldRef: { fieldPath: 'status.hostIP' } }, 'HOST_IP from status.hostIP');
  for (const probe of ['livenessProbe', 'readinessProbe'] as const) {
    t.ok(c[probe]?.httpGet, `${probe}: httpGet`);
    t.equal(portNamed(c, c[probe]?.httpGet?.port), portOf(admin), `${probe}: on the admin port (${portOf(admin)})`);
  }
  t.equal(c.livenessProbe.httpGet.path, '/healthz', 'liveness: /healthz');
  t.equal(c.readinessProbe.httpGet.path, '/readyz', 'readiness: /readyz (a token can be minted)');
  const metricsPort = c.ports.find((p: any) => p.containerPort === portOf(admin));
  t.equal(metricsPort?.hostPort, portOf(admin), 'the admin port is declared as a hostPort (the scheduler sees conflicts)');
  t.equal(relaySet.spec.updateStrategy?.rollingUpdate?.maxSurge, 0, 'no surge: two relays cannot share the port and socket');
});

t.test('the example workload: netns-setup, a native sidecar, the app', async (t) => {
  const pod = workload.spec.template.spec;
  const inits: any[] = pod.initContainers ?? [];
  const netnsIndex = inits.findIndex((c) => ours(c) && splitCommand(argsOf(c)).command === 'netns-setup');
  const sidecarIndex = inits.findIndex((c) => ours(c) && splitCommand(argsOf(c)).command === 'serve');
  t.ok(netnsIndex >= 0, 'an init container runs netns-setup');
  t.ok(sidecarIndex > netnsIndex, 'the sidecar comes after it (init containers start in order)');
  const netns = inits[netnsIndex];
  const sidecar = inits[sidecarIndex];
  t.notOk(netns.restartPolicy, 'netns-setup is a plain init container (runs to completion)');
  t.same(
    argsOf(netns).filter((a) => a.startsWith('--')),
    ['--address'],
    'netns-setup: --address only (no --allow-host-netns)',
  );
  t.equal(flagValue(argsOf(netns), 'address'), IMDS, `netns-setup adds ${IMDS}`);

  t.equal(sidecar.restartPolicy, 'Always', 'the sidecar is a native sidecar: restartPolicy Always');
  const args = argsOf(sidecar);
  t.equal(flagValue(args, 'listen'), `${IMDS}:80`, `it listens on ${IMDS}:80`);
  t.notOk(args.includes('--allow-host-netns'), 'without --allow-host-netns');
  const relayArgs = expandArgs(relaySet.spec.template.spec.containers.find(ours)).args;
  t.equal(flagValue(args, 'upstream'), flagValue(relayArgs, 'listen'), "its upstream is the relay's socket");
  const socketDir = path.dirname((flagValue(args, 'upstream') ?? '').replace(/^unix:/, ''));
  const mount = sidecar.volumeMounts?.find((m: any) => m.mountPath === socketDir);
  t.equal(mount?.readOnly, true, "the socket's directory, mounted read-only");
  const relayRun = relaySet.spec.template.spec.volumes.find((v: any) => v.hostPath?.path === socketDir);
  t.equal(
    pod.volumes.find((v: any) => v.name === mount?.name)?.hostPath?.path,
    relayRun?.hostPath?.path,
    "from the node's directory the relay listens in",
  );
  t.ok(
    !pod.containers.some((c: any) => (c.volumeMounts ?? []).some((m: any) => m.name === mount?.name)),
    "the app itself does not mount the relay's socket",
  );

  const admin = flagValue(args, 'admin-listen')!;
  t.equal(admin.split(':')[0], '0.0.0.0', "the sidecar's admin listener is reachable by kubelet and Prometheus");
  t.ok(sidecar.startupProbe?.httpGet, 'a startupProbe: the app starts once it passes');
  t.equal(sidecar.startupProbe.httpGet.path, '/readyz', 'startup: /readyz (a token can be minted through the relay)');
  t.ok(sidecar.startupProbe.periodSeconds * sidecar.startupProbe.failureThreshold >= 60, 'startup allows at least a minute');
  t.equal(sidecar.livenessProbe?.httpGet?.path, '/healthz', 'liveness: /healthz');
  for (const probe of ['startupProbe', 'livenessProbe']) {
    t.equal(portNamed(sidecar, sidecar[probe].httpGet.port), portOf(admin), `${probe} on the admin port (${portOf(admin)})`);
  }
  t.same(pod.securityContext.sysctls, [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }], 'sysctl: the non-root sidecar may bind port 80');
  t.equal(pod.nodeSelector?.[NODE_LABEL], 'true', 'scheduled only where a relay runs');

  const app = pod.containers[0];
  const script = JSON.stringify(app.command ?? app.args);
  t.match(script, new RegExp(`http://${IMDS.replaceAll('.', '\\.')}/metadata/identity/oauth2/token\\?api-version=`), 'the app asks IMDS for a token');
  t.match(script, /-H 'Metadata: true'/, 'with Metadata: true');
});

t.test('namespaces: the Pod Security level the pods need, stated', async (t) => {
  const namespaces = objects.filter((o) => o.kind === 'Namespace');
  for (const obj of [relaySet, workload]) {
    const ns = namespaces.find((n) => n.metadata.name === obj.metadata.namespace);
    t.ok(ns, `${objectKey(obj)}: its namespace is part of the kustomization`);
    t.equal(
      ns?.metadata.labels?.['pod-security.kubernetes.io/enforce'],
      'privileged',
      `${ns?.metadata.name}: enforce privileged (hostPath${obj === relaySet ? ', hostNetwork' : ', NET_ADMIN'})`,
    );
  }
  for (const word of ['privileged', 'baseline', 'NET_ADMIN', 'hostPath', 'hostNetwork', 'supplementalGroups']) {
    t.match(deployReadme, word, `deploy/README.md discusses ${word}`);
  }
});

// ---------------------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------------------

const matches = (selector: Record<string, string>, labels: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels?.[k] === v);
const DURATION = /^(\d+(ms|s|m|h|d|w|y))+$/;

t.test('PodMonitors (monitoring.coreos.com/v1): shape, and they scrape the admin port of the pods they select', async (t) => {
  const monitors = objects.filter((o) => o.kind === 'PodMonitor');
  t.equal(monitors.length, 2, 'one for the relays, one for the sidecars');
  const SPEC = new Set(['selector', 'namespaceSelector', 'podMetricsEndpoints', 'jobLabel', 'podTargetLabels', 'sampleLimit']);
  const ENDPOINT = new Set(['port', 'path', 'interval', 'scrapeTimeout', 'scheme', 'relabelings', 'metricRelabelings', 'honorLabels']);
  const RELABEL = new Set(['action', 'sourceLabels', 'separator', 'targetLabel', 'regex', 'modulus', 'replacement']);
  for (const m of monitors) {
    const where = objectKey(m);
    t.equal(m.apiVersion, 'monitoring.coreos.com/v1', `${where}: apiVersion`);
    t.ok(m.metadata.name && m.metadata.namespace, `${where}: name and namespace`);
    t.same(
      Object.keys(m.spec).filter((k) => !SPEC.has(k)),
      [],
      `${where}: known spec fields only`,
    );
    t.ok(m.spec.selector?.matchLabels && Object.keys(m.spec.selector.matchLabels).length > 0, `${where}: a label selector`);
    const ns = m.spec.namespaceSelector;
    t.ok(ns === undefined || ns.any === true || Array.isArray(ns.matchNames), `${where}: namespaceSelector any or matchNames`);
    t.ok(Array.isArray(m.spec.podMetricsEndpoints) && m.spec.podMetricsEndpoints.length > 0, `${where}: endpoints`);
    const selected = objects.filter(
      (o) =>
        o.spec?.template &&
        matches(m.spec.selector.matchLabels, o.spec.template.metadata.labels) &&
        (ns?.any === true || (ns?.matchNames ?? [m.metadata.namespace]).includes(o.metadata.namespace)),
    );
    t.equal(selected.length, 1, `${where}: selects ${selected.map(objectKey).join(', ')}`);
    for (const ep of m.spec.podMetricsEndpoints) {
      t.same(
        Object.keys(ep).filter((k) => !ENDPOINT.has(k)),
        [],
        `${where}: known endpoint fields only`,
      );
      t.equal(typeof ep.port, 'string', `${where}: a named port`);
      t.equal(ep.path, '/metrics', `${where}: /metrics`);
      if (ep.interval !== undefined) t.match(ep.interval, DURATION, `${where}: interval is a duration`);
      for (const r of ep.relabelings ?? [])
        t.same(
          Object.keys(r).filter((k) => !RELABEL.has(k)),
          [],
          `${where}: known relabeling fields only`,
        );
      const component = (ep.relabelings ?? []).find((r: any) => r.targetLabel === 'arc_imds_component');
      t.ok(
        component && ['relay', 'sidecar'].includes(component.replacement) && (component.action ?? 'replace') === 'replace',
        `${where}: sets arc_imds_component (${component?.replacement}), which alerts and dashboard select on`,
      );
      for (const obj of selected) {
        const c = containersOf(obj).find((x) => x.ports?.some((p: any) => p.name === ep.port));
        t.ok(c && ours(c), `${where}: port ${ep.port} belongs to an arc-imds-proxy container (${c?.name})`);
        if (!c) continue;
        const admin = flagValue(expandArgs(c).args, 'admin-listen')!;
        t.equal(portNamed(c, ep.port), portOf(admin), `${where}: port ${ep.port} is its --admin-listen port (${portOf(admin)})`);
        t.notOk(/^127\./.test(admin), `${where}: an admin address Prometheus can reach (${argsOf(c)[argsOf(c).indexOf('--admin-listen') + 1]})`);
        t.equal(component?.replacement, obj === relaySet ? 'relay' : 'sidecar', `${where}: the component label says what it scrapes`);
      }
    }
  }
});

const metrics = await codeMetrics();
const ours_ = [...metrics.keys()].filter((n) => n.startsWith('arc_imds_'));

t.test('PrometheusRule: shape and the alerts asked for', async (t) => {
  const rules = objects.filter((o) => o.kind === 'PrometheusRule');
  t.equal(rules.length, 1, 'one PrometheusRule');
  const rule = rules[0];
  t.equal(rule.apiVersion, 'monitoring.coreos.com/v1', 'apiVersion');
  t.same(Object.keys(rule.spec), ['groups'], 'spec.groups');
  const alerts: any[] = [];
  for (const group of rule.spec.groups) {
    t.ok(group.name && Array.isArray(group.rules) && group.rules.length > 0, `group ${group.name}`);
    for (const r of group.rules) {
      const where = `alert ${r.alert}`;
      t.same(
        Object.keys(r).filter((k) => !['alert', 'expr', 'for', 'labels', 'annotations', 'keep_firing_for'].includes(k)),
        [],
        `${where}: known fields only`,
      );
      t.match(r.alert, /^[A-Z][A-Za-z0-9]+$/, `${where}: a name`);
      t.ok(typeof r.expr === 'string' && r.expr.trim() !== '', `${where}: an expression`);
      if (r.for !== undefined) t.match(r.for, DURATION, `${where}: for is a duration`);
      t.ok(['critical', 'warning', 'info'].includes(r.labels?.severity), `${where}: severity ${r.labels?.severity}`);
      t.ok(r.annotations?.summary && r.annotations?.description, `${where}: summary and description`);
      alerts.push(r);
    }
  }
  t.equal(new Set(alerts.map((a) => a.alert)).size, alerts.length, 'alert names are unique');
  const find = (pred: (r: any) => boolean, what: string) => t.ok(alerts.find(pred), `${what}: ${alerts.find(pred)?.alert}`);
  find((r) => /\bup\{arc_imds_component="relay"\}\s*==\s*0/.test(r.expr), 'relay down');
  find((r) => /arc_imds_token_refreshes_total\{outcome="failure"\}/.test(r.expr), 'token refresh failing');
  find((r) => /arc_imds_token_earliest_expiry_seconds\)?\s*<\s*3600\b/.test(r.expr), 'earliest token expiring within an hour');
  find((r) => /arc_imds_challenge_failures_total/.test(r.expr), 'challenge failures');
  find((r) => /histogram_quantile\([^,]+,[\s\S]*arc_imds_upstream_request_duration_seconds_bucket/.test(r.expr), 'upstream latency high');
});

t.test('Grafana dashboard: valid JSON in its ConfigMap, panels on metrics the code has, every metric shown', async (t) => {
  const file = path.join(KUBERNETES_DIR, 'monitoring', 'grafana-dashboard.json');
  const cm = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.labels?.grafana_dashboard === '1');
  t.ok(cm, 'a ConfigMap labelled grafana_dashboard: "1"');
  const [key, text] = Object.entries<string>(cm?.data ?? {})[0] ?? [];
  t.match(key, /\.json$/, `data key ${key}`);
  t.equal(text, read(file), `it holds ${rel(file)}`);
  const dashboard = JSON.parse(text ?? '{}');
  t.ok(dashboard.uid && dashboard.title && Number.isInteger(dashboard.schemaVersion), 'uid, title, schemaVersion');
  const variables: any[] = dashboard.templating?.list ?? [];
  t.ok(
    variables.some((v) => v.type === 'datasource' && v.query === 'prometheus' && v.name === 'datasource'),
    'a Prometheus data source variable',
  );
  const shown = new Set<string>();
  for (const v of variables.filter((x) => x.type === 'query')) {
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    const m = /^label_values\((.+),\s*(\w+)\)$/.exec(q ?? '');
    t.ok(m, `variable ${v.name}: label_values(selector, label)`);
    if (!m) continue;
    for (const u of metricNamesIn(m[1]!, metrics)) shown.add(u);
  }
  const panels: any[] = (dashboard.panels ?? []).flatMap((p: any) => [p, ...(p.panels ?? [])]);
  t.equal(new Set(panels.map((p) => p.id)).size, panels.length, 'panel ids are unique');
  for (const p of panels.filter((x) => x.type !== 'row')) {
    t.ok(p.gridPos && p.title, `panel ${p.id}: title and position`);
    t.equal(p.datasource?.uid, DATASOURCE_VARIABLE, `panel ${p.title}: the data source variable`);
    t.ok(Array.isArray(p.targets) && p.targets.length > 0, `panel ${p.title}: queries`);
    for (const target of p.targets ?? []) {
      const used = metricNamesIn(target.expr, metrics);
      t.ok(used.length > 0, `panel ${p.title} ${target.refId}: on arc_imds_* metrics the code registers (${used.join(', ')})`);
      for (const u of used) shown.add(u);
    }
  }
  t.same(
    ours_.filter((m) => !shown.has(m)),
    [],
    'every arc_imds_* metric the code registers is on the dashboard',
  );
});
