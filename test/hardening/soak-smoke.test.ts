// `npm run soak` end to end at a tiny scale: it starts its processes, drives mixed traffic through a fault
// cycle, reports, and cleans up. (The real soak is `npm run soak`: 10 minutes, judged by its own summary.)
import { spawn } from 'node:child_process';
import path from 'node:path';
import t from 'tap';

t.test('the soak runs, reports and stops by itself', async (t) => {
  const child = spawn(process.execPath, [path.resolve('scripts/soak.mjs')], {
    env: { ...process.env, SOAK_SECONDS: '6', SOAK_WORKERS: '4' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  clearTimeout(timer);
  const summary = JSON.parse(out.slice(out.indexOf('{\n'), out.lastIndexOf('}') + 1));
  t.ok(summary.requests > 100, `traffic flowed (${summary.requests} requests)`);
  t.equal(summary.unexpected, 0, `no unexpected answers: ${JSON.stringify(summary.unexpectedSamples)}`);
  t.ok(summary.proxyAlive, 'the proxy survived');
  t.ok(
    summary.upstreamTokenFetches >= 1 && summary.upstreamTokenFetches <= summary.distinctResources + 5,
    'upstream fetches bounded by distinct resources',
  );
  t.ok(summary.rssMb.max > 0, 'RSS was sampled');
  t.match(out, /soak: (passed|FAILED)/);
  t.equal(code, summary.unexpected === 0 && summary.rssMb.growthMb <= 15 ? 0 : 1, 'the exit status follows the verdict');
});
