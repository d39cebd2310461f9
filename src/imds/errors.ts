// Every answer an IMDS listener gives that is not a token or a passthrough body comes from this table (the
// admin listener has its own few answers). One entry per failure: a stable code, the HTTP status, and the
// IMDS-shaped JSON body.
//
// Below it, the other table: every typed failure of the layers underneath (upstream, token cache) mapped to the
// entry a client is answered with. Nothing else decides what a client sees.
//
// Status choices follow what clients do with them (docs/protocol.md#2-azure-vm-imds-the-downstream-contract): a 400 is final ("no identity"; Python
// azure-identity even disables managed identity after one), 404/410/429/5xx are retried with backoff. So
// anything the operator can fix or that may pass (upstream down, key file unreadable) is a 5xx, never a 400.

import { FetchFailure, UpstreamFailure, type FetchFailureKind, type UpstreamFailureKind } from '../values/failures.js';

export interface ImdsErrorBody {
  readonly error: string;
  readonly error_description?: string;
  readonly 'newest-versions'?: readonly string[];
}

interface ErrorEntry {
  readonly status: number;
  readonly body: ImdsErrorBody;
  /** Whether the operator-facing detail of a thrown ImdsError may be appended to error_description. */
  readonly detailed?: boolean;
  /** Seconds for Retry-After when the error itself carries none (every 503 has one). */
  readonly retryAfter?: string;
  /**
   * Who caused it. Client-caused answers are logged at debug only (and counted in the metrics): a client must
   * not be able to fill the log. Upstream and internal failures are warnings.
   */
  readonly cause: 'client' | 'upstream' | 'internal';
  /** The status may be the upstream's own (a 5xx), carried by the error. */
  readonly upstreamStatus?: boolean;
}

/** The api-versions real IMDS lists as newest in its api-version error (docs/protocol.md#2-azure-vm-imds-the-downstream-contract). */
export const NEWEST_API_VERSIONS = ['2025-04-07', '2024-07-17', '2024-03-15'] as const;

const API_VERSION_MESSAGE = 'Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds';

