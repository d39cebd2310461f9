// arc_imds_token_earliest_expiry_seconds has no sample while nothing is cached (README: "absent when none"), not a
// 0 that the dashboard and ArcImdsTokenExpiringSoon would read as "a token expires now". The live test
// (live.test.ts) saw the 0 on a real sidecar; this pins it without a server.
import t from 'tap';
import { Metrics } from '../../src/observability/metrics.js';

t.test('the earliest-expiry gauge is absent while the cache is empty, present once a token is cached', async (t) => {
  let earliest: number | undefined;
  const metrics = new Metrics('0.0.0-test', {
    cacheEntries: () => 0,
    earliestExpirySeconds: () => earliest,
    fetchesInFlight: () => 0,
    ready: () => true,
  });
  const samples = async () => (await metrics.registry.metrics()).split('\n').filter((l) => l.startsWith('arc_imds_token_earliest_expiry_seconds'));
  t.same(await samples(), [], 'no sample with nothing cached');
  t.match(await metrics.registry.metrics(), /^# TYPE arc_imds_token_earliest_expiry_seconds gauge$/m, 'but the metric is declared');
  earliest = 1799.5;
  t.same(await samples(), ['arc_imds_token_earliest_expiry_seconds 1799.5'], 'the seconds once a token is cached');
  earliest = undefined;
  t.same(await samples(), [], 'and gone again when the cache empties');
});
