// `serve` (the default command): the IMDS contract, backed by Arc HIMDS or by a relay. Its options, their
// cross-checks, and the start of the proxy (src/server/proxy.ts).
import { ResourcePolicy } from '../imds/policy.js';
import { allowHostNetnsOption, envName, logLevelOption, type OptionSpec, type Parsed } from '../options/parser.js';
import type { ServeConfig } from '../server/proxy.js';
import {
  DEFAULT_ADMIN,
  DEFAULT_HIMDS,
  DEFAULT_TOKENS_DIR,
  describeAddress,
  IMDS_ADDRESS,
  isLoopback,
  sameAddress,
  type ListenAddress,
  type UpstreamAddress,
} from '../values/addresses.js';
import {
  fileMode,
  group,
  IMDS_CONCURRENCY_LIMIT,
  IMDS_RATE_LIMIT,
  limit,
  parseApiVersion,
  parseDuration,
  parseListenAddress,
  parseTokensDir,
  parseUpstream,
  positiveDuration,
  ratio,
  resource,
  resourcePattern,
  wholeInRange,
  workloadName,
} from '../values/parsers.js';
import { defineCommand, parseCommand } from './command.js';

export type { ServeConfig } from '../server/proxy.js';

export const SERVE_OPTIONS: readonly OptionSpec[] = [
  {
    flag: 'listen',
    key: 'listen',
    value: 'ADDR',
    multiple: true,
    default: '169.254.169.254:80',
    parse: parseListenAddress,
    help: 'IMDS listener, HOST:PORT or unix:PATH; repeatable (environment: comma-separated)',
  },
  {
    flag: 'upstream',
    key: 'upstream',
    value: 'URL',
    parse: parseUpstream,
    help: `HIMDS, http://HOST:PORT, or a relay, unix:PATH (default: $IMDS_ENDPOINT, else ${DEFAULT_HIMDS})`,
  },
  {
    flag: 'tokens-dir',
    key: 'tokensDir',
    value: 'DIR',
    default: DEFAULT_TOKENS_DIR,
    parse: parseTokensDir,
    help: 'the only directory HIMDS key files are read from',
  },
  {
    flag: 'himds-api-version',
    key: 'himdsApiVersion',
    value: 'DATE',
    default: '2020-06-01',
    parse: parseApiVersion,
    help: 'api-version sent upstream',
  },
  {
    flag: 'upstream-timeout',
    key: 'upstreamTimeoutMs',
    value: 'DURATION',
    default: '20s',
    parse: positiveDuration,
    help: 'deadline of one upstream attempt (a cold token is minted by HIMDS calling Microsoft Entra, which takes seconds)',
  },
  {
    flag: 'request-timeout',
    key: 'requestTimeoutMs',
    value: 'DURATION',
    default: '30s',
    parse: positiveDuration,
    help: 'a client always gets an answer within this, retries included',
  },
  {
    flag: 'cache-max-entries',
    key: 'cacheMaxEntries',
    value: 'N',
    default: '1000',
    parse: wholeInRange(1, 1_000_000),
    help: 'tokens cached (resource x identity); least recently used evicted',
  },
  {
    flag: 'min-remaining',
    key: 'minRemainingMs',
    value: 'DURATION',
    default: '5m',
    parse: parseDuration,
    help: 'a cached token is served only while it has this much validity left',
  },
  {
    flag: 'refresh-ratio',
    key: 'refreshRatio',
    value: 'FRACTION',
    default: '0.5',
    parse: ratio,
    help: 'refresh a cached token in the background at this fraction of its lifetime',
  },
  {
    flag: 'refresh-before',
    key: 'refreshBeforeMs',
    value: 'DURATION',
    default: '10m',
    parse: positiveDuration,
    help: '...and never later than this before it expires',
  },
  {
    flag: 'force-refresh-interval',
    key: 'forceRefreshIntervalMs',
    value: 'DURATION',
    default: '30s',
    parse: parseDuration,
    help: 'bypass_cache / token_sha256_to_refresh fetch anew at most this often per token',
  },
  {
    flag: 'upstream-concurrency',
    key: 'upstreamConcurrency',
    value: 'N',
    default: '16',
    parse: wholeInRange(1, 1024),
    help: 'upstream token fetches at once; the rest queue',
  },
  {
    flag: 'upstream-queue',
    key: 'upstreamQueue',
    value: 'N',
    default: '256',
    parse: wholeInRange(0, 100_000),
    help: 'token fetches that may wait for an upstream slot; a new token beyond them is answered 503 with Retry-After at once',
  },
  {
    flag: 'prefetch',
    key: 'prefetch',
    value: 'RESOURCE',
    multiple: true,
    parse: resource,
    help: "fetch this resource's token at start; repeatable (environment: comma-separated)",
  },
  {
    flag: 'admin-listen',
    key: 'adminListen',
    value: 'ADDR',
    default: DEFAULT_ADMIN,
    parse: (t) => (t === 'off' ? undefined : parseListenAddress(t)),
    help: '/metrics, /healthz, /readyz: HOST:PORT, unix:PATH, or off; loopback by default (use the pod IP or 0.0.0.0 to let Prometheus scrape it)',
  },
  {
    flag: 'readiness-interval',
    key: 'readinessIntervalMs',
    value: 'DURATION',
    default: '10s',
    parse: positiveDuration,
    help: 'how often readiness checks that a token can be minted (probes answer from the last check)',
  },
  {
    flag: 'readiness-resource',
    key: 'readinessResource',
    value: 'RESOURCE',
    default: 'https://management.azure.com/',
    parse: resource,
    help: 'resource the readiness check asks for (HIMDS: challenge only, nothing minted); with --allow-resource, the first allowed one unless given',
  },
  {
    flag: 'shutdown-timeout',
    key: 'shutdownTimeoutMs',
    value: 'DURATION',
    default: '10s',
    parse: parseDuration,
    help: 'on SIGTERM/SIGINT, in-flight requests get this long to finish',
  },
  {
    flag: 'allow-resource',
    key: 'allowResource',
    value: 'RESOURCE',
    multiple: true,
    parse: resourcePattern,
    help: 'only these resources (exact, or a prefix ending in *) get tokens; repeatable; default: all',
  },
  {
    flag: 'rate-limit',
    key: 'rateLimit',
    value: 'off|imds|N',
    default: 'off',
    parse: limit(IMDS_RATE_LIMIT),
    help: `token requests per second per listener, then 429 (imds: ${IMDS_RATE_LIMIT}, as Azure IMDS)`,
  },
  {
    flag: 'concurrency-limit',
    key: 'concurrencyLimit',
    value: 'off|imds|N',
    default: 'off',
    parse: limit(IMDS_CONCURRENCY_LIMIT),
    help: `token requests in flight per listener, then 429 (imds: ${IMDS_CONCURRENCY_LIMIT}, as Azure IMDS)`,
  },
  {
    flag: 'max-connections',
    key: 'maxConnections',
    value: 'N',
    default: '1024',
    parse: wholeInRange(1, 1_000_000),
    help: 'open connections per listener; more are closed at once',
  },
  {
    flag: 'headers-timeout',
    key: 'headersTimeoutMs',
    value: 'DURATION',
    default: '10s',
    parse: positiveDuration,
    help: 'a client must send its request headers within this (slow senders are cut off)',
  },
  {
    flag: 'socket-mode',
    key: 'socketMode',
    value: 'MODE',
    default: '0660',
    parse: fileMode,
    help: 'file mode of unix socket listeners: who can connect gets tokens',
  },
  { flag: 'socket-group', key: 'socketGroup', value: 'GROUP', parse: group, help: 'group of unix socket listeners (name or gid)' },
  {
    flag: 'workload',
    key: 'workload',
    value: 'NAMESPACE/POD',
    parse: workloadName,
    help: 'the workload this sidecar serves, told to the relay for its audit trail (asserted, not authenticated)',
  },
  allowHostNetnsOption,
  logLevelOption,
];

