// @ts-check
// Usage: node .ci/sum.mjs "N passed, N failed[, N skipped]"...
// Prints one such line with the counts summed. A line that is not in that form counts as one failure.
let passed = 0;
let failed = 0;
let skipped = 0;
for (const line of process.argv.slice(2)) {
  const m = /^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$/.exec(line.trim());
  if (!m) {
    failed++;
    continue;
  }
  passed += Number(m[1]);
  failed += Number(m[2]);
  skipped += Number(m[3] ?? 0);
}
if (process.argv.length <= 2) failed++;
process.stdout.write(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
