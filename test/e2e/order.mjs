// Usage: node test/e2e/order.mjs COMPOSE_FILE EVENTS_FILE
// Checks, on the engine's own container events (`docker events --format '{{json .}}'`), that every service was
// started only after what its depends_on in COMPOSE_FILE asks for: the dependency started
// (service_started), became healthy (service_healthy) or exited 0 (service_completed_successfully), after
// its own latest start before that. The latest start of each service is judged, so the same check fits a
// first `up` and a recovery after a reboot. Prints one "PASS ..." or "FAIL ..." line per edge.
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

const [file, eventsFile] = process.argv.slice(2);
const services = parse(readFileSync(file, 'utf8')).services;
const events = readFileSync(eventsFile, 'utf8')
  .split('\n')
  .filter((line) => line.trim() !== '')
  .map((line) => JSON.parse(line))
  .map((e) => ({
    service: e.Actor?.Attributes?.['com.docker.compose.service'],
    oneoff: e.Actor?.Attributes?.['com.docker.compose.oneoff'] === 'True',
    action: e.Action ?? e.status,
    exitCode: e.Actor?.Attributes?.exitCode,
    time: BigInt(e.timeNano),
  }))
  .filter((e) => e.service && !e.oneoff);

const starts = (service, before) =>
  events.filter((e) => e.service === service && e.action === 'start' && e.time < before).map((e) => e.time);
const last = (times) => times.reduce((a, b) => (b > a ? b : a), -1n);
const ready = {
  service_started: (e) => e.action === 'start',
  service_healthy: (e) => e.action === 'health_status: healthy',
  service_completed_successfully: (e) => e.action === 'die' && e.exitCode === '0',
};
const ms = (ns) => `${(Number(ns) / 1e6).toFixed(0)} ms`;

let lines = 0;
for (const [name, svc] of Object.entries(services)) {
  const deps = Array.isArray(svc.depends_on)
    ? Object.fromEntries(svc.depends_on.map((d) => [d, { condition: 'service_started' }]))
    : (svc.depends_on ?? {});
  for (const [dep, { condition = 'service_started' }] of Object.entries(deps)) {
    lines++;
    const what = `${name} starts after ${dep} is ${condition.replace(/^service_/, '').replace('_', ' ')}`;
    const started = last(starts(name, BigInt(Number.MAX_SAFE_INTEGER) * 1_000_000n));
    if (started < 0n) {
      console.log(`FAIL ${what}: ${name} never started`);
      continue;
    }
    const depStarted = last(starts(dep, started));
    const when = events.find((e) => e.service === dep && ready[condition](e) && e.time >= depStarted && e.time < started);
    if (depStarted < 0n || !when) console.log(`FAIL ${what}: no such event before ${name}'s start`);
    else console.log(`PASS ${what} (${ms(started - when.time)} later)`);
  }
}
if (lines === 0) console.log(`FAIL ${file} has no depends_on to check`);
