// A warning that comes in floods: one line per interval, and the count of every warning reaches the log,
// including the tail of a flood that stops inside an interval. A real pino logger writes into a capture.
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { createLogger } from '../../src/observability/log.js';
import { SINCE_LAST_LINE, ThrottledWarning } from '../../src/observability/throttled-warning.js';

function capture() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { lines, log: createLogger('info', stream) };
}

/** Poll until `check` holds (the interval is real time; nothing here asserts how long it took). */
async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !check(); i++) await sleep(10);
  if (!check()) throw new Error(`never: ${what}`);
}

const counted = (lines: Record<string, unknown>[]) =>
  lines.reduce((n, l) => n + (typeof l[SINCE_LAST_LINE] === 'number' ? (l[SINCE_LAST_LINE] as number) : 1), 0);

t.test('the first warning is written at once; the rest of its interval becomes one line with their count', async (t) => {
  const { lines, log } = capture();
  const w = new ThrottledWarning(log, 'request failed', 200);
  for (let i = 0; i < 50; i++) w.warn({ url: `/r${i}`, code: 'upstream_saturated' });
  t.equal(lines.length, 1, 'one line during the flood');
  t.match(lines[0], { level: 'warn', msg: 'request failed', url: '/r0', code: 'upstream_saturated' });
  t.notOk(SINCE_LAST_LINE in lines[0]!, 'the first line stands for itself');
  // The flood stopped inside the interval: its tail is summed up when the interval ends, with no new warning.
  await until('the summary line', () => lines.length === 2);
  t.match(lines[1], { level: 'warn', msg: 'request failed', url: '/r49', [SINCE_LAST_LINE]: 49 });
  t.equal(counted(lines), 50, 'every warning is counted in the log');
  await sleep(300);
  t.equal(lines.length, 2, 'nothing more without new warnings');
});

t.test('a steady flood: at most one line per interval, and the counts add up', async (t) => {
  const { lines, log } = capture();
  const w = new ThrottledWarning(log, 'request failed', 100);
  const started = performance.now();
  let sent = 0;
  while (performance.now() - started < 450) {
    w.warn({ n: sent++ });
    await sleep(5);
  }
  const elapsedIntervals = (performance.now() - started) / 100;
  t.ok(lines.length <= Math.ceil(elapsedIntervals) + 1, `${lines.length} lines for ${sent} warnings over ${elapsedIntervals.toFixed(1)} intervals`);
  w.close();
  t.equal(counted(lines), sent, 'close() writes what was still counted: every warning is in the log');
});

t.test('after a quiet interval, the next warning is written at once again; close() with nothing due writes nothing', async (t) => {
  const { lines, log } = capture();
  const w = new ThrottledWarning(log, 'request failed', 50);
  w.warn({ n: 1 });
  await sleep(80);
  w.warn({ n: 2 });
  t.same(
    lines.map((l) => l.n),
    [1, 2],
    'both written as they came',
  );
  w.close();
  t.equal(lines.length, 2, 'close() had nothing to add');
});
