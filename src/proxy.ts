// Wiring for `serve`: upstream client -> token source -> request handler -> listeners. Used by the CLI, the
// demo and tests, so all three run exactly the same pipeline.
import type { ListenAddress, ServeConfig } from './config.js';
import type { Logger } from './observability/log.js';
import { createRequestHandler, describeAddress, listenAll } from './server.js';
import { UpstreamClient } from './upstream/client.js';
import { TokenFetcher } from './upstream/token-fetch.js';

/** Upstream connections at once; further upstream requests queue in the pool. */
const UPSTREAM_CONNECTIONS = 16;

export interface RunningProxy {
  /** The addresses actually bound (port 0 resolved). */
  readonly addresses: readonly ListenAddress[];
  close(): Promise<void>;
}

export async function startProxy(config: ServeConfig, log: Logger): Promise<RunningProxy> {
  const upstream = new UpstreamClient(config.upstream, {
    attemptTimeoutMs: config.upstreamTimeoutMs,
    connections: UPSTREAM_CONNECTIONS,
  });
  const tokens = new TokenFetcher(upstream, { tokensDir: config.tokensDir, apiVersion: config.himdsApiVersion }, log);
  const handler = createRequestHandler({ config, log, tokens, upstream });
  let servers;
  try {
    servers = await listenAll(handler, config.listen);
  } catch (err) {
    await upstream.close();
    throw err;
  }
  for (const address of servers.addresses) {
    log.info({ address: describeAddress(address), upstream: config.upstream.origin, tokensDir: config.tokensDir }, 'listening');
  }
  return {
    addresses: servers.addresses,
    async close() {
      await servers.close();
      await upstream.close();
    },
  };
}
