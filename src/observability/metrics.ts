// Every metric, defined in one place, on one registry per proxy. Ours are prefixed arc_imds_ and carry their
// unit in the name; Node's default process metrics are registered unprefixed. Labels are bounded sets: routes,
// status codes, cache results, upstream legs and outcomes, challenge failure reasons. No resource or client
// ever becomes a label.
import type * as PromClient from 'prom-client';
import Counter from 'prom-client/lib/counter.js';
import Gauge from 'prom-client/lib/gauge.js';
import Histogram from 'prom-client/lib/histogram.js';
import eventLoopLag from 'prom-client/lib/metrics/eventLoopLag.js';
import gc from 'prom-client/lib/metrics/gc.js';
import heapSizeAndUsed from 'prom-client/lib/metrics/heapSizeAndUsed.js';
import heapSpacesSizeAndUsed from 'prom-client/lib/metrics/heapSpacesSizeAndUsed.js';
import osMemoryHeap from 'prom-client/lib/metrics/osMemoryHeap.js';
import processHandles from 'prom-client/lib/metrics/processHandles.js';
import processMaxFileDescriptors from 'prom-client/lib/metrics/processMaxFileDescriptors.js';
import processOpenFileDescriptors from 'prom-client/lib/metrics/processOpenFileDescriptors.js';
import processRequests from 'prom-client/lib/metrics/processRequests.js';
import processResources from 'prom-client/lib/metrics/processResources.js';
import processStartTime from 'prom-client/lib/metrics/processStartTime.js';
import version from 'prom-client/lib/metrics/version.js';
import RegistryClass from 'prom-client/lib/registry.js';

// prom-client's parts, not its index: the index also loads the Pushgateway (https, zlib: TLS and OpenSSL, about
// 5 MB RSS on Node 24), and collectDefaultMetrics the CPU metric's @opentelemetry/api (about 9 MB), in every
// sidecar. Static imports, so the build's bundler takes exactly these files (src/vendor.d.ts types them). The
// default metrics are registered one by one below, the CPU one from process.cpuUsage().
type Registry = PromClient.Registry;
/** prom-client's default metrics (lib/defaultMetrics.js) but processCpuTotal: same names, same order. */
const DEFAULT_METRICS = [
  processStartTime,
  osMemoryHeap,
  processOpenFileDescriptors,
  processMaxFileDescriptors,
  eventLoopLag,
  processResources,
  processHandles,
  processRequests,
  heapSizeAndUsed,
  heapSpacesSizeAndUsed,
  version,
  gc,
];

/** process_cpu_{user,system}_seconds_total and process_cpu_seconds_total, as prom-client names them. */
function registerCpuMetrics(registry: Registry): void {
  const counter = (name: string, help: string, seconds: (usage: NodeJS.CpuUsage) => number) =>
    registry.registerMetric({
      name,
      help,
      type: 'counter',
      aggregator: 'sum',
      get: () => ({ name, help, type: 'counter', aggregator: 'sum', values: [{ labels: {}, value: seconds(process.cpuUsage()) }] }),
    } as never);
  counter('process_cpu_user_seconds_total', 'Total user CPU time spent in seconds.', (u) => u.user / 1e6);
  counter('process_cpu_system_seconds_total', 'Total system CPU time spent in seconds.', (u) => u.system / 1e6);
  counter('process_cpu_seconds_total', 'Total user and system CPU time spent in seconds.', (u) => (u.user + u.system) / 1e6);
}

function collectDefaultMetrics(registry: Registry): void {
  registerCpuMetrics(registry);
  const config = { eventLoopMonitoringPrecision: 10 };
  for (const register of DEFAULT_METRICS) {
    if (register === processResources && typeof process.getActiveResourcesInfo !== 'function') continue;
    register(registry, config);
  }
}

/** Seconds. Sub-millisecond buckets: a cache hit is answered in tens of microseconds. */
const REQUEST_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15];
const UPSTREAM_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Which upstream request: the unauthenticated first leg, the authorized retry, or metadata passthrough. */
export type UpstreamLeg = 'challenge' | 'token' | 'passthrough';
/** How it went: an HTTP status class (401 on its own: the challenge), or how it failed. */
export type UpstreamOutcome = '2xx' | '401' | '4xx' | '5xx' | 'other' | 'timeout' | 'refused' | 'reset' | 'error';

type Labels = Record<string, string | number>;

/**
 * The per-request metrics (requests, their duration, cache results) are recorded on every answer, a cache hit
 * included. prom-client hashes the label set on every inc/observe (about 0.8 µs for the three of them), so
 * these two record into a map keyed by a small number or a constant string, and render their labels only when
 * scraped. The registry takes any object with name, help, type and get().
 */
class TallyCounter<K> {
  readonly type = 'counter';
  readonly aggregator = 'sum';
  readonly #series = new Map<K, { labels: Labels; value: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    /** As prom-client names them, for tools that read the registry. */
    readonly labelNames: readonly string[],
    private readonly labelsOf: (key: K) => Labels,
    registry: Registry,
  ) {
    registry.registerMetric(this as never);
  }
  inc(key: K): void {
    const series = this.#series.get(key);
    if (series) series.value++;
    else this.#series.set(key, { labels: this.labelsOf(key), value: 1 });
  }
  get() {
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values: [...this.#series.values()].map((s) => ({ labels: s.labels, value: s.value })),
    };
  }
}

