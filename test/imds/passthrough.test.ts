// Allowlisted metadata paths are streamed from the upstream, with the query rebuilt and HIMDS's api-version,
// none of the client's headers, and only end-to-end response headers.
import t from 'tap';
import { passthroughPath } from '../../src/imds/passthrough.js';
import { scriptedUpstream, startStack } from '../fixtures/stack.js';

t.test('instance and identity-info metadata from the emulator', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  const instance = await stack.get('/metadata/instance?api-version=2021-02-01');
  t.equal(instance.status, 200, 'a client api-version HIMDS would refuse is translated');
  t.match(instance.json.compute.resourceId, /Microsoft\.HybridCompute\/machines/);
  const compute = await stack.get('/Metadata/instance/compute/?api-version=2019-06-01&format=json');
  t.equal(compute.status, 200);
  t.equal(compute.json.osType, 'Linux');
  t.equal(compute.headers['content-type'], 'application/json; charset=utf-8');
  const info = await stack.get('/metadata/identity/info?api-version=2018-02-01');
  t.equal(info.status, 200);
  t.match(info.json.tenantId, /^[0-9a-f-]{36}$/);
  const unknownSub = await stack.get('/metadata/instance/network/interface?api-version=2021-02-01');
  t.equal(unknownSub.status, 404, "the upstream's own 404 is passed on");
  t.equal(stack.emulator.stats().metadataRequests, 3);
  t.equal(stack.emulator.stats().challenges, 0, 'metadata is never challenged');
});

t.test('what crosses the proxy, in both directions', async (t) => {
  const upstream = await scriptedUpstream((_req, res) => {
    res.writeHead(200, {
      'Content-Type': 'application/json',
      'X-Internal': 'secret-ish',
      'Set-Cookie': 'a=b',
      'Www-Authenticate': 'Basic realm=/var/opt/azcmagent/tokens/x.key',
      Connection: 'keep-alive',
      'Keep-Alive': 'timeout=5',
    });
    res.end('{"compute":{}}');
  });
  const stack = await startStack({ upstream: upstream.url });
  t.teardown(async () => {
    await stack.close();
    await upstream.close();
  });
  const reply = await stack.get('/metadata/instance/compute?api-version=2021-02-01&format=json&x=a%20b', {
    Metadata: 'true',
    Authorization: 'Bearer mine',
    Cookie: 'session=1',
    'X-Custom': '1',
    Connection: 'keep-alive, X-Custom',
  });
  t.equal(reply.status, 200);
  t.equal(reply.text, '{"compute":{}}');
  for (const h of ['x-internal', 'set-cookie', 'www-authenticate']) t.notOk(h in reply.headers, `${h} not passed back`);
  const seen = upstream.requests[0]!;
  t.equal(seen.url, '/metadata/instance/compute?api-version=2020-06-01&format=json&x=a%20b');
  t.equal(seen.headers.metadata, 'true');
  for (const h of ['authorization', 'cookie', 'x-custom']) t.notOk(h in seen.headers, `${h} not forwarded`);
});

t.test('upstream down: an IMDS-shaped 503', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  await stack.emulator.down();
  const reply = await stack.get('/metadata/instance?api-version=2021-02-01');
  t.equal(reply.status, 503);
  t.equal(reply.json.error, 'temporarily_unavailable');
  await stack.emulator.up();
  t.equal((await stack.get('/metadata/instance?api-version=2021-02-01')).status, 200, 'and back when it is');
});

t.test('an upstream that dies or stalls mid-body: a 5xx, never a truncated 200', async (t) => {
  let mode: 'die' | 'stall' = 'die';
  const upstream = await scriptedUpstream((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': '1000' });
    res.write('{"partial":');
    if (mode === 'die') setTimeout(() => res.socket?.destroy(), 20);
  });
  const stack = await startStack({ upstream: upstream.url, proxy: { upstreamTimeoutMs: 300 } });
  t.teardown(async () => {
    await stack.close();
    await upstream.close();
  });
  const died = await stack.get('/metadata/instance?api-version=2021-02-01');
  t.equal(died.status, 503, 'upstream died mid-body');
  t.equal(died.json.error, 'temporarily_unavailable');
  t.notMatch(died.text, /partial/, 'nothing of the partial body reaches the client');
  mode = 'stall';
  const stalled = await stack.get('/metadata/instance?api-version=2021-02-01');
  t.equal(stalled.status, 503, 'upstream stalled mid-body');
  t.match(stalled.json.error_description, /in time/);
  t.ok(Number(stalled.headers['retry-after']) >= 1, 'with Retry-After');
  const again = await stack.get('/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x', {});
  t.equal(again.status, 400, 'the proxy is still serving');
});

t.test('passthroughPath', async (t) => {
  const query = new Map([
    ['api-version', '2021-01-01'],
    ['format', 'text'],
    ['a b', 'c&d'],
  ]);
  t.equal(
    passthroughPath({ route: 'instance', path: '/metadata/instance', query }, '2020-06-01'),
    '/metadata/instance?api-version=2020-06-01&format=text&a%20b=c%26d',
  );
});
