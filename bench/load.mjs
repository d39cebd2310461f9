#!/usr/bin/env node
// One throughput run in a process of its own: a warm-up, then the measured run, printed as one JSON line.
// bench/run.mjs starts one per run. A load generator reused across runs carries its state from one to the
// next: after autocannon had run at 1 and 10 connections in the same process, both the bare server and the
// proxy measured at 100 connections came out 10-20% slower than from a fresh process (measured on this 2-core
// machine; the proxy, which leaves the generator idle more often, lost the most). A fresh process per run
// makes every figure independent of what ran before it.
//
//   node bench/load.mjs '{"url":..., "path":..., "socketPath":..., "headers":..., "connections":N,
//                         "serverPid":PID, "warmup":SECONDS, "duration":SECONDS | "amount":N, "warmupAmount":N}'
import { cannon } from './lib.mjs';

const spec = JSON.parse(process.argv[2] ?? '{}');
const base = { url: spec.url, socketPath: spec.socketPath, path: spec.path, headers: spec.headers, connections: spec.connections };
if (spec.warmup || spec.warmupAmount) {
  await cannon({ ...base, ...(spec.warmupAmount ? { amount: spec.warmupAmount } : { duration: spec.warmup }), latencies: false });
}
const run = await cannon({
  ...base,
  ...(spec.amount ? { amount: spec.amount } : { duration: spec.duration }),
  serverPid: spec.serverPid,
  latencies: true,
});
process.stdout.write(`${JSON.stringify(run)}\n`);
