// A real Prometheus (Debian's 2.42) scrapes a real relay and a real sidecar in front of the HIMDS emulator, with
// the shipped alert rules loaded, and the test drives the conditions each alert is about and reads Prometheus's
// own API: /api/v1/targets, /api/v1/query(_range), /api/v1/series, /api/v1/alerts. Everything is on 127.0.0.1
// and a unix socket in a temporary directory:
//
//   client -> sidecar (127.0.0.1:IMDS) -> unix:relay.sock -> relay -> "HIMDS" (127.0.0.1:H: the emulator, nothing,
//   or a hostile server in this process)            Prometheus -> sidecar and relay admin listeners (/metrics)
//
// How the scrape config mirrors the PodMonitors: fixtures/tools.ts generates, from the shipped PodMonitor objects, the jobs
// the Prometheus Operator generates (selector keep, port-name keep, namespace/container/pod/job/endpoint, then
// the monitors' own relabelings, which set arc_imds_component). Discovery is file_sd instead of the Kubernetes
// API: one target group per container port of the relay DaemonSet's and the example Deployment's pods, with the
// __meta_kubernetes_* labels role: pod would give them (their real pod labels, port names and namespaces), and
// the admin ports pointing at the running processes. Ports nothing selects point at 127.0.0.1:1 and must be
// dropped by the relabelling; a scrape of them would show up as a target that is down.
//
// What differs from the shipped objects, on purpose: scrape and evaluation every second instead of 30 s, and
// every alert's `for:` shortened to 1 s (expressions byte-identical: checked below), so that the test takes
// seconds instead of hours. The real `for:` durations are tested by promtool (alerts.promtool.yaml).
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { parse, stringify } from 'yaml';
import { ROOT } from '../fixtures/deploy.js';
import { fetchText, freePort, start, until, type Started } from './fixtures/processes.js';
import {
  DASHBOARD_FILE,
  deploymentObjects,
  monitoringObjects,
  podDiscovery,
  podMonitorJobs,
  prometheusTools,
  ruleFile,
  shippedRuleGroups,
  type PodTarget,
} from './fixtures/tools.js';

const CLI = path.join(ROOT, 'dist', 'cli.js');
const ARM = 'https://management.azure.com/';
const INTERVAL = '1s';
/** Grafana's $__rate_interval for a 1 s scrape interval: max(4 x scrape interval, interval + scrape interval). */
const RATE_INTERVAL = '4s';

const tools = prometheusTools();
if ('skip' in tools) {
  t.plan(0, tools.skip);
} else {
  // A failure while setting up must fail the test, not crash the file before its teardown runs.
  await live(tools.prometheus).catch((err: unknown) => t.fail(`the live test could not run: ${(err as Error).stack ?? String(err)}`));
}

