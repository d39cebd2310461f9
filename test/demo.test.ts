// `arc-imds-proxy demo` as a newcomer meets it: run it, copy the printed curl commands, see them work, Ctrl-C.
// The commands are run with the real curl, exactly as printed, after checking they only target 127.0.0.1.
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'cli.js');
const CURL = '/usr/bin/curl';
const ARM = 'https://management.azure.com/';

if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run 'npm run build' first (npm test does it as pretest)`);

/** The environment without proxy settings (curl must not detour through one) or ARC_IMDS_* configuration. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(https?_proxy|all_proxy|no_proxy)$/i.test(k) || k.startsWith('ARC_IMDS_') || k === 'IMDS_ENDPOINT') continue;
    env[k] = v;
  }
  env.NO_PROXY = '*';
  return env;
}

/** Split a printed shell command: bare words and single-quoted strings (all the demo prints). */
function shellWords(line: string): string[] {
  const words: string[] = [];
  for (const m of line.matchAll(/'([^']*)'|(\S+)/g)) words.push(m[1] ?? m[2]!);
  return words;
}

function curl(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(CURL, args, { env: cleanEnv(), timeout: 5000, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`curl ${args.join(' ')} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

t.test('demo: the printed curl commands work, Ctrl-C cleans up', { skip: existsSync(CURL) ? false : `${CURL} not found` }, async (t) => {
  const child = spawn(process.execPath, [CLI, 'demo'], { cwd: ROOT, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal }));
    child.once('error', () => resolve({ code: null, signal: null }));
  });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });

  // The instructions end with this line; wait for it (or for the demo to die, or a deadline).
  await new Promise<void>((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      child.stdout.off('data', check);
      child.off('close', onClose);
    };
    const check = () => {
      if (out.includes('Press Ctrl-C to stop.')) {
        done();
        resolve();
      }
    };
    const onClose = () => {
      done();
      reject(new Error(`demo exited early. stdout: ${out} stderr: ${err}`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no instructions within 8 s. stdout: ${out} stderr: ${err}`));
    }, 8000);
    child.stdout.on('data', check);
    child.once('close', onClose);
    check();
  });

  const proxyUrl = /proxy \(IMDS contract\):\s+(http:\/\/127\.0\.0\.1:\d+)\s*$/m.exec(out)?.[1];
  t.ok(proxyUrl, `the proxy URL is printed: ${proxyUrl}`);
  const emulatorUrl = /HIMDS emulator:\s+(http:\/\/127\.0\.0\.1:\d+)\s/m.exec(out)?.[1];
  t.ok(emulatorUrl, 'the emulator URL is printed');
  t.not(emulatorUrl, proxyUrl);
  const tokensDir = /\(key files in ([^)]+)\)/.exec(out)?.[1];
  t.ok(tokensDir && path.isAbsolute(tokensDir), `the temporary tokens dir is printed: ${tokensDir}`);
  t.ok(tokensDir && existsSync(tokensDir), 'and exists while the demo runs');
  t.match(out, new RegExp(`^  export AZURE_POD_IDENTITY_AUTHORITY_HOST=${proxyUrl}$`, 'm'), 'SDK hint points at the proxy');

  const adminUrl = /curl -s (http:\/\/127\.0\.0\.1:\d+)\/readyz$/m.exec(out)?.[1];
  t.ok(adminUrl, `the admin listener's URL is printed: ${adminUrl}`);
  const lines = out.split('\n').filter((l) => /^\s+curl /.test(l));
  // The admin commands: metrics (piped into grep) and readiness.
  const adminLines = lines.filter((l) => adminUrl && l.includes(`${adminUrl}/`));
  t.equal(adminLines.length, 2, 'two admin commands');
  const metrics = await curl(['-s', `${adminUrl}/metrics`]);
  t.match(metrics, /^arc_imds_build_info\{version="[^"]+",node="v\d+/m, 'metrics are served');
  t.match(metrics, /^arc_imds_token_cache_entries 0$/m);
  for (let i = 0; i < 50 && !(await curl(['-s', `${adminUrl}/readyz`])).includes('"ready":true'); i++) await new Promise((r) => setTimeout(r, 50));
  t.match(JSON.parse(await curl(['-s', `${adminUrl}/readyz`])), { status: 'ready', ready: true }, 'ready against the emulator');

  const commands = lines.filter((l) => !adminLines.includes(l)).map((l) => shellWords(l.trim()));
  t.equal(commands.length, 3, 'three curl commands for the proxy');
  for (const words of commands) {
    t.equal(words[0], 'curl');
    const urls = words.filter((w) => /^[a-z]+:\/\//i.test(w));
    t.equal(urls.length, 1, 'one URL');
    // Never let a test send anything anywhere but the demo's own loopback listener.
    t.ok(urls[0]!.startsWith(`${proxyUrl}/`), `targets the proxy on 127.0.0.1 only: ${urls[0]}`);
  }
  if (commands.length !== 3 || !commands.every((w) => w.filter((x) => /:\/\//.test(x)).every((u) => u.startsWith(`${proxyUrl}/`)))) {
    t.fail('not running commands that were not understood');
    return;
  }
  const [tokenCmd, instanceCmd, probeCmd] = commands as [string[], string[], string[]];

  t.ok(tokenCmd.includes('Metadata: true'), 'the token command sends Metadata');
  const tokenText = await curl(tokenCmd.slice(1));
  const token = JSON.parse(tokenText) as Record<string, unknown>;
  t.equal(token.resource, ARM, 'token for https://management.azure.com/');
  t.equal(token.token_type, 'Bearer');
  t.match(token.access_token, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'a JWT');
  t.match(token.expires_on, /^\d+$/);
  t.match(token.expires_in, /^\d+$/);

  const compute = JSON.parse(await curl(instanceCmd.slice(1))) as Record<string, unknown>;
  t.match(compute, { location: String, name: String, vmId: String, osType: 'Linux' }, 'compute JSON');
  t.match(compute.resourceId, /Microsoft\.HybridCompute\/machines/);

  t.notOk(probeCmd.includes('Metadata: true'), 'the probe command sends no Metadata');
  const probe = await curl(probeCmd.slice(1));
  const split = probe.indexOf('\r\n\r\n');
  t.ok(split > 0, 'curl -i shows the head');
  t.match(probe.slice(0, split), /^HTTP\/1\.1 400 /, '400');
  t.match(probe.slice(0, split), /\r\ncontent-type: application\/json; charset=utf-8\r\n/i);
  t.equal(probe.slice(split + 4), '{"error":"invalid_request","error_description":"Required metadata header not specified"}', 'the exact IMDS body');

  child.kill('SIGINT');
  let timer: NodeJS.Timeout | undefined;
  const exit = await Promise.race([
    exited,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`demo did not exit within 8 s of SIGINT. stderr: ${err}`)), 8000);
    }),
  ]).finally(() => clearTimeout(timer));
  t.same(exit, { code: 0, signal: null }, 'SIGINT -> exit 0');
  t.notOk(tokensDir && existsSync(tokensDir), 'the temporary tokens dir is removed');
  t.equal(err, '', 'nothing on stderr');
});
