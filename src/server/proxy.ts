// Wiring for `serve`: upstream client -> token fetch -> token cache -> request pipeline -> listeners, plus the
// admin listener (metrics, health, readiness) and the shutdown sequence. Used by the `serve` and `demo`
// commands and by tests, so all of them run exactly the same pipeline.
import { himdsAnswersHere } from '../host/netns.js';
import { ListenerLimits } from '../imds/limits.js';
import { ResourcePolicy } from '../imds/policy.js';
import { createAdminHandler } from '../observability/admin.js';
import { Audit } from '../observability/audit.js';
import { Readiness } from '../observability/health.js';
import type { Logger } from '../observability/log.js';
import { Metrics } from '../observability/metrics.js';
import { ThrottledWarning } from '../observability/throttled-warning.js';
import { TokenCache, type TokenCacheOptions } from '../tokens/cache.js';
import { UpstreamClient } from '../upstream/client.js';
import { TokenFetcher } from '../upstream/token-fetch.js';
import { describeAddress, IMDS_ADDRESS, type ListenAddress, type UpstreamAddress } from '../values/addresses.js';
import type { LogLevel } from '../values/parsers.js';
import { VERSION } from '../version.js';
import { ListenError, listenAll, type RunningServers } from './listeners.js';
import { createRequestHandler } from './pipeline.js';

/** The cache's own settings, as the cache declares them (its fetch deadline is requestTimeoutMs). */
type CacheSettings = Pick<
  TokenCacheOptions,
  'minRemainingMs' | 'refreshRatio' | 'refreshBeforeMs' | 'forceRefreshIntervalMs' | 'upstreamConcurrency' | 'upstreamQueue'
>;

/** Refusals at the fetch bound are logged at most once per this interval, each line saying how many it stands for. */
export const SATURATION_LOG_INTERVAL_MS = 10_000;

/** Everything `serve` runs with (src/commands/serve.ts declares the options that produce it). */
export interface ServeConfig extends CacheSettings {
  readonly listen: readonly ListenAddress[];
  readonly upstream: UpstreamAddress;
  readonly tokensDir: string;
  readonly himdsApiVersion: string;
  /** Deadline of one upstream attempt, ms. */
  readonly upstreamTimeoutMs: number;
  /** Deadline for a whole client request, retries included, ms. */
  readonly requestTimeoutMs: number;
  readonly logLevel: LogLevel;
  readonly cacheMaxEntries: number;
  /** Resources whose tokens are fetched at start. */
  readonly prefetch: readonly string[];
  /** Mode and group of unix socket listeners. */
  readonly socketMode: number;
  readonly socketGroup: number | undefined;
  readonly allowHostNetns: boolean;
  /** /metrics, /healthz, /readyz; undefined when switched off. */
  readonly adminListen: ListenAddress | undefined;
  readonly readinessIntervalMs: number;
  readonly readinessResource: string;
  /** In-flight requests get this long to finish on SIGTERM/SIGINT. */
  readonly shutdownTimeoutMs: number;
  /** Resources (exact, or prefix*) tokens are handed out for; empty: all. */
  readonly allowResource: readonly string[];
  readonly rateLimit: number | undefined;
  readonly concurrencyLimit: number | undefined;
  /** Open connections per listener. */
  readonly maxConnections: number;
  /** Slowloris: the header block must arrive within this. */
  readonly headersTimeoutMs: number;
  /** NAMESPACE/POD of the workload a sidecar serves, told to its upstream relay (asserted, not authenticated). */
  readonly workload: string | undefined;
}

export interface RunningProxy {
  /** The IMDS addresses actually bound (port 0 resolved). */
  readonly addresses: readonly ListenAddress[];
  /** The admin address actually bound, if any. */
  readonly adminAddress: ListenAddress | undefined;
  readonly metrics: Metrics;
  readonly readiness: Readiness;
  /** Drain and stop: readyz 503, stop accepting, in-flight requests finish (within --shutdown-timeout), close. */
  close(): Promise<void>;
}

