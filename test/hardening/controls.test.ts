// The controls in front of the token route: resource policy, optional IMDS-like limits, URL/header/connection
// caps and the slow-sender deadline. Refused requests never reach the upstream.
import net from 'node:net';
import t from 'tap';
import { ListenerLimits } from '../../src/imds/limits.js';
import { ResourcePolicy } from '../../src/imds/policy.js';
import { armTokenPath, raw, startStack, tokenPath } from '../fixtures/stack.js';

const IMDS_429 = { error: 'invalid_request', error_description: 'Temporarily throttled, too many requests' };

t.test('--allow-resource: exact audiences and prefixes; others refused before the cache', async (t) => {
  const policy = new ResourcePolicy(['https://management.azure.com/', 'https://*.vault.azure.net', 'api://my-app*']);
  t.ok(policy.allows('https://management.azure.com/'));
  t.notOk(policy.allows('https://management.azure.com'), 'exact means exact');
  t.ok(policy.allows('api://my-app/.default'));
  t.notOk(policy.allows('https://*.vault.azure.net/x'), 'only a trailing * is a wildcard');
  t.ok(new ResourcePolicy([]).allows('anything'), 'no patterns: everything');

  const stack = await startStack({ proxy: { allowResource: ['https://management.azure.com/', 'https://vault.azure.net*'] } });
  t.teardown(stack.close);
  t.equal((await stack.get(armTokenPath())).status, 200);
  t.equal((await stack.get(tokenPath('api-version=2018-02-01&resource=https://vault.azure.net/'))).status, 200);
  const refused = await stack.get(tokenPath('api-version=2018-02-01&resource=https://graph.microsoft.com'));
  t.equal(refused.status, 403);
  t.same(refused.json, { error: 'invalid_request', error_description: "This resource is not allowed by the proxy's --allow-resource policy" });
  t.equal(stack.emulator.stats().tokensIssued, 2, 'the refused resource never reached the upstream');
});

t.test('limits are off by default: a burst on one listener is all served', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  await stack.get(armTokenPath());
  const burst = await Promise.all(Array.from({ length: 100 }, () => stack.get(armTokenPath())));
  t.ok(burst.every((r) => r.status === 200));
});

t.test("--rate-limit imds: 20 per second, then IMDS's 429 with Retry-After", async (t) => {
  const stack = await startStack({ proxy: { rateLimit: 20 } });
  t.teardown(stack.close);
  await stack.get(armTokenPath());
  const started = performance.now();
  const burst = await Promise.all(Array.from({ length: 40 }, () => stack.get(armTokenPath())));
  const seconds = (performance.now() - started) / 1000;
  const limited = burst.filter((r) => r.status === 429);
  // A second's worth (20) at once, plus what refilled while the burst was arriving (on a busy machine, that
  // takes a while): the exact rule is tested on a fake clock below.
  const served = burst.length - limited.length;
  t.ok(served >= 19 && served <= 21 + Math.ceil(20 * seconds), `${served} of 40 served in ${seconds.toFixed(2)} s, the rest refused`);
  t.ok(limited.length > 0, 'some refused');
  t.same(limited[0]?.json, IMDS_429);
  t.equal(limited[0]?.headers['retry-after'], '1');
  t.equal((await stack.get(armTokenPath(), {})).status, 400, 'a probe is never throttled: it is answered at the gate');
  await new Promise((r) => setTimeout(r, 1100));
  t.equal((await stack.get(armTokenPath())).status, 200, 'the bucket refills');
});

t.test('--concurrency-limit: in flight at once, then 429', async (t) => {
  const stack = await startStack({ emulator: { latencyMs: 300 }, proxy: { concurrencyLimit: 5 } });
  t.teardown(stack.close);
  const replies = await Promise.all(
    Array.from({ length: 8 }, (_, i) => stack.get(tokenPath(`api-version=2018-02-01&resource=https://r${i}.example`))),
  );
  t.equal(replies.filter((r) => r.status === 200).length, 5);
  t.equal(replies.filter((r) => r.status === 429).length, 3);
  t.equal(stack.emulator.stats().tokensIssued, 5, 'refused requests never reached the upstream');
  t.equal((await stack.get(tokenPath('api-version=2018-02-01&resource=https://r0.example'))).status, 200, 'slots are released');
});

