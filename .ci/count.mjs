// Usage: node .ci/count.mjs TAP_EXIT_STATUS FILE.tap...
// Prints "N passed, N failed[, N skipped]" over every test point in tap's per-file results, subtests
// flattened. If tap failed but no point did (a file crashed before reporting), that counts as one failure.
import { createReadStream } from 'node:fs';
import { Parser } from 'tap-parser';

const [status, ...files] = process.argv.slice(2);
let passed = 0;
let failed = 0;
let skipped = 0;

for (const file of files) {
  await new Promise((resolve) => {
    const parser = new Parser({ flat: true });
    parser.on('assert', (point) => {
      if (point.skip || point.todo) skipped++;
      else if (point.ok) passed++;
      else failed++;
    });
    parser.on('complete', (final) => {
      if (!final.ok && !final.fail) failed++; // bailed out or bad plan
      resolve();
    });
    createReadStream(file).pipe(parser);
  });
}
if (status !== '0' && failed === 0) failed = 1;
process.stdout.write(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
