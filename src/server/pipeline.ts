// The request pipeline: one IMDS request in, one answer out. No listening, no sockets of its own: the
// listeners (listeners.ts) hand it requests, and the pipeline tests hand it plain objects.
//
// The flow for a request is as follows:
//   1. the gate applies the IMDS contract (method, X-Forwarded-For, body, Metadata, path, query,
//      api-version) and answers failures at once: an SDK probe never waits on anything;
//   2. the route table picks the handler for the normalised path (anything else was a 404 in the gate);
//   3. token: the selector is read, the token cache gives a token (single-flight; on a miss the upstream fetch
//      answers the key-file challenge), and the IMDS-shaped body is sent with expires_in computed now;
//   4. metadata passthrough: the allowlisted path is streamed from the upstream;
//   5. any failure below (a typed upstream or cache failure, or an ImdsError of the front) is turned into its
//      answer by the one table in imds/errors.ts and answered by failed(); anything else is a 500 and a log
//      line.
import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import { clientCaused, imdsErrorOf, ImdsError, renderError, renderImdsError, type RenderedError } from '../imds/errors.js';
import { Gate, type GatedRequest } from '../imds/gate.js';
import type { ListenerLimits } from '../imds/limits.js';
import { passThrough } from '../imds/passthrough.js';
import type { ResourcePolicy } from '../imds/policy.js';
import { TokenRoute } from '../imds/token-route.js';
import type { Audit } from '../observability/audit.js';
import { clip, type Logger } from '../observability/log.js';
import type { Metrics, RouteLabel } from '../observability/metrics.js';
import type { ThrottledWarning } from '../observability/throttled-warning.js';
import type { Served, TokenCache } from '../tokens/cache.js';
import { TokenResponses, type TokenRequest } from '../values/token.js';
import type { UpstreamClient } from '../upstream/client.js';
import { isWorkloadName, WORKLOAD_HEADER } from '../values/workload.js';

/** What the pipeline reads of a request: node's PipelineRequest has it, and so can a plain object. */
export interface PipelineRequest {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
  readonly socket: { readonly remoteAddress?: string | undefined };
}

/** What the pipeline does with an answer: node's ServerResponse does it, and so can a plain object. */
export type PipelineResponse = Pick<
  ServerResponse,
  'writeHead' | 'end' | 'destroy' | 'once' | 'headersSent' | 'statusCode' | 'shouldKeepAlive' | 'writableFinished'
>;

export type RequestHandler = (req: PipelineRequest, res: PipelineResponse) => void;

export interface ProxyDeps {
  readonly config: { readonly himdsApiVersion: string; readonly requestTimeoutMs: number };
  readonly log: Logger;
  readonly tokens: Pick<TokenCache, 'peek' | 'getToken'>;
  readonly upstream: UpstreamClient;
  readonly metrics: Metrics;
  readonly audit: Audit;
  /** Set when shutting down: answers then close their connection, so keep-alive clients move on. */
  readonly draining: { readonly now: boolean };
  readonly policy: ResourcePolicy;
  /** This listener's limits on the token route (each listener has its own). */
  readonly limits: ListenerLimits;
  /**
   * Refusals at the fetch bound come in floods (every new resource while the upstream is stuck is one): logged as
   * any upstream failure, but through this, one line per interval with a count. The metrics count every one.
   */
  readonly saturation: Pick<ThrottledWarning, 'warn'>;
}

/** The route label of a request the gate refused (or that matched no route). */
const NO_ROUTE: RouteLabel = 'none';

const JSON_TYPE = 'application/json; charset=utf-8';

function respond(res: PipelineResponse, status: number, body: string, bytes: number, retryAfter: string | undefined): void {
  const headers: Record<string, string | number> = { 'Content-Type': JSON_TYPE, 'Content-Length': bytes };
  if (retryAfter !== undefined) headers['Retry-After'] = retryAfter;
  res.writeHead(status, headers);
  res.end(body);
}

/**
 * Who a unix-socket client is: `unix`, or `unix:NAMESPACE/POD` when a sidecar says which workload it serves
 * (asserted by the peer, not authenticated: the socket's mode and group decide who may connect at all).
 */
function unixClient(req: PipelineRequest): string {
  const workload = req.headers[WORKLOAD_HEADER];
  return typeof workload === 'string' && isWorkloadName(workload) ? `unix:${workload}` : 'unix';
}

