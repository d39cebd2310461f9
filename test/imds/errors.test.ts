// The typed-failure -> IMDS answer mapping (src/imds/errors.ts) where it shares answers: a flood of refusals at
// the fetch bound, or of clients gone, allocates no error per request.
import t from 'tap';
import { imdsErrorOf } from '../../src/imds/errors.js';
import { FetchFailure } from '../../src/values/failures.js';

t.test('refusals at the fetch bound: one answer per failure, with its message', async (t) => {
  const bound = new FetchFailure('saturated', '272 token fetches are already queued or running');
  const first = imdsErrorOf(bound);
  t.equal(first?.code, 'upstream_saturated');
  t.equal(first?.detail, bound.message, "the cache's message is the detail");
  t.equal(imdsErrorOf(bound), first, 'the same failure again: the same answer, not a new one');
  const other = new FetchFailure('saturated', '16 token fetches are already queued or running');
  t.not(imdsErrorOf(other), first, "another cache's failure: its own answer");
  t.equal(imdsErrorOf(other)?.detail, other.message);
});

t.test('clients gone: one answer for all', async (t) => {
  const a = imdsErrorOf(new FetchFailure('abandoned', 'gone'));
  t.equal(a?.code, 'client_closed');
  t.equal(imdsErrorOf(new FetchFailure('abandoned', 'gone too')), a);
});