class TallyHistogram<K> {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #series = new Map<K, { labels: Labels; buckets: number[]; sum: number; count: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    private readonly bounds: readonly number[],
    private readonly labelsOf: (key: K) => Labels,
    registry: Registry,
  ) {
    registry.registerMetric(this as never);
  }
  observe(key: K, value: number): void {
    let series = this.#series.get(key);
    if (!series) {
      series = { labels: this.labelsOf(key), buckets: new Array<number>(this.bounds.length).fill(0), sum: 0, count: 0 };
      this.#series.set(key, series);
    }
    let i = 0;
    while (i < this.bounds.length && value > this.bounds[i]!) i++;
    if (i < this.bounds.length) series.buckets[i]!++;
    series.sum += value;
    series.count++;
  }
  get() {
    const values: { labels: Labels; value: number; metricName: string }[] = [];
    for (const s of this.#series.values()) {
      let cumulative = 0;
      this.bounds.forEach((le, i) => {
        cumulative += s.buckets[i]!;
        values.push({ labels: { le, ...s.labels }, value: cumulative, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { le: '+Inf', ...s.labels }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: s.labels, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: s.labels, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

/** Routes as the request metrics label them; a request's series key is route index * 1000 + status. */
export const ROUTE_LABELS = ['token', 'instance', 'identity_info', 'none'] as const;
export type RouteLabel = (typeof ROUTE_LABELS)[number];
const routeIndex = (route: RouteLabel) => ROUTE_LABELS.indexOf(route);

export interface MetricsSources {
  /** Cached tokens now. */
  cacheEntries(): number;
  /** Seconds until the earliest cached token expires, or undefined when none is cached. */
  earliestExpirySeconds(): number | undefined;
  /** Upstream token fetches in flight now. */
  fetchesInFlight(): number;
  ready(): boolean;
}

export class Metrics {
  readonly registry = new RegistryClass();

  readonly #requests = new TallyCounter<number>(
    'arc_imds_requests_total',
    'IMDS requests answered, by route and HTTP status',
    ['route', 'code'],
    (key) => ({ route: ROUTE_LABELS[Math.floor(key / 1000)]!, code: key % 1000 }),
    this.registry,
  );

  readonly #requestDuration = new TallyHistogram<number>(
    'arc_imds_request_duration_seconds',
    'Time to answer an IMDS request, by route',
    ['route'],
    REQUEST_BUCKETS,
    (index) => ({ route: ROUTE_LABELS[index]! }),
    this.registry,
  );

  readonly cacheResults = new TallyCounter<string>(
    'arc_imds_token_cache_results_total',
    'Token requests by cache result: hit, refreshing (stale-served while a refresh is due), miss, coalesced, forced',
    ['result'],
    (result) => ({ result }),
    this.registry,
  );

  /** One answered IMDS request: its route, status and time taken. */
  answered(route: RouteLabel, status: number, seconds: number): void {
    const index = routeIndex(route);
    this.#requests.inc(index * 1000 + status);
    this.#requestDuration.observe(index, seconds);
  }

  readonly refreshes = new Counter({
    name: 'arc_imds_token_refreshes_total',
    help: 'Background token refreshes ahead of expiry, by outcome (success, failure)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  readonly upstreamRequests = new Counter({
    name: 'arc_imds_upstream_requests_total',
    help: 'Requests to the upstream (HIMDS or a relay), by leg and outcome',
    labelNames: ['leg', 'outcome'] as const,
    registers: [this.registry],
  });

  readonly upstreamDuration = new Histogram({
    name: 'arc_imds_upstream_request_duration_seconds',
    help: 'Upstream request time until the whole answer (body included) was read, by leg',
    labelNames: ['leg'] as const,
    buckets: UPSTREAM_BUCKETS,
    registers: [this.registry],
  });

  readonly challengeFailures = new Counter({
    name: 'arc_imds_challenge_failures_total',
    help: 'Key-file challenges that could not be answered, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  constructor(version: string, sources: MetricsSources) {
    collectDefaultMetrics(this.registry);
    new Gauge({
      name: 'arc_imds_build_info',
      help: 'Build information; always 1',
      labelNames: ['version', 'node'] as const,
      registers: [this.registry],
    }).set({ version, node: process.version }, 1);
    new Gauge({
      name: 'arc_imds_token_cache_entries',
      help: 'Tokens in the cache',
      registers: [this.registry],
      collect() {
        this.set(sources.cacheEntries());
      },
    });
    // Not a prom-client Gauge: one without labels always has a sample (its reset() puts a 0 back), and a 0 here
    // reads as "a token expires now" to the dashboard and to ArcImdsTokenExpiringSoon. No sample when empty.
    const earliest = {
      name: 'arc_imds_token_earliest_expiry_seconds',
      help: 'Seconds until the earliest cached token expires (absent when the cache is empty)',
      type: 'gauge',
      aggregator: 'omit',
      get() {
        const s = sources.earliestExpirySeconds();
        return { ...earliest, values: s === undefined ? [] : [{ labels: {}, value: s }] };
      },
    };
    this.registry.registerMetric(earliest as never);
    new Gauge({
      name: 'arc_imds_upstream_fetches_in_flight',
      help: 'Upstream token fetches in flight',
      registers: [this.registry],
      collect() {
        this.set(sources.fetchesInFlight());
      },
    });
    new Gauge({
      name: 'arc_imds_ready',
      help: '1 when the last readiness check could mint a token and the proxy is not draining',
      registers: [this.registry],
      collect() {
        this.set(sources.ready() ? 1 : 0);
      },
    });
  }
}
