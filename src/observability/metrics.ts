// Every metric, defined in one place, on one registry per proxy. Ours are prefixed arc_imds_ and carry their
// unit in the name; Node's default process metrics are registered unprefixed. Labels are bounded sets: routes,
// status codes, cache results, upstream legs and outcomes, challenge failure reasons. No resource or client
// ever becomes a label.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Seconds. Sub-millisecond buckets: a cache hit is answered in tens of microseconds. */
const REQUEST_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15];
const UPSTREAM_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Which upstream request: the unauthenticated first leg, the authorized retry, or metadata passthrough. */
export type UpstreamLeg = 'challenge' | 'token' | 'passthrough';
/** How it went: an HTTP status class (401 on its own: the challenge), or how it failed. */
export type UpstreamOutcome = '2xx' | '401' | '4xx' | '5xx' | 'other' | 'timeout' | 'refused' | 'reset' | 'error';

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
  readonly registry = new Registry();

  readonly requests = new Counter({
    name: 'arc_imds_requests_total',
    help: 'IMDS requests answered, by route and HTTP status',
    labelNames: ['route', 'code'] as const,
    registers: [this.registry],
  });

  readonly requestDuration = new Histogram({
    name: 'arc_imds_request_duration_seconds',
    help: 'Time to answer an IMDS request, by route',
    labelNames: ['route'] as const,
    buckets: REQUEST_BUCKETS,
    registers: [this.registry],
  });

  readonly cacheResults = new Counter({
    name: 'arc_imds_token_cache_results_total',
    help: 'Token requests by cache result: hit, refreshing (stale-served while a refresh is due), miss, coalesced, forced',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

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
    help: 'Upstream request time until the response headers (whole body for token legs), by leg',
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
    collectDefaultMetrics({ register: this.registry });
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
    new Gauge({
      name: 'arc_imds_token_earliest_expiry_seconds',
      help: 'Seconds until the earliest cached token expires (absent when the cache is empty)',
      registers: [this.registry],
      collect() {
        const s = sources.earliestExpirySeconds();
        this.reset();
        if (s !== undefined) this.set(s);
      },
    });
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
