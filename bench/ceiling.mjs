// The ceiling: a bare node:http server that answers every request with the bytes of a cached token response
// (the body the proxy sent, read from BENCH_BODY_FILE) and the same headers the proxy sends (Content-Type,
// Content-Length; Node adds Date and the keep-alive headers to both). Nothing else: what node:http itself costs.
import { readFileSync } from 'node:fs';
// node:http as a script would get it: not `import http from 'node:http'`, which on Node 24 also loads Node's
// bundled undici, TLS and HTTP/2 (its lazy WebSocket getters run when ES modules import it; src/server.ts).
const http = process.getBuiltinModule('node:http');

const body = readFileSync(process.env.BENCH_BODY_FILE, 'utf8');
const server = http.createServer((_req, res) => {
  res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});
server.listen({ host: '127.0.0.1', port: 0 }, () => {
  process.stdout.write(`${JSON.stringify({ msg: 'listening', port: server.address().port })}\n`);
});
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
