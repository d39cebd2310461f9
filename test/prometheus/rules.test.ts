// The shipped alert rules and dashboard queries, checked by Prometheus's own tool, promtool (Debian's 2.42):
//   - `promtool check rules` on the PrometheusRule's groups (the file the Operator writes for Prometheus);
//   - `promtool test rules` with alerts.promtool.yaml: every alert fires when its condition holds for its real
//     `for:` duration, and not before, nor on the look-alike conditions next to it;
//   - that those unit tests can fail: without an alert, or with its `for:` gone, they do;
//   - every Grafana dashboard query and variable selector, as Grafana sends it, parses (as a recording rule).
// Whether the metrics and labels the queries name exist is for a real server to say: live.test.ts evaluates them
// against a real relay and sidecar.
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { parse } from 'yaml';
import { DASHBOARD_FILE, prometheusTools, ruleFile, shippedRuleGroups, type RuleGroup } from './fixtures/tools.js';

const UNIT_TESTS = new URL('alerts.promtool.yaml', import.meta.url);
const run = promisify(execFile);

const tools = prometheusTools();
if ('skip' in tools) {
  t.plan(0, tools.skip);
} else {
  await checks(tools.promtool);
}

async function checks(promtool: string): Promise<void> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-promtool-'));
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  await copyFile(UNIT_TESTS, path.join(tmp, 'alerts.promtool.yaml'));
  /** promtool's exit status and output; the unit tests read rules.yaml next to them. */
  const promtoolRun = async (args: string[]) => {
    try {
      const { stdout, stderr } = await run(promtool, args, { cwd: tmp, timeout: 60_000 });
      return { code: 0, out: stdout + stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
    }
  };
  const testWith = async (groups: readonly RuleGroup[]) => {
    await writeFile(path.join(tmp, 'rules.yaml'), ruleFile(groups));
    return promtoolRun(['test', 'rules', 'alerts.promtool.yaml']);
  };
  const shipped = shippedRuleGroups();
  const alertNames = shipped.flatMap((g) => g.rules.map((r) => r.alert as string));

  t.test('promtool check rules: the PrometheusRule is a valid rule file', async (t) => {
    await writeFile(path.join(tmp, 'rules.yaml'), ruleFile(shipped));
    const r = await promtoolRun(['check', 'rules', 'rules.yaml']);
    t.equal(r.code, 0, r.out);
    t.match(r.out, `SUCCESS: ${alertNames.length} rules found`, `${alertNames.length} rules`);
    await writeFile(path.join(tmp, 'bad.yaml'), ruleFile([{ name: 'bad', rules: [{ alert: 'Bad', expr: 'rat(arc_imds_ready[5m]) > 0' }] }]));
    const bad = await promtoolRun(['check', 'rules', 'bad.yaml']);
    t.not(bad.code, 0, 'and it refuses an unknown function (rat)');
    t.match(bad.out, /unknown function with name "rat"/);
  });

  await t.test('promtool test rules: every alert, with its real for:, against alerts.promtool.yaml', async (t) => {
    const r = await testWith(shipped);
    t.equal(r.code, 0, r.out);
    const unit = parse(await readFile(UNIT_TESTS, 'utf8'));
    const cases: any[] = unit.tests.flatMap((x: any) => x.alert_rule_test ?? []);
    for (const name of alertNames) {
      const mine = cases.filter((c) => c.alertname === name);
      t.ok(
        mine.some((c) => (c.exp_alerts ?? []).length > 0),
        `${name}: a case where it fires`,
      );
      t.ok(
        mine.some((c) => (c.exp_alerts ?? []).length === 0),
        `${name}: a case where it must not`,
      );
    }
    t.same(
      cases.map((c) => c.alertname).filter((n) => !alertNames.includes(n)),
      [],
      'no case names an alert that is not shipped',
    );
  });

  t.test('the unit tests can fail: each alert removed, or its for: dropped, fails them', async (t) => {
    for (const name of alertNames) {
      const without = shipped.map((g) => ({ ...g, rules: g.rules.filter((r) => r.alert !== name) }));
      const r = await testWith(without);
      t.not(r.code, 0, `without ${name}`);
      t.match(r.out, `alertname: ${name},`, `  promtool names ${name}`);
      const rule = shipped.flatMap((g) => g.rules).find((x) => x.alert === name)!;
      if (rule.for === undefined) continue;
      const eager = shipped.map((g) => ({ ...g, rules: g.rules.map((x) => (x.alert === name ? { ...x, for: '0s' } : x)) }));
      const e = await testWith(eager);
      t.not(e.code, 0, `${name} with for: 0s instead of ${rule.for}`);
    }
  });

  t.test('every dashboard query and variable selector parses, as Grafana sends it', async (t) => {
    const dashboard = JSON.parse(await readFile(DASHBOARD_FILE, 'utf8'));
    // Grafana substitutes its variables before sending a query: multi-value variables as a regex alternation,
    // $__rate_interval as a duration.
    const grafana = (expr: string) => expr.replaceAll('$__rate_interval', '1m').replace(/\$(\w+)/g, '(a|b)');
    const exprs: { where: string; expr: string }[] = [];
    for (const v of dashboard.templating.list.filter((x: any) => x.type === 'query')) {
      const q: string = typeof v.query === 'string' ? v.query : v.query.query;
      const m = /^label_values\((.+),\s*(\w+)\)$/.exec(q);
      t.ok(m, `variable ${v.name}: label_values(selector, label)`);
      if (m) exprs.push({ where: `variable ${v.name}`, expr: m[1]! });
    }
    const panels: any[] = dashboard.panels.flatMap((p: any) => [p, ...(p.panels ?? [])]).filter((p: any) => p.type !== 'row');
    for (const p of panels) for (const target of p.targets ?? []) exprs.push({ where: `panel "${p.title}" ${target.refId}`, expr: target.expr });
    const rules = exprs.map((e, i) => ({ record: `dashboard:query_${i}`, expr: grafana(e.expr) }));
    await writeFile(path.join(tmp, 'dashboard.yaml'), ruleFile([{ name: 'dashboard', rules }]));
    const r = await promtoolRun(['check', 'rules', 'dashboard.yaml']);
    t.equal(r.code, 0, `${exprs.length} expressions (${exprs.map((e) => e.where).join('; ')}): ${r.out}`);
  });
}
