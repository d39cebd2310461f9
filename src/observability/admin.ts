// The admin listener: /metrics, /healthz, /readyz. Never on an IMDS listener: what it shows is for operators,
// and an IMDS client has no business probing it.
import type http from 'node:http';
import type { Readiness } from './health.js';
import type { Metrics } from './metrics.js';

const JSON_TYPE = 'application/json; charset=utf-8';

function send(res: http.ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}

export function createAdminHandler(metrics: Metrics, readiness: Readiness): http.RequestListener {
  return (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, JSON_TYPE, '{"error":"method_not_allowed"}');
    const path = (req.url ?? '/').split('?')[0];
    switch (path) {
      case '/metrics':
        metrics.registry.metrics().then(
          (text) => send(res, 200, metrics.registry.contentType, text),
          (err: unknown) => send(res, 500, JSON_TYPE, JSON.stringify({ error: 'metrics_failed', detail: String(err) })),
        );
        return;
      case '/healthz':
        // Answering at all shows the process and its event loop are alive.
        return send(res, 200, JSON_TYPE, '{"status":"ok"}');
      case '/readyz': {
        const state = readiness.state;
        return send(res, state.ready ? 200 : 503, JSON_TYPE, JSON.stringify({ status: state.ready ? 'ready' : 'not_ready', ...state }));
      }
      default:
        return send(res, 404, JSON_TYPE, '{"error":"not_found","endpoints":["/metrics","/healthz","/readyz"]}');
    }
  };
}
