// The token domain shared by the route, the upstream fetch and the cache: what is asked for, what comes back,
// and how it is shown to IMDS clients.

/** A user-assigned identity selector. `mi_res_id` (old msal-node) arrives here as `msi_res_id`. */
export interface Selector {
  readonly kind: 'client_id' | 'object_id' | 'msi_res_id';
  readonly value: string;
}

export interface TokenRequest {
  /** The resource exactly as the client sent it, after query decoding. Echoed back verbatim. */
  readonly resource: string;
  /** Absent: the system-assigned identity. */
  readonly selector: Selector | undefined;
  /** `bypass_cache=true` or `token_sha256_to_refresh`: the client wants a fresh token. */
  readonly forceRefresh: boolean;
  /**
   * The resource and the identity as one string: what a token is cached and audited under. Made once per
   * request object (the route shares them between requests for one URL), so the hit path builds no key.
   */
  readonly subject: string;
}

export function tokenRequest(resource: string, selector: Selector | undefined = undefined, forceRefresh = false): TokenRequest {
  // A NUL cannot occur in either part (the gate rejects control characters), so the subject is unambiguous.
  const subject = selector ? `${resource}\u0000${selector.kind}\u0000${selector.value}` : resource;
  return Object.freeze({ resource, selector, forceRefresh, subject });
}

export interface Token {
  readonly accessToken: string;
  /** Unix seconds. The only expiry that matters: nothing is served past it. */
  readonly expiresOn: number;
  readonly notBefore: string;
  readonly tokenType: string;
  /** From the JWT's appid/azp claim, else the upstream's echo, else "". */
  readonly clientId: string;
  /** Pre-rendered JSON up to expires_in, and from not_before up to resource: serving is concatenation. */
  readonly head: string;
  readonly middle: string;
  readonly tail: string;
}

export function makeToken(fields: Omit<Token, 'head' | 'middle' | 'tail'>): Token {
  // Field order as real IMDS sends it.
  const head = `{"access_token":${JSON.stringify(fields.accessToken)},"client_id":${JSON.stringify(fields.clientId)},"expires_in":"`;
  const middle = `","not_before":${JSON.stringify(fields.notBefore)},"resource":`;
  const tail = `,"token_type":${JSON.stringify(fields.tokenType)}`;
  return Object.freeze({ ...fields, head, middle, tail });
}

/**
 * The IMDS token response. `expires_in` is recomputed now (MSAL Python reads only it; msal-node reads only
 * `expires_on`); `resource` echoes the request verbatim (clients cache under it; Python crashes without it).
 * A user-assigned identity chosen by object_id or msi_res_id is echoed too, as UAMI-aware agents do: a
 * sidecar (or MSAL) behind this answer accepts the token only with that echo (client_id is always present).
 */
export function renderTokenResponse(token: Token, request: Pick<TokenRequest, 'resource' | 'selector'>, nowSeconds: number): string {
  const expiresIn = Math.max(0, token.expiresOn - Math.floor(nowSeconds));
  const selector = request.selector;
  const echo = selector && selector.kind !== 'client_id' ? `,"${selector.kind}":${JSON.stringify(selector.value)}` : '';
  return `${token.head}${expiresIn}","expires_on":"${token.expiresOn}","ext_expires_in":"${expiresIn}${token.middle}${JSON.stringify(request.resource)}${token.tail}${echo}}`;
}

/** A token response ready to send: the body and its length in bytes. */
export interface RenderedToken {
  readonly body: string;
  readonly bytes: number;
}

/**
 * Token responses, each rendered once and sent for as long as it stays the same: `expires_in` counts whole
 * seconds, so a workload asking many times a second for one URL gets the bytes rendered for that second.
 * Keyed by the request object, which the token route shares between requests for the same URL.
 */
export class TokenResponses {
  readonly #last = new WeakMap<TokenRequest, { token: Token; second: number; rendered: RenderedToken }>();

  render(token: Token, request: TokenRequest, nowSeconds: number): RenderedToken {
    const second = Math.floor(nowSeconds);
    const last = this.#last.get(request);
    if (last !== undefined && last.token === token && last.second === second) return last.rendered;
    const body = renderTokenResponse(token, request, second);
    // Measuring the length also flattens the string once, rather than on every send.
    const rendered = { body, bytes: Buffer.byteLength(body) };
    this.#last.set(request, { token, second, rendered });
    return rendered;
  }
}

/** The appid (v1) or azp (v2) claim of a JWT access token, or "" when it is not a readable JWT. */
export function clientIdFromJwt(accessToken: string): string {
  const parts = accessToken.split('.');
  if (parts.length !== 3 || parts[1] === undefined || parts[1].length > 16384) return '';
  try {
    const claims: unknown = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    if (typeof claims !== 'object' || claims === null) return '';
    const { appid, azp } = claims as { appid?: unknown; azp?: unknown };
    if (typeof appid === 'string') return appid;
    if (typeof azp === 'string') return azp;
  } catch {
    // not a JWT: an opaque token is fine, it just has no client id to show
  }
  return '';
}
