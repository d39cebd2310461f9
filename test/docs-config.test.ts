// docs/configuration.md is rendered from the option tables by scripts/gen-config-docs.mjs: the committed page
// must be exactly what the tables render now, so --help, the docs and the code cannot disagree.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import type { Command } from '../src/commands/command.js';

const script = fileURLToPath(new URL('../scripts/gen-config-docs.mjs', import.meta.url));
const page = readFileSync(new URL('../docs/configuration.md', import.meta.url), 'utf8');
// The commands as the script sees them: from the build (dist/, which npm test builds first), so that this test
// does not load every command module into the coverage report of src/.
const built = async (file: string, name: string) =>
  ((await import(new URL(`../dist/commands/${file}`, import.meta.url).href)) as Record<string, Command>)[name]!;
const commands = [
  await built('serve.js', 'serve'),
  await built('webhook.js', 'webhook'),
  await built('netns-setup.js', 'netnsSetupCommand'),
  await built('probe.js', 'probeCommand'),
  await built('emulate-himds.js', 'emulateHimds'),
  await built('demo.js', 'demo'),
];
const check = (...args: string[]) => spawnSync(process.execPath, [script, '--check', ...args], { encoding: 'utf8' });

t.test('the committed page is what the option tables render', async (t) => {
  const run = check();
  t.equal(run.status, 0, `gen-config-docs --check passes (${run.stderr.trim() || 'no complaint'}); if not, run npm run docs:config`);
});

t.test('every option of every command is on the page, in its command section', async (t) => {
  const sections = page.split(/^## /m);
  for (const command of commands) {
    const section = sections.find((s) => s.startsWith(`${command.name}\n`));
    t.ok(section, `a section for ${command.name}`);
    for (const o of command.options) {
      const env = `ARC_IMDS_${o.flag.toUpperCase().replaceAll('-', '_')}`;
      const row = (section ?? '').split('\n').find((l) => l.startsWith(`| \`--${o.flag}`));
      t.ok(row, `${command.name} --${o.flag} has a row`);
      t.match(row ?? '', `\`${env}\``, `${command.name} --${o.flag}: its variable ${env}`);
      if (o.default !== undefined && o.default !== '') t.match(row ?? '', `\`${o.default}\``, `${command.name} --${o.flag}: its default`);
    }
  }
});

t.test('the check fails when the page differs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'docs-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const stale = join(dir, 'configuration.md');
  writeFileSync(stale, page.replace('`--listen ADDR`', '`--listen ADDRESS`'));
  const run = check('--page', stale);
  t.equal(run.status, 1, 'a changed row is caught');
  t.match(run.stderr, 'npm run docs:config', 'and the message says how to fix it');
});
