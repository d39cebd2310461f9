// @ts-check
// Usage: node .ci/count.mjs TAP_EXIT_STATUS FILE.tap...
// Prints "N passed, N failed[, N skipped]" over every assertion in tap's per-file results. Subtests are walked
// recursively; a subtest's own closing point counts only when it was skipped, or failed without any failing
// assertion of its own (a crash, a timeout, a bad plan). If tap failed but nothing here did, that is a failure.
import { createReadStream } from 'node:fs';
import { Parser } from 'tap-parser';

const [status, ...files] = process.argv.slice(2);
const total = { passed: 0, failed: 0, skipped: 0 };

/** Count one parser's points into `total`; returns how many failures happened at or below it. */
function walk(parser) {
  const scope = { failures: 0 };
  const children = [];
  parser.on('child', (child) => children.push(walk(child)));
  parser.on('assert', (point) => {
    if (point.closingTestPoint) {
      const child = children.shift();
      if (point.skip) total.skipped++;
      else if (!point.ok && child && child.failures === 0) {
        total.failed++;
        scope.failures++;
      }
      if (child) scope.failures += child.failures;
      return;
    }
    if (point.skip || point.todo) total.skipped++;
    else if (point.ok) total.passed++;
    else {
      total.failed++;
      scope.failures++;
    }
  });
  return scope;
}

for (const file of files) {
  await new Promise((/** @type {(v?: unknown) => void} */ resolve) => {
    const parser = new Parser();
    const scope = walk(parser);
    parser.on('complete', (/** @type {any} */ final) => {
      if (!final.ok && scope.failures === 0) total.failed++; // bailed out, or the file's own plan failed
      resolve();
    });
    createReadStream(file).pipe(parser);
  });
}
if (status !== '0' && total.failed === 0) total.failed = 1;
process.stdout.write(`${total.passed} passed, ${total.failed} failed${total.skipped ? `, ${total.skipped} skipped` : ''}\n`);
