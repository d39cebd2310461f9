// Getting one token from the upstream: ask, answer the key-file challenge if there is one, validate what comes
// back. A relay upstream answers 200 straight away; HIMDS answers 401 first. Whole attempts are retried a few
// times on connection failures and 503 (HIMDS answers 503 for a while after boot), always within the caller's
// overall deadline. A new attempt starts from the first leg again: a key is single-use.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../observability/log.js';
import type { Metrics } from '../observability/metrics.js';
import { UpstreamFailure } from '../values/failures.js';
import { WORKLOAD_HEADER } from '../values/workload.js';
import { clientIdFromJwt, makeToken, tokenRequest, type Selector, type Token, type TokenRequest } from '../values/token.js';
import { ChallengeError, parseRealm, readKeyFile } from './challenge.js';
import { headerValue, type UpstreamClient, type UpstreamResponse } from './client.js';

export const TOKEN_PATH = '/metadata/identity/oauth2/token';
/** Seconds; see parseToken. */
const MAX_TOKEN_LIFETIME_S = 48 * 3600;
/** Whole attempts, and the pause before each retry (ms, plus up to 50% jitter). */
const RETRY_PAUSES_MS = [100, 400] as const;

export interface TokenFetchOptions {
  readonly tokensDir: string;
  readonly apiVersion: string;
  readonly metrics?: Metrics | undefined;
  /** NAMESPACE/POD of the workload this proxy serves (a sidecar), told to the upstream relay. */
  readonly workload?: string | undefined;
}

export class TokenFetcher {
  readonly #client: UpstreamClient;
  readonly #options: TokenFetchOptions;
  readonly #log: Logger;
  /** What every upstream request carries: Metadata, and the workload when this is a sidecar that knows it. */
  readonly #headers: Readonly<Record<string, string>>;

  constructor(client: UpstreamClient, options: TokenFetchOptions, log: Logger) {
    this.#client = client;
    this.#options = options;
    this.#log = log;
    this.#headers = options.workload ? { Metadata: 'true', [WORKLOAD_HEADER]: options.workload } : { Metadata: 'true' };
  }

  /** A token for the request, or an UpstreamFailure saying what went wrong. */
  async getToken(request: TokenRequest, signal: AbortSignal): Promise<Token> {
    const path = this.#path(request);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#attempt(path, request, signal);
      } catch (err) {
        const pause = RETRY_PAUSES_MS[attempt];
        if (!(err instanceof UpstreamFailure) || !err.retryable || pause === undefined || signal.aborted) throw err;
        this.#log.warn({ err: err.message, attempt: attempt + 1 }, 'upstream token attempt failed; retrying');
        await sleep(pause * (1 + Math.random() / 2), undefined, { signal }).catch(() => {
          throw err;
        });
      }
    }
  }

  async #attempt(path: string, request: TokenRequest, signal: AbortSignal): Promise<Token> {
    let response = await this.#client.get('challenge', path, this.#headers, signal);
    if (response.status === 401) {
      const key = this.#answerChallenge(response);
      response = await this.#client.get('token', path, { ...this.#headers, Authorization: `Basic ${key}` }, signal);
      if (response.status === 401) {
        this.#options.metrics?.challengeFailures.inc({ reason: 'key_rejected' });
        throw new ChallengeError('key_rejected', 'HIMDS rejected the key from its own challenge');
      }
    }
    if (response.status !== 200) throw upstreamFailure(response);
    return parseToken(response.body, request.selector, Date.now() / 1000);
  }

  /** The key the 401 asks for. Failures are counted by reason. */
  #answerChallenge(response: UpstreamResponse): string {
    try {
      return readKeyFile(parseRealm(response.headers['www-authenticate']), this.#options.tokensDir);
    } catch (err) {
      if (err instanceof ChallengeError) this.#options.metrics?.challengeFailures.inc({ reason: err.reason });
      throw err;
    }
  }

  /**
   * Readiness: could a token be minted now? The first leg, and where the upstream is HIMDS, the challenge
   * answered as far as reading the key, which is not presented: nothing is minted, and the unused key expires
   * on its own. A relay answers the first leg with a token (from its cache), which must be valid.
   */
  async checkCanMint(resource: string, signal: AbortSignal): Promise<string> {
    const path = this.#path(tokenRequest(resource));
    const response = await this.#client.get('challenge', path, this.#headers, signal);
    if (response.status === 401) {
      this.#answerChallenge(response);
      return 'a token can be minted';
    }
    // A relay restricted by --allow-resource refuses the readiness resource: it answered, so the chain through
    // it is up, and requests for the resources it allows are served.
    if (response.status === 403) return `the upstream answers (its policy refuses ${resource}; allowed resources are served)`;
    if (response.status !== 200) throw upstreamFailure(response);
    parseToken(response.body, undefined, Date.now() / 1000);
    return 'a token can be minted';
  }

  /** The upstream request: HIMDS's api-version, the resource, the selector; nothing else of the client's. */
  #path(request: TokenRequest): string {
    let path = `${TOKEN_PATH}?api-version=${encodeURIComponent(this.#options.apiVersion)}&resource=${encodeURIComponent(request.resource)}`;
    if (request.selector) path += `&${request.selector.kind}=${encodeURIComponent(request.selector.value)}`;
    // A relay applies its own --force-refresh-interval to it; HIMDS, which caches tokens itself, may honour it.
    if (request.forceRefresh) path += '&bypass_cache=true';
    return path;
  }
}

