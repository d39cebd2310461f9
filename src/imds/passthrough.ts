// Allowlisted metadata paths (/metadata/instance/..., /metadata/identity/info), relayed from the upstream.
// Nothing of the client's request is forwarded but the path and the decoded query (rebuilt, with the upstream's
// api-version): no client headers, so no hop-by-hop or credential headers can leak through. Of the response,
// only an allowlist of end-to-end headers comes back.
import type { ServerResponse } from 'node:http';
import type { UpstreamClient } from '../upstream/client.js';
import type { GatedRequest } from './gate.js';

const RESPONSE_HEADERS = ['content-type', 'content-length', 'retry-after', 'cache-control', 'etag', 'last-modified'] as const;

export function passthroughPath(gated: GatedRequest, apiVersion: string): string {
  const params = [`api-version=${encodeURIComponent(apiVersion)}`];
  for (const [name, value] of gated.query) {
    if (name !== 'api-version') params.push(`${encodeURIComponent(name)}=${encodeURIComponent(value)}`);
  }
  return `${gated.path}?${params.join('&')}`;
}

/**
 * Fetch the upstream's answer whole (bounded, as every upstream body), then send it: an upstream that stalls or
 * breaks mid-body is a 5xx for the client, never a 200 with a truncated body. Metadata bodies are small.
 */
export async function passThrough(
  gated: GatedRequest,
  res: Pick<ServerResponse, 'writeHead' | 'end' | 'shouldKeepAlive'>,
  upstream: UpstreamClient,
  apiVersion: string,
  signal: AbortSignal,
  draining: { readonly now: boolean },
): Promise<number> {
  const response = await upstream.get('passthrough', passthroughPath(gated, apiVersion), { Metadata: 'true' }, signal);
  const headers: Record<string, string | number> = {};
  for (const name of RESPONSE_HEADERS) {
    const v = response.headers[name];
    if (typeof v === 'string') headers[name] = v;
  }
  // The length of what is sent, whatever the upstream declared.
  headers['content-length'] = Buffer.byteLength(response.body);
  if (draining.now) res.shouldKeepAlive = false;
  res.writeHead(response.status, headers);
  res.end(response.body);
  return response.status;
}
