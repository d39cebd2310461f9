// Upstream failures, each mapped to an answer IMDS clients retry (or not) correctly, with the proxy staying up.
// Scripted upstreams play what the emulator does not: hangs, resets, garbage, hostile realms.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { makeToken, renderTokenResponse } from '../../src/values/token.js';
import { parseToken } from '../../src/upstream/token-fetch.js';
import { armTokenPath, scriptedUpstream, startStack } from '../fixtures/stack.js';

const json =
  (status: number, body: unknown, headers: Record<string, string> = {}) =>
  (_req: unknown, res: import('node:http').ServerResponse) => {
    res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
    res.end(typeof body === 'string' ? body : JSON.stringify(body));
  };
const future = () => String(Math.floor(Date.now() / 1000) + 3600);
const goodToken = () => ({ access_token: 'opaque-token', expires_on: future(), token_type: 'Bearer', resource: '' });

/** A stack whose upstream is a scripted server; returns both. */
async function scripted(t: Test, handler: Parameters<typeof scriptedUpstream>[0], proxy = {}) {
  const upstream = await scriptedUpstream(handler);
  const stack = await startStack({ upstream: upstream.url, proxy: { upstreamTimeoutMs: 300, requestTimeoutMs: 3000, ...proxy } });
  t.teardown(async () => {
    await stack.close();
    await upstream.close();
  });
  return { upstream, stack };
}

t.test('connection refused: 503, retried, within the deadline', async (t) => {
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const stack = await startStack({ upstream: `http://127.0.0.1:${port}` });
  t.teardown(stack.close);
  const reply = await stack.get(armTokenPath());
  t.equal(reply.status, 503);
  t.equal(reply.json.error, 'temporarily_unavailable');
  t.match(reply.json.error_description, /connection refused/);
  t.equal(stack.logs.filter((l) => l.includes('retrying')).length, 2, 'two retries were logged');
});

t.test('upstream hangs: each attempt has a deadline, the client an answer', async (t) => {
  const { stack, upstream } = await scripted(t, () => undefined /* never answers */);
  const reply = await stack.get(armTokenPath());
  t.equal(reply.status, 503);
  t.match(reply.json.error_description, /in time/);
  t.equal(upstream.requests.length, 3, 'three attempts, each abandoned at its deadline');
});

t.test('the request deadline caps retries', async (t) => {
  const { stack, upstream } = await scripted(t, () => undefined, { upstreamTimeoutMs: 1000, requestTimeoutMs: 1000 });
  const reply = await stack.get(armTokenPath());
  t.equal(reply.status, 503);
  t.equal(upstream.requests.length, 1, 'no retry once the request deadline has passed');
});

t.test('429 and 503 keep their status and Retry-After', async (t) => {
  const throttled = await scripted(t, json(429, { error: 'throttled' }, { 'Retry-After': '7' }));
  const r429 = await throttled.stack.get(armTokenPath());
  t.equal(r429.status, 429);
  t.equal(r429.headers['retry-after'], '7');
  t.same(r429.json, { error: 'invalid_request', error_description: 'Temporarily throttled, too many requests' });
  t.equal(throttled.upstream.requests.length, 1, 'a throttled upstream is not hammered with retries');

  const busy = await scripted(t, json(503, { error: 'starting' }, { 'Retry-After': '3' }));
  const r503 = await busy.stack.get(armTokenPath());
  t.equal(r503.status, 503);
  t.equal(r503.headers['retry-after'], '3');
  t.equal(busy.upstream.requests.length, 3, '503 (HIMDS after boot) is retried before giving up');
});

t.test('a 503 that passes is invisible to the client', async (t) => {
  const stack = await startStack({ emulator: { failNext: 1, failStatus: 503 } });
  t.teardown(stack.close);
  const reply = await stack.get(armTokenPath());
  t.equal(reply.status, 200);
  t.equal(stack.emulator.stats().injectedFailures, 1);
  t.equal(stack.emulator.stats().tokensIssued, 1);
});

