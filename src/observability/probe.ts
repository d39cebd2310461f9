// `probe`: ask an admin listener's /readyz, for health checks in images without curl (Docker HEALTHCHECK,
// compose healthchecks, Kubernetes exec probes). Ready: exit 0. Anything else: a one-line reason, exit 1.
// It runs every 10 s in every container, so it loads as little as it can: node:http (through
// process.getBuiltinModule, see src/server/listeners.ts), not undici, whose index alone doubles its start-up time.

export interface ProbeConfig {
  readonly url: string;
  readonly timeoutMs: number;
}

const { get } = process.getBuiltinModule('node:http');

/** Status and the first 2,000 characters of the body, within timeoutMs (a TimeoutError after that). */
function fetchText(url: string, timeoutMs: number): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false, signal: AbortSignal.timeout(timeoutMs) }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (text.length < 2000) text += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: text.slice(0, 2000) }));
      res.on('error', reject);
    });
    req.on('error', (err: Error & { cause?: unknown }) => reject(err.name === 'AbortError' && err.cause instanceof Error ? err.cause : err));
  });
}

export async function probe(config: ProbeConfig): Promise<{ ok: boolean; message: string }> {
  try {
    const { status, text } = await fetchText(config.url, config.timeoutMs);
    let reason = text.replace(/\s+/g, ' ').trim();
    try {
      const body = JSON.parse(text) as { reason?: unknown };
      if (typeof body.reason === 'string') reason = body.reason;
    } catch {
      // not JSON: report the text itself
    }
    if (status === 200) return { ok: true, message: `ready: ${reason}` };
    return { ok: false, message: `not ready (${status}): ${reason}` };
  } catch (err) {
    const e = err as Error & { code?: string; cause?: { code?: string } };
    const code = e.code ?? e.cause?.code;
    return {
      ok: false,
      message: `no answer from ${config.url}: ${e.name === 'TimeoutError' ? `timed out after ${config.timeoutMs} ms` : (code ?? e.message)}`,
    };
  }
}
