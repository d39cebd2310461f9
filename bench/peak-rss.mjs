// @ts-check
// Preloaded (node --import) into a one-shot command by bench/footprint.mjs: when the process exits, it writes
// its peak resident set (VmHWM in /proc/self/status, KiB) to the file named by BENCH_PEAK_RSS_FILE.
import { readFileSync, writeFileSync } from 'node:fs';

const out = process.env.BENCH_PEAK_RSS_FILE;
if (out) {
  process.once('exit', () => {
    const kib = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
    writeFileSync(out, String(kib ?? ''));
  });
}
