// The IMDS contract (docs/protocol.md#2-azure-vm-imds-the-downstream-contract), applied to every request before anything else runs. Checks are small
// functions read top to bottom in the order they are applied; the first one that fails answers the request.
// Nothing here awaits: a request without Metadata (an SDK probe) is answered before any upstream or cache work.
import type { IncomingHttpHeaders } from 'node:http';
import { ImdsError } from './errors.js';

/** What the gate reads of a request. */
export interface RequestHead {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
}

export type Route = 'token' | 'instance' | 'identity_info';

export interface GatedRequest {
  readonly route: Route;
  /** The normalised path: `/metadata` lower-cased, one trailing slash removed. */
  readonly path: string;
  /** Decoded query parameters; names are unique (duplicates are rejected). */
  readonly query: ReadonlyMap<string, string>;
}

type Check = (req: RequestHead) => ImdsError | undefined;

/** Longer request targets are refused before any parsing (node's own limit is the whole header block). */
export const MAX_URL_LENGTH = 8192;
/**
 * More headers are refused. Checked here rather than with server.maxHeadersCount, which Node 20 applies by
 * silently dropping the excess and Node 24 by answering 431: the same request must get the same answer.
 */
export const MAX_HEADERS = 100;

const CHECKS: readonly Check[] = [
  // 0. Bounded work per request, whatever else is wrong with it.
  (req) => ((req.url ?? '').length > MAX_URL_LENGTH ? new ImdsError('uri_too_long') : undefined),
  (req) => (req.rawHeaders.length > 2 * MAX_HEADERS ? new ImdsError('too_many_headers') : undefined),
  // 1. IMDS answers GET only.
  (req) => (req.method === 'GET' ? undefined : new ImdsError('method_not_allowed')),
  // 2. IMDS refuses requests that were forwarded by a proxy: a guard against SSRF through HTTP proxies.
  (req) => (req.headers['x-forwarded-for'] === undefined ? undefined : new ImdsError('forwarded_request')),
  // 3. No bodies: nothing of the client's is ever forwarded upstream except the query we rebuild.
  (req) => {
    const length = req.headers['content-length'];
    if (req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')) {
      return new ImdsError('request_body');
    }
    return undefined;
  },
  // 4. `Metadata: true` blocks browsers and SSRF. Also what SDK probes omit on purpose to get a fast 400.
  (req) => {
    const metadata = req.headers.metadata;
    // What every SDK sends is compared as is; only another spelling pays for lower-casing.
    return metadata === 'true' || (typeof metadata === 'string' && metadata.toLowerCase() === 'true') ? undefined : new ImdsError('metadata_header');
  },
];

// Routes by normalised path. Sub-paths of /metadata/instance are passed through, so they are restricted to
// plain segments: no `..`, no encoded characters, nothing an upstream could normalise into another path.
const EXACT_ROUTES = new Map<string, Route>([
  ['/metadata/identity/oauth2/token', 'token'],
  ['/metadata/identity/info', 'identity_info'],
  ['/metadata/instance', 'instance'],
]);
const INSTANCE_SUBPATH = /^\/metadata\/instance(\/[A-Za-z0-9_-]+)+$/;

/**
 * The `/metadata` segment is case-insensitive in IMDS; msal-node appends `/` to the token path; and an
 * AZURE_POD_IDENTITY_AUTHORITY_HOST ending in `/` makes SDKs send `//metadata/...` (answering that with a 404
 * would only make them retry for a minute).
 */
export function normalisePath(rawPath: string): string {
  let p = rawPath.slice(0, 10).toLowerCase() === '//metadata' ? rawPath.slice(1) : rawPath;
  if (p.length >= 9 && p.charCodeAt(0) === 47 /* / */ && p.slice(0, 9).toLowerCase() === '/metadata' && (p.length === 9 || p[9] === '/')) {
    p = `/metadata${p.slice(9)}`;
  }
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1);
  return p;
}

function route(path: string): Route | undefined {
  return EXACT_ROUTES.get(path) ?? (INSTANCE_SUBPATH.test(path) ? 'instance' : undefined);
}

// C0 controls and DEL. Decoded values with these could split headers or logs further down.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/;

function decodeComponent(text: string): string {
  // Form encoding, as IMDS (Go's url.ParseQuery) reads it: '+' is a space.
  const plus = text.includes('+') ? text.replaceAll('+', ' ') : text;
  return plus.includes('%') ? decodeURIComponent(plus) : plus;
}

/**
 * Parse a raw query string strictly: bad percent-encoding, invalid UTF-8 after decoding, control characters
 * and repeated names are all errors (IMDS rejects duplicates; an attacker could otherwise smuggle a second
 * `resource` past one layer and have another read the other one).
 */
export function parseQuery(raw: string): Map<string, string> | ImdsError {
  const query = new Map<string, string>();
  if (raw === '') return query;
  for (const pair of raw.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    let name: string;
    let value: string;
    try {
      name = decodeComponent(eq === -1 ? pair : pair.slice(0, eq));
      value = eq === -1 ? '' : decodeComponent(pair.slice(eq + 1));
    } catch {
      return new ImdsError('bad_query', 'bad percent-encoding or invalid UTF-8');
    }
    if (name === '') return new ImdsError('bad_query', 'empty parameter name');
    // Raw control characters never get this far (Node's parser refuses them in the request target): only a
    // percent-encoded one can, so only decoded parts need the check.
    if (pair.includes('%') && (CONTROL.test(name) || CONTROL.test(value))) {
      return new ImdsError('bad_query', 'control characters are not allowed');
    }
    if (query.has(name)) return new ImdsError('duplicate_parameter', safeName(name));
    query.set(name, value);
  }
  return query;
}