t.test('HIMDS starting up (503 for a while) then recovering', async (t) => {
  const stack = await startStack({ emulator: { startupUnavailableMs: 150 } });
  t.teardown(stack.close);
  const reply = await stack.get(armTokenPath());
  t.equal(reply.status, 200, 'retried past the start-up window');
});

t.test('the challenge', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-fetch-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const keyFile = path.join(dir, '1b4e28ba-2fa1-11d2-883f-0016d3cca427.key');

  t.test('a second 401 is an error, never a loop', async (t) => {
    await writeFile(keyFile, 'the-key');
    const { stack, upstream } = await scripted(
      t,
      (_req, res) => {
        res.writeHead(401, { 'Www-Authenticate': `Basic realm=${keyFile}` });
        res.end('{}');
      },
      { tokensDir: dir },
    );
    const reply = await stack.get(armTokenPath());
    t.equal(reply.status, 500);
    t.match(reply.json.error_description, /rejected the key/);
    t.equal(upstream.requests.length, 2, 'exactly one authorized retry');
    t.equal(upstream.requests[1]!.headers.authorization, 'Basic the-key', 'the raw file contents, not base64');
    t.notMatch(reply.text, /the-key/, 'the key never reaches the client');
    t.notOk(
      stack.logs.some((l) => l.includes('the-key')),
      'nor the logs',
    );
  });

  t.test('hostile realms are refused and nothing is read', async (t) => {
    for (const realm of ['/etc/passwd', `${dir}/../${path.basename(dir)}/x.key`, `${dir}/x y.key`, '']) {
      const { stack, upstream } = await scripted(
        t,
        (_req, res) => {
          res.writeHead(401, { 'Www-Authenticate': `Basic realm=${realm}` });
          res.end();
        },
        { tokensDir: dir },
      );
      const reply = await stack.get(armTokenPath());
      t.equal(reply.status, 500, `realm ${JSON.stringify(realm)}`);
      t.equal(reply.json.error, 'challenge_failed');
      t.notMatch(reply.text, /root:/);
      t.equal(upstream.requests.length, 1, 'no authorized request follows');
    }
  });

  t.test('401 without a realm', async (t) => {
    const { stack } = await scripted(t, json(401, { error: 'no' }), { tokensDir: dir });
    const reply = await stack.get(armTokenPath());
    t.equal(reply.status, 500);
    t.match(reply.json.error_description, /without a (single Www-Authenticate header|Basic realm)/);
  });

  t.test('the key deleted between the 401 and the read', async (t) => {
    const gone = path.join(dir, '00000000-0000-0000-0000-000000000000.key');
    const { stack } = await scripted(
      t,
      (_req, res) => {
        res.writeHead(401, { 'Www-Authenticate': `Basic realm=${gone}` });
        res.end();
      },
      { tokensDir: dir },
    );
    const reply = await stack.get(armTokenPath());
    t.equal(reply.status, 500);
    t.match(reply.json.error_description, /does not exist/);
  });
});

t.test('unusable upstream answers', async (t) => {
  const cases: [string, Parameters<typeof scriptedUpstream>[0], number, RegExp][] = [
    ['non-JSON 200', (_q, s) => s.end('not json'), 502, /not a JSON object/],
    [
      'HTML 200',
      (_q, s) => {
        s.writeHead(200, { 'Content-Type': 'text/html' });
        s.end('<html>hi</html>');
      },
      502,
      /not a JSON object/,
    ],
    ['JSON array', json(200, [1, 2]), 502, /not a JSON object/],
    ['no access_token', json(200, { expires_on: future() }), 502, /no access_token/],
    ['no expiry', json(200, { access_token: 'x' }), 502, /expires_on/],
    ['expired', json(200, { access_token: 'x', expires_on: '1000' }), 502, /already expired/],
    ['huge body', (_q, s) => s.end('x'.repeat(100_000)), 502, /larger than/],
    ['500 with a description', json(500, { error: 'boom', error_description: 'disk on fire' }), 500, /500: disk on fire/],
    [
      'a 400 about our api-version is not final',
      json(400, { error: 'invalid_request', error_description: 'Invalid API version' }),
      500,
      /check --himds-api-version/,
    ],
    ['400 passed on', json(400, { error: 'invalid_resource', error_description: 'AADSTS500011: resource principal not found' }), 400, /AADSTS500011/],
    ['unexpected 404', json(404, { error: 'nope' }), 502, /unexpected status 404/],
    [
      'reset mid-response',
      (_q, s) => {
        s.writeHead(200, { 'Content-Length': '100' });
        s.write('{"access');
        setTimeout(() => s.socket?.destroy(), 10);
      },
      503,
      /reset|in time/,
    ],
  ];
  for (const [name, handler, status, description] of cases) {
    const { stack } = await scripted(t, handler);
    const reply = await stack.get(armTokenPath());
    t.equal(reply.status, status, `${name}: status`);
    t.match(reply.json?.error_description, description, `${name}: description`);
    t.equal((await stack.get(armTokenPath())).status, status, `${name}: the proxy is still up and consistent`);
  }
});

