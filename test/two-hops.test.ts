// Unix socket listeners and upstreams, and the relay -> sidecar chain, in process: the relay listens on a
// socket in front of the emulator, the sidecar reaches it through that socket and has no tokens directory.
// (The same chain across a real network namespace, with 169.254.169.254 and real SDKs, is in netns.test.ts.)
import { spawn } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile, readFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { parseServe } from '../src/commands/serve.js';
import { createLogger } from '../src/observability/log.js';
import { startProxy, type RunningProxy } from '../src/server/proxy.js';
import { ListenError } from '../src/server/listeners.js';
import { armTokenPath, get, startStack, tokenPath } from './fixtures/stack.js';

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-hops-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const quiet = createLogger('silent');

/** A relay: the real proxy listening on a unix socket, in front of the given upstream. */
async function relay(socket: string, upstream: string, tokensDir: string, extra: string[] = []): Promise<RunningProxy> {
  const { config } = parseServe(
    ['--listen', `unix:${socket}`, '--upstream', upstream, '--tokens-dir', tokensDir, '--admin-listen', 'off', ...extra],
    {},
  );
  return startProxy(config, quiet);
}

async function sidecar(t: Test, socket: string): Promise<{ url: string; proxy: RunningProxy }> {
  const { config } = parseServe(
    [
      '--listen',
      '127.0.0.1:0',
      '--upstream',
      `unix:${socket}`,
      '--tokens-dir',
      '/nonexistent/tokens',
      '--upstream-timeout',
      '1s',
      '--admin-listen',
      'off',
      '--force-refresh-interval',
      '0',
    ],
    {},
  );
  const proxy = await startProxy(config, quiet);
  t.teardown(() => proxy.close());
  const bound = proxy.addresses[0]!;
  return { url: `http://127.0.0.1:${bound.kind === 'tcp' ? bound.port : 0}`, proxy };
}

t.test('sidecar -> unix socket -> relay -> HIMDS emulator', async (t) => {
  const dir = await tempDir(t);
  const himds = await startStack(); // its emulator is the upstream; its own proxy is not used here
  t.teardown(himds.close);
  const socket = path.join(dir, 'run', 'arc-imds', 'imds.sock');
  const theRelay = await relay(socket, himds.emulator.url, himds.tokensDir);

  const info = await stat(socket);
  t.ok(info.isSocket(), 'the socket exists, its parent directories created');
  await theRelay.close();
  await theRelay.close();
  t.pass('close() is idempotent');
  await t.rejects(stat(socket), { code: 'ENOENT' }, 'and removes the socket');
  const relayAgain = await relay(socket, himds.emulator.url, himds.tokensDir, ['--force-refresh-interval', '0']);
  t.teardown(() => relayAgain.close());
  t.equal(info.mode & 0o777, 0o660, 'mode 0660 by default');

  const side = await sidecar(t, socket);
  const token = await get(`${side.url}${armTokenPath()}`);
  t.equal(token.status, 200);
  t.equal(token.json.resource, 'https://management.azure.com/');
  t.equal(himds.emulator.stats().challenges, 1, 'the relay answered the challenge; the sidecar has no tokens dir');
  const compute = await get(`${side.url}/metadata/instance/compute?api-version=2021-02-01`);
  t.equal(compute.status, 200, 'metadata passes through both hops');

  for (let i = 0; i < 5; i++) await get(`${side.url}${armTokenPath()}`);
  t.equal(himds.emulator.stats().tokensIssued, 1, 'both hops cache');

  // User-assigned identities through both hops: the sidecar accepts a token only with the identity echoed.
  for (const [param, value] of [
    ['client_id', '5d2a8c3e-3e4b-4c2a-9a7e-1f2d3c4b5a69'],
    ['object_id', '9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d'],
    ['msi_res_id', '/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app'],
  ] as const) {
    const ua = await get(`${side.url}${armTokenPath(`&${param}=${encodeURIComponent(value)}`)}`);
    t.equal(ua.status, 200, `user-assigned by ${param} through the relay`);
  }
  // A forced refresh at the sidecar reaches HIMDS through the relay (which applies its own interval: 0 here).
  const issued = himds.emulator.stats().tokensIssued;
  const forced = await get(`${side.url}${armTokenPath('&bypass_cache=true')}`);
  t.equal(forced.status, 200);
  t.equal(himds.emulator.stats().tokensIssued, issued + 1, 'bypass_cache crossed both hops');

  t.test('the sidecar keeps serving while the relay is gone, and recovers when it is back', async (t) => {
    await relayAgain.close();
    await t.rejects(stat(socket), { code: 'ENOENT' }, 'the relay removed its socket on shutdown');
    const cached = await get(`${side.url}${armTokenPath()}`);
    t.equal(cached.status, 200, 'a cached token is still served');
    const uncached = await get(`${side.url}${tokenPath('api-version=2018-02-01&resource=https://vault.azure.net')}`);
    t.equal(uncached.status, 503, 'an uncached one gets a retryable 503');
    t.match(uncached.json.error_description, /no socket at unix:.*is the relay running/);
    const back = await relay(socket, himds.emulator.url, himds.tokensDir);
    t.teardown(() => back.close());
    const fresh = await get(`${side.url}${tokenPath('api-version=2018-02-01&resource=https://vault.azure.net')}`);
    t.equal(fresh.status, 200, 'a relay started on the same path serves the same sidecar, unrestarted');
  });
});

