// GET /metadata/identity/oauth2/token: what a gated request asks for (resource, identity selector, whether it
// wants a fresh token). The server takes it to the token cache and answers in the IMDS shape.
import { ImdsError } from './errors.js';
import type { GatedRequest } from './gate.js';
import { tokenRequest, type Selector, type TokenRequest } from '../values/token.js';

const SELECTOR_PARAMS = ['client_id', 'object_id', 'msi_res_id', 'mi_res_id'] as const;
const MAX_RESOURCE_LENGTH = 2048;
const MAX_SELECTOR_LENGTH = 1024;

/**
 * The token request a gated request asks for, or the 400 explaining why it is not one. Gated requests are shared
 * between requests for the same URL (see Gate), so their reading is too: one reader per pipeline.
 */
export class TokenRoute {
  readonly #read = new WeakMap<GatedRequest, TokenRequest | ImdsError>();

  requestOf(gated: GatedRequest): TokenRequest | ImdsError {
    let read = this.#read.get(gated);
    if (read === undefined) {
      read = readTokenRequest(gated);
      this.#read.set(gated, read);
    }
    return read;
  }
}

function readTokenRequest(gated: GatedRequest): TokenRequest | ImdsError {
  const resource = gated.query.get('resource');
  if (resource === undefined || resource === '') return new ImdsError('resource_missing');
  if (resource.length > MAX_RESOURCE_LENGTH) return new ImdsError('bad_query', `resource longer than ${MAX_RESOURCE_LENGTH} characters`);

  let selector: Selector | undefined;
  for (const name of SELECTOR_PARAMS) {
    const value = gated.query.get(name);
    // An empty selector is no selector: the system-assigned identity, as IMDS reads it.
    if (value === undefined || value === '') continue;
    if (selector) return new ImdsError('selector_conflict');
    if (value.length > MAX_SELECTOR_LENGTH) return new ImdsError('bad_selector');
    // Older msal-node sent mi_res_id; HIMDS ignores that spelling and would hand out the machine identity.
    selector = { kind: name === 'mi_res_id' ? 'msi_res_id' : name, value };
  }
  const forceRefresh = gated.query.get('bypass_cache')?.toLowerCase() === 'true' || (gated.query.get('token_sha256_to_refresh') ?? '') !== '';
  return tokenRequest(resource, selector, forceRefresh);
}
