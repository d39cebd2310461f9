// deploy/compose: dclint (YAML validity, the Compose schema, its best-practice rules, no warning allowed), then
// what the schema cannot know: who shares which network namespace, in what order things start, who gets a
// capability, who reads key files, and that every command line and ARC_IMDS_* variable is one the code has.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import {
  cliArgs,
  COMPOSE_FILES,
  ROOT,
  composeEnv,
  composeList,
  composeRunsOurImage,
  flagValue,
  invocationProblems,
  parseDockerfile,
  lastOf,
  execForm,
  portOf,
  read,
  rel,
  splitCommand,
  yamlDocument,
} from '../fixtures/deploy.js';
import { WEBHOOK_OPTIONS } from '../../src/commands/webhook.js';

const run = promisify(execFile);
const DCLINT = path.join(ROOT, 'node_modules', '.bin', 'dclint');
const IMDS = '169.254.169.254';
const TOKENS_DIR = '/var/opt/azcmagent/tokens';
const runtime = parseDockerfile(read('Dockerfile')).stages.at(-1)!;
const ENTRYPOINT = execForm(lastOf(runtime, 'ENTRYPOINT')!.args, 'ENTRYPOINT');
const CMD = execForm(lastOf(runtime, 'CMD')!.args, 'CMD');

t.ok(
  COMPOSE_FILES.some((f) => f.endsWith('docker-compose.yml')),
  'deploy/compose/docker-compose.yml exists',
);
t.ok(
  COMPOSE_FILES.some((f) => f.endsWith('docker-compose.dev.yml')),
  'deploy/compose/docker-compose.dev.yml exists',
);

t.test('dclint: no errors and no warnings', async (t) => {
  for (const file of COMPOSE_FILES) {
    const result = await run(DCLINT, [file, '--formatter', 'json', '--max-warnings', '0'], { cwd: ROOT }).then(
      (r) => ({ code: 0, stdout: r.stdout }),
      (err: { code?: number; stdout?: string }) => ({ code: err.code ?? -1, stdout: err.stdout ?? '' }),
    );
    let messages: { rule: string; message: string; line: number }[] = [];
    try {
      messages = (JSON.parse(result.stdout) as { messages: typeof messages }[]).flatMap((r) => r.messages);
    } catch {
      messages = [{ rule: 'output', message: result.stdout, line: 0 }];
    }
    t.same(
      messages.map((m) => `${m.line}: ${m.rule}: ${m.message}`),
      [],
      `${rel(file)}: nothing reported`,
    );
    t.equal(result.code, 0, `${rel(file)}: dclint exits 0`);
  }
});

t.test('dclint fails on a broken file (the check above can fail)', async (t) => {
  const bad = path.join(ROOT, 'test', 'deploy', 'fixtures', 'bad-compose.yml');
  const r = await run(DCLINT, [bad, '--formatter', 'json', '--max-warnings', '0'], { cwd: ROOT }).then(
    () => 0,
    (err: { code?: number }) => err.code,
  );
  t.not(r, 0, 'a service with an unknown key and an untagged image is reported');
});

interface Service {
  name: string;
  svc: any;
  argv: string[] | undefined;
}