// Parameter names are client input; echo back only a short, plain form of them.
function safeName(name: string): string {
  return /^[A-Za-z0-9_.-]{1,64}$/.test(name) ? name : '(unprintable name)';
}

/**
 * The api-versions Azure IMDS publishes for its instance endpoints, oldest first. IMDS refuses any other value,
 * well-formed or not, with the 400 below, so this proxy does too: a date that does not exist or is not a
 * release (2018-02-31, 2099-01-01) is not an api-version. A version IMDS publishes later is refused until it is
 * added here.
 */
export const IMDS_API_VERSIONS: readonly string[] = [
  '2017-03-01',
  '2017-04-02',
  '2017-08-01',
  '2017-10-01',
  '2017-12-01',
  '2018-02-01',
  '2018-04-02',
  '2018-10-01',
  '2019-02-01',
  '2019-03-11',
  '2019-04-30',
  '2019-06-01',
  '2019-06-04',
  '2019-08-01',
  '2019-08-15',
  '2019-11-01',
  '2020-06-01',
  '2020-07-15',
  '2020-09-01',
  '2020-10-01',
  '2020-12-01',
  '2021-01-01',
  '2021-02-01',
  '2021-03-01',
  '2021-05-01',
  '2021-10-01',
  '2021-11-01',
  '2021-11-15',
  '2021-12-13',
  '2022-02-01',
  '2022-03-01',
  '2022-05-01',
  '2022-07-01',
  '2022-08-01',
  '2022-09-01',
  '2022-11-01',
  '2023-07-01',
  '2023-11-15',
  '2024-03-15',
  '2024-07-17',
  '2025-04-07',
];
/** The oldest api-version IMDS serves identity tokens (and identity info) for, and what every SDK sends. */
export const OLDEST_API_VERSION = '2018-02-01';

const INSTANCE_VERSIONS = new Set(IMDS_API_VERSIONS);
const IDENTITY_VERSIONS = new Set(IMDS_API_VERSIONS.filter((v) => v >= OLDEST_API_VERSION));

/** Whether IMDS accepts this api-version on this route. */
export function isAcceptedApiVersion(v: string | undefined, which: Route = 'token'): boolean {
  if (v === undefined) return false;
  return (which === 'instance' ? INSTANCE_VERSIONS : IDENTITY_VERSIONS).has(v);
}

// An HTTP forward-proxy client (HTTP_PROXY pointing at the sidecar) sends the absolute form,
// `GET http://169.254.169.254/metadata/...`. For the IMDS address it is the same request as the origin form;
// any other host is refused here and nothing is forwarded: this is not a general proxy.
const ABSOLUTE_FORM = /^http:\/\/([^/?#]*)(.*)$/i;
const IMDS_AUTHORITIES = new Set(['169.254.169.254', '169.254.169.254:80']);

/** The origin form of a request target, or the refusal of a host that is not IMDS's. */
function originForm(target: string): string | ImdsError {
  if (target.startsWith('/')) return target;
  const m = ABSOLUTE_FORM.exec(target);
  if (!m) return target;
  if (!IMDS_AUTHORITIES.has(m[1]!.toLowerCase())) return new ImdsError('proxy_host_refused');
  const rest = m[2]!;
  return rest === '' || rest.startsWith('?') ? `/${rest}` : rest;
}

/** How many request targets a gate remembers its decision for (and how many it has seen once); when full it starts over. */
const URL_MEMO_SIZE = 256;

/**
 * The IMDS contract, applied. A workload asks for the same few URLs over and over, so what the URL alone decides
 * is kept (both outcomes are immutable values), bounded: when full it starts over. A URL is kept from the second
 * time it is asked for: a flood of distinct URLs (each asked for once) holds only the URL strings it already
 * had, not their decoded queries and token requests, which would otherwise live until the memo starts over.
 * One gate per pipeline.
 */
export class Gate {
  readonly #byUrl = new Map<string, GatedRequest | ImdsError>();
  /** URLs asked for once since they were last seen (bounded the same way). */
  readonly #seenOnce = new Set<string>();

  /** How many URLs have their decision kept. */
  get memoised(): number {
    return this.#byUrl.size;
  }

  /** The routed request, or the error to answer with. */
  check(req: RequestHead): GatedRequest | ImdsError {
    for (const check of CHECKS) {
      const failure = check(req);
      if (failure) return failure;
    }
    const url = req.url ?? '';
    const known = this.#byUrl.get(url);
    if (known !== undefined) return known;
    const outcome = gateUrl(url);
    if (this.#seenOnce.delete(url)) {
      if (this.#byUrl.size >= URL_MEMO_SIZE) this.#byUrl.clear();
      this.#byUrl.set(url, outcome);
    } else {
      if (this.#seenOnce.size >= URL_MEMO_SIZE) this.#seenOnce.clear();
      this.#seenOnce.add(url);
    }
    return outcome;
  }
}

/** Everything the gate decides from the request target alone: path, route, query, api-version. */
function gateUrl(target: string): GatedRequest | ImdsError {
  const url = originForm(target);
  if (url instanceof ImdsError) return url;
  const q = url.indexOf('?');
  const path = normalisePath(q === -1 ? url : url.slice(0, q));
  const which = route(path);
  if (which === undefined) return new ImdsError('not_found');
  const query = parseQuery(q === -1 ? '' : url.slice(q + 1));
  if (query instanceof ImdsError) return query;
  if (!isAcceptedApiVersion(query.get('api-version'), which)) {
    return new ImdsError(which === 'token' ? 'token_api_version' : 'api_version');
  }
  return Object.freeze({ route: which, path, query });
}