export async function startProxy(config: ServeConfig, log: Logger): Promise<RunningProxy> {
  // The configuration check catches a loopback upstream; this catches a sidecar (unix upstream) started in the
  // host namespace by mistake: HIMDS answering on loopback here means this is the host.
  const answersImds = config.listen.some((l) => l.kind === 'tcp' && l.host === IMDS_ADDRESS);
  if (answersImds && !config.allowHostNetns && (await himdsAnswersHere())) {
    throw new ListenError(
      'host_namespace_refused',
      `refusing to listen on ${IMDS_ADDRESS}: HIMDS answers on 127.0.0.1:40342 here, so this is the host network ` +
        "namespace, where answering it makes Arc onboarding fail. Run the sidecar in the application's network " +
        'namespace (--allow-host-netns overrides this for a private namespace)',
    );
  }
  let tokens: TokenCache | undefined;
  let readiness: Readiness | undefined;
  const metrics = new Metrics(VERSION, {
    cacheEntries: () => tokens?.size ?? 0,
    earliestExpirySeconds: () => tokens?.earliestExpirySeconds(),
    fetchesInFlight: () => tokens?.inFlight ?? 0,
    ready: () => readiness?.state.ready ?? false,
  });
  const upstream = new UpstreamClient(config.upstream, {
    attemptTimeoutMs: config.upstreamTimeoutMs,
    // Token fetches are bounded by the cache; passthrough requests share the same connections.
    connections: config.upstreamConcurrency,
    metrics,
  });
  const fetcher = new TokenFetcher(
    upstream,
    { tokensDir: config.tokensDir, apiVersion: config.himdsApiVersion, metrics, workload: config.workload },
    log,
  );
  tokens = new TokenCache(
    (request, signal) => fetcher.getToken(request, signal),
    {
      maxEntries: config.cacheMaxEntries,
      minRemainingMs: config.minRemainingMs,
      refreshRatio: config.refreshRatio,
      refreshBeforeMs: config.refreshBeforeMs,
      forceRefreshIntervalMs: config.forceRefreshIntervalMs,
      upstreamConcurrency: config.upstreamConcurrency,
      upstreamQueue: config.upstreamQueue,
      fetchTimeoutMs: config.requestTimeoutMs,
      onRefresh: (ok) => metrics.refreshes.inc({ outcome: ok ? 'success' : 'failure' }),
    },
    log,
  );
  readiness = new Readiness(
    (signal) => fetcher.checkCanMint(config.readinessResource, signal),
    {
      intervalMs: config.readinessIntervalMs,
      timeoutMs: config.requestTimeoutMs,
    },
    log,
  );
  const audit = new Audit(log);
  const saturation = new ThrottledWarning(log, 'request failed', SATURATION_LOG_INTERVAL_MS);
  const draining = { now: false };
  const policy = new ResourcePolicy(config.allowResource);
  // One handler per listener: each has its own limits.
  const handlerFor = () =>
    createRequestHandler({ config, log, tokens, upstream, metrics, audit, draining, policy, saturation, limits: new ListenerLimits(config) });
  const socketAccess = { mode: config.socketMode, gid: config.socketGroup };

  let servers: RunningServers | undefined;
  let admin: RunningServers | undefined;
  try {
    const serverLimits = { maxConnections: config.maxConnections, headersTimeoutMs: config.headersTimeoutMs };
    servers = await listenAll(handlerFor, config.listen, socketAccess, serverLimits);
    const adminHandler = createAdminHandler(metrics, readiness);
    if (config.adminListen) admin = await listenAll(() => adminHandler, [config.adminListen], socketAccess, serverLimits);
  } catch (err) {
    await servers?.close(0);
    await upstream.close();
    audit.stop();
    throw err;
  }
  for (const address of servers.addresses) {
    log.info(
      {
        address: describeAddress(address),
        upstream: config.upstream.kind === 'unix' ? `unix:${config.upstream.path}` : config.upstream.origin,
        tokensDir: config.tokensDir,
      },
      'listening',
    );
  }
  if (admin) log.info({ address: describeAddress(admin.addresses[0]!) }, 'admin listening: /metrics /healthz /readyz');
  // In the background: serving starts at once. Readiness is checked only where it can be seen (the admin
  // listener): each check costs HIMDS a challenge.
  if (admin) void readiness.start();
  if (config.prefetch.length > 0) void tokens.prefetch(config.prefetch);

  const imds = servers;
  const ready = readiness;
  let closing: Promise<void> | undefined;
  return {
    addresses: imds.addresses,
    adminAddress: admin?.addresses[0],
    metrics,
    readiness: ready,
    // Idempotent: a second signal during shutdown, or a supervisor and a test both closing, must not throw.
    close() {
      closing ??= (async () => {
        const started = performance.now();
        ready.drain();
        draining.now = true;
        await imds.close(config.shutdownTimeoutMs);
        // Background refreshes may still be in flight: they get what is left of the grace period.
        await upstream.close(Math.max(0, config.shutdownTimeoutMs - (performance.now() - started)));
        audit.stop();
        saturation.close();
        log.info({ ms: Math.round(performance.now() - started) }, 'drained and stopped');
        // Last: readyz answers 503 until the drain has ended.
        await admin?.close(0);
      })();
      return closing;
    },
  };
}