export const ERRORS = {
  // --- the gate: the IMDS contract -------------------------------------------------------------------------
  method_not_allowed: {
    status: 405,
    body: { error: 'invalid_request', error_description: 'Method not allowed: IMDS answers GET only' },
    cause: 'client',
  },
  forwarded_request: {
    status: 400,
    body: { error: 'invalid_request', error_description: 'Requests with an X-Forwarded-For header are not accepted' },
    cause: 'client',
  },
  request_body: { status: 400, body: { error: 'invalid_request', error_description: 'IMDS requests must not carry a body' }, cause: 'client' },
  // Exact body real IMDS sends; SDK probes (DefaultAzureCredential) rely on a fast answer, .NET on its text.
  metadata_header: { status: 400, body: { error: 'invalid_request', error_description: 'Required metadata header not specified' }, cause: 'client' },
  bad_query: { status: 400, body: { error: 'invalid_request', error_description: 'Malformed query string' }, detailed: true, cause: 'client' },
  duplicate_parameter: {
    status: 400,
    body: { error: 'invalid_request', error_description: 'Duplicate query parameter' },
    detailed: true,
    cause: 'client',
  },
  // Exact body real IMDS sends for the instance endpoints.
  api_version: { status: 400, body: { error: API_VERSION_MESSAGE, 'newest-versions': NEWEST_API_VERSIONS }, cause: 'client' },
  // The identity endpoint speaks OAuth-style errors, which MSAL turns into its message.
  token_api_version: { status: 400, body: { error: 'invalid_request', error_description: API_VERSION_MESSAGE }, cause: 'client' },
  // An absolute-form request (a client using the sidecar as its HTTP proxy) for a host that is not IMDS's.
  proxy_host_refused: {
    status: 403,
    body: { error: 'invalid_request', error_description: 'This endpoint answers only for 169.254.169.254; it is not a general HTTP proxy' },
    cause: 'client',
  },
  not_found: { status: 404, body: { error: 'not_found', error_description: 'No such IMDS path on this endpoint' }, cause: 'client' },
  // Malformed HTTP, answered on the raw socket before any request exists (server.ts onClientError).
  malformed_http: { status: 400, body: { error: 'invalid_request', error_description: 'Malformed HTTP request' }, cause: 'client' },
  headers_too_large: { status: 431, body: { error: 'invalid_request', error_description: 'Request headers too large' }, cause: 'client' },
  headers_too_slow: { status: 408, body: { error: 'invalid_request', error_description: 'Request headers not received in time' }, cause: 'client' },
  uri_too_long: { status: 414, body: { error: 'invalid_request', error_description: 'Request URL too long' }, cause: 'client' },
  too_many_headers: { status: 431, body: { error: 'invalid_request', error_description: 'Too many request headers' }, cause: 'client' },
  // IMDS's own throttling answer (identity endpoint: 20 req/s, 5 concurrent), when --rate-limit or
  // --concurrency-limit is on.
  throttled: { status: 429, body: { error: 'invalid_request', error_description: 'Temporarily throttled, too many requests' }, cause: 'client' },

  // --- the token route -------------------------------------------------------------------------------------
  resource_missing: {
    status: 400,
    body: { error: 'invalid_request', error_description: "Required query variable 'resource' is missing" },
    cause: 'client',
  },
  selector_conflict: {
    status: 400,
    body: { error: 'invalid_request', error_description: 'Only one of client_id, object_id and msi_res_id may be given' },
    cause: 'client',
  },
  bad_selector: {
    status: 400,
    body: { error: 'invalid_request', error_description: 'Identity selector value is empty or malformed' },
    cause: 'client',
  },
  // Same text as IMDS: a 400 that clients treat as "this identity does not exist here".
  identity_not_found: { status: 400, body: { error: 'invalid_request', error_description: 'Identity not found' }, cause: 'client' },
  // --allow-resource: final for the client (not retried), and says why.
  resource_not_allowed: {
    status: 403,
    body: { error: 'invalid_request', error_description: "This resource is not allowed by the proxy's --allow-resource policy" },
    cause: 'client',
  },

  // --- upstream (HIMDS or a relay) -------------------------------------------------------------------------
  upstream_unavailable: {
    status: 503,
    body: {
      error: 'temporarily_unavailable',
      error_description: 'The identity service upstream is unreachable or did not answer in time; retry later',
    },
    detailed: true,
    cause: 'upstream',
    retryAfter: '1',
  },
  upstream_throttled: {
    status: 429,
    body: { error: 'invalid_request', error_description: 'Temporarily throttled, too many requests' },
    cause: 'upstream',
  },
  upstream_busy: {
    status: 503,
    body: { error: 'temporarily_unavailable', error_description: 'The identity service upstream is starting or busy; retry later' },
    cause: 'upstream',
    retryAfter: '1',
  },
  upstream_error: {
    status: 500,
    body: { error: 'upstream_error', error_description: 'The identity service upstream failed; retry later' },
    detailed: true,
    cause: 'upstream',
    upstreamStatus: true,
  },
  upstream_rejected: {
    status: 400,
    body: { error: 'invalid_request', error_description: 'The identity service upstream rejected the request' },
    detailed: true,
    cause: 'upstream',
  },
  upstream_bad_response: {
    status: 502,
    body: { error: 'upstream_error', error_description: 'The identity service upstream sent an unusable response; retry later' },
    detailed: true,
    cause: 'upstream',
  },
  // Every token fetch slot and queue place is taken (--upstream-concurrency + --upstream-queue): answered at
  // once rather than queued without bound.
  upstream_saturated: {
    status: 503,
    body: {
      error: 'temporarily_unavailable',
      error_description: 'Too many token requests are waiting for the identity service upstream; retry later',
    },
    cause: 'upstream',
    retryAfter: '1',
  },
  challenge_failed: {
    status: 500,
    body: { error: 'challenge_failed', error_description: 'Could not answer the HIMDS key-file challenge' },
    detailed: true,
    cause: 'upstream',
  },

  // --- ourselves -------------------------------------------------------------------------------------------
  // The client went away before its answer was ready: never sent, only counted (nginx's 499).
  client_closed: {
    status: 499,
    body: { error: 'client_closed', error_description: 'The client closed the connection before the answer was ready' },
    cause: 'client',
  },
  internal: { status: 500, body: { error: 'internal_error', error_description: 'Internal error; retry later' }, cause: 'internal' },
} as const satisfies Record<string, ErrorEntry>;

export type ErrorCode = keyof typeof ERRORS;

/** A failure travelling as a value towards the one place that answers it (server.ts). */
export class ImdsError extends Error {
  readonly code: ErrorCode;
  /** Operator-facing detail, shown to the client only for `detailed` entries. Never holds secrets. */
  readonly detail: string | undefined;
  /** Seconds, passed on from an upstream that asked clients to back off. */
  readonly retryAfter: string | undefined;
  /** The upstream's own 5xx, for entries that keep it. */
  readonly status: number | undefined;