t.test('a relay upstream answers 200 at once (no challenge), in the IMDS shape', async (t) => {
  const { stack, upstream } = await scripted(
    t,
    json(200, { ...goodToken(), expires_on: undefined, expires_in: '600', resource: 'x', client_id: 'echoed' }),
  );
  const reply = await stack.get(armTokenPath());
  t.equal(reply.status, 200);
  t.equal(reply.json.access_token, 'opaque-token');
  t.equal(reply.json.client_id, 'echoed', 'an opaque token: client_id from the echo');
  t.ok(Math.abs(Number(reply.json.expires_on) - (Date.now() / 1000 + 600)) < 3, 'expires_in alone is enough');
  t.equal(upstream.requests.length, 1);
  t.notOk(upstream.requests[0]!.headers.authorization);
});

t.test('token parsing and rendering', async (t) => {
  const token = parseToken(JSON.stringify({ access_token: 'a"b', expires_on: 2000, not_before: 1000 }), undefined, 1500);
  t.equal(token.notBefore, '1000', 'numeric fields are accepted and shown as strings');
  const text = renderTokenResponse(token, { resource: 'r"\u2028', selector: undefined }, 1500.9);
  t.same(JSON.parse(text), {
    access_token: 'a"b',
    client_id: '',
    expires_in: '500',
    expires_on: '2000',
    ext_expires_in: '500',
    not_before: '1000',
    resource: 'r"\u2028',
    token_type: 'Bearer',
  });
  const expired = renderTokenResponse(
    makeToken({ accessToken: 'x', expiresOn: 10, notBefore: '', tokenType: 'Bearer', clientId: '' }),
    { resource: 'r', selector: undefined },
    20,
  );
  t.equal(JSON.parse(expired).expires_in, '0', 'never negative');
  const byObject = renderTokenResponse(token, { resource: 'r', selector: { kind: 'object_id', value: 'o-1' } }, 1500);
  t.equal(JSON.parse(byObject).object_id, 'o-1', 'an object_id selection is echoed, so a sidecar behind a relay can confirm it');
  t.same(
    Object.keys(JSON.parse(byObject)).slice(0, 8),
    ['access_token', 'client_id', 'expires_in', 'expires_on', 'ext_expires_in', 'not_before', 'resource', 'token_type'],
    'IMDS field order',
  );
  const byClient = renderTokenResponse(token, { resource: 'r', selector: { kind: 'client_id', value: 'c-1' } }, 1500);
  t.equal(byClient.split('"client_id"').length - 1, 1, 'a client_id selection is not echoed twice (client_id is always there)');
  t.throws(() => parseToken(JSON.stringify({ access_token: 'x', expires_on: 2000 }), { kind: 'object_id', value: 'o' }, 1500), {
    code: 'upstream_identity',
  });
  t.equal(
    parseToken(JSON.stringify({ access_token: 'x', expires_on: 2000, mi_res_id: '/R' }), { kind: 'msi_res_id', value: '/r' }, 1500).accessToken,
    'x',
    'an agent echoing mi_res_id is accepted, case-insensitively',
  );
});