t.test('socket files: stale ones are replaced, live ones and other files are not', async (t) => {
  const dir = await tempDir(t);
  const socket = path.join(dir, 'imds.sock');

  // A stale socket, as a crashed relay leaves it: bound by a process killed with SIGKILL.
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => console.log('up'))`]);
  await new Promise((resolve) => child.stdout.once('data', resolve));
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  t.ok((await stat(socket)).isSocket(), 'a stale socket file is left behind');
  const replaced = await relay(socket, 'http://127.0.0.1:9', dir);
  t.ok((await stat(socket)).isSocket(), 'the stale socket was replaced');

  const takeover = await relay(socket, 'http://127.0.0.1:9', dir).then(
    () => undefined,
    (err: unknown) => err,
  );
  t.type(takeover, ListenError, "a live server's socket is never taken over");
  t.match((takeover as Error).message, /another server is listening on it; refusing to take it over/);
  t.ok((await stat(socket)).isSocket(), 'and it is left in place');
  await replaced.close();

  const file = path.join(dir, 'not-a-socket');
  await writeFile(file, 'precious');
  await t.rejects(relay(file, 'http://127.0.0.1:9', dir), /exists and is not a socket/);
  t.equal(await readFile(file, 'utf8'), 'precious', 'a regular file is never removed');
});

t.test("shutdown removes only its own socket, not a successor's on the same path", async (t) => {
  const dir = await tempDir(t);
  const socket = path.join(dir, 'imds.sock');
  const old = await relay(socket, 'http://127.0.0.1:9', dir);
  // A successor takes the path (as it may once the old relay has started closing).
  await rm(socket);
  const successor = await relay(socket, 'http://127.0.0.1:9', dir);
  t.teardown(() => successor.close());
  const theirs = await stat(socket);
  await old.close();
  const after = await stat(socket).catch(() => undefined);
  t.ok(after?.isSocket(), "the successor's socket is still there");
  t.equal(after?.ino, theirs.ino, 'the same file');
  await successor.close();
  await t.rejects(stat(socket), { code: 'ENOENT' }, 'and the successor removes its own');
});

t.test("a relay's --allow-resource refusal reaches the client as a final 403, not a retried 5xx", async (t) => {
  const dir = await tempDir(t);
  const himds = await startStack();
  t.teardown(himds.close);
  const socket = path.join(dir, 'imds.sock');
  const strict = await relay(socket, himds.emulator.url, himds.tokensDir, ['--allow-resource', 'https://management.azure.com/']);
  t.teardown(() => strict.close());
  const side = await sidecar(t, socket);
  const refused = await get(`${side.url}${tokenPath('api-version=2018-02-01&resource=https://graph.microsoft.com')}`);
  t.equal(refused.status, 403);
  t.equal(refused.json.error_description, "This resource is not allowed by the proxy's --allow-resource policy");
});

t.test('socket mode and group', async (t) => {
  const dir = await tempDir(t);
  const socket = path.join(dir, 's.sock');
  const r = await relay(socket, 'http://127.0.0.1:9', dir, ['--socket-mode', '0600', '--socket-group', '4242']);
  t.teardown(() => r.close());
  const info = await stat(socket);
  t.equal(info.mode & 0o777, 0o600);
  if (process.getuid?.() === 0) t.equal(info.gid, 4242, 'group set (root may give any gid)');
  // Who can connect is decided by the file: a connection from here (root, owner) works.
  await new Promise<void>((resolve, reject) =>
    net
      .connect(socket)
      .once('connect', function (this: net.Socket) {
        this.destroy();
        resolve();
      })
      .once('error', reject),
  );
});