  constructor(code: ErrorCode, detail?: string, options?: { retryAfter?: string | undefined; status?: number; cause?: unknown }) {
    super(detail ? `${code}: ${detail}` : code, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ImdsError';
    this.code = code;
    this.detail = detail;
    this.retryAfter = options?.retryAfter;
    this.status = options?.status;
  }
}

export interface RenderedError {
  readonly status: number;
  readonly body: string;
  readonly retryAfter: string | undefined;
}

// Bodies without detail never change: serialise them once.
const FIXED_BODIES = new Map<ErrorCode, string>((Object.keys(ERRORS) as ErrorCode[]).map((code) => [code, JSON.stringify(ERRORS[code].body)]));

export function renderError(code: ErrorCode, detail?: string, retryAfter?: string, upstreamStatus?: number): RenderedError {
  const entry: ErrorEntry = ERRORS[code];
  const status =
    entry.upstreamStatus && upstreamStatus !== undefined && upstreamStatus >= 500 && upstreamStatus <= 599 ? upstreamStatus : entry.status;
  const wait = retryAfter ?? entry.retryAfter;
  if (detail && entry.detailed) {
    const body = { ...entry.body, error_description: `${entry.body.error_description}: ${detail}` };
    return { status, body: JSON.stringify(body), retryAfter: wait };
  }
  return { status, body: FIXED_BODIES.get(code)!, retryAfter: wait };
}

export function renderImdsError(err: ImdsError): RenderedError {
  return renderError(err.code, err.detail, err.retryAfter, err.status);
}

/** Whether a failure is the client's doing (logged at debug, never at warn). */
export function clientCaused(code: ErrorCode): boolean {
  return (ERRORS[code] as ErrorEntry).cause === 'client';
}

// ---------------------------------------------------------------------------------------------------------
// Typed failures -> IMDS answers
// ---------------------------------------------------------------------------------------------------------

// HIMDS refusing our api-version is our configuration, not the client's request: never a final 400.
const API_VERSION_REFUSAL = /api[- ]?version/i;

/** An upstream's answer that is not a token, as clients must see it (they retry 5xx and 429, never a 400). */
function forStatus(f: UpstreamFailure): ImdsError {
  const { status, retryAfter, error, description } = f.upstream!;
  if (status === 429) return new ImdsError('upstream_throttled', undefined, { retryAfter });
  if (status === 503) return new ImdsError('upstream_busy', undefined, { retryAfter });
  // HIMDS (UAMI-aware) for an unknown user-assigned identity; a relay passes on IMDS's own wording.
  if (error === 'identity_not_found' || (status === 400 && description === 'Identity not found')) return new ImdsError('identity_not_found');
  // A relay's --allow-resource refusal: final for the client too, not a retried 502.
  if (status === 403) return new ImdsError('resource_not_allowed');
  if (status === 400 && API_VERSION_REFUSAL.test(`${error} ${description}`)) {
    return new ImdsError('upstream_error', `400: ${description ?? error ?? ''} (check --himds-api-version)`);
  }
  if (status === 400) return new ImdsError('upstream_rejected', description ?? error ?? 'no reason given');
  // Other 5xx keep their status (a 502 or 504 from a proxy in between says more than a 500 would).
  if (status >= 500 && status <= 599) return new ImdsError('upstream_error', f.message, { status });
  return new ImdsError('upstream_bad_response', `unexpected status ${status}`);
}

const FOR_UPSTREAM: Record<UpstreamFailureKind, (f: UpstreamFailure) => ImdsError> = {
  refused: (f) => new ImdsError('upstream_unavailable', f.message, { cause: f }),
  timeout: (f) => new ImdsError('upstream_unavailable', f.message, { cause: f }),
  reset: (f) => new ImdsError('upstream_unavailable', f.message, { cause: f }),
  status: forStatus,
  bad_body: (f) => new ImdsError('upstream_bad_response', f.message, { cause: f }),
  challenge: (f) => new ImdsError('challenge_failed', f.message, { cause: f }),
  identity: () => new ImdsError('identity_not_found'),
};

// Nobody is answered for a client that went away: one error for all of them, not one (with a stack) each.
const CLIENT_CLOSED = new ImdsError('client_closed');
// A cache refuses every new key at its bound with the same failure: one answer for it too, so a flood of
// refusals makes nothing per request.
const SATURATED = new WeakMap<FetchFailure, ImdsError>();
function saturated(f: FetchFailure): ImdsError {
  let known = SATURATED.get(f);
  if (!known) {
    known = new ImdsError('upstream_saturated', f.message);
    SATURATED.set(f, known);
  }
  return known;
}

const FOR_FETCH: Record<FetchFailureKind, (f: FetchFailure) => ImdsError> = {
  saturated,
  abandoned: () => CLIENT_CLOSED,
  deadline: (f) => new ImdsError('upstream_unavailable', f.message),
};

/** What a client is answered for anything thrown below the front; undefined for the unexpected (a 500). */
export function imdsErrorOf(err: unknown): ImdsError | undefined {
  if (err instanceof ImdsError) return err;
  if (err instanceof UpstreamFailure) return FOR_UPSTREAM[err.kind](err);
  if (err instanceof FetchFailure) return FOR_FETCH[err.kind](err);
  return undefined;
}
