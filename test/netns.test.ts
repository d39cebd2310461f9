// The deployed shape, end to end, across a real network namespace: in the ROOT namespace the built HIMDS
// emulator and the relay (`serve --listen unix:…`); in a fresh namespace made by this test, `netns-setup` and the
// sidecar on 169.254.169.254:80 (`serve --upstream unix:…`: the socket crosses namespaces). Real clients run
// INSIDE that namespace with no endpoint override at all (test/fixtures/netns-clients.mjs).
//
// Safety, on a shared machine: nothing here sends traffic to 169.254.169.254 from the root namespace; every
// such request runs under `ip netns exec` in a namespace this file created (and the fixture checks that it
// does before it sends anything). Namespaces get random names and are always deleted; every process is
// started in its own process group and killed by that group's id (SIGTERM, then SIGKILL after a bounded
// wait), in teardown, whatever happens to the tests. Needs root and `ip netns`; skipped with a reason otherwise.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { claimsOf } from './fixtures/interop.js';
import { Child, runToEnd, type Ran } from './fixtures/process.js';
import { get } from './fixtures/stack.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'cli.js');
const CLIENTS = path.join(ROOT, 'test', 'fixtures', 'netns-clients.mjs');
const NODE = process.execPath;
const IMDS_ADDRESS = '169.254.169.254';
const PATH_ENV = process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const ARM = 'https://management.azure.com';
const VAULT = 'https://vault.azure.net';
const GRAPH = 'https://graph.microsoft.com';
const STORAGE = 'https://storage.azure.com';
const TOKEN_PATH = '/metadata/identity/oauth2/token';
const tokenQuery = (resource: string) => `${TOKEN_PATH}?api-version=2018-02-01&resource=${encodeURIComponent(resource)}`;
const METADATA_BODY = { error: 'invalid_request', error_description: 'Required metadata header not specified' };

// ---------------------------------------------------------------------------------------------------------
// When this cannot run
// ---------------------------------------------------------------------------------------------------------

const uniqueName = () => `arcimds-test-${randomBytes(5).toString('hex')}`;

function skipReason(): string | undefined {
  if (process.platform !== 'linux') return 'network namespace tests need Linux';
  if (process.getuid?.() !== 0) return 'network namespace tests need root (ip netns add / exec)';
  const sync = (cmd: string, args: string[]) => spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000, env: { PATH: PATH_ENV } });
  const list = sync('ip', ['netns', 'list']);
  if (list.error) return `'ip netns' is unavailable: ${list.error.message}`;
  if (list.status !== 0) return `'ip netns list' fails here: ${list.stderr.trim()}`;
  const curl = sync('curl', ['--version']);
  if (curl.error || curl.status !== 0) return 'curl is needed inside the namespace and is not installed';
  // msal-node would pick the Arc source; and a real Arc agent on this machine is not something to test beside.
  if (existsSync('/opt/azcmagent/bin/himds')) return '/opt/azcmagent/bin/himds exists: an Arc agent is installed here';
  // Creating one is what the tests need; some containers allow `ip netns list` but not this.
  const probe = uniqueName();
  const add = sync('ip', ['netns', 'add', probe]);
  if (add.status !== 0) return `cannot create a network namespace here: ${add.stderr.trim() || add.error?.message}`;
  const del = sync('ip', ['netns', 'del', probe]);
  if (del.status !== 0) return `cannot delete a network namespace here (left: ${probe}): ${del.stderr.trim()}`;
  return undefined;
}

const skip = skipReason();
const when = skip ? { skip } : {};
if (!skip && !existsSync(CLI)) throw new Error(`${CLI} is missing: run 'npm run build' first (npm test does it as pretest)`);

// ---------------------------------------------------------------------------------------------------------
// Everything this file creates, and its removal (teardown; and at exit, synchronously, as a last resort)
// ---------------------------------------------------------------------------------------------------------

