// Usage: node test/e2e/figures.mjs FIGURES_FILE
// Prints what the e2e run measured ("NAME VALUE" lines written by run.sh and engine.sh), readably.
import { readFileSync } from 'node:fs';

const figures = Object.fromEntries(
  readFileSync(process.argv[2], 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(' ')),
);
const mb = (bytes) => `${(Number(bytes) / 1e6).toFixed(1)} MB`;
const kb = (kib) => (kib === undefined ? 'n/a' : `${(Number(kib) / 1024).toFixed(1)} MiB`);
const s = (ms) => (ms === undefined ? 'n/a' : `${(Number(ms) / 1000).toFixed(1)} s`);
if (figures.image_bytes) {
  console.log(`# image: ${mb(figures.image_bytes)}, of which the Dockerfile adds ${mb(figures.image_bytes - figures.base_bytes)} ` +
    `to its base (${mb(figures.base_bytes)}); built in ${figures.image_build_seconds} s`);
}
for (const kind of ['development', 'production']) {
  if (!(`up_to_token_ms_${kind}` in figures)) continue;
  console.log(`# ${kind}: up to first token ${s(figures[`up_to_token_ms_${kind}`])}; RSS relay ` +
    `${kb(figures[`relay_rss_kb_${kind}`])}, sidecar ${kb(figures[`sidecar_rss_kb_${kind}`])}; compose stop ${s(figures[`stop_ms_${kind}`])}`);
}
