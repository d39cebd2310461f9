// The IMDS contract at the front door. Every rejected request must be answered without touching the
// upstream: the emulator's counters stay at zero for all of them.
import t from 'tap';
import { Gate, isAcceptedApiVersion, normalisePath, parseQuery } from '../../src/imds/gate.js';
import { ImdsError } from '../../src/imds/errors.js';
import { ARM, armTokenPath, raw, startStack, TOKEN_PATH } from '../fixtures/stack.js';

const METADATA_BODY = { error: 'invalid_request', error_description: 'Required metadata header not specified' };

t.test('rejections, each answered without reaching the upstream', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  const reject = async (
    name: string,
    p: string,
    headers: Record<string, string> | undefined,
    status: number,
    check?: (json: any) => void,
    method?: string,
  ) => {
    const reply = await stack.get(p, headers, method);
    t.equal(reply.status, status, `${name}: status`);
    t.match(reply.headers['content-type'], /^application\/json; charset=utf-8$/, `${name}: content type`);
    t.type(reply.json, 'object', `${name}: JSON body`);
    check?.(reply.json);
  };

  await reject('POST', armTokenPath(), { Metadata: 'true' }, 405, undefined, 'POST');
  await reject('DELETE', armTokenPath(), { Metadata: 'true' }, 405, undefined, 'DELETE');
  await reject('X-Forwarded-For', armTokenPath(), { Metadata: 'true', 'X-Forwarded-For': '10.0.0.1' }, 400, (j) =>
    t.match(j.error_description, /X-Forwarded-For/),
  );
  await reject('no Metadata', armTokenPath(), {}, 400, (j) => t.same(j, METADATA_BODY));
  await reject('Metadata: false', armTokenPath(), { Metadata: 'false' }, 400, (j) => t.same(j, METADATA_BODY));
  await reject('bare probe path (@azure/identity probe)', TOKEN_PATH, { Accept: 'application/json' }, 400, (j) => {
    t.same(j, METADATA_BODY);
    t.notMatch(JSON.stringify(j), /Identity not found|unreachable/, 'probe answer is what .NET and JS expect');
  });
  await reject('unknown path', '/metadata/scheduledevents?api-version=2020-07-01', { Metadata: 'true' }, 404);
  await reject('root', '/', { Metadata: 'true' }, 404);
  await reject('agentstatus is not exposed', '/agentstatus?api-version=2020-06-01', { Metadata: 'true' }, 404);
  // Sent raw: an HTTP client library would normalise these paths before sending them.
  for (const p of [
    '/metadata/instance/../identity/oauth2/token?api-version=2018-02-01&resource=x',
    '/metadata/instance/./compute?api-version=2018-02-01',
    '/metadata/instance/%2e%2e/identity?api-version=2018-02-01',
    '/metadata/instance/compute%2f..?api-version=2018-02-01',
    '/metadata//instance?api-version=2018-02-01',
    `${TOKEN_PATH}//?api-version=2018-02-01&resource=x`,
    'http://169.254.169.254/metadata/instance/../identity?api-version=2018-02-01',
  ]) {
    const answer = await raw(stack.port, `GET ${p} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nConnection: close\r\n\r\n`);
    t.match(answer, /^HTTP\/1\.1 404 /, `${p}: 404`);
  }
  await reject('duplicate resource', `${TOKEN_PATH}?api-version=2018-02-01&resource=a&resource=b`, { Metadata: 'true' }, 400, (j) =>
    t.match(j.error_description, /Duplicate query parameter: resource/),
  );
  await reject('duplicate api-version', `${TOKEN_PATH}?api-version=2018-02-01&api-version=2018-02-01&resource=a`, { Metadata: 'true' }, 400);
  await reject('bad percent-encoding', `${TOKEN_PATH}?api-version=2018-02-01&resource=%E0%A4%A`, { Metadata: 'true' }, 400, (j) =>
    t.match(j.error_description, /percent-encoding/),
  );
  await reject('invalid UTF-8', `${TOKEN_PATH}?api-version=2018-02-01&resource=%C3%28`, { Metadata: 'true' }, 400);
  await reject('NUL in a value', `${TOKEN_PATH}?api-version=2018-02-01&resource=a%00b`, { Metadata: 'true' }, 400, (j) =>
    t.match(j.error_description, /control characters/),
  );
  await reject('CR LF in a value', `${TOKEN_PATH}?api-version=2018-02-01&resource=a%0d%0aX-Injected:%201`, { Metadata: 'true' }, 400);
  await reject('control char in a name', `${TOKEN_PATH}?api-version=2018-02-01&resource=a&x%07=1`, { Metadata: 'true' }, 400);
  for (const v of ['', '2017-12-01', '2018-01-31', '2018-2-01', '2018-13-01', '2018-02-32', 'latest', '2018-02-01x']) {
    await reject(`token api-version '${v}'`, `${TOKEN_PATH}?api-version=${v}&resource=x`, { Metadata: 'true' }, 400, (j) =>
      t.match(j.error_description, /api-version is invalid/),
    );
  }
  await reject('token without api-version', `${TOKEN_PATH}?resource=x`, { Metadata: 'true' }, 400);
  await reject('instance without api-version', '/metadata/instance', { Metadata: 'true' }, 400, (j) => {
    t.match(j.error, /api-version is invalid or was not specified/);
    t.same(j['newest-versions'], ['2025-04-07', '2024-07-17', '2024-03-15']);
  });

  // Bodies: never read, never forwarded, and the connection is closed.
  const withLength = await raw(stack.port, `GET ${armTokenPath()} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nContent-Length: 5\r\n\r\nhello`);
  t.match(withLength, /^HTTP\/1\.1 400 /, 'Content-Length > 0 is a 400');
  t.match(withLength, /Connection: close/i, 'and the connection is closed');
  t.match(withLength, /must not carry a body/);
  const chunked = await raw(
    stack.port,
    `GET ${armTokenPath()} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
  );
  t.match(chunked, /^HTTP\/1\.1 400 /, 'any Transfer-Encoding is a 400');
  const zeroLength = await stack.get(armTokenPath(), { Metadata: 'true', 'Content-Length': '0' });
  t.equal(zeroLength.status, 200, 'Content-Length: 0 is no body');

  const stats = stack.emulator.stats();
  t.equal(stats.challenges, 1, 'only the one valid request reached the upstream: one challenge');
  t.equal(stats.tokenRequests, 2, 'and its two legs');
  t.equal(stats.tokensIssued, 1);
  t.equal(stats.metadataRequests, 0);
});

t.test('a probe is answered at once even while the upstream hangs', async (t) => {
  const stack = await startStack({ emulator: { latencyMs: 60_000 } });
  t.teardown(stack.close);
  const started = performance.now();
  const reply = await stack.get(TOKEN_PATH, { Accept: 'application/json' });
  t.equal(reply.status, 400);
  t.ok(performance.now() - started < 1000, 'well inside the SDK probe timeout of 1 s');
  t.equal(stack.emulator.stats().tokenRequests, 0);
});

t.test('accepted shapes', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  const accept = async (name: string, p: string) => {
    const reply = await stack.get(p);
    t.equal(reply.status, 200, name);
    return reply;
  };
  await accept(
    'trailing slash (msal-node with AZURE_POD_IDENTITY_AUTHORITY_HOST)',
    `${TOKEN_PATH}/?api-version=2018-02-01&resource=${encodeURIComponent(ARM)}`,
  );
  await accept(
    'a leading // (AZURE_POD_IDENTITY_AUTHORITY_HOST ending in /)',
    `//Metadata/identity/oauth2/token/?api-version=2018-02-01&resource=${encodeURIComponent(ARM)}`,
  );
  await accept('/Metadata in another case', `/METADATA/identity/oauth2/token?api-version=2018-02-01&resource=${encodeURIComponent(ARM)}`);
  const rawResource = await accept('resource unencoded (Python)', `${TOKEN_PATH}?api-version=2018-02-01&resource=https://management.azure.com/`);
  t.equal(rawResource.json.resource, ARM);
  const newer = await accept('newer api-version', `${TOKEN_PATH}?api-version=2025-04-07&resource=x`);
  t.equal(newer.json.resource, 'x');
  await accept('bodiless GET with a form content type (msal-node)', `${TOKEN_PATH}?api-version=2018-02-01&resource=x`);
  const plus = await accept('+ is a space', `${TOKEN_PATH}?api-version=2018-02-01&resource=a+b`);
  t.equal(plus.json.resource, 'a b');
  await accept('unknown parameters are ignored', `${TOKEN_PATH}?api-version=2018-02-01&resource=x&xms_cc=cp1&foo=`);
  const mixed = await stack.get(`${TOKEN_PATH}?api-version=2018-02-01&resource=x`, {
    Metadata: 'TRUE',
    'Content-Type': 'application/x-www-form-urlencoded',
  });
  t.equal(mixed.status, 200, 'Metadata value is case-insensitive; a content type alone is not a body');
});