const namespaces = new Set<string>();
const processes = new Set<Child>();
const tempDirs = new Set<string>();

/** Stop what is still running (SIGTERM, then SIGKILL after a bounded wait), delete namespaces and files. */
async function cleanUp(): Promise<void> {
  await Promise.all([...processes].map((p) => p.stop('SIGTERM', 3000)));
  // Anything still inside one of our namespaces was started by this file (through `ip netns exec`): say so, and
  // end it by its pid.
  for (const name of namespaces) {
    const pids =
      spawnSync('ip', ['netns', 'pids', name], { encoding: 'utf8', timeout: 5000, env: { PATH: PATH_ENV } })
        .stdout?.split('\n')
        .filter(Boolean) ?? [];
    for (const pid of pids) {
      process.stderr.write(`netns.test: pid ${pid} was still running in ${name}; killing it\n`);
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  cleanUpNow();
}

/** The same, synchronously and at once: for process exit and fatal signals, where nothing async will run. */
function cleanUpNow(): void {
  for (const p of processes) if (p.running) p.signal('SIGKILL');
  for (const name of namespaces) {
    const del = spawnSync('ip', ['netns', 'del', name], { encoding: 'utf8', timeout: 5000, env: { PATH: PATH_ENV } });
    if (del.status === 0) namespaces.delete(name);
    else process.stderr.write(`netns.test: could not delete network namespace ${name}: ${del.stderr}\n`);
  }
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

t.teardown(cleanUp);
// If teardown never runs (a crash, process.exit, tap's timeout, Ctrl-C), leave nothing behind either. A signal
// is re-raised once cleaned up, so it still ends the process as it would have (tap's handler then sees it).
if (!skip) process.once('exit', cleanUpNow);
for (const signal of skip ? [] : (['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const)) {
  process.once(signal, () => {
    cleanUpNow();
    process.kill(process.pid, signal);
  });
}

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-netns-'));
  tempDirs.add(dir);
  return dir;
}

/** A fresh network namespace (only `lo`, down), deleted at the end. Returns its name. */
function newNamespace(): string {
  const name = uniqueName();
  const add = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8', timeout: 5000, env: { PATH: PATH_ENV } });
  if (add.status !== 0) throw new Error(`ip netns add ${name}: ${add.stderr}`);
  namespaces.add(name);
  return name;
}

/** `net:[INODE]`, as /proc/PID/ns/net reads inside it. */
const namespaceId = (name: string) => `net:[${statSync(`/run/netns/${name}`).ino}]`;
const inNamespace = (name: string, argv: string[]) => ['ip', 'netns', 'exec', name, ...argv];

// ---------------------------------------------------------------------------------------------------------
// Processes: each in its own group (detached), so the group id reaches whatever `ip netns exec` ran
// ---------------------------------------------------------------------------------------------------------

/** A process in its own group (so the group id reaches whatever `ip netns exec` ran), in `processes`. */
const proc = (label: string, argv: string[], env: NodeJS.ProcessEnv = { PATH: PATH_ENV }) =>
  new Child(label, argv, { env, detached: true, registry: processes });

/** Run to completion; SIGKILLed (the whole group) after timeoutMs. */
function run(label: string, argv: string[], timeoutMs = 8000, env: NodeJS.ProcessEnv = { PATH: PATH_ENV }): Promise<Ran> {
  return runToEnd(label, argv, { env, detached: true, registry: processes, timeoutMs });
}

/** `ip` in the root namespace, for reading a namespace's state (`ip -n NS …`). */
function ipOut(args: string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 5000, env: { PATH: PATH_ENV } });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const loAddresses = (ns: string) => ipOut(['-n', ns, '-o', '-4', 'addr', 'show', 'dev', 'lo']);
const loFlags = (ns: string) => /<([^>]*)>/.exec(ipOut(['-n', ns, '-o', 'link', 'show', 'dev', 'lo']))?.[1]?.split(',') ?? [];
const hasImdsAddress = (text: string) => text.includes(` inet ${IMDS_ADDRESS}/32 `);

interface Reply {
  status: number;
  json: any;
  text: string;
  headers: Record<string, string>;
  ms: number;
}

/** curl INSIDE the namespace, to the sidecar on 169.254.169.254. */
async function curlIn(ns: string, pathAndQuery: string, headers: Record<string, string> = { Metadata: 'true' }): Promise<Reply> {
  const args = ['curl', '-sS', '--max-time', '10', '--noproxy', '*', '-D', '-', '-w', '\n%{time_total}'];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  args.push(`http://${IMDS_ADDRESS}${pathAndQuery}`);
  const r = await run('curl', inNamespace(ns, args), 15_000);
  if (r.code !== 0) throw new Error(`curl in ${ns} failed (${r.code ?? r.signal}): ${r.stderr}`);
  const [head = '', rest = ''] = r.stdout.split('\r\n\r\n', 2);
  const nl = rest.lastIndexOf('\n');
  const text = rest.slice(0, nl);
  const [statusLine = '', ...headerLines] = head.split('\r\n');
  const headersOut: Record<string, string> = {};
  for (const line of headerLines) {
    const i = line.indexOf(':');
    headersOut[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: Number(statusLine.split(' ')[1]), json, text, headers: headersOut, ms: Math.round(Number(rest.slice(nl + 1)) * 1000) };
}

/** A request straight to the relay's unix socket (from the root namespace: no 169.254.169.254 involved). */
function viaSocket(socketPath: string, pathAndQuery: string): Promise<{ status: number; json: any }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: pathAndQuery, headers: { Metadata: 'true' }, agent: false, timeout: 5000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode!, json: JSON.parse(text) }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------------------
// The topology, built once for the file (in order of need, so each test can also run alone)
// ---------------------------------------------------------------------------------------------------------

interface AppNamespace {
  readonly name: string;
  readonly setup: Ran;
}

let appNamespacePromise: Promise<AppNamespace> | undefined;

/** The application's namespace, prepared by `netns-setup` (its first run is test 1's subject). */
function appNamespace(): Promise<AppNamespace> {
  appNamespacePromise ??= (async () => {
    const name = newNamespace();
    const setup = await run('netns-setup', inNamespace(name, [NODE, CLI, 'netns-setup']));
    return { name, setup };
  })();
  return appNamespacePromise;
}

interface Topology {
  readonly ns: string;
  readonly dir: string;
  readonly socket: string;
  readonly tokensDir: string;
  readonly emulator: Child;
  readonly emulatorUrl: string;
  relay: Child;
  readonly sidecar: Child;
  readonly startMs: number;
  stats(): Promise<{ tokensIssued: number; challenges: number; tokenRequests: number }>;
  startRelay(): Promise<Child>;
}

let topologyPromise: Promise<Topology> | undefined;

function topology(): Promise<Topology> {
  topologyPromise ??= (async () => {
    const started = performance.now();
    const { name: ns, setup } = await appNamespace();
    if (setup.code !== 0) throw new Error(`netns-setup failed in ${ns}: ${setup.stderr}`);
    const dir = await tempDir();
    const tokensDir = path.join(dir, 'tokens');
    const socket = path.join(dir, 'run', 'imds.sock');

    const emulator = proc('emulator', [NODE, CLI, 'emulate-himds', '--listen', '127.0.0.1:0', '--tokens-dir', tokensDir]);
    const emulatorUrl = String((await emulator.logLine('HIMDS emulator listening')).url);
    if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(emulatorUrl)) throw new Error(`unexpected emulator url ${emulatorUrl}`);

    // No admin listener on either hop (ignored by a CLI without one): the relay's default port is fixed on the
    // root namespace's loopback, where concurrent tests would collide, and readiness checks would add upstream
    // traffic at their own times to the counts asserted here.
    const env = { PATH: PATH_ENV, ARC_IMDS_ADMIN_LISTEN: 'off' };
    const startRelay = async () => {
      const relay = proc(
        'relay',
        [NODE, CLI, 'serve', '--listen', `unix:${socket}`, '--upstream', emulatorUrl, '--tokens-dir', tokensDir, '--log-level', 'debug'],
        env,
      );
      await relay.logLine('listening');
      return relay;
    };
    const relay = await startRelay();
    // The default tokens dir is fine: the sidecar answers no challenge, so it never reads a key.
    const sidecar = proc(
      'sidecar',
      inNamespace(ns, [NODE, CLI, 'serve', '--listen', `${IMDS_ADDRESS}:80`, '--upstream', `unix:${socket}`, '--log-level', 'debug']),
      env,
    );
    await sidecar.logLine('listening', 8000, (l) => l.address === `${IMDS_ADDRESS}:80`);

    return {
      ns,
      dir,
      socket,
      tokensDir,
      emulator,
      emulatorUrl,
      relay,
      sidecar,
      startRelay,
      startMs: Math.round(performance.now() - started),
      async stats() {
        const reply = await get(`${emulatorUrl}/__emulator/stats`, {});
        if (reply.status !== 200) throw new Error(`emulator stats: ${reply.status} ${reply.text}`);
        return reply.json;
      },
    };
  })();
  return topologyPromise;
}

const hostNetns = readlinkSync('/proc/self/ns/net');
const hostHasImdsAddress = skip ? false : hasImdsAddress(ipOut(['-o', '-4', 'addr', 'show']));

// ---------------------------------------------------------------------------------------------------------
// 1. netns-setup
// ---------------------------------------------------------------------------------------------------------

t.test('netns-setup', when, async (t) => {
  t.test('in a fresh namespace: lo up, 169.254.169.254/32 on lo; idempotent', async (t) => {
    const { name, setup } = await appNamespace();
    t.equal(setup.code, 0, `exit 0${setup.stderr ? `; stderr: ${setup.stderr}` : ''}`);
    t.same(setup.stdout.split('\n').filter(Boolean), ['netns-setup: lo is up', `netns-setup: added ${IMDS_ADDRESS}/32 to lo`]);
    const addresses = loAddresses(name);
    t.ok(hasImdsAddress(addresses), `ip -n NS addr show dev lo lists ${IMDS_ADDRESS}/32: ${addresses.trim()}`);
    t.match(addresses, / inet 127\.0\.0\.1\/8 /, 'and loopback itself, now that lo is up');
    t.ok(loFlags(name).includes('UP'), `lo is UP (${loFlags(name).join(',')})`);

    const again = await run('netns-setup again', inNamespace(name, [NODE, CLI, 'netns-setup']));
    t.equal(again.code, 0, 'a second run exits 0');
    t.match(again.stdout, new RegExp(`${IMDS_ADDRESS.replaceAll('.', '\\.')}/32 was already on lo`), "and says 'already'");
    t.equal(again.stderr, '');
    t.equal(
      loAddresses(name)
        .split('\n')
        .filter((l) => l.includes(` inet ${IMDS_ADDRESS}/`)).length,
      1,
      'the address is there once',
    );
    t.equal(hasImdsAddress(ipOut(['-o', '-4', 'addr', 'show'])), hostHasImdsAddress, 'the root namespace is untouched');
  });

  const setpriv = spawnSync('setpriv', ['--version'], { timeout: 5000, env: { PATH: PATH_ENV } });
  const noSetpriv = setpriv.status === 0 ? {} : { skip: 'setpriv (util-linux) is not installed: cannot drop capabilities' };
  t.test('without NET_ADMIN: exit 1 and a clear message', noSetpriv, async (t) => {
    const ns = newNamespace();
    const drop = ['setpriv', '--bounding-set=-all', '--inh-caps=-all', '--ambient-caps=-all', '--'];
    const caps = await run('setpriv caps', inNamespace(ns, [...drop, 'grep', '^CapEff', '/proc/self/status']));
    t.match(caps.stdout, /^CapEff:\s+0+$/m, 'setpriv leaves no effective capability (the premise of this test)');

    const r = await run('netns-setup without caps', inNamespace(ns, [...drop, NODE, CLI, 'netns-setup']));
    t.equal(r.code, 1, 'exit 1');
    t.equal(r.stdout, '', 'nothing reported done');
    const lines = r.stderr.split('\n').filter(Boolean);
    t.equal(lines.length, 1, 'one line');
    t.match(lines[0], /^arc-imds-proxy: netns-setup needs NET_ADMIN in this network namespace/, 'names the capability');
    t.match(lines[0], /capabilities add: \[NET_ADMIN\]/, 'and how to grant it');
    t.match(lines[0], /'ip link set lo up'.*Operation not permitted/, 'and what failed');
    t.notOk(loFlags(ns).includes('UP'), 'lo stays down');
    t.notOk(hasImdsAddress(loAddresses(ns)), 'no address added');
  });

  t.test('refuses where HIMDS answers on 127.0.0.1:40342 (a host-like namespace): exit 2', async (t) => {
    const ns = newNamespace();
    ipOut(['-n', ns, 'link', 'set', 'lo', 'up']);
    const dir = await tempDir();
    const himds = proc(
      'emulator in host-like ns',
      inNamespace(ns, [NODE, CLI, 'emulate-himds', '--listen', '127.0.0.1:40342', '--tokens-dir', path.join(dir, 'tokens')]),
    );
    const listening = await himds.logLine('HIMDS emulator listening');
    t.equal(listening.url, 'http://127.0.0.1:40342', 'HIMDS (emulated) answers on loopback inside the namespace');

    const r = await run('netns-setup host-like', inNamespace(ns, [NODE, CLI, 'netns-setup']));
    t.equal(r.code, 2, 'exit 2: a refusal the operator must decide on');
    t.equal(r.stdout, '');
    const lines = r.stderr.split('\n').filter(Boolean);
    t.equal(lines.length, 1, 'one line');
    t.match(lines[0], /^arc-imds-proxy: something answers on 127\.0\.0\.1:40342 \(HIMDS\)/);
    t.match(lines[0], /this looks like the host network namespace/, 'says why: the host network namespace');
    t.match(lines[0], /Arc onboarding fail/, 'and what answering 169.254.169.254 there would break');
    t.match(lines[0], /--allow-host-netns overrides this/);
    t.notOk(hasImdsAddress(loAddresses(ns)), 'the address was not added');

    // The override exists for private namespaces like this one (it is not the host's).
    const forced = await run('netns-setup --allow-host-netns', inNamespace(ns, [NODE, CLI, 'netns-setup', '--allow-host-netns']));
    t.equal(forced.code, 0, '--allow-host-netns: exit 0');
    t.ok(hasImdsAddress(loAddresses(ns)), 'and the address is added');
    const stopped = await himds.stop();
    t.equal(stopped.code, 0, 'the emulator stopped on SIGTERM');
  });
});

// ---------------------------------------------------------------------------------------------------------
// 2. Real clients inside the namespace, finding the sidecar at 169.254.169.254 by default
// ---------------------------------------------------------------------------------------------------------

interface WireRecord {
  step: string;
  via: 'node:http' | 'undici';
  method: string;
  host: string;
  path: string;
  headers: [string, string][];
  status?: number;
  ms?: number;
}

const headerOf = (w: WireRecord, name: string) => w.headers.find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1];
const isProbe = (w: WireRecord) => headerOf(w, 'metadata') === undefined;

t.test('real clients in the namespace, without any endpoint override', when, async (t) => {
  const top = await topology();
  t.comment(`topology up in ${top.startMs} ms: emulator ${top.emulatorUrl}, relay unix:${top.socket}, sidecar ${IMDS_ADDRESS}:80 in ${top.ns}`);
  const before = await top.stats();
  const sidecarFetchesBefore = top.sidecar.logLines('token fetched from upstream').length;
  const relayFetchesBefore = top.relay.logLines('token fetched from upstream').length;

  const child = await run('netns-clients', inNamespace(top.ns, [NODE, CLIENTS]), 20_000, {
    PATH: PATH_ENV,
    NETNS_CLIENTS_NETNS: namespaceId(top.ns),
    NETNS_CLIENTS_HOST_NETNS: hostNetns,
    NETNS_CLIENTS_DEADLINE_MS: '15000',
  });
  t.comment(`clients ran in ${child.ms} ms`);
  t.equal(child.code, 0, `the clients exited 0${child.stderr ? `; stderr: ${child.stderr.slice(0, 2000)}` : ''}`);
  const line = child.stdout.split('\n').find((l) => l.startsWith('NETNS_CLIENTS_RESULT '));
  t.ok(line, 'the clients printed their result line');
  const r = JSON.parse(line?.slice('NETNS_CLIENTS_RESULT '.length) ?? '{}');
  t.equal(r.error, undefined, `no error${r.error ? `: ${r.error}` : ''}`);
  t.equal(r.steps?.at(-1), 'done', 'every step ran');
  t.equal(r.netns, namespaceId(top.ns), 'they ran in the test namespace');
  t.not(r.netns, hostNetns, 'not in the root namespace');
  t.same(r.offTarget, [], `every client request went to ${IMDS_ADDRESS}, nowhere else`);
  t.equal(r.msalSource, 'DefaultToImds', 'msal-node picks IMDS by default (no Arc agent, no environment)');

  const wire: WireRecord[] = r.wire ?? [];
  t.ok(wire.length > 0 && wire.every((w) => w.host === IMDS_ADDRESS), `all ${wire.length} requests the SDKs sent went to ${IMDS_ADDRESS}`);

  const expected: Record<string, string> = {
    'identity-mi-probe': ARM,
    'identity-dac-mi-only': VAULT,
    'identity-dac-prod': GRAPH,
    'msal-arm': ARM,
    'msal-vault': VAULT,
  };
  for (const [label, resource] of Object.entries(expected)) {
    const calls: any[] = r.calls?.[label] ?? [];
    t.equal(calls.length, 3, `${label}: three calls`);
    calls.forEach((c, i) => {
      t.equal(c.ok, true, `${label} #${i + 1}: a token${c.ok ? '' : `: ${c.name} ${c.message}`}`);
      t.equal(c.aud, resource, `${label} #${i + 1}: aud ${resource}`);
    });
  }

  // (a) @azure/identity with the probe: before EVERY getToken, a bare GET without Metadata, answered 400 at once.
  const tokenRequest = (step: string) => wire.filter((w) => w.step === step && !isProbe(w));
  const probes = (step: string) => wire.filter((w) => w.step === step && isProbe(w));
  for (const step of ['identity-mi-probe', 'identity-dac-prod']) {
    const sent = probes(step);
    t.equal(sent.length, 3, `${step}: one probe per getToken`);
    for (const p of sent) {
      t.equal(p.method, 'GET');
      t.equal(p.path, TOKEN_PATH, `${step}: the probe is the bare token path, no query`);
      t.equal(headerOf(p, 'accept'), 'application/json', `${step}: Accept: application/json, and no Metadata header`);
      t.equal(p.status, 400, `${step}: the probe got a 400`);
      t.ok((p.ms ?? Infinity) < 500, `${step}: quickly (${p.ms} ms; the SDK gives up after 1000)`);
    }
    t.equal(tokenRequest(step).length, 1, `${step}: one token request; the SDK's cache answered the rest`);
  }
  const [mi] = tokenRequest('identity-mi-probe');
  t.equal(mi?.path, tokenQuery(ARM), '@azure/identity: the IMDS token request, api-version 2018-02-01, resource encoded');
  t.equal(mi?.status, 200);
  t.equal(headerOf(mi!, 'metadata'), 'true');
  t.equal(
    wire.findIndex((w) => w.step === 'identity-mi-probe'),
    wire.indexOf(probes('identity-mi-probe')[0]!),
    'the probe comes first',
  );
  // 4.13.1 builds DefaultAzureCredential restricted to managed identity with sendProbeRequest: false.
  t.equal(probes('identity-dac-mi-only').length, 0, 'AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential: no probe (4.13.1)');
  t.equal(tokenRequest('identity-dac-mi-only').length, 1, 'and one token request');

  // (b) msal-node 7.2.3: one request per resource, its cache answers the rest.
  for (const [step, resource] of [
    ['msal-arm', ARM],
    ['msal-vault', VAULT],
  ] as const) {
    const sent = wire.filter((w) => w.step === step);
    t.equal(sent.length, 1, `${step}: one request`);
    t.equal(sent[0]?.via, 'undici', `${step}: msal-node 7 uses fetch`);
    t.equal(sent[0]?.path, tokenQuery(resource), `${step}: the default IMDS URL, no trailing slash`);
    t.equal(sent[0]?.status, 200);
    t.same(
      r.calls[step].map((c: any) => c.fromCache),
      [false, true, true],
      `${step}: then its own cache`,
    );
  }

  // (c) curl.
  const c = r.curl ?? {};
  for (const [i, reply] of (c.tokenArm ?? []).entries()) {
    t.equal(reply.status, 200, `curl token #${i + 1}: 200`);
    t.equal(reply.json?.aud, ARM);
    t.equal(reply.json?.resource, ARM, 'resource echoed');
  }
  t.equal(c.tokenVaultRaw?.status, 200, 'curl with the resource unencoded (as Python sends it): 200');
  t.equal(c.tokenVaultRaw?.json?.aud, VAULT);
  t.equal(c.tokenNoMetadata?.status, 400, 'curl without Metadata: 400');
  t.same(c.tokenNoMetadata?.json, METADATA_BODY, "IMDS's exact body");
  t.equal(c.compute?.status, 200, 'curl /metadata/instance/compute: 200 through both hops');
  t.match(c.compute?.json?.resourceId, /\/providers\/Microsoft\.HybridCompute\/machines\//, 'the Arc machine');
  t.equal(c.computeNoMetadata?.status, 400, 'and 400 without Metadata');

  // One token per distinct resource across every client and every repeat: both hops cache.
  const after = await top.stats();
  t.equal(after.tokensIssued - before.tokensIssued, 3, `the emulator issued exactly one token per resource (${ARM}, ${VAULT}, ${GRAPH})`);
  t.equal(after.challenges - before.challenges, 3, 'one challenge each, answered by the relay');
  const fetched = (p: Child, from: number) =>
    p
      .logLines('token fetched from upstream')
      .slice(from)
      .map((l) => l.resource)
      .sort();
  t.same(fetched(top.sidecar, sidecarFetchesBefore), [VAULT, GRAPH, ARM].sort(), 'the sidecar fetched each resource once');
  t.same(fetched(top.relay, relayFetchesBefore), [VAULT, GRAPH, ARM].sort(), 'the relay fetched each resource once');
  // What the sidecar itself saw of the probes (debug log): the gate's 400, nothing forwarded.
  const rejected = top.sidecar.logLines('rejected').filter((l) => l.url === TOKEN_PATH);
  t.equal(rejected.length, 6, 'the sidecar rejected the six probes at the gate');
  t.ok(rejected.every((l) => l.status === 400 && l.method === 'GET'));

  // The relay caches too: straight to its socket (from here, the root namespace: no 169.254.169.254 involved).
  for (let i = 0; i < 2; i++) {
    const direct = await viaSocket(top.socket, tokenQuery(ARM));
    t.equal(direct.status, 200, `relay socket #${i + 1}: 200`);
    t.equal(claimsOf(direct.json.access_token).aud, ARM);
  }
  t.equal((await top.stats()).tokensIssued, after.tokensIssued, 'answered from the relay cache');
  t.equal(top.relay.logLines('token fetched from upstream').length - relayFetchesBefore, 3, 'no new relay fetch');

  t.comment(
    `probes: ${wire
      .filter(isProbe)
      .map((p) => `${p.step} ${p.status} ${p.ms} ms`)
      .join('; ')}`,
  );
  t.comment(`wire: ${JSON.stringify(wire.map((w) => ({ step: w.step, via: w.via, path: w.path, status: w.status, ms: w.ms, headers: w.headers })))}`);
});

// ---------------------------------------------------------------------------------------------------------
// 3. The relay restarts; the sidecar rides through and recovers without a restart
// ---------------------------------------------------------------------------------------------------------

t.test('relay restart: cached tokens keep flowing, uncached get a retryable 503, then recover', when, async (t) => {
  const top = await topology();
  const warm = await curlIn(top.ns, tokenQuery(ARM));
  t.equal(warm.status, 200, 'a token the sidecar holds');
  const sidecarPid = top.sidecar.pid;

  const stopped = await top.relay.stop('SIGTERM', 5000);
  t.same([stopped.code, stopped.signal, stopped.killed], [0, null, false], 'the relay exits 0 on SIGTERM');
  t.notOk(existsSync(top.socket), 'and its socket file is gone');
  const issued = (await top.stats()).tokensIssued;

  const cached = await curlIn(top.ns, tokenQuery(ARM));
  t.equal(cached.status, 200, 'relay down: the cached token is still served');
  t.equal(claimsOf(cached.json.access_token).aud, ARM);
  t.ok(Number(cached.json.expires_in) > 3600, `with its remaining lifetime (expires_in ${cached.json.expires_in})`);

  const uncached = await curlIn(top.ns, tokenQuery(STORAGE));
  t.equal(uncached.status, 503, 'an uncached resource: 503, which clients retry');
  t.equal(uncached.json?.error, 'temporarily_unavailable');
  t.match(uncached.json?.error_description, /no socket at unix:.*is the relay running/, 'saying why');
  t.ok(uncached.ms < 5000, `answered in ${uncached.ms} ms (bounded retries)`);
  t.equal((await top.stats()).tokensIssued, issued, 'nothing reached the emulator');

  top.relay = await top.startRelay();
  t.ok(existsSync(top.socket), 'a new relay on the same socket path');
  const fresh = await curlIn(top.ns, tokenQuery(STORAGE));
  t.equal(fresh.status, 200, 'the uncached resource now works');
  t.equal(claimsOf(fresh.json.access_token).aud, STORAGE);
  t.equal((await top.stats()).tokensIssued, issued + 1, 'one new token');
  t.equal(top.sidecar.pid, sidecarPid, 'the same sidecar process');
  t.ok(top.sidecar.running, 'never restarted, still running');
  t.equal((await curlIn(top.ns, tokenQuery(ARM))).status, 200, 'and the cached one still works');
});

// ---------------------------------------------------------------------------------------------------------
// 4. Shutdown: every process ends on SIGTERM, and nothing is left inside the namespace
// ---------------------------------------------------------------------------------------------------------

t.test('shutdown: SIGTERM ends every hop; nothing is left in the namespace', when, async (t) => {
  const top = await topology();
  for (const p of [top.sidecar, top.relay, top.emulator]) {
    const exit = await p.stop('SIGTERM', 5000);
    t.same([exit.code, exit.signal, exit.killed], [0, null, false], `${p.label}: exit 0 on SIGTERM`);
  }
  t.notOk(existsSync(top.socket), 'the relay removed its socket');
  t.equal(ipOut(['netns', 'pids', top.ns]).trim(), '', `no process left in ${top.ns}: the sidecar was the process ip netns exec ran`);
});
