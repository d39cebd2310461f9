// The request pipeline in process, without sockets: plain request objects in, the answer written to a plain
// response object out. Table-driven for the gate and the routes; wire behaviour (raw HTTP, hostile bytes, two
// hops) is tested over real sockets elsewhere.
import { EventEmitter } from 'node:events';
import t from 'tap';
import { ListenerLimits } from '../../src/imds/limits.js';
import { ResourcePolicy } from '../../src/imds/policy.js';
import { Audit } from '../../src/observability/audit.js';
import { createLogger } from '../../src/observability/log.js';
import { Metrics } from '../../src/observability/metrics.js';
import { ThrottledWarning } from '../../src/observability/throttled-warning.js';
import { createRequestHandler, type PipelineRequest, type PipelineResponse } from '../../src/server/pipeline.js';
import { TokenCache } from '../../src/tokens/cache.js';
import { UpstreamClient } from '../../src/upstream/client.js';
import { UpstreamFailure } from '../../src/values/failures.js';
import { makeToken, type TokenRequest } from '../../src/values/token.js';

interface Answer {
  status: number;
  headers: Record<string, string | number>;
  body: string;
  json: any;
}

/** A response object that records what the pipeline does with it. */
class RecordingResponse extends EventEmitter {
  headersSent = false;
  statusCode = 200;
  shouldKeepAlive = true;
  writableFinished = false;
  answer: Answer | undefined;
  done: Promise<Answer>;
  #resolve!: (a: Answer) => void;
  constructor() {
    super();
    this.done = new Promise((r) => (this.#resolve = r));
  }
  writeHead(status: number, headers: Record<string, string | number>) {
    this.statusCode = status;
    this.headersSent = true;
    this.answer = { status, headers, body: '', json: undefined };
    return this;
  }
  end(body?: string) {
    const a = this.answer!;
    a.body = body ?? '';
    try {
      a.json = JSON.parse(a.body);
    } catch {
      a.json = undefined;
    }
    this.writableFinished = true;
    this.#resolve(a);
    return this;
  }
  destroy() {
    return this;
  }
}

const log = createLogger('silent');
const fetched: TokenRequest[] = [];
let upstreamFails: UpstreamFailure | undefined;
const tokens = new TokenCache(
  async (request) => {
    fetched.push(request);
    if (upstreamFails) throw upstreamFails;
    return makeToken({
      accessToken: 'header.payload.sig',
      expiresOn: Math.floor(Date.now() / 1000) + 3600,
      notBefore: '',
      tokenType: 'Bearer',
      clientId: 'c',
    });
  },
  {
    maxEntries: 100,
    minRemainingMs: 300_000,
    refreshRatio: 0.5,
    refreshBeforeMs: 600_000,
    forceRefreshIntervalMs: 30_000,
    upstreamConcurrency: 4,
    upstreamQueue: 4,
    fetchTimeoutMs: 5000,
  },
  log,
);
const metrics = new Metrics('test', { cacheEntries: () => 0, earliestExpirySeconds: () => undefined, fetchesInFlight: () => 0, ready: () => true });
// Never reached by these cases: passthrough is tested against the emulator.
const upstream = new UpstreamClient(
  { kind: 'unix', path: '/nonexistent/upstream.sock', origin: 'http://localhost' },
  { attemptTimeoutMs: 100, connections: 1 },
);
const audit = new Audit(log);
t.teardown(async () => {
  audit.stop();
  await upstream.close();
});
const handle = createRequestHandler({
  config: { himdsApiVersion: '2020-06-01', requestTimeoutMs: 1000 },
  log,
  tokens,
  upstream,
  metrics,
  audit,
  draining: { now: false },
  policy: new ResourcePolicy(['https://management.azure.com/', 'https://vault.azure.net*']),
  limits: new ListenerLimits({ rateLimit: undefined, concurrencyLimit: undefined }),
  saturation: new ThrottledWarning(log, 'request failed', 10_000),
});

function ask(url: string, headers: Record<string, string> = { metadata: 'true' }, method = 'GET'): Promise<Answer> {
  const rawHeaders = Object.entries(headers).flat();
  const req: PipelineRequest = { method, url, headers, rawHeaders, socket: { remoteAddress: '10.0.0.7' } };
  const res = new RecordingResponse();
  handle(req, res as unknown as PipelineResponse);
  return res.done;
}

const TOKEN = '/metadata/identity/oauth2/token';
const ARM = `${TOKEN}?api-version=2018-02-01&resource=${encodeURIComponent('https://management.azure.com/')}`;

const CASES: [name: string, url: string, headers: Record<string, string> | undefined, method: string, status: number, error: string | RegExp][] = [
  ['POST', ARM, undefined, 'POST', 405, 'invalid_request'],
  ['X-Forwarded-For', ARM, { metadata: 'true', 'x-forwarded-for': '10.0.0.1' }, 'GET', 400, 'invalid_request'],
  ['a body', ARM, { metadata: 'true', 'content-length': '2' }, 'GET', 400, 'invalid_request'],
  ['no Metadata', ARM, {}, 'GET', 400, 'invalid_request'],
  ['Metadata: TRUE', ARM, { metadata: 'TRUE' }, 'GET', 200, ''],
  ['unknown path', '/metadata/scheduledevents?api-version=2020-07-01', undefined, 'GET', 404, 'not_found'],
  ['traversal', '/metadata/instance/../identity/oauth2/token?api-version=2018-02-01&resource=x', undefined, 'GET', 404, 'not_found'],
  ['no api-version (token)', `${TOKEN}?resource=x`, undefined, 'GET', 400, 'invalid_request'],
  ['no api-version (instance)', '/metadata/instance', undefined, 'GET', 400, /^Bad request\. api-version/],
  ['impossible api-version', `${TOKEN}?api-version=2018-02-31&resource=x`, undefined, 'GET', 400, 'invalid_request'],
  ['duplicate parameter', `${TOKEN}?api-version=2018-02-01&resource=a&resource=b`, undefined, 'GET', 400, 'invalid_request'],
  ['bad percent-encoding', `${TOKEN}?api-version=2018-02-01&resource=%zz`, undefined, 'GET', 400, 'invalid_request'],
  ['no resource', `${TOKEN}?api-version=2018-02-01`, undefined, 'GET', 400, 'invalid_request'],
  ['two selectors', `${ARM}&client_id=a&object_id=b`, undefined, 'GET', 400, 'invalid_request'],
  ['resource not allowed', `${TOKEN}?api-version=2018-02-01&resource=https://storage.azure.com/`, undefined, 'GET', 403, 'invalid_request'],
  [
    'prefix across a host boundary',
    `${TOKEN}?api-version=2018-02-01&resource=https://vault.azure.net.evil.example`,
    undefined,
    'GET',
    403,
    'invalid_request',
  ],
  ['a token', ARM, undefined, 'GET', 200, ''],
  ['absolute form for IMDS (an HTTP-proxy client)', `http://169.254.169.254${ARM}`, undefined, 'GET', 200, ''],
  ['absolute form, explicit port 80', `HTTP://169.254.169.254:80${ARM}`, undefined, 'GET', 200, ''],
  ['absolute form, another host', `http://management.azure.com${ARM}`, undefined, 'GET', 403, 'invalid_request'],
  ['absolute form, userinfo trick', `http://169.254.169.254@evil.example${ARM}`, undefined, 'GET', 403, 'invalid_request'],
  ['absolute form, another port', `http://169.254.169.254:8080${ARM}`, undefined, 'GET', 403, 'invalid_request'],
  ['trailing slash (msal-node)', `${TOKEN}/?api-version=2018-02-01&resource=https://vault.azure.net`, undefined, 'GET', 200, ''],
  ['/MetaData casing', `/MetaData/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net`, undefined, 'GET', 200, ''],
];

t.test('gate and routes, table-driven', async (t) => {
  for (const [name, url, headers, method, status, error] of CASES) {
    const answer = await ask(url, headers, method);
    t.equal(answer.status, status, `${name}: ${status}`);
    t.equal(answer.headers['Content-Type'], 'application/json; charset=utf-8', `${name}: JSON`);
    if (status === 200) t.equal(answer.json.token_type, 'Bearer', `${name}: a token`);
    else t.match(answer.json.error, error, `${name}: ${error}`);
  }
  t.equal(fetched.length, 2, 'only the two distinct allowed resources reached the upstream fetch');
});

t.test('typed upstream failures become their IMDS answers', async (t) => {
  const cases: [UpstreamFailure, number, string, string | undefined][] = [
    [new UpstreamFailure('refused', 'connection refused by x'), 503, 'temporarily_unavailable', '1'],
    [new UpstreamFailure('timeout', 'no answer from x in time'), 503, 'temporarily_unavailable', '1'],
    [
      new UpstreamFailure('status', '503', { upstream: { status: 503, retryAfter: '7', error: undefined, description: undefined } }),
      503,
      'temporarily_unavailable',
      '7',
    ],
    [
      new UpstreamFailure('status', '429', { upstream: { status: 429, retryAfter: '2', error: undefined, description: undefined } }),
      429,
      'invalid_request',
      '2',
    ],
    [
      new UpstreamFailure('status', '504', { upstream: { status: 504, retryAfter: undefined, error: undefined, description: undefined } }),
      504,
      'upstream_error',
      undefined,
    ],
    [
      new UpstreamFailure('status', '404', { upstream: { status: 404, retryAfter: undefined, error: 'identity_not_found', description: undefined } }),
      400,
      'invalid_request',
      undefined,
    ],
    [
      new UpstreamFailure('status', '403', { upstream: { status: 403, retryAfter: undefined, error: 'invalid_request', description: undefined } }),
      403,
      'invalid_request',
      undefined,
    ],
    [new UpstreamFailure('bad_body', 'not JSON'), 502, 'upstream_error', undefined],
    [new UpstreamFailure('challenge', 'bad realm', { reason: 'bad_realm' }), 500, 'challenge_failed', undefined],
    [new UpstreamFailure('identity', 'no echo'), 400, 'invalid_request', undefined],
  ];
  let i = 0;
  for (const [failure, status, error, retryAfter] of cases) {
    upstreamFails = failure;
    const answer = await ask(`${TOKEN}?api-version=2018-02-01&resource=https://vault.azure.net/${i++}`);
    t.equal(answer.status, status, `${failure.kind} ${failure.upstream?.status ?? ''}: ${status}`);
    t.equal(answer.json.error, error);
    t.equal(answer.headers['Retry-After'], retryAfter, `${failure.kind}: Retry-After ${retryAfter}`);
  }
  upstreamFails = undefined;
});
