// The token domain's own rules: request subjects and the reuse of rendered responses. Parsing and rendering
// the IMDS shape are tested with the upstream fetch (test/upstream/token-fetch.test.ts).
import t from 'tap';
import { makeToken, renderTokenResponse, tokenRequest, TokenResponses } from '../../src/values/token.js';

const token = (accessToken: string, expiresOn = 2000) => makeToken({ accessToken, expiresOn, notBefore: '', tokenType: 'Bearer', clientId: '' });

t.test('a request subject: the resource, plus the selector when there is one', async (t) => {
  t.equal(tokenRequest('r').subject, 'r', 'the system identity: the resource as sent');
  t.equal(tokenRequest('r', { kind: 'msi_res_id', value: '/x' }).subject, 'r\u0000msi_res_id\u0000/x');
  t.ok(Object.isFrozen(tokenRequest('r')), 'shared between requests, so immutable');
});

t.test('a rendered response is reused within its second, and only for the same token', async (t) => {
  const responses = new TokenResponses();
  const request = tokenRequest('https://vault.azure.net/\u00e9');
  const a = token('a');
  const first = responses.render(a, request, 1500.1);
  t.equal(first.body, renderTokenResponse(a, request, 1500), 'the same bytes as rendering afresh');
  t.equal(first.bytes, Buffer.byteLength(first.body), 'the length is in bytes, not characters');
  t.ok(first.bytes > first.body.length, '(the resource has a non-ASCII character)');
  t.equal(responses.render(a, request, 1500.9), first, 'the same second: the same rendering');
  const next = responses.render(a, request, 1501);
  t.not(next, first, 'the next second: rendered again');
  t.equal(JSON.parse(next.body).expires_in, '499', 'with expires_in counted down');
  const b = token('b', 3000);
  t.equal(JSON.parse(responses.render(b, request, 1501).body).access_token, 'b', 'a refreshed token is never answered with the old bytes');
  const other = tokenRequest('https://vault.azure.net/\u00e9', { kind: 'object_id', value: 'o' });
  t.equal(JSON.parse(responses.render(b, other, 1501).body).object_id, 'o', 'each request object has its own rendering');
});