t.test('limits are per listener', async (t) => {
  const two = {
    listen: [
      { kind: 'tcp', host: '127.0.0.1', port: 0 },
      { kind: 'tcp', host: '127.0.0.1', port: 0 },
    ] as const,
    rateLimit: 2,
  };
  const stack = await startStack({ proxy: two });
  t.teardown(stack.close);
  const second = stack.proxy.addresses[1]!;
  const port2 = second.kind === 'tcp' ? second.port : 0;
  for (let i = 0; i < 2; i++) t.equal((await stack.get(armTokenPath())).status, 200);
  t.equal((await stack.get(armTokenPath())).status, 429, 'the first listener is spent');
  const other = await raw(port2, `GET ${armTokenPath()} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nConnection: close\r\n\r\n`);
  t.match(other, /^HTTP\/1\.1 200 /, 'the second has its own budget');
});

t.test('the token bucket', async (t) => {
  let now = 0;
  const limits = new ListenerLimits({ rateLimit: 2, concurrencyLimit: undefined }, () => now);
  t.ok(limits.acquire() && limits.acquire());
  t.notOk(limits.acquire(), 'burst of one second');
  now += 500;
  t.ok(limits.acquire(), 'refills continuously');
  t.notOk(limits.acquire());
  t.notOk(new ListenerLimits({ rateLimit: undefined, concurrencyLimit: undefined }).enabled);
});

t.test('URL, header and connection caps; slow senders', async (t) => {
  const stack = await startStack({ proxy: { maxConnections: 3, headersTimeoutMs: 300 } });
  t.teardown(stack.close);
  const longUrl = await raw(
    stack.port,
    `GET ${tokenPath(`api-version=2018-02-01&resource=${'r'.repeat(9000)}`)} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n`,
  );
  t.match(longUrl, /^HTTP\/1\.1 414 /, 'URL over 8 KiB: 414');
  const manyHeaders = Array.from({ length: 120 }, (_, i) => `X-H${i}: v`).join('\r\n');
  const many = await raw(stack.port, `GET ${armTokenPath()} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n${manyHeaders}\r\nConnection: close\r\n\r\n`);
  t.match(many, /^HTTP\/1\.1 431 /, 'more than 100 headers: 431, on every Node version');
  const huge = await raw(stack.port, `GET ${armTokenPath()} HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(17_000)}\r\n\r\n`);
  t.match(huge, /^HTTP\/1\.1 431 /, 'header block over 16 KiB: 431');

  // Slowloris: a header block that never ends is cut off at --headers-timeout.
  const slow = net.connect(stack.port, '127.0.0.1');
  slow.write('GET / HTTP/1.1\r\nHost: x\r\n');
  const started = performance.now();
  const answer = await new Promise<string>((resolve) => {
    let text = '';
    slow.on('data', (d) => (text += d.toString()));
    slow.on('close', () => resolve(text));
    const drip = setInterval(() => slow.writable && slow.write('X-Drip: 1\r\n'), 50);
    slow.on('close', () => clearInterval(drip));
  });
  t.match(answer, /^HTTP\/1\.1 408 /, 'a dripping header block gets 408 and is closed');
  t.ok(performance.now() - started < 5000, "soon after the deadline, not after Node's default 30 s check");

  // Connection cap: the fourth concurrent connection is closed at once.
  const open = await Promise.all(
    Array.from(
      { length: 3 },
      () =>
        new Promise<net.Socket>((resolve) => {
          const s = net.connect(stack.port, '127.0.0.1', () => resolve(s));
        }),
    ),
  );
  t.teardown(() => {
    for (const s of open) s.destroy();
  });
  await new Promise((r) => setTimeout(r, 50));
  const fourth = await raw(stack.port, `GET ${armTokenPath()} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n`, 200).catch(() => '');
  t.equal(fourth, '', 'refused: closed without an answer');
  for (const s of open) s.destroy();
  await new Promise((r) => setTimeout(r, 50));
  t.match(
    await raw(stack.port, `GET ${armTokenPath()} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nConnection: close\r\n\r\n`),
    /^HTTP\/1\.1 200 /,
    'served again once connections close',
  );
});
