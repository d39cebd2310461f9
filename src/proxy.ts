// Wiring for `serve`: upstream client -> token source -> request handler -> listeners. Used by the CLI, the
// demo and tests, so all three run exactly the same pipeline.
import type { ListenAddress, ServeConfig } from './config.js';
import type { Logger } from './observability/log.js';
import { createRequestHandler, describeAddress, listenAll } from './server.js';
import { UpstreamClient } from './upstream/client.js';
import { TokenCache } from './tokens/cache.js';
import { TokenFetcher } from './upstream/token-fetch.js';

export interface RunningProxy {
  /** The addresses actually bound (port 0 resolved). */
  readonly addresses: readonly ListenAddress[];
  close(): Promise<void>;
}

export async function startProxy(config: ServeConfig, log: Logger): Promise<RunningProxy> {
  const upstream = new UpstreamClient(config.upstream, {
    attemptTimeoutMs: config.upstreamTimeoutMs,
    // Token fetches are bounded by the cache; passthrough requests share the same connections.
    connections: config.upstreamConcurrency,
  });
  const fetcher = new TokenFetcher(upstream, { tokensDir: config.tokensDir, apiVersion: config.himdsApiVersion }, log);
  const tokens = new TokenCache((request, signal) => fetcher.getToken(request, signal), {
    maxEntries: config.cacheMaxEntries,
    minRemainingMs: config.minRemainingMs,
    refreshRatio: config.refreshRatio,
    refreshBeforeMs: config.refreshBeforeMs,
    forceRefreshIntervalMs: config.forceRefreshIntervalMs,
    upstreamConcurrency: config.upstreamConcurrency,
    fetchTimeoutMs: config.requestTimeoutMs,
  }, log);
  const handler = createRequestHandler({ config, log, tokens, upstream });
  let servers;
  try {
    servers = await listenAll(handler, config.listen, { mode: config.socketMode, gid: config.socketGroup });
  } catch (err) {
    await upstream.close();
    throw err;
  }
  for (const address of servers.addresses) {
    log.info({ address: describeAddress(address), upstream: config.upstream.origin, tokensDir: config.tokensDir }, 'listening');
  }
  // In the background: serving starts at once, and a request arriving meanwhile joins the fetch in flight.
  if (config.prefetch.length > 0) void tokens.prefetch(config.prefetch);
  // Idempotent: a signal during shutdown, or a supervisor and a test both closing, must not throw.
  let closing: Promise<void> | undefined;
  return {
    addresses: servers.addresses,
    close() {
      closing ??= (async () => {
        await servers.close();
        await upstream.close();
      })();
      return closing;
    },
  };
}
