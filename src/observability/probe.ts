// `probe`: ask an admin listener's /readyz, for health checks in images without curl (Docker HEALTHCHECK,
// compose healthchecks, Kubernetes exec probes). Ready: exit 0. Anything else: a one-line reason, exit 1.
import { request } from 'undici';

export interface ProbeConfig {
  readonly url: string;
  readonly timeoutMs: number;
}

export async function probe(config: ProbeConfig): Promise<{ ok: boolean; message: string }> {
  try {
    const response = await request(config.url, { method: 'GET', signal: AbortSignal.timeout(config.timeoutMs) });
    const text = (await response.body.text()).slice(0, 2000);
    let reason = text.replace(/\s+/g, ' ').trim();
    try {
      const body = JSON.parse(text) as { reason?: unknown };
      if (typeof body.reason === 'string') reason = body.reason;
    } catch {
      // not JSON: report the text itself
    }
    if (response.statusCode === 200) return { ok: true, message: `ready: ${reason}` };
    return { ok: false, message: `not ready (${response.statusCode}): ${reason}` };
  } catch (err) {
    const e = err as Error & { code?: string; cause?: { code?: string } };
    const code = e.code ?? e.cause?.code;
    return { ok: false, message: `no answer from ${config.url}: ${e.name === 'TimeoutError' ? `timed out after ${config.timeoutMs} ms` : (code ?? e.message)}` };
  }
}
