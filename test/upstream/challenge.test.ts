// The key-file challenge is where a hostile upstream could make a privileged process read or block on
// something it should not. Every rule is tested with real files.
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { imdsErrorOf } from '../../src/imds/errors.js';
import { ChallengeError, keyFilePath, parseRealm, readKeyFile } from '../../src/upstream/challenge.js';

const GUID = '0f0e0d0c-0b0a-4909-8807-060504030201';

async function tokensDir(t: Test): Promise<string> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'arc-imds-challenge-'));
  t.teardown(() => rm(base, { recursive: true, force: true }));
  const dir = path.join(base, 'tokens');
  await mkdir(dir);
  return dir;
}

function failure(t: Test, read: () => unknown, reason: string, message?: RegExp) {
  try {
    read();
    t.fail(`expected a ${reason} failure`);
  } catch (err) {
    t.type(err, ChallengeError, `${reason}: a ChallengeError`);
    t.equal((err as ChallengeError).reason, reason, `reason ${reason}`);
    t.equal((err as ChallengeError).code, 'upstream_challenge', 'a typed upstream failure of kind challenge');
    t.equal(imdsErrorOf(err)?.code, 'challenge_failed', 'answered as challenge_failed (500)');
    if (message) t.match((err as Error).message, message);
  }
}

t.test('realm parsing', async (t) => {
  t.equal(parseRealm('Basic realm=/var/opt/azcmagent/tokens/x.key'), '/var/opt/azcmagent/tokens/x.key');
  t.equal(parseRealm('basic REALM=/a/x.key'), '/a/x.key', 'scheme and realm are case-insensitive');
  t.equal(parseRealm('Basic realm="/a/x.key"'), '/a/x.key', 'a fully quoted value is unquoted');
  t.equal(parseRealm(['Basic realm=/a/x.key']), '/a/x.key', 'one header as an array');
  t.throws(() => parseRealm(undefined), ChallengeError);
  t.throws(() => parseRealm(['Basic realm=/a/x.key', 'Basic realm=/b/y.key']), ChallengeError, 'two challenges');
  t.throws(() => parseRealm('Bearer realm=/a/x.key'), ChallengeError, 'other scheme');
  t.throws(() => parseRealm('Basic'), ChallengeError, 'no realm');
  t.throws(() => parseRealm(`Basic realm=/a/${'x'.repeat(5000)}.key`), ChallengeError, 'absurdly long');
});

t.test('realm validation: only a plain *.key directly in the tokens dir', async (t) => {
  const dir = '/var/opt/azcmagent/tokens';
  t.equal(keyFilePath(`${dir}/${GUID}.key`, dir), `${dir}/${GUID}.key`);
  const hostile = [
    `${dir}/../tokens/${GUID}.key`,
    `${dir}/../../../etc/passwd`,
    `${dir}/..`,
    `${dir}/sub/${GUID}.key`,
    `/etc/${GUID}.key`,
    `${dir}//${GUID}.key`,
    `${dir}/./${GUID}.key`,
    `${dir}/${GUID}.txt`,
    `${dir}/.key`,
    `${dir}/a b.key`,
    `${dir}/a=b.key`,
    `${dir}/"a".key`,
    `${dir}/'a'.key`,
    `${dir}/a\u0000.key`,
    `${dir}/a\n.key`,
    `${dir}/a\\b.key`,
    `${GUID}.key`,
    `tokens/${GUID}.key`,
    '',
  ];
  for (const realm of hostile) {
    let reason: string | undefined;
    try {
      keyFilePath(realm, dir);
    } catch (err) {
      reason = (err as ChallengeError).reason;
    }
    t.equal(reason, 'bad_realm', `rejects ${JSON.stringify(realm)}`);
  }
});

t.test('reading the key file', async (t) => {
  const dir = await tokensDir(t);
  const key = path.join(dir, `${GUID}.key`);

  await writeFile(key, 'secret-key-1', { mode: 0o640 });
  t.equal(readKeyFile(key, dir), 'secret-key-1', 'plain key');
  await writeFile(key, 'secret-key-2\n');
  t.equal(readKeyFile(key, dir), 'secret-key-2', 'one trailing newline stripped');
  await writeFile(key, 'secret-key-3\r\n');
  t.equal(readKeyFile(key, dir), 'secret-key-3', 'one trailing CRLF stripped');
  await writeFile(key, 'k'.repeat(4096));
  t.equal(readKeyFile(key, dir).length, 4096, '4096 bytes is allowed (inclusive)');

  await writeFile(key, 'k'.repeat(4097));
  failure(t, () => readKeyFile(key, dir), 'too_large', /4096/);
  await writeFile(key, '');
  failure(t, () => readKeyFile(key, dir), 'empty');
  await writeFile(key, '\n');
  failure(t, () => readKeyFile(key, dir), 'bad_key');
  await writeFile(key, 'two\nlines');
  failure(t, () => readKeyFile(key, dir), 'bad_key', /unprintable/);
  await writeFile(key, 'kéy');
  failure(t, () => readKeyFile(key, dir), 'bad_key', undefined);
  await writeFile(key, 'a key');
  failure(t, () => readKeyFile(key, dir), 'bad_key', undefined);
  await rm(key);
  failure(t, () => readKeyFile(key, dir), 'missing', /does not exist/);

  await symlink('/etc/passwd', key);
  failure(t, () => readKeyFile(key, dir), 'symlink', /symbolic link/);
  await rm(key);
  const other = path.join(dir, 'other.key');
  await writeFile(other, 'x');
  await symlink(other, key);
  failure(t, () => readKeyFile(key, dir), 'symlink', undefined);
  await rm(key);

  await mkdir(key);
  failure(t, () => readKeyFile(key, dir), 'not_regular');
  await rm(key, { recursive: true });

  // A FIFO with no writer would block a plain open() forever; we never open it at all.
  t.equal(spawnSync('mkfifo', [key]).status, 0, 'mkfifo (coreutils) made a FIFO');
  failure(t, () => readKeyFile(key, dir), 'not_regular', /not a regular file/);
  await rm(key);

  failure(t, () => readKeyFile(`${path.dirname(dir)}/${GUID}.key`, dir), 'bad_realm', /refusing to read it/);
});

const notRoot = process.getuid?.() !== 0 ? 'needs root, to run the reader as an unprivileged user' : false;
t.test('permission denied is explained for the operator', { skip: notRoot }, async (t) => {
  const dir = await tokensDir(t);
  const key = path.join(dir, `${GUID}.key`);
  await writeFile(key, 'secret', { mode: 0o640 });
  await chmod(path.dirname(dir), 0o755);
  await chmod(dir, 0o755);
  // Run the built reader in a child that drops to 'nobody' after loading it (root itself is never denied,
  // and the checkout itself may not be readable by nobody).
  const script = `import { readKeyFile } from ${JSON.stringify(path.resolve('dist/upstream/challenge.js'))};
    process.setgid(65534); process.setuid(65534);
    try {
      readKeyFile(${JSON.stringify(key)}, ${JSON.stringify(dir)});
      console.log(JSON.stringify({ ok: true }));
    } catch (e) {
      console.log(JSON.stringify({ reason: e.reason, message: e.message }));
    }`;
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 10_000 });
  t.equal(child.status, 0, `the child ran: ${child.stderr}`);
  const result = JSON.parse(child.stdout.trim() || '{}') as { reason?: string; message?: string };
  t.equal(result.reason, 'permission');
  t.match(result.message, /permission denied reading key files in .*: run as root or in the himds group/);
  t.notMatch(result.message, /secret/, 'no key material in the message');
});