for (const file of COMPOSE_FILES) {
  const compose = yamlDocument(file);
  const services: Service[] = Object.entries<any>(compose.services).map(([name, svc]) => {
    const ours = composeRunsOurImage(svc, file);
    const entrypoint = composeList(svc.entrypoint, `${name}.entrypoint`);
    const command = composeList(svc.command, `${name}.command`);
    return { name, svc, argv: ours ? [...(entrypoint ?? ENTRYPOINT), ...(command ?? (entrypoint ? [] : CMD))] : undefined };
  });
  const ours = services.filter((s) => s.argv !== undefined);
  const args = (s: Service) => cliArgs(s.argv!)!;
  const byCommand = (name: string) => ours.filter((s) => splitCommand(args(s)).command === name);
  const relay = ours.find((s) => splitCommand(args(s)).command === 'serve' && /^unix:/.test(flagValue(args(s), 'listen') ?? ''));
  const sidecar = ours.find((s) => splitCommand(args(s)).command === 'serve' && /^unix:/.test(flagValue(args(s), 'upstream') ?? ''));
  const netnsSetup = byCommand('netns-setup')[0];
  const app = services.find((s) => s.argv === undefined && JSON.stringify(s.svc.command ?? '').includes(`http://${IMDS}/`));
  const namespaceOf = (s: Service | undefined): string | undefined => {
    const mode: string | undefined = s?.svc.network_mode;
    if (mode === 'host') return 'host';
    if (mode?.startsWith('service:')) return namespaceOf(services.find((x) => x.name === mode.slice('service:'.length)));
    return s?.name;
  };
  const dependsOn = (s: Service | undefined): Record<string, { condition?: string }> => {
    const d = s?.svc.depends_on ?? {};
    return Array.isArray(d) ? Object.fromEntries(d.map((n: string) => [n, { condition: 'service_started' }])) : d;
  };
  const mounts = (s: Service): { source: string; target: string; readOnly: boolean; type: string }[] =>
    (s.svc.volumes ?? []).map((v: any) => {
      if (typeof v === 'string') {
        const [source, target, mode] = v.split(':');
        return {
          source: source!,
          target: target!,
          readOnly: (mode ?? '').split(',').includes('ro'),
          type: source!.startsWith('/') || source!.startsWith('.') ? 'bind' : 'volume',
        };
      }
      return { source: v.source, target: v.target, readOnly: v.read_only === true, type: v.type };
    });

  t.test(`${rel(file)}: roles, namespaces and start order`, async (t) => {
    for (const [what, s] of Object.entries({ relay, sidecar, 'netns-setup': netnsSetup, app })) {
      t.ok(s, `has a ${what} (${s?.name})`);
    }
    if (!relay || !sidecar || !netnsSetup || !app) return;

    const appNs = namespaceOf(app);
    t.not(appNs, 'host', "the app has a network namespace of its own, not the host's");
    t.equal(namespaceOf(sidecar), appNs, "the sidecar is in the app's network namespace");
    t.equal(namespaceOf(netnsSetup), appNs, "netns-setup configures the app's network namespace");
    const holder = services.find((s) => s.name === appNs)!;
    t.notOk(holder.svc.network_mode, `${holder.name} owns that namespace`);
    t.not(holder.name, sidecar.name, 'the namespace does not belong to the sidecar (it must exist, prepared, before the sidecar binds)');
    t.not(holder.name, app.name, '...nor to the app (which must start after the sidecar)');
    t.equal(String(holder.svc.sysctls?.['net.ipv4.ip_unprivileged_port_start']), '0', 'the namespace lets the non-root sidecar bind port 80');
    t.not(namespaceOf(relay), appNs, "the relay is not in the app's namespace");

    t.equal(dependsOn(netnsSetup)[holder.name]?.condition, 'service_started', 'netns-setup after the namespace exists');
    t.equal(dependsOn(sidecar)[netnsSetup.name]?.condition, 'service_completed_successfully', 'the sidecar after netns-setup succeeded');
    t.equal(dependsOn(sidecar)[relay.name]?.condition, 'service_healthy', 'the sidecar after the relay is healthy');
    t.equal(dependsOn(app)[sidecar.name]?.condition, 'service_healthy', 'the app after the sidecar is healthy: it never starts before IMDS answers');
    t.equal(String(netnsSetup.svc.restart), 'no', 'netns-setup is one-shot');
    t.equal(netnsSetup.svc.healthcheck?.disable, true, "netns-setup does not run the image's HEALTHCHECK (it has no admin listener)");

    // depends_on must be a DAG.
    const visiting = new Set<string>();
    const done = new Set<string>();
    const visit = (name: string): boolean => {
      if (done.has(name)) return true;
      if (visiting.has(name)) return false;
      visiting.add(name);
      const s = services.find((x) => x.name === name);
      const ok = Object.keys(dependsOn(s)).every(visit) && (!s?.svc.network_mode?.startsWith('service:') || visit(s.svc.network_mode.slice(8)));
      done.add(name);
      return ok;
    };
    t.ok(
      services.every((s) => visit(s.name)),
      'no cycle in depends_on and network_mode',
    );
    for (const s of services)
      for (const dep of Object.keys(dependsOn(s)))
        t.ok(
          services.some((x) => x.name === dep),
          `${s.name} depends on ${dep}, which exists`,
        );
  });

  t.test(`${rel(file)}: capabilities, users, filesystems`, async (t) => {
    for (const s of services) {
      const caps: string[] = s.svc.cap_add ?? [];
      if (s === netnsSetup) t.same(caps, ['NET_ADMIN'], `${s.name}: NET_ADMIN, nothing else`);
      else t.same(caps, [], `${s.name}: no capability added`);
      t.same(s.svc.cap_drop, ['ALL'], `${s.name}: every capability dropped`);
      t.equal(s.svc.read_only, true, `${s.name}: read-only root filesystem`);
      t.ok((s.svc.security_opt ?? []).includes('no-new-privileges:true'), `${s.name}: no-new-privileges`);
      t.notOk(s.svc.privileged, `${s.name}: not privileged`);
      t.notOk(s.svc.pid, `${s.name}: no shared PID namespace`);
      t.notOk(s.svc.ports, `${s.name}: publishes no port (the IMDS listener must stay in its namespace)`);
      const user = String(s.svc.user ?? '');
      t.match(user, /^\d+:\d+$/, `${s.name}: an explicit numeric user (${user})`);
      if (s !== netnsSetup) t.not(user.split(':')[0], '0', `${s.name}: not root`);
      if (s.svc.network_mode === 'host') t.equal(s, relay, `${s.name}: only the relay may use the host's network namespace`);
    }
  });

  t.test(`${rel(file)}: memory reservations and limits, the same as the Kubernetes requests and limits`, async (t) => {
    // One measured figure per role (docs/performance.md): compose's reservation is Kubernetes' request.
    const relayK8s = yamlDocument('deploy/kubernetes/base/relay-daemonset.yaml').spec.template.spec.containers[0].resources;
    const sidecarDefault = (flag: string) => WEBHOOK_OPTIONS.find((o) => o.flag === flag)!.default!;
    const mebibytes = (q: string) => Number(/^(\d+)(m|Mi)$/.exec(q)?.[1] ?? Number.NaN);
    for (const [s, reservation, limit] of [
      [relay, relayK8s.requests.memory, relayK8s.limits.memory],
      [sidecar, sidecarDefault('sidecar-memory-request'), sidecarDefault('sidecar-memory-limit')],
    ] as const) {
      if (!s) continue;
      t.equal(
        mebibytes(String(s.svc.mem_reservation)),
        mebibytes(reservation),
        `${s.name}: mem_reservation ${s.svc.mem_reservation} (Kubernetes: ${reservation})`,
      );
      t.equal(mebibytes(String(s.svc.mem_limit)), mebibytes(limit), `${s.name}: mem_limit ${s.svc.mem_limit} (Kubernetes: ${limit})`);
    }
  });

  t.test(`${rel(file)}: the relay reads key files read-only, and shares its socket directory with the sidecar`, async (t) => {
    if (!relay || !sidecar) return;
    const relayArgs = args(relay);
    const tokensDir = flagValue(relayArgs, 'tokens-dir') ?? TOKENS_DIR;
    const tokens = mounts(relay).find((m) => m.target === tokensDir);
    t.ok(tokens, `the tokens directory is mounted at --tokens-dir ${tokensDir}`);
    t.equal(tokens?.readOnly, true, 'read-only');
    const socket = (flagValue(relayArgs, 'listen') ?? '').slice('unix:'.length);
    t.equal(flagValue(args(sidecar), 'upstream'), `unix:${socket}`, "the sidecar's upstream is the relay's socket");
    const relayRun = mounts(relay).find((m) => socket.startsWith(`${m.target}/`));
    const sidecarRun = mounts(sidecar).find((m) => socket.startsWith(`${m.target}/`));
    t.ok(relayRun && !relayRun.readOnly, "the relay's socket directory is a writable mount");
    t.ok(sidecarRun?.readOnly, 'the sidecar mounts it read-only (connecting needs no write access)');
    t.equal(sidecarRun?.source, relayRun?.source, 'the same volume');
    t.equal(sidecarRun?.target, relayRun?.target, 'at the same path');
    t.equal(relayRun?.type, 'volume', 'a named volume, declared at the top level');
    t.ok(relayRun && compose.volumes && relayRun.source in compose.volumes, `volume ${relayRun?.source} is declared`);
    t.equal(flagValue(relayArgs, 'socket-mode') ?? '0660', '0660', 'socket mode 0660: owner and group only');
    t.equal(String(relay.svc.user).split(':')[0], String(sidecar.svc.user).split(':')[0], "the sidecar runs as the socket's owner");
    t.same(
      mounts(sidecar).filter((m) => m.target === tokensDir),
      [],
      'the sidecar has no access to key files',
    );
    if (relay.svc.network_mode === 'host') {
      t.equal(tokens?.type, 'bind', "on an Arc host: the host's tokens directory, bound");
      t.equal(tokens?.source, TOKENS_DIR, `from ${TOKENS_DIR}`);
      t.equal(flagValue(relayArgs, 'upstream'), 'http://127.0.0.1:40342', "HIMDS on the host's loopback");
      const groups: string[] = (relay.svc.group_add ?? []).map(String);
      t.equal(groups.length, 1, 'one supplementary group: himds');
      t.match(groups[0], /^\$\{HIMDS_GID:\?[^}]+\}$/, 'the numeric himds gid from HIMDS_GID, required with a message');
      t.match(read(path.join(path.dirname(file), '.env.example')), /^HIMDS_GID=/m, '.env.example names HIMDS_GID');
    }
  });

  t.test(`${rel(file)}: command lines, variables and health checks match the CLI`, async (t) => {
    for (const s of ours) {
      const env = composeEnv(s.svc);
      t.same(
        invocationProblems(args(s), env),
        [],
        `${s.name}: ${args(s).join(' ')}${Object.keys(env).length ? ` (${Object.keys(env).join(', ')})` : ''}`,
      );
      t.notOk(s.svc.entrypoint, `${s.name}: the image's ENTRYPOINT is used`);
      const test: string[] | undefined = s.svc.healthcheck?.test;
      if (test === undefined) continue;
      t.equal(test[0], 'CMD', `${s.name}: healthcheck in CMD form (no shell needed)`);
      const check = test.slice(1);
      t.ok(cliArgs(check), `${s.name}: the healthcheck runs the image's program`);
      t.equal(splitCommand(cliArgs(check)!).command, 'probe', `${s.name}: ...its probe command`);
      t.same(invocationProblems(cliArgs(check)!, {}), [], `${s.name}: healthcheck flags exist`);
      const url = new URL(flagValue(cliArgs(check)!, 'url') ?? 'http://127.0.0.1:9464');
      const command = splitCommand(args(s)).command;
      if (command === 'serve') {
        const admin = flagValue(args(s), 'admin-listen') ?? '127.0.0.1:9464';
        t.equal(Number(url.port), portOf(admin), `${s.name}: the healthcheck asks the admin port (${admin})`);
        t.ok(['127.0.0.1', '0.0.0.0'].includes(admin.split(':')[0]!), `${s.name}: an admin address the healthcheck reaches from inside (${admin})`);
      } else if (command === 'emulate-himds') {
        t.equal(url.host, flagValue(args(s), 'listen'), `${s.name}: the healthcheck asks the emulator's listener`);
      }
    }
    if (sidecar) {
      t.equal(flagValue(args(sidecar), 'listen'), `${IMDS}:80`, `the sidecar listens on ${IMDS}:80`);
      t.notOk(args(sidecar).includes('--allow-host-netns'), 'without --allow-host-netns');
    }
    if (netnsSetup)
      t.same(
        args(netnsSetup).filter((a) => a.startsWith('--')),
        ['--address'],
        'netns-setup: --address only',
      );
    if (app) {
      const command = JSON.stringify(app.svc.command);
      t.match(
        command,
        new RegExp(`http://${IMDS.replaceAll('.', '\\.')}/metadata/identity/oauth2/token\\?api-version=`),
        'the app asks IMDS for a token',
      );
      t.match(command, /-H 'Metadata: true'/, 'with Metadata: true');
    }
  });
}