export function createRequestHandler(deps: ProxyDeps): RequestHandler {
  const { log, tokens, upstream, config, metrics, audit, draining, policy, limits, saturation } = deps;
  // What this pipeline remembers per URL and per request object: the gate's decisions, the token requests read
  // from them, and the rendered answers. Owned here, one set per listener.
  const gate = new Gate();
  const tokenRoute = new TokenRoute();
  // Decided once: at info, no per-request log object is even built.
  const debug = log.isLevelEnabled('debug');
  const responses = new TokenResponses();

  /** A cached hit is answered synchronously; only a request that must wait for a fetch goes async. */
  function token(gated: GatedRequest, req: PipelineRequest, res: PipelineResponse): number | Promise<number> {
    const request = tokenRoute.requestOf(gated);
    if (request instanceof ImdsError) throw request;
    if (!policy.allows(request.resource)) throw new ImdsError('resource_not_allowed');
    if (!limits.enabled) {
      const hit = tokens.peek(request);
      if (hit) return serve(request, hit, req, res, 0);
    }
    const started = performance.now();
    return limited(async () => serve(request, await tokens.getToken(request, goneSignal(res)), req, res, started));
  }

  /** Aborts when the client goes away before its answer: its wait ends, and with the last waiter the fetch. */
  function goneSignal(res: PipelineResponse): AbortSignal {
    const gone = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) gone.abort();
    });
    return gone.signal;
  }

  /** Run under this listener's limits, when they are on (IMDS's 429 otherwise). */
  async function limited(work: () => Promise<number>): Promise<number> {
    if (!limits.enabled) return work();
    if (!limits.acquire()) throw new ImdsError('throttled', undefined, { retryAfter: '1' });
    try {
      return await work();
    } finally {
      limits.release();
    }
  }

  function serve(request: TokenRequest, served: Served, req: PipelineRequest, res: PipelineResponse, started: number): number {
    const rendered = responses.render(served.token, request, Date.now() / 1000);
    send(res, 200, rendered.body, undefined, rendered.bytes);
    // The bookkeeping after the answer is on its way: the client does not wait for log lines.
    metrics.cacheResults.inc(served.result);
    const client = req.socket.remoteAddress ?? unixClient(req);
    if (served.result === 'miss' || served.result === 'forced') {
      // Only fetches are logged at info: the cached path stays cheap (the audit counts hits).
      log.info(
        {
          client,
          resource: clip(request.resource),
          selector: request.selector?.kind ?? 'system',
          result: served.result,
          ms: Math.round(performance.now() - started),
        },
        'token fetched from upstream',
      );
    }
    audit.served(client, request);
    return 200;
  }

  function metadata(gated: GatedRequest, _req: PipelineRequest, res: PipelineResponse): Promise<number> {
    return limited(() => passThrough(gated, res, upstream, config.himdsApiVersion, AbortSignal.timeout(config.requestTimeoutMs), draining));
  }

  const ROUTES = { token, instance: metadata, identity_info: metadata } as const;

  /** Every answer of this handler. While draining, it closes its connection so keep-alive clients move on. */
  function send(res: PipelineResponse, status: number, body: string, retryAfter?: string, bytes = Buffer.byteLength(body)): void {
    if (draining.now) res.shouldKeepAlive = false;
    respond(res, status, body, bytes, retryAfter);
  }

  /** Metrics for every answer; an access line at debug ('rejected' by the gate, else 'served'). */
  function answered(req: PipelineRequest, route: RouteLabel, status: number, started: number, line = 'served'): void {
    metrics.answered(route, status, (performance.now() - started) / 1000);
    if (debug) log.debug({ method: req.method, url: clip(req.url), status }, line);
  }

  function failed(req: PipelineRequest, res: PipelineResponse, route: RouteLabel, started: number, err: unknown): void {
    if (res.headersSent) {
      res.destroy();
      answered(req, route, res.statusCode, started);
      return;
    }
    const known = imdsErrorOf(err);
    if (known?.code === 'client_closed') {
      // Nobody to answer: only counted.
      answered(req, route, renderImdsError(known).status, started);
      return;
    }
    let rendered: RenderedError;
    if (known) {
      // The client's own mistakes (and refusals, throttling, hang-ups) are counted in the metrics and logged at
      // debug only: any client could otherwise fill the log. Upstream failures stay visible.
      if (known.code === 'upstream_saturated') saturation.warn({ url: clip(req.url), code: known.code, detail: known.detail });
      else if (!clientCaused(known.code)) log.warn({ url: clip(req.url), code: known.code, detail: known.detail }, 'request failed');
      else if (debug) log.debug({ url: clip(req.url), code: known.code, detail: known.detail }, 'request refused');
      rendered = renderImdsError(known);
    } else {
      log.error({ url: clip(req.url), err }, 'unexpected error');
      rendered = renderError('internal');
    }
    send(res, rendered.status, rendered.body, rendered.retryAfter);
    answered(req, route, rendered.status, started);
  }

  return function handle(req, res) {
    const started = performance.now();
    const gated = gate.check(req);
    if (gated instanceof ImdsError) {
      const rendered = renderImdsError(gated);
      // A request that carried a body is not read: close the connection rather than parse what follows it.
      if (gated.code === 'request_body') res.shouldKeepAlive = false;
      send(res, rendered.status, rendered.body, rendered.retryAfter);
      answered(req, NO_ROUTE, rendered.status, started, 'rejected');
      return;
    }
    const route = gated.route;
    let outcome: number | Promise<number>;
    try {
      outcome = ROUTES[route](gated, req, res);
    } catch (err) {
      failed(req, res, route, started, err);
      return;
    }
    if (typeof outcome === 'number') answered(req, route, outcome, started);
    else
      outcome.then(
        (status) => answered(req, route, status, started),
        (err: unknown) => failed(req, res, route, started, err),
      );
  };
}