/** An upstream answer that is not a token: its status, Retry-After and the reason its JSON body gives. */
export function upstreamFailure(response: UpstreamResponse): UpstreamFailure {
  const body = parseJsonObject(response.body);
  const error = typeof body?.error === 'string' ? shortText(body.error) : undefined;
  const description = typeof body?.error_description === 'string' ? shortText(body.error_description) : undefined;
  const upstream = { status: response.status, retryAfter: headerValue(response.headers, 'retry-after'), error, description };
  return new UpstreamFailure('status', `${response.status}${description ? `: ${description}` : error ? `: ${error}` : ''}`, { upstream });
}

function parseJsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

// Upstream text shown to clients: one line, bounded, printable.
function shortText(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
  const flat = text.replace(/[\u0000-\u001f\u007f]+/g, ' ');
  return flat.length > 300 ? `${flat.slice(0, 300)}…` : flat;
}

function asSeconds(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isInteger(value)) return value;
  if (typeof value === 'string' && /^\d{1,12}$/.test(value)) return Number(value);
  return undefined;
}

/**
 * Validate an upstream 200 body into a Token. HIMDS sends every value as a string and `resource` empty; a relay
 * sends the IMDS shape. A user-assigned request is accepted only if the upstream echoes that identity: legacy
 * agents ignore the selector and return the machine's identity, and we fail closed as MSAL does.
 */
export function parseToken(text: string, selector: Selector | undefined, nowSeconds: number): Token {
  const body = parseJsonObject(text);
  if (!body) throw new UpstreamFailure('bad_body', 'token response is not a JSON object');
  const accessToken = body.access_token;
  if (typeof accessToken !== 'string' || accessToken === '') {
    throw new UpstreamFailure('bad_body', 'token response has no access_token');
  }
  let expiresOn = asSeconds(body.expires_on);
  if (expiresOn === undefined) {
    const expiresIn = asSeconds(body.expires_in);
    if (expiresIn !== undefined) expiresOn = Math.floor(nowSeconds) + expiresIn;
  }
  if (expiresOn === undefined) throw new UpstreamFailure('bad_body', 'token response has no usable expires_on or expires_in');
  if (expiresOn <= nowSeconds) throw new UpstreamFailure('bad_body', 'token response is already expired');
  // Managed identity tokens live about a day. One claiming far more is an upstream bug that clients would
  // cache and reuse long after it stops working.
  if (expiresOn > nowSeconds + MAX_TOKEN_LIFETIME_S) {
    throw new UpstreamFailure('bad_body', 'token response expires_on is absurdly far ahead (more than 48 h)');
  }

  if (selector) {
    const echoed = body[selector.kind] ?? (selector.kind === 'msi_res_id' ? body.mi_res_id : undefined);
    if (typeof echoed !== 'string' || echoed.toLowerCase() !== selector.value.toLowerCase()) {
      throw new UpstreamFailure('identity', `the upstream did not echo the requested ${selector.kind}; it may not know user-assigned identities`);
    }
  }
  const echoedClientId = typeof body.client_id === 'string' ? body.client_id : '';
  return makeToken({
    accessToken,
    expiresOn,
    notBefore: typeof body.not_before === 'string' ? body.not_before : String(asSeconds(body.not_before) ?? ''),
    tokenType: typeof body.token_type === 'string' && body.token_type !== '' ? body.token_type : 'Bearer',
    clientId: clientIdFromJwt(accessToken) || echoedClientId,
  });
}