async function live(prometheusBin: string): Promise<void> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-prometheus-'));
  const children: Started[] = [];
  let hostile: http.Server | undefined;
  t.teardown(async () => {
    hostile?.closeAllConnections();
    hostile?.close();
    for (const c of children.reverse()) await c.stop();
    await rm(tmp, { recursive: true, force: true });
  });
  const spawnCli = (name: string, args: string[]) => {
    const c = start(name, process.execPath, [CLI, ...args]);
    children.push(c);
    return c;
  };
  const dump = () => children.map((c) => `--- ${c.name} (pid ${c.child.pid}) ---\n${c.output().slice(-4000)}`).join('\n');
  t.afterEach(async (t) => {
    if (!t.passing()) t.comment(dump());
  });

  const [himdsPort, imdsPort, relayAdmin, sidecarAdmin, promPort] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
  const tokensDir = path.join(tmp, 'tokens');
  const relaySocket = path.join(tmp, 'relay.sock');
  const HIMDS = `http://127.0.0.1:${himdsPort}`;
  const PROM = `http://127.0.0.1:${promPort}`;
  const IMDS = `http://127.0.0.1:${imdsPort}`;

  // --- the processes ------------------------------------------------------------------------------------------
  let emulator: Started | undefined;
  const startEmulator = async () => {
    emulator = spawnCli('emulator', [
      'emulate-himds',
      '--listen',
      `127.0.0.1:${himdsPort}`,
      '--tokens-dir',
      tokensDir,
      '--token-lifetime',
      '30m',
      '--log-level',
      'warn',
    ]);
    await until('the emulator to listen', async () => (await fetchText(`${HIMDS}/agentstatus`)).status === 200, 60_000);
  };
  await startEmulator();
  // A token lives 30 min (under the hour ArcImdsTokenExpiringSoon looks at); --refresh-ratio 0.001 makes a cached
  // token due for its background refresh after about 2 s, so refreshes happen (and fail) within the test.
  const common = ['--readiness-interval', '1s', '--refresh-ratio', '0.001', '--log-level', 'warn'];
  const relay = spawnCli('relay', [
    'serve',
    '--listen',
    `unix:${relaySocket}`,
    '--upstream',
    HIMDS,
    '--tokens-dir',
    tokensDir,
    '--admin-listen',
    `127.0.0.1:${relayAdmin}`,
    ...common,
  ]);
  const ready = (port: number) =>
    until(`the admin listener on ${port} to be ready`, async () => (await fetchText(`http://127.0.0.1:${port}/readyz`)).status === 200, 60_000);
  await ready(relayAdmin);
  spawnCli('sidecar', [
    'serve',
    '--listen',
    `127.0.0.1:${imdsPort}`,
    '--upstream',
    `unix:${relaySocket}`,
    '--tokens-dir',
    path.join(tmp, 'no-keys'),
    '--admin-listen',
    `127.0.0.1:${sidecarAdmin}`,
    ...common,
  ]);
  await ready(sidecarAdmin);

  // --- Prometheus: the PodMonitors' jobs, the shipped rules with `for:` shortened -----------------------------------
  const objects = deploymentObjects();
  const relaySet = objects.find((o) => o.kind === 'DaemonSet' && o.metadata.labels?.['app.kubernetes.io/component'] === 'relay');
  const workload = objects.find((o) => o.kind === 'Deployment');
  const podOf = (obj: any, pod: string, adminPorts: Record<string, number>): PodTarget => ({
    namespace: obj.metadata.namespace,
    pod,
    labels: obj.spec.template.metadata.labels,
    containers: [
      ...(obj.spec.template.spec.initContainers ?? []).map((c: any) => ({ name: c.name, init: true, ports: c.ports ?? [] })),
      ...obj.spec.template.spec.containers.map((c: any) => ({ name: c.name, init: false, ports: c.ports ?? [] })),
    ],
    addressOf: (port) => `127.0.0.1:${(port.name && adminPorts[port.name]) || 1}`,
  });
  const RELAY_POD = `${relaySet.metadata.name}-node1`;
  const SIDECAR_POD = `${workload.metadata.name}-7f9c4-abcde`;
  const pods = [podOf(relaySet, RELAY_POD, { metrics: relayAdmin }), podOf(workload, SIDECAR_POD, { 'imds-metrics': sidecarAdmin })];

  const monitors = monitoringObjects().filter((o) => o.kind === 'PodMonitor');
  const jobs: Record<string, unknown>[] = [];
  let discovered = 0;
  for (const m of monitors) {
    for (const { job, namespaces } of podMonitorJobs(m, path.join(tmp, `sd-${m.metadata.name}.json`), INTERVAL)) {
      const watched = pods.filter((p) => namespaces === 'any' || namespaces.includes(p.namespace));
      const groups = podDiscovery(watched);
      discovered += groups.length;
      await writeFile(path.join(tmp, `sd-${m.metadata.name}.json`), JSON.stringify(groups, null, 1));
      jobs.push(job);
    }
  }
  const shipped = shippedRuleGroups();
  const testGroups = structuredClone(shipped).map((g) => ({
    ...g,
    interval: INTERVAL,
    rules: g.rules.map((r) => (r.for === undefined ? r : { ...r, for: '1s' })),
  }));
  await writeFile(path.join(tmp, 'rules.yaml'), ruleFile(testGroups));
  await writeFile(
    path.join(tmp, 'prometheus.yml'),
    stringify({
      global: { scrape_interval: INTERVAL, scrape_timeout: INTERVAL, evaluation_interval: INTERVAL },
      rule_files: [path.join(tmp, 'rules.yaml')],
      scrape_configs: jobs,
    }),
  );
  const prometheus = start('prometheus', prometheusBin, [
    `--config.file=${path.join(tmp, 'prometheus.yml')}`,
    `--storage.tsdb.path=${path.join(tmp, 'data')}`,
    `--web.listen-address=127.0.0.1:${promPort}`,
    '--web.enable-lifecycle',
    '--log.level=info',
  ]);
  children.push(prometheus);
  await until('Prometheus to be ready', async () => (await fetchText(`${PROM}/-/ready`)).status === 200, 90_000);
  const T0 = Date.now() / 1000;

  // --- Prometheus's API ---------------------------------------------------------------------------------------
  const api = async (p: string, params: Record<string, string | string[]> = {}) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) for (const x of [v].flat()) q.append(k, x);
    const r = await fetchText(`${PROM}/api/v1/${p}?${q}`);
    const body = JSON.parse(r.text);
    if (body.status !== 'success') throw new Error(`${p} ${q}: ${r.text}`);
    if (body.warnings?.length) throw new Error(`${p} ${q}: warnings ${JSON.stringify(body.warnings)}`);
    return body.data;
  };
  const query = (expr: string) => api('query', { query: expr }) as Promise<{ resultType: string; result: any[] }>;
  const alerts = async (): Promise<any[]> => (await api('alerts')).alerts;
  const has = (labels: Record<string, string>, want: Record<string, string>) => Object.entries(want).every(([k, v]) => labels[k] === v);
  const RELAY = { arc_imds_component: 'relay', namespace: relaySet.metadata.namespace, pod: RELAY_POD };
  const SIDECAR = { arc_imds_component: 'sidecar', namespace: workload.metadata.namespace, pod: SIDECAR_POD };
  const firing = (alertname: string, labels: Record<string, string>) =>
    until(`${alertname} firing for ${JSON.stringify(labels)}`, async () =>
      (await alerts()).find((a) => a.state === 'firing' && has(a.labels, { alertname, ...labels })),
    );
  const driven = new Set<string>();

  const token = (resource: string, extra: { localAddress?: string; query?: string } = {}) =>
    fetchText(`${IMDS}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=${encodeURIComponent(resource)}${extra.query ?? ''}`, {
      headers: { Metadata: 'true' },
      localAddress: extra.localAddress,
    });
  /** Wait until Prometheus has scraped both targets after now (their up sample is newer). */
  const scrapedSinceNow = async () => {
    const now = Date.now() / 1000;
    await until('a scrape of both targets', async () => {
      const r = await query('timestamp(up{arc_imds_component=~"relay|sidecar"})');
      return r.result.length === 2 && r.result.every((s) => Number(s.value[1]) > now);
    });
  };

  /**
   * Wait until Prometheus has scraped both targets successfully twice, one rate window apart at most, after now.
   * `up` is written for a failed scrape too (a timeout under a busy machine), and a failed scrape marks every
   * series of its target stale; a range panel's increase()/rate() over RATE_INTERVAL needs two real samples of a
   * series in one window, so "scraped once since now" is not enough for a series that exists on one target only.
   */
  const scrapedTwiceSinceNow = async () => {
    const now = Date.now() / 1000;
    const windowS = Number.parseFloat(RATE_INTERVAL);
    await until('two successful scrapes of both targets within one rate window', async () => {
      const r = await query('up{arc_imds_component=~"relay|sidecar"}[30s]');
      const good = (s: any) =>
        (s.values as [number, string][]).some(
          ([at, v], i, all) => i > 0 && at > now && all[i - 1]![0] > now && v === '1' && all[i - 1]![1] === '1' && at - all[i - 1]![0] < windowS,
        );
      return r.result.length === 2 && r.result.every(good);
    });
  };

  /** Per target, how many scrapes since T0 and when (unix seconds) those that failed ran. */
  const scrapeHistory = async () => {
    const seconds = Math.ceil(Date.now() / 1000 - T0) + 1;
    const r = await query(`up{arc_imds_component=~"relay|sidecar"}[${seconds}s]`);
    return Object.fromEntries(
      r.result.map((s: any) => {
        const samples = s.values as [number, string][];
        return [s.metric.arc_imds_component, { scrapes: samples.length, failedAt: samples.filter(([, v]) => v !== '1').map(([at]) => at) }];
      }),
    );
  };

  t.test('the rules Prometheus loaded are the shipped ones, with only `for:` shortened', async (t) => {
    // Health is "unknown" until a rule's first evaluation.
    const loaded = await until('every rule evaluated', async () => {
      const d = await api('rules');
      return d.groups.every((g: any) => g.rules.every((r: any) => r.health !== 'unknown')) ? d : undefined;
    });
    const got = loaded.groups.flatMap((g: any) => g.rules);
    const want = shipped.flatMap((g) => g.rules);
    t.equal(got.length, want.length, `${want.length} rules loaded`);
    const reread = parse(await readFile(path.join(tmp, 'rules.yaml'), 'utf8')).groups.flatMap((g: any) => g.rules);
    for (const [i, r] of want.entries()) {
      t.equal(reread[i].expr, r.expr, `${r.alert}: the expression is byte-identical to the PrometheusRule's`);
      t.same({ ...reread[i], for: r.for }, r, `${r.alert}: nothing else changed but for (${r.for ?? 'none'} -> ${reread[i].for ?? 'none'})`);
      t.equal(got[i]?.name, r.alert, `${r.alert} is loaded`);
      t.equal(got[i]?.health, 'ok', `${r.alert}: health ok`);
    }
  });

  await t.test('the scrape: both targets, labelled as the PodMonitors label them, nothing else', async (t) => {
    const targets = await until('both targets scraped', async () => {
      const d = await api('targets');
      return d.activeTargets.length === 2 && d.activeTargets.every((x: any) => x.health === 'up') ? d : undefined;
    });
    t.ok(discovered > 2, `${discovered} container ports discovered for the two jobs`);
    t.equal(targets.droppedTargets.length, discovered - 2, 'every other discovered container port is dropped by the relabelling');
    for (const [who, labels, port, monitor] of [
      ['relay', RELAY, relayAdmin, 'arc-imds-relay'],
      ['sidecar', SIDECAR, sidecarAdmin, 'arc-imds-sidecars'],
    ] as const) {
      const target = targets.activeTargets.find((x: any) => x.labels.arc_imds_component === who);
      t.ok(target, `a ${who} target`);
      t.ok(
        has(target.labels, labels),
        `${who}: arc_imds_component, namespace and pod as the PodMonitor sets them (${JSON.stringify(target.labels)})`,
      );
      t.equal(target.scrapeUrl, `http://127.0.0.1:${port}/metrics`, `${who}: its admin listener's /metrics`);
      t.match(target.labels.job, new RegExp(`/${monitor}$`), `${who}: job <namespace>/${monitor}`);
      t.equal(target.lastError, '', `${who}: no scrape error`);
      t.ok(target.lastScrapeDuration < 0.5, `${who}: the scrape took ${Math.round(target.lastScrapeDuration * 1000)} ms (under 500 ms)`);
    }
    for (const port of [relayAdmin, sidecarAdmin]) {
      const r = await fetchText(`http://127.0.0.1:${port}/metrics`, {
        headers: { Accept: 'application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1' },
      });
      t.equal(
        r.headers['content-type'],
        'text/plain; version=0.0.4; charset=utf-8',
        `${port}: the Prometheus text format, which Prometheus parses without guessing`,
      );
    }
  });

  // The sidecar's readiness check asks the relay for a token (the relay caches it); the sidecar caches nothing
  // until a client asks.
  await t.test('while nothing is cached, the earliest-expiry gauge is absent (README: "absent when none")', async (t) => {
    await scrapedSinceNow();
    const entries = await query('arc_imds_token_cache_entries{arc_imds_component="sidecar"}');
    t.same(
      entries.result.map((s) => s.value[1]),
      ['0'],
      'the sidecar has cached nothing yet',
    );
    const r = await query('arc_imds_token_earliest_expiry_seconds{arc_imds_component="sidecar"}');
    t.same(
      r.result.map((s) => s.value[1]),
      [],
      'no earliest-expiry series for it (a 0 would read as "expires now")',
    );
  });

  await t.test('healthy: tokens served, no alert pending or firing', async (t) => {
    t.equal((await token(ARM)).status, 200, 'a token');
    t.equal((await token(ARM)).status, 200, 'the same token, cached');
    t.equal(
      (await fetchText(`${IMDS}/metadata/instance?api-version=2021-02-01`, { headers: { Metadata: 'true' } })).status,
      200,
      'instance metadata',
    );
    await scrapedSinceNow();
    for (let i = 0; i < 3; i++) {
      await scrapedSinceNow(); // and the rules evaluated on it
      const active = await alerts();
      t.same(
        active.map((a) => `${a.labels.alertname} ${a.state}`),
        [],
        `evaluation ${i + 1}: no alert active`,
      );
    }
    const expiry = await query('arc_imds_token_earliest_expiry_seconds');
    t.ok(
      expiry.result.length >= 1 && expiry.result.every((s) => Number(s.value[1]) > 1500 && Number(s.value[1]) <= 1800),
      'the earliest token expires in 25-30 min (--token-lifetime 30m)',
    );
  });

  await t.test('no series grows with client input: a burst of distinct resources, identities and clients adds none', async (t) => {
    // The kinds of request the burst makes, once before counting, so that their (bounded) label values exist.
    t.equal(
      (await token('https://vault.azure.net', { query: '&client_id=00000000-0000-0000-0000-00000000000a' })).status,
      200,
      'a user-assigned token',
    );
    await scrapedSinceNow();
    const selector = '{job=~"podMonitor/.+"}';
    const series = async () =>
      (await api('series', { 'match[]': selector, start: String(T0), end: String(Date.now() / 1000 + 60) })) as Record<string, string>[];
    const before = await series();
    const N = 40;
    const inputs: string[] = [];
    for (let i = 0; i < N; i++) {
      const resource = `https://burst-${i}-${process.pid}.example.test`;
      const client = `00000000-0000-4000-8000-${String(100_000_000_000 + i)}`;
      const from = `127.0.0.${i + 2}`;
      inputs.push(resource, client, from);
      const r = await token(resource, { localAddress: from, query: `&client_id=${client}` });
      if (r.status !== 200) t.fail(`burst request ${i}: ${r.status} ${r.text}`);
    }
    await scrapedSinceNow();
    await scrapedSinceNow();
    const after = await series();
    const ours = (list: Record<string, string>[]) => list.filter((s) => s.__name__!.startsWith('arc_imds_')).length;
    t.equal(
      ours(after),
      ours(before),
      `arc_imds_* series: ${ours(before)} before, ${ours(after)} after ${N} distinct resources, identities and client addresses`,
    );
    const leaked = after.filter((s) => Object.values(s).some((v) => inputs.some((x) => v.includes(x))));
    t.same(leaked, [], `no series (of ${after.length}, ${before.length} before) has a label value from the requests`);
    const cached = await query('arc_imds_token_cache_entries{arc_imds_component="sidecar"}');
    t.ok(Number(cached.result[0]?.value[1]) >= N, 'the burst did reach the cache (its tokens are counted, not labelled)');
  });

  // Requests the driver keeps sending while HIMDS is down: the cached ARM token (due for refresh: the refreshes
  // fail) and, every other time, a new resource (nothing cached: 503).
  let driving = false;
  let driven503 = 0;
  const drive = async () => {
    for (let i = 0; driving; i++) {
      await token(ARM);
      if (i % 2 === 0 && (await token(`https://down-${i}.example.test`)).status === 503) driven503++;
      await sleep(300);
    }
  };

  // The sidecar stays ready: its readiness check asks the relay for a token, and the relay has one cached.
  await t.test('HIMDS down: relay not ready, upstream errors, token requests failing, refreshes failing, expiry soon', async (t) => {
    await emulator!.stop();
    t.equal((await fetchText(`${HIMDS}/agentstatus`)).status, 0, 'nothing listens where HIMDS was');
    driving = true;
    const driver = drive();
    try {
      const notReady = await firing('ArcImdsNotReady', RELAY);
      t.ok(notReady, `ArcImdsNotReady fires for the relay: ${notReady.annotations.summary}`);
      t.ok(await firing('ArcImdsUpstreamErrors', RELAY), 'ArcImdsUpstreamErrors fires for the relay (HIMDS refuses connections)');
      t.ok(await firing('ArcImdsUpstreamErrors', SIDECAR), 'and for the sidecar (the relay answers 503)');
      t.ok(
        await firing('ArcImdsTokenRequestsFailing', SIDECAR),
        `ArcImdsTokenRequestsFailing fires for the sidecar (${driven503} token requests got 503)`,
      );
      t.ok(
        await firing('ArcImdsTokenRefreshFailing', RELAY),
        'ArcImdsTokenRefreshFailing fires for the relay (its background refreshes of the ARM token fail)',
      );
      const soon = await firing('ArcImdsTokenExpiringSoon', RELAY);
      t.ok(Number(soon.value) > 0 && Number(soon.value) < 3600, `ArcImdsTokenExpiringSoon fires for the relay: ${soon.annotations.description}`);
      t.equal((await token(ARM)).status, 200, 'meanwhile the cached token is still served');
      for (const a of [
        'ArcImdsNotReady',
        'ArcImdsUpstreamErrors',
        'ArcImdsTokenRequestsFailing',
        'ArcImdsTokenRefreshFailing',
        'ArcImdsTokenExpiringSoon',
      ])
        driven.add(a);
    } finally {
      driving = false;
      await driver;
    }
  });

  await t.test('HIMDS back: the not-ready alert clears', async (t) => {
    await startEmulator();
    await ready(relayAdmin);
    await until('ArcImdsNotReady to clear', async () => !(await alerts()).some((a) => a.labels.alertname === 'ArcImdsNotReady'));
    t.pass('no ArcImdsNotReady, pending or firing, for either component');
    const r = await query('arc_imds_ready');
    t.same(
      r.result.map((s) => s.value[1]),
      ['1', '1'],
      'arc_imds_ready is 1 for both',
    );
  });

  await t.test('HIMDS slow (3 s an answer): the upstream latency alert', async (t) => {
    const set = (latencyMs: number) =>
      fetchText(`${HIMDS}/__emulator/faults`, {
        method: 'POST',
        body: JSON.stringify({ latencyMs }),
        headers: { 'Content-Type': 'application/json' },
      });
    t.equal((await set(3000)).status, 200, 'the emulator answers every request after 3 s');
    try {
      const slow = await Promise.all([1, 2, 3].map((i) => token(`https://slow-${i}.example.test`)));
      t.same(
        slow.map((r) => r.status),
        [200, 200, 200],
        'slow tokens are still served (under --upstream-timeout)',
      );
      const high = await firing('ArcImdsUpstreamLatencyHigh', { ...RELAY, leg: 'token' });
      t.ok(Number(high.value) > 2, `ArcImdsUpstreamLatencyHigh fires for the relay's token leg: ${high.annotations.description}`);
      driven.add('ArcImdsUpstreamLatencyHigh');
    } finally {
      await set(0);
    }
  });

  await t.test('a hostile HIMDS names a key file outside the tokens directory: the challenge-failure alert', async (t) => {
    await emulator!.stop();
    const outside = path.join(tmp, 'outside.key');
    await writeFile(outside, 'not-a-key-for-you');
    let authorizations = 0;
    hostile = http.createServer((req, res) => {
      if (req.headers.authorization !== undefined) authorizations++;
      res.writeHead(401, { 'Www-Authenticate': `Basic realm=${tokensDir}/../outside.key`, 'Content-Type': 'application/json' });
      res.end('{"error":"unauthorized"}');
    });
    await new Promise<void>((resolve) => hostile!.listen(himdsPort, '127.0.0.1', resolve));
    const alert = await firing('ArcImdsChallengeFailures', { ...RELAY, reason: 'bad_realm' });
    t.ok(alert, `ArcImdsChallengeFailures fires for the relay, reason bad_realm: ${alert.annotations.summary}`);
    t.equal(authorizations, 0, 'and the file the realm names was never sent back');
    driven.add('ArcImdsChallengeFailures');
    await new Promise<void>((resolve) => {
      hostile!.close(() => resolve());
      hostile!.closeAllConnections();
    });
    hostile = undefined;
    await startEmulator();
    await ready(relayAdmin);
  });

  await t.test('the Grafana dashboard: variables resolve, every query returns data of its panel type', async (t) => {
    await scrapedTwiceSinceNow();
    const dashboard = JSON.parse(await readFile(DASHBOARD_FILE, 'utf8'));
    const vars: Record<string, string> = {};
    const substitute = (expr: string) => expr.replaceAll('$__rate_interval', RATE_INTERVAL).replace(/\$(\w+)/g, (m, name: string) => vars[name] ?? m);
    for (const v of dashboard.templating.list.filter((x: any) => x.type === 'query')) {
      const q: string = typeof v.query === 'string' ? v.query : v.query.query;
      const m = /^label_values\((.+),\s*(\w+)\)$/.exec(q);
      t.ok(m, `variable ${v.name}: label_values(selector, label)`);
      if (!m) continue;
      // Grafana asks for the values of the label on series matching the selector, earlier variables substituted.
      const values: string[] = await api(`label/${m[2]}/values`, { 'match[]': substitute(m[1]!), start: String(T0) });
      const want = [...new Set([RELAY, SIDECAR].map((x) => (x as Record<string, string>)[m[2]!]!))].sort();
      t.same(values.sort(), want, `variable ${v.name}: ${values.join(', ')}`);
      vars[v.name] = v.includeAll ? v.allValue : values[0]!;
    }
    const panels: any[] = dashboard.panels.flatMap((p: any) => [p, ...(p.panels ?? [])]).filter((p: any) => p.type !== 'row');
    for (const p of panels) {
      for (const target of p.targets) {
        const expr = substitute(target.expr);
        const where = `panel "${p.title}" ${target.refId}`;
        if (p.type === 'stat' || target.instant) {
          const r = await query(expr);
          t.equal(r.resultType, 'vector', `${where}: an instant vector, as a ${p.type} panel shows`);
          t.ok(
            r.result.length > 0 && r.result.every((s) => Number.isFinite(Number(s.value[1]))),
            `${where}: ${r.result.length} series, numbers (${expr})`,
          );
        } else {
          const r = await api('query_range', { query: expr, start: String(T0), end: String(Date.now() / 1000), step: '1' });
          t.equal(r.resultType, 'matrix', `${where}: a range result, as a ${p.type} panel plots`);
          const plotted = r.result.some((s: any) => s.values.some((v: any) => Number.isFinite(Number(v[1]))));
          t.ok(plotted, `${where}: ${r.result.length} series with data (${expr})`);
          // What to look at when a panel is empty: whether the scrapes behind it succeeded.
          if (!plotted) t.comment(`scrapes since the test began: ${JSON.stringify(await scrapeHistory())}`);
        }
      }
    }
  });

  await t.test('the relay gone: the relay-down alert', async (t) => {
    await relay.stop();
    const alert = await firing('ArcImdsRelayDown', { pod: RELAY_POD });
    t.ok(alert, `ArcImdsRelayDown fires: ${alert.annotations.summary}`);
    driven.add('ArcImdsRelayDown');
  });

  t.test('every shipped alert was driven live', async (t) => {
    t.same(
      shipped.flatMap((g) => g.rules.map((r) => r.alert)).filter((a) => !driven.has(a)),
      [],
      `driven: ${[...driven].join(', ')}`,
    );
  });

  t.test("Prometheus's own view: no scrape problems, no warnings or errors logged", async (t) => {
    const own = (await fetchText(`${PROM}/metrics`)).text;
    for (const name of [
      'prometheus_target_scrapes_exceeded_sample_limit_total',
      'prometheus_target_scrapes_sample_duplicate_timestamp_total',
      'prometheus_target_scrapes_sample_out_of_bounds_total',
      'prometheus_target_scrapes_sample_out_of_order_total',
      'prometheus_rule_evaluation_failures_total',
    ]) {
      const total = own
        .split('\n')
        .filter((l) => l.startsWith(name))
        .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
      t.equal(total, 0, `${name} is 0`);
    }
    const problems = prometheus
      .output()
      .split('\n')
      .filter((l) => /level=(warn|error)/.test(l));
    t.same(problems, [], 'no warn or error lines in its log');
  });
}
