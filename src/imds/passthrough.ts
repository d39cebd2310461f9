// Allowlisted metadata paths (/metadata/instance/..., /metadata/identity/info), streamed from the upstream.
// Nothing of the client's request is forwarded but the path and the decoded query (rebuilt, with the upstream's
// api-version): no client headers, so no hop-by-hop or credential headers can leak through. Of the response,
// only an allowlist of end-to-end headers comes back.
import type { ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { GatedRequest } from './gate.js';
import type { UpstreamClient } from '../upstream/client.js';

const RESPONSE_HEADERS = ['content-type', 'content-length', 'retry-after', 'cache-control', 'etag', 'last-modified'] as const;

export function passthroughPath(gated: GatedRequest, apiVersion: string): string {
  const params = [`api-version=${encodeURIComponent(apiVersion)}`];
  for (const [name, value] of gated.query) {
    if (name !== 'api-version') params.push(`${encodeURIComponent(name)}=${encodeURIComponent(value)}`);
  }
  return `${gated.path}?${params.join('&')}`;
}

/** Stream the upstream's answer to the client. Throws an ImdsError only before anything was sent. */
export async function passThrough(
  gated: GatedRequest,
  res: ServerResponse,
  upstream: UpstreamClient,
  apiVersion: string,
  signal: AbortSignal,
  draining: { readonly now: boolean },
): Promise<number> {
  const response = await upstream.open(passthroughPath(gated, apiVersion), { Metadata: 'true' }, signal);
  const headers: Record<string, string> = {};
  for (const name of RESPONSE_HEADERS) {
    const v = response.headers[name];
    if (typeof v === 'string') headers[name] = v;
  }
  if (draining.now) res.shouldKeepAlive = false;
  res.writeHead(response.statusCode, headers);
  try {
    await pipeline(response.body, res);
  } catch {
    // The upstream or the client went away mid-body: nothing more can be said to this client.
    response.body.destroy();
    res.destroy();
  }
  return response.statusCode;
}