t.test('malformed HTTP gets an IMDS-shaped 400 and the server stays up', async (t) => {
  const stack = await startStack();
  t.teardown(stack.close);
  const garbage = await raw(stack.port, 'NOT HTTP AT ALL\r\n\r\n');
  t.match(garbage, /^HTTP\/1\.1 400 /);
  t.match(garbage, /"error":"invalid_request"/);
  const big = await raw(stack.port, `GET ${TOKEN_PATH} HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
  t.match(big, /^HTTP\/1\.1 431 /, 'oversized headers');
  t.equal((await stack.get(armTokenPath())).status, 200, 'still serving');
});

t.test('gate helpers', async (t) => {
  t.equal(normalisePath('/MetaData/instance/'), '/metadata/instance');
  t.equal(normalisePath('/metadatax/instance'), '/metadatax/instance', 'only the whole /metadata segment');
  t.equal(normalisePath('/'), '/');
  t.ok(isAcceptedApiVersion('2018-02-01'));
  t.notOk(isAcceptedApiVersion(undefined));
  t.notOk(isAcceptedApiVersion('2018-00-10'));
  const q = parseQuery('a=1&&b=&c');
  t.same(q instanceof Map ? Object.fromEntries(q) : q, { a: '1', b: '', c: '' });
  t.type(parseQuery('=x'), ImdsError, 'empty name');
  const dup = parseQuery('%01x=1&%01x=2');
  t.type(dup, ImdsError);
  const weird = parseQuery('a\u00e9=1&a\u00e9=2');
  t.match(weird instanceof ImdsError ? weird.detail : '', '(unprintable name)', 'odd names are not echoed');
});

t.test('the gate keeps a decision from the second time a URL is asked for; a flood of distinct URLs keeps none', (t) => {
  const gate = new Gate();
  const head = (url: string) => ({ method: 'GET', url, headers: { metadata: 'true' }, rawHeaders: ['Metadata', 'true'] });
  for (let i = 0; i < 1000; i++) {
    const gated = gate.check(head(`${TOKEN_PATH}?api-version=2018-02-01&resource=https://flood-${i}.example/`));
    t.notOk(gated instanceof ImdsError, 'each distinct URL is gated');
  }
  t.equal(gate.memoised, 0, 'nothing kept for URLs asked for once');
  const hot = head(armTokenPath());
  const first = gate.check(hot);
  const second = gate.check(hot);
  t.same(second, first, 'the same decision both times');
  t.equal(gate.memoised, 1, 'kept from the second time');
  t.equal(gate.check(hot), second, 'and served from the memo afterwards (the same object)');
  t.end();
});