/** The checks across options. */
function check(config: Record<string, unknown>, problems: string[], argv: readonly string[], env: NodeJS.ProcessEnv): void {
  if (config.upstream === undefined && !problems.some((p) => p.startsWith('--upstream:') || p.startsWith(`${envName('upstream')}:`))) {
    // Not an ARC_IMDS_ variable: the one the Arc agent itself sets for its services.
    const imdsEndpoint = env.IMDS_ENDPOINT;
    try {
      config.upstream = parseUpstream(imdsEndpoint && imdsEndpoint !== '' ? imdsEndpoint : DEFAULT_HIMDS);
    } catch (err) {
      problems.push(`IMDS_ENDPOINT: ${(err as Error).message}`);
    }
  }
  const seen = new Set<string>();
  for (const l of (config.listen as ListenAddress[] | undefined) ?? []) {
    const key = l.kind === 'unix' ? `unix:${l.path}` : `${l.host}:${l.port}`;
    if ((l.kind === 'unix' || l.port !== 0) && seen.has(key)) problems.push(`--listen: ${key} is given twice`);
    seen.add(key);
  }
  const request = config.requestTimeoutMs as number | undefined;
  const attempt = config.upstreamTimeoutMs as number | undefined;
  if (request !== undefined && attempt !== undefined && request < attempt) {
    problems.push('--request-timeout must not be shorter than --upstream-timeout');
  }
  const upstream = config.upstream as UpstreamAddress | undefined;
  const listens = (config.listen as ListenAddress[] | undefined) ?? [];
  if (upstream?.kind === 'tcp' && isLoopback(upstream.host) && config.allowHostNetns !== true) {
    for (const l of listens) {
      if (l.kind === 'tcp' && l.host === IMDS_ADDRESS) {
        problems.push(
          `--listen ${IMDS_ADDRESS}: refusing, because the upstream is on loopback (${upstream.origin}), so this is the host's ` +
            `network namespace, where answering ${IMDS_ADDRESS} makes Arc onboarding (azcmagent) fail. Run a relay here ` +
            `(--listen unix:PATH) and the sidecar in the application's network namespace (--upstream unix:PATH); ` +
            `--allow-host-netns overrides this for a private namespace`,
        );
      }
    }
  }
  const admin = config.adminListen as ListenAddress | undefined;
  if (admin && listens.some((l) => sameAddress(l, admin))) {
    problems.push(`--admin-listen ${describeAddress(admin)}: also an IMDS --listen address; the admin endpoints must be separate`);
  }
  if (upstream?.kind === 'unix' && listens.some((l) => l.kind === 'unix' && l.path === upstream.path)) {
    problems.push(`--upstream ${upstream.path}: the same socket as a --listen address`);
  }
  const allowed = config.allowResource as string[] | undefined;
  const readinessGiven =
    argv.some((a) => a === '--readiness-resource' || a.startsWith('--readiness-resource=')) || (env[envName('readiness-resource')] ?? '') !== '';
  if (allowed && allowed.length > 0 && !readinessGiven) {
    // Not given: ask for the first resource this proxy allows (a prefix's own base), which it can serve.
    config.readinessResource = allowed[0]!.endsWith('*') ? allowed[0]!.slice(0, -1) : allowed[0]!;
  }
  const readinessResource = config.readinessResource as string | undefined;
  if (allowed && readinessResource !== undefined && !new ResourcePolicy(allowed).allows(readinessResource)) {
    problems.push(
      `--readiness-resource ${readinessResource}: refused by this proxy's own --allow-resource, so readiness could never ` +
        'succeed; give --readiness-resource one of the allowed resources',
    );
  }
  const minRemaining = config.minRemainingMs as number | undefined;
  const refreshBefore = config.refreshBeforeMs as number | undefined;
  if (minRemaining !== undefined && refreshBefore !== undefined && refreshBefore <= minRemaining) {
    problems.push('--refresh-before must be longer than --min-remaining, or tokens would stop being served before they are refreshed');
  }
}

export function parseServe(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<ServeConfig> {
  return parseCommand<ServeConfig>({ options: SERVE_OPTIONS, check }, argv, env);
}

export const serve = defineCommand<ServeConfig>({
  name: 'serve',
  summary: 'serve the IMDS contract, backed by Arc HIMDS or a relay (the default command)',
  description: 'Serve the Azure IMDS token contract, backed by Arc HIMDS (or a relay).',
  options: SERVE_OPTIONS,
  check,
  async start(config) {
    const [{ startProxy }, { createLogger }] = await Promise.all([import('../server/proxy.js'), import('../observability/log.js')]);
    return startProxy(config, createLogger(config.logLevel));
  },
});
