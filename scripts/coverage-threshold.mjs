// @ts-check
// tap 21 enforces either 100% coverage or nothing. We hold an explicit, honest floor instead: the numbers in
// package.json "coverageThreshold", checked against tap's json-summary after every `npm test`.
import { readFileSync } from 'node:fs';

const { coverageThreshold } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
let summary;
try {
  summary = JSON.parse(readFileSync(new URL('../.tap/report/coverage-summary.json', import.meta.url), 'utf8'));
} catch {
  console.error('coverage: no .tap/report/coverage-summary.json (did tap run with coverage?)');
  process.exit(1);
}
const failures = [];
for (const [metric, floor] of Object.entries(coverageThreshold)) {
  const pct = summary.total[metric]?.pct ?? 0;
  if (pct < floor) failures.push(`${metric} ${pct}% < ${floor}%`);
}
if (failures.length > 0) {
  console.error(`coverage below the floor in package.json: ${failures.join(', ')}`);
  process.exit(1);
}
console.log(
  `coverage ok: ${Object.keys(coverageThreshold)
    .map((m) => `${m} ${summary.total[m].pct}%`)
    .join(', ')}`,
);
