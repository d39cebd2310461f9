// The checks the project runs on itself, with the real tools: Biome (lint; config in biome.json), tsc on the
// .mjs files (tsconfig.checkjs.json), the layer rules
// and the no-cycle rule (dependency-cruiser; .dependency-cruiser.cjs), and ShellCheck on every shell script
// (Debian's package, fetched into a private directory by scripts/debian-packages when it is not installed).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { ROOT } from './fixtures/process.js';

const exec = promisify(execFile);
const bin = (name: string) => path.join(ROOT, 'node_modules', '.bin', name);

async function runTool(cmd: string, args: string[], cwd = ROOT): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await exec(cmd, args, { cwd, maxBuffer: 16 * 1024 * 1024, timeout: 120_000 });
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string; message: string };
    return { code: typeof e.code === 'number' ? e.code : 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` || e.message };
  }
}

t.test('biome: no lint findings in src, test, bench, scripts', async (t) => {
  const r = await runTool(bin('biome'), ['lint', '--error-on-warnings', '--max-diagnostics=50', 'src', 'test', 'bench', 'scripts', '.ci']);
  t.equal(r.code, 0, r.code === 0 ? 'clean' : r.out.slice(0, 4000));
});

t.test('biome: every file is formatted as biome.json says', async (t) => {
  const r = await runTool(bin('biome'), ['format', '--max-diagnostics=20', '.']);
  t.equal(r.code, 0, r.code === 0 ? 'formatted' : `run 'npx biome format --write .': ${r.out.slice(0, 3000)}`);
});

t.test('dependency-cruiser: layers point one way, no cycles', async (t) => {
  const r = await runTool(bin('depcruise'), ['src', '--config', '.dependency-cruiser.cjs']);
  t.equal(r.code, 0, r.code === 0 ? 'no violations' : r.out.slice(0, 4000));
  t.match(r.out, /no dependency violations found/);

  // The same rules catch what they are meant to: a cycle and an upstream module importing the IMDS front.
  const dir = await mkdtemp(path.join(ROOT, '.tap-layers-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await mkdir(path.join(dir, 'src', 'upstream'), { recursive: true });
  await mkdir(path.join(dir, 'src', 'imds'), { recursive: true });
  await writeFile(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext' }, include: ['src'] }),
  );
  await writeFile(path.join(dir, 'src', 'upstream', 'a.ts'), "import { b } from '../imds/b.js';\nexport const a = () => b;\n");
  await writeFile(path.join(dir, 'src', 'imds', 'b.ts'), "import { a } from '../upstream/a.js';\nexport const b = () => a;\n");
  const bad = await runTool(bin('depcruise'), ['src', '--config', path.join(ROOT, '.dependency-cruiser.cjs')], dir);
  t.not(bad.code, 0, 'a violating tree fails');
  t.match(bad.out, /no-cycles/, 'the cycle is named');
  t.match(bad.out, /cache-and-upstream-know-no-imds/, 'the layer rule is named');
});

t.test('tsc: the .mjs files (scripts, fixtures, CI) are type-checked too', async (t) => {
  const r = await runTool(bin('tsc'), ['-p', 'tsconfig.checkjs.json']);
  t.equal(r.code, 0, r.code === 0 ? 'no type errors' : r.out.slice(0, 4000));
  // Every .mjs file opts in with // @ts-check (checkJs would also check the built dist/ they import).
  const files = (await runTool('git', ['ls-files', '*.mjs'])).out.split('\n').filter((f) => f !== '' && !f.startsWith('bench/'));
  for (const f of files) {
    const head = (await runTool('head', ['-c', '200', f])).out;
    t.match(head, /^(#!.*\n)?\/\/ @ts-check\b/, `${f}: // @ts-check`);
  }
});

/** ShellCheck: on PATH, else from Debian's package in a private cache (fetched once). */
async function shellcheck(): Promise<string | undefined> {
  const onPath = await runTool('shellcheck', ['--version']);
  if (onPath.code === 0) return 'shellcheck';
  const cache = process.env.ARC_IMDS_TOOL_CACHE ?? path.join(os.homedir(), '.cache', 'arc-imds-proxy', 'debian');
  const local = path.join(cache, 'usr', 'bin', 'shellcheck');
  if (!existsSync(local)) await runTool(path.join(ROOT, 'scripts', 'debian-packages'), ['bookworm', cache, 'shellcheck']);
  return existsSync(local) ? local : undefined;
}

const shellcheckTool = await shellcheck();
const noShellcheck = shellcheckTool
  ? {}
  : { skip: 'shellcheck is not installed and could not be fetched (scripts/debian-packages bookworm DIR shellcheck)' };

t.test('shellcheck: every shell script', noShellcheck, async (t) => {
  const tool = shellcheckTool!;
  const files = (await runTool('git', ['ls-files', '-z'])).out.split('\0').filter(Boolean);
  const scripts: string[] = [];
  for (const f of files) {
    if (f.endsWith('.sh') || f === '.ci/run' || f.startsWith('scripts/') || f.startsWith('test/e2e/')) {
      const head = await runTool('head', ['-c', '64', f]);
      if (/^#!.*\b(ba|da)?sh\b/.test(head.out)) scripts.push(f);
    }
  }
  t.ok(scripts.includes('.ci/run'), `${scripts.length} shell scripts, .ci/run among them`);
  const r = await runTool(tool, ['--external-sources', '--severity=style', ...scripts]);
  t.equal(r.code, 0, r.code === 0 ? `clean: ${scripts.join(', ')}` : r.out.slice(0, 4000));
});
