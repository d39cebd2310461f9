// The hostile-input corpus over raw sockets: every request gets its defined answer (or a closed connection),
// the process never crashes, and refused requests never reach the upstream.
import net from 'node:net';
import t from 'tap';
import { hostileCorpus, type HostileCase } from '../fixtures/hostile-corpus.js';
import { armTokenPath, startStack } from '../fixtures/stack.js';

function send(port: number, c: HostileCase): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = '';
    const timer = setTimeout(() => socket.destroy(), 5000);
    socket.on('data', (d) => (received += d.toString('latin1')));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(received);
    });
    socket.on('error', (err) => (received ? undefined : reject(err)));
    // Like real clients, never half-close before the answer: every request asks for Connection: close (or is
    // HTTP/1.0, or is refused), so the server ends the connection. (Node's server drops answers still pending
    // when a client sends FIN first.)
    const data = Buffer.from(c.bytes, 'latin1');
    if (!c.drip) {
      socket.write(data);
      return;
    }
    let i = 0;
    const next = () => {
      if (i >= data.length) return;
      socket.write(data.subarray(i, i + 1));
      i++;
      setTimeout(next, c.drip);
    };
    next();
  });
}

/** Status lines of every response in a byte stream (pipelined answers follow their predecessor's body). */
function statusLines(text: string): string[] {
  return [...text.matchAll(/HTTP\/1\.[01] \d{3} [^\r]*/g)].map((m) => m[0]);
}

t.test('every hostile request gets its defined answer; refused ones never reach the upstream', async (t) => {
  const corpus = hostileCorpus();
  t.ok(corpus.length >= 200, `the corpus has ${corpus.length} requests`);
  // A short header deadline, so requests that never finish their header block get their 408 quickly.
  const stack = await startStack({ proxy: { headersTimeoutMs: 1000 } });
  t.teardown(stack.close);
  for (const c of corpus) {
    const answer = await send(stack.port, c);
    const lines = statusLines(answer);
    if (c.expect.length === 0) {
      t.same(lines, [], `${c.name}: closed without an answer`);
      continue;
    }
    t.equal(lines.length, c.expect.length, `${c.name}: ${c.expect.length} answer(s)`);
    for (const [i, want] of c.expect.entries()) t.match(`${lines[i]} `, want, `${c.name}: answer ${i + 1} is ${want}`);
  }
  const tokenResources = new Set(corpus.filter((c) => c.reaches?.token).map((c) => c.reaches!.token!));
  const metadata = corpus.filter((c) => c.reaches?.metadata).length;
  const stats = stack.emulator.stats();
  t.equal(stats.tokensIssued, tokenResources.size, `the upstream issued exactly one token per accepted resource (${tokenResources.size})`);
  t.equal(stats.metadataRequests, metadata, 'and saw only the accepted metadata requests');
  t.equal((await stack.get(armTokenPath())).status, 200, 'the proxy is still serving');
});
