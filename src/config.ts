// Configuration in one place: every command's options are declared once below (flag, environment variable,
// default, help), parsed from argv + environment into a frozen object, and every problem is reported at once.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { EmulatorOptions } from './emulator/himds.js';

// ---------------------------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------------------------

export type TcpAddress = { readonly kind: 'tcp'; readonly host: string; readonly port: number };
/** A unix socket: how the sidecar in an application's network namespace reaches the relay on the host. */
export type UnixAddress = { readonly kind: 'unix'; readonly path: string };

/** Where a server listens. */
export type ListenAddress = TcpAddress | UnixAddress;

/** Where the upstream (HIMDS, or a relay) is reached. `origin` is what undici dials (or names, over a socket). */
export type UpstreamAddress = (TcpAddress | UnixAddress) & { readonly origin: string };

/** The address Azure VM IMDS answers on, and that Arc onboarding probes (PROTOCOL.md §1, DANGER). */
export const IMDS_ADDRESS = '169.254.169.254';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export type UserAssignedMode = 'echo' | 'ignore' | 'not-found';
const USER_ASSIGNED_MODES: readonly UserAssignedMode[] = ['echo', 'ignore', 'not-found'];

export const DEFAULT_TOKENS_DIR = '/var/opt/azcmagent/tokens';
export const DEFAULT_HIMDS = 'http://127.0.0.1:40342';
export const DEFAULT_ADMIN = '127.0.0.1:9464';

export interface ServeConfig {
  readonly listen: readonly ListenAddress[];
  readonly upstream: UpstreamAddress;
  readonly tokensDir: string;
  readonly himdsApiVersion: string;
  /** Deadline of one upstream attempt, ms. */
  readonly upstreamTimeoutMs: number;
  /** Deadline for a whole client request, retries included, ms. */
  readonly requestTimeoutMs: number;
  readonly logLevel: LogLevel;
  readonly cacheMaxEntries: number;
  /** A cached token is served only while it has at least this much validity left, ms. */
  readonly minRemainingMs: number;
  readonly refreshRatio: number;
  readonly refreshBeforeMs: number;
  readonly forceRefreshIntervalMs: number;
  readonly upstreamConcurrency: number;
  /** Resources whose tokens are fetched at start. */
  readonly prefetch: readonly string[];
  /** Mode and group of unix socket listeners. */
  readonly socketMode: number;
  readonly socketGroup: number | undefined;
  readonly allowHostNetns: boolean;
  /** /metrics, /healthz, /readyz; undefined when switched off. */
  readonly adminListen: ListenAddress | undefined;
  readonly readinessIntervalMs: number;
  readonly readinessResource: string;
  /** In-flight requests get this long to finish on SIGTERM/SIGINT. */
  readonly shutdownTimeoutMs: number;
  /** Resources (exact, or prefix*) tokens are handed out for; empty: all. */
  readonly allowResource: readonly string[];
  readonly rateLimit: number | undefined;
  readonly concurrencyLimit: number | undefined;
  /** Open connections per listener. */
  readonly maxConnections: number;
  /** Slowloris: the header block must arrive within this. */
  readonly headersTimeoutMs: number;
}

/** The emulator's own options, plus where it listens and how it logs. */
export interface EmulatorConfig extends EmulatorOptions {
  readonly listen: TcpAddress;
  readonly logLevel: LogLevel;
}

export interface DemoConfig {
  readonly logLevel: LogLevel;
}

export interface NetnsSetupConfig {
  readonly addresses: readonly string[];
  readonly allowHostNetns: boolean;
}

/** Bad configuration: every problem, one line each. The CLI prints them and exits 2. */
export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Value parsers: each returns the value or throws a one-line message (collected by parseOptions).
// ---------------------------------------------------------------------------------------------------------

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function parsePort(text: string, allowZero: boolean): number {
  if (!/^\d{1,5}$/.test(text)) throw new Error(`port '${text}' is not a number`);
  const port = Number(text);
  if (port > 65535 || (port === 0 && !allowZero)) throw new Error(`port ${port} is out of range`);
  return port;
}

// sun_path holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH = 107;

function parseUnixAddress(text: string): UnixAddress {
  const socketPath = text.slice('unix:'.length);
  if (!path.isAbsolute(socketPath)) throw new Error(`'${text}': the socket path must be absolute (unix:/run/arc-imds/imds.sock)`);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) throw new Error(`'${text}': socket paths are limited to ${MAX_SOCKET_PATH} bytes`);
  if (socketPath.endsWith('/')) throw new Error(`'${text}': names a directory, not a socket`);
  return Object.freeze({ kind: 'unix', path: path.normalize(socketPath) });
}

/** `HOST:PORT` (an IPv4 address or a bracketed IPv6 address; port 0 picks a free port), or `unix:PATH`. */
export function parseListenAddress(text: string): ListenAddress {
  return text.startsWith('unix:') ? parseUnixAddress(text) : parseTcpAddress(text);
}

export function parseTcpAddress(text: string): TcpAddress {
  if (text.startsWith('unix:')) throw new Error(`'${text}': a TCP address HOST:PORT is needed here`);
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):([^:]*)$/.exec(text);
  if (!m) throw new Error(`'${text}' is not HOST:PORT (e.g. 169.254.169.254:80 or 127.0.0.1:8080)`);
  const rawHost = m[1]!;
  const host = rawHost.startsWith('[') ? rawHost.slice(1, -1) : rawHost;
  if (!rawHost.startsWith('[') && !IPV4.test(host)) {
    throw new Error(`'${text}': host must be an IP address (IPv4, or IPv6 in brackets), not a name`);
  }
  return Object.freeze({ kind: 'tcp', host, port: parsePort(m[2]!, true) });
}

/**
 * `http://HOST:PORT`, or `unix:PATH` (a relay's socket). `localhost` becomes 127.0.0.1: HIMDS listens on IPv4
 * loopback only (as MSAL does).
 */
export function parseUpstream(text: string): UpstreamAddress {
  if (text.startsWith('unix:')) return Object.freeze({ ...parseUnixAddress(text), origin: 'http://localhost' });
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`'${text}' is not a URL (expected http://HOST:PORT)`);
  }
  if (url.protocol !== 'http:') throw new Error(`'${text}': only http:// is supported (HIMDS speaks plain HTTP on loopback)`);
  if (url.username || url.password || url.search || url.hash || (url.pathname !== '/' && url.pathname !== '')) {
    throw new Error(`'${text}': give only http://HOST:PORT, without path, query or credentials`);
  }
  const hostname = url.hostname === 'localhost' ? '127.0.0.1' : url.hostname;
  const port = url.port === '' ? 80 : Number(url.port);
  const host = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  return Object.freeze({ kind: 'tcp', origin: `http://${hostname}:${port}`, host, port });
}

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Plain seconds, or a number with `ms`/`s`/`m`/`h`: `5`, `5s`, `500ms`, `5m`. Returns milliseconds. */
/** Node timers hold at most 2^31-1 ms (about 24.8 days); longer ones fire at once. */
const MAX_DURATION_MS = 2 ** 31 - 1;

export function parseDuration(text: string): number {
  const m = DURATION.exec(text.trim());
  if (!m) throw new Error(`'${text}' is not a duration (e.g. 5, 5s, 500ms, 5m, 1h)`);
  const ms = Math.round(Number(m[1]) * UNIT_MS[m[2] ?? 's']!);
  if (ms > MAX_DURATION_MS) throw new Error(`'${text}' is too long (at most 24 days)`);
  return ms;
}

function parseApiVersion(text: string): string {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) throw new Error(`'${text}' is not an api-version (YYYY-MM-DD)`);
  return text;
}

function parseTokensDir(text: string): string {
  if (!path.isAbsolute(text)) throw new Error(`'${text}' must be an absolute path`);
  const normal = path.normalize(text);
  return normal.length > 1 && normal.endsWith('/') ? normal.slice(0, -1) : normal;
}

export function oneOf<T extends string>(allowed: readonly T[]) {
  return (text: string): T => {
    if (!(allowed as readonly string[]).includes(text)) throw new Error(`'${text}' is not one of ${allowed.join(', ')}`);
    return text as T;
  };
}

function positiveInt(text: string): number {
  if (!/^\d{1,9}$/.test(text)) throw new Error(`'${text}' is not a whole number`);
  return Number(text);
}

export function wholeInRange(min: number, max: number) {
  return (text: string): number => {
    const n = positiveInt(text);
    if (n < min || n > max) throw new Error(`'${text}' is not between ${min} and ${max}`);
    return n;
  };
}

function ratio(text: string): number {
  const n = Number(text);
  if (!/^\d*\.?\d+$/.test(text) || !(n > 0 && n < 1)) throw new Error(`'${text}' is not a fraction between 0 and 1 (e.g. 0.5)`);
  return n;
}

function resource(text: string): string {
  // eslint-disable-next-line no-control-regex
  if (text === '' || text.length > 2048 || /[\u0000-\u001f\u007f]/.test(text)) throw new Error(`'${text}' is not a resource (e.g. https://management.azure.com/)`);
  return text;
}

/** Azure IMDS's identity endpoint limits: what `imds` means for --rate-limit and --concurrency-limit. */
export const IMDS_RATE_LIMIT = 20;
export const IMDS_CONCURRENCY_LIMIT = 5;

function limit(imds: number) {
  return (text: string): number | undefined => {
    if (text === 'off') return undefined;
    if (text === 'imds') return imds;
    return wholeInRange(1, 1_000_000)(text);
  };
}

export function resourcePattern(text: string): string {
  resource(text);
  if (text.indexOf('*') !== -1 && text.indexOf('*') !== text.length - 1) throw new Error(`'${text}': * may only end a prefix`);
  if (text === '*') throw new Error(`'*' allows everything: leave --allow-resource out instead`);
  return text;
}

/** NAMESPACE/POD (kubelet expands $(POD_NAMESPACE)/$(POD_NAME) from the downward API before this sees it). */
function workloadName(text: string): string {
  const parts = text.split('/');
  if (parts.length !== 2 || parts.some((p) => !/^[\x21-\x7e]{1,253}$/.test(p))) {
    throw new Error(`'${text}' is not NAMESPACE/POD (printable, no spaces, at most 253 characters each)`);
  }
  return text;
}

function fileMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text)) throw new Error(`'${text}' is not an octal file mode (e.g. 0660)`);
  const mode = parseInt(text, 8);
  if (mode & 0o111) throw new Error(`'${text}': a socket needs no execute bits`);
  return mode;
}

/** A group name (looked up in /etc/group) or a numeric gid. */
function group(text: string): number {
  if (/^\d{1,10}$/.test(text)) return Number(text);
  let groups: string;
  try {
    groups = readFileSync('/etc/group', 'utf8');
  } catch {
    throw new Error(`'${text}': cannot read /etc/group to look it up; give a numeric gid`);
  }
  for (const line of groups.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === text && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new Error(`'${text}': no such group in /etc/group; give a numeric gid`);
}

function ipv4(text: string): string {
  if (!IPV4.test(text)) throw new Error(`'${text}' is not an IPv4 address`);
  return text;
}

/** http://HOST:PORT[/readyz]: a base URL gets /readyz. */
function probeUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`'${text}' is not a URL (e.g. http://127.0.0.1:9464)`);
  }
  if (url.protocol !== 'http:') throw new Error(`'${text}': only http:// is supported`);
  if (url.pathname === '/' || url.pathname === '') url.pathname = '/readyz';
  return url.toString();
}

function httpStatus(text: string): number {
  const n = positiveInt(text);
  if (n < 400 || n > 599) throw new Error(`'${text}' is not an HTTP error status (400-599)`);
  return n;
}

function positiveDuration(text: string): number {
  const ms = parseDuration(text);
  if (ms <= 0) throw new Error(`'${text}' must be greater than zero`);
  return ms;
}

// ---------------------------------------------------------------------------------------------------------
// Option tables: one row per flag. `env` is derived: ARC_IMDS_ + the flag in capitals with '_'.
// ---------------------------------------------------------------------------------------------------------

export interface OptionSpec {
  readonly flag: string;
  readonly key: string;
  readonly value: string; // placeholder in help; '' for a switch
  readonly help: string;
  readonly parse: (text: string) => unknown;
  readonly default?: string;
  readonly multiple?: boolean;
  /** A switch: `--flag` alone, or true/false in the environment. */
  readonly boolean?: boolean;
}

function yesNo(text: string): boolean {
  if (/^(true|1|yes)$/i.test(text)) return true;
  if (/^(false|0|no)$/i.test(text)) return false;
  throw new Error(`'${text}' is not true or false`);
}

const allowHostNetns: OptionSpec = {
  flag: 'allow-host-netns', key: 'allowHostNetns', value: '', boolean: true, default: 'false', parse: yesNo,
  help: `allow answering ${IMDS_ADDRESS} where HIMDS is on loopback (the host network namespace), which breaks Arc onboarding`,
};

export const logLevel: OptionSpec = {
  flag: 'log-level', key: 'logLevel', value: 'LEVEL', default: 'info', parse: oneOf(LOG_LEVELS),
  help: `log level: ${LOG_LEVELS.join(', ')}`,
};

export const SERVE_OPTIONS: readonly OptionSpec[] = [
  { flag: 'listen', key: 'listen', value: 'ADDR', multiple: true, default: '169.254.169.254:80', parse: parseListenAddress,
    help: 'IMDS listener, HOST:PORT or unix:PATH; repeatable (environment: comma-separated)' },
  { flag: 'upstream', key: 'upstream', value: 'URL', parse: parseUpstream,
    help: `HIMDS, http://HOST:PORT, or a relay, unix:PATH (default: $IMDS_ENDPOINT, else ${DEFAULT_HIMDS})` },
  { flag: 'tokens-dir', key: 'tokensDir', value: 'DIR', default: DEFAULT_TOKENS_DIR, parse: parseTokensDir,
    help: 'the only directory HIMDS key files are read from' },
  { flag: 'himds-api-version', key: 'himdsApiVersion', value: 'DATE', default: '2020-06-01', parse: parseApiVersion,
    help: 'api-version sent upstream' },
  { flag: 'upstream-timeout', key: 'upstreamTimeoutMs', value: 'DURATION', default: '5s', parse: positiveDuration,
    help: 'deadline of one upstream attempt' },
  { flag: 'request-timeout', key: 'requestTimeoutMs', value: 'DURATION', default: '15s', parse: positiveDuration,
    help: 'a client always gets an answer within this, retries included' },
  { flag: 'cache-max-entries', key: 'cacheMaxEntries', value: 'N', default: '1000', parse: wholeInRange(1, 1_000_000),
    help: 'tokens cached (resource x identity); least recently used evicted' },
  { flag: 'min-remaining', key: 'minRemainingMs', value: 'DURATION', default: '5m', parse: parseDuration,
    help: 'a cached token is served only while it has this much validity left' },
  { flag: 'refresh-ratio', key: 'refreshRatio', value: 'FRACTION', default: '0.5', parse: ratio,
    help: 'refresh a cached token in the background at this fraction of its lifetime' },
  { flag: 'refresh-before', key: 'refreshBeforeMs', value: 'DURATION', default: '10m', parse: positiveDuration,
    help: '...and never later than this before it expires' },
  { flag: 'force-refresh-interval', key: 'forceRefreshIntervalMs', value: 'DURATION', default: '30s', parse: parseDuration,
    help: 'bypass_cache / token_sha256_to_refresh fetch anew at most this often per token' },
  { flag: 'upstream-concurrency', key: 'upstreamConcurrency', value: 'N', default: '16', parse: wholeInRange(1, 1024),
    help: 'upstream token fetches at once; the rest queue' },
  { flag: 'prefetch', key: 'prefetch', value: 'RESOURCE', multiple: true, parse: resource,
    help: 'fetch this resource\'s token at start; repeatable (environment: comma-separated)' },
  { flag: 'admin-listen', key: 'adminListen', value: 'ADDR', default: DEFAULT_ADMIN, parse: (t) => (t === 'off' ? undefined : parseListenAddress(t)),
    help: '/metrics, /healthz, /readyz: HOST:PORT, unix:PATH, or off; loopback by default (use the pod IP or 0.0.0.0 to let Prometheus scrape it)' },
  { flag: 'readiness-interval', key: 'readinessIntervalMs', value: 'DURATION', default: '10s', parse: positiveDuration,
    help: 'how often readiness checks that a token can be minted (probes answer from the last check)' },
  { flag: 'readiness-resource', key: 'readinessResource', value: 'RESOURCE', default: 'https://management.azure.com/', parse: resource,
    help: 'resource the readiness check asks for (HIMDS: challenge only, nothing minted)' },
  { flag: 'shutdown-timeout', key: 'shutdownTimeoutMs', value: 'DURATION', default: '10s', parse: parseDuration,
    help: 'on SIGTERM/SIGINT, in-flight requests get this long to finish' },
  { flag: 'allow-resource', key: 'allowResource', value: 'RESOURCE', multiple: true, parse: resourcePattern,
    help: 'only these resources (exact, or a prefix ending in *) get tokens; repeatable; default: all' },
  { flag: 'rate-limit', key: 'rateLimit', value: 'off|imds|N', default: 'off', parse: limit(IMDS_RATE_LIMIT),
    help: `token requests per second per listener, then 429 (imds: ${IMDS_RATE_LIMIT}, as Azure IMDS)` },
  { flag: 'concurrency-limit', key: 'concurrencyLimit', value: 'off|imds|N', default: 'off', parse: limit(IMDS_CONCURRENCY_LIMIT),
    help: `token requests in flight per listener, then 429 (imds: ${IMDS_CONCURRENCY_LIMIT}, as Azure IMDS)` },
  { flag: 'max-connections', key: 'maxConnections', value: 'N', default: '1024', parse: wholeInRange(1, 1_000_000),
    help: 'open connections per listener; more are closed at once' },
  { flag: 'headers-timeout', key: 'headersTimeoutMs', value: 'DURATION', default: '10s', parse: positiveDuration,
    help: 'a client must send its request headers within this (slow senders are cut off)' },
  { flag: 'socket-mode', key: 'socketMode', value: 'MODE', default: '0660', parse: fileMode,
    help: 'file mode of unix socket listeners: who can connect gets tokens' },
  { flag: 'socket-group', key: 'socketGroup', value: 'GROUP', parse: group,
    help: 'group of unix socket listeners (name or gid)' },
  { flag: 'workload', key: 'workload', value: 'NAMESPACE/POD', parse: workloadName,
    help: 'the workload this sidecar serves, as the relay should name it (asserted, not authenticated)' },
  allowHostNetns,
  logLevel,
];

export const PROBE_OPTIONS: readonly OptionSpec[] = [
  { flag: 'url', key: 'url', value: 'URL', default: `http://${DEFAULT_ADMIN}`, parse: probeUrl,
    help: 'the admin listener (its /readyz is asked), or a full /readyz URL' },
  { flag: 'timeout', key: 'timeoutMs', value: 'DURATION', default: '3s', parse: positiveDuration, help: 'give up after this' },
];

export const NETNS_SETUP_OPTIONS: readonly OptionSpec[] = [
  { flag: 'address', key: 'addresses', value: 'IPV4', multiple: true, default: IMDS_ADDRESS, parse: ipv4,
    help: 'address to add to lo as /32; repeatable' },
  allowHostNetns,
];

export const EMULATOR_OPTIONS: readonly OptionSpec[] = [
  { flag: 'listen', key: 'listen', value: 'ADDR', default: '127.0.0.1:40342', parse: parseTcpAddress,
    help: 'HOST:PORT to serve the emulated HIMDS on' },
  { flag: 'tokens-dir', key: 'tokensDir', value: 'DIR', default: DEFAULT_TOKENS_DIR, parse: parseTokensDir,
    help: 'where challenge key files are written (created if missing)' },
  { flag: 'token-lifetime', key: 'tokenLifetimeS', value: 'DURATION', default: '24h', parse: (t) => Math.round(positiveDuration(t) / 1000),
    help: 'lifetime of issued tokens' },
  { flag: 'key-ttl', key: 'keyTtlMs', value: 'DURATION', default: '30s', parse: positiveDuration,
    help: 'an unused key file is deleted after this' },
  { flag: 'latency', key: 'latencyMs', value: 'DURATION', default: '0', parse: parseDuration,
    help: 'delay before every answer' },
  { flag: 'fail-next', key: 'failNext', value: 'N', default: '0', parse: positiveInt,
    help: 'answer the next N requests with --fail-status' },
  { flag: 'fail-status', key: 'failStatus', value: 'STATUS', default: '503', parse: httpStatus,
    help: 'status used by --fail-next' },
  { flag: 'startup-unavailable', key: 'startupUnavailableMs', value: 'DURATION', default: '0', parse: parseDuration,
    help: 'answer 503 for this long after start, as HIMDS does after boot' },
  { flag: 'user-assigned', key: 'userAssigned', value: 'MODE', default: 'echo', parse: oneOf(USER_ASSIGNED_MODES),
    help: 'user-assigned selectors: echo (new agents), ignore (legacy agents), not-found' },
  logLevel,
];

export const DEMO_OPTIONS: readonly OptionSpec[] = [logLevel];

export function envName(flag: string): string {
  return `ARC_IMDS_${flag.toUpperCase().replaceAll('-', '_')}`;
}

export interface Parsed<T> {
  readonly config: T;
  readonly help: boolean;
}

/**
 * Parse argv for one command against its option table. Precedence: flag, then ARC_IMDS_* variable, then the
 * default. Returns the values and every problem found (the caller adds its own checks, then throws them all).
 */
export function parseOptions(
  specs: readonly OptionSpec[],
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): { config: Record<string, unknown>; problems: string[]; help: boolean } {
  const problems: string[] = [];
  // Every flag is collected as a list, so a single-value flag given twice is caught instead of silently
  // taking the last one.
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = { help: { type: 'boolean' } };
  for (const s of specs) options[s.flag] = { type: s.boolean ? 'boolean' : 'string', multiple: true };

  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }));
  } catch (err) {
    return { config: {}, problems: [(err as Error).message.replace(/\. To specify.*$/s, '')], help: false };
  }
  if (values.help === true) return { config: {}, problems, help: true };

  const config: Record<string, unknown> = {};
  for (const s of specs) {
    const given = values[s.flag] as (string | boolean)[] | undefined;
    const fromFlag = given?.map(String);
    const fromEnv = env[envName(s.flag)];
    let texts: string[] | undefined;
    let source: string;
    if (fromFlag !== undefined) {
      texts = fromFlag;
      source = `--${s.flag}`;
    } else if (fromEnv !== undefined && fromEnv !== '') {
      texts = s.multiple ? fromEnv.split(',').map((x) => x.trim()).filter((x) => x !== '') : [fromEnv];
      source = envName(s.flag);
    } else {
      texts = s.default === undefined ? undefined : [s.default];
      source = `--${s.flag} default`;
    }
    if (texts === undefined) {
      if (s.multiple) config[s.key] = [];
      continue;
    }
    if (texts.length === 0) {
      problems.push(`${source}: no value given`);
      continue;
    }
    if (!s.multiple && texts.length > 1) {
      problems.push(`${source}: given ${texts.length} times; it takes one value`);
      continue;
    }
    const parsed: unknown[] = [];
    for (const text of texts) {
      try {
        parsed.push(s.parse(text));
      } catch (err) {
        problems.push(`${source}: ${(err as Error).message}`);
      }
    }
    config[s.key] = s.multiple ? parsed : parsed[0];
  }
  return { config, problems, help: false };
}

// Problems quote what was given; a control character in it must not break "one line per problem".
// eslint-disable-next-line no-control-regex
const printable = (line: string) => line.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

export function finish<T>(config: Record<string, unknown>, problems: readonly string[], help: boolean): Parsed<T> {
  if (!help && problems.length > 0) throw new ConfigError(problems.map(printable));
  return { config: Object.freeze(config) as T, help };
}

export function parseServe(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<ServeConfig> {
  const { config, problems, help } = parseOptions(SERVE_OPTIONS, argv, env);
  if (help) return finish(config, problems, help);
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
    problems.push(`--admin-listen ${admin.kind === 'unix' ? `unix:${admin.path}` : `${admin.host}:${admin.port}`}: also an IMDS --listen address; the admin endpoints must be separate`);
  }
  if (upstream?.kind === 'unix' && listens.some((l) => l.kind === 'unix' && l.path === upstream.path)) {
    problems.push(`--upstream ${upstream.path}: the same socket as a --listen address`);
  }
  const minRemaining = config.minRemainingMs as number | undefined;
  const refreshBefore = config.refreshBeforeMs as number | undefined;
  if (minRemaining !== undefined && refreshBefore !== undefined && refreshBefore <= minRemaining) {
    problems.push('--refresh-before must be longer than --min-remaining, or tokens would stop being served before they are refreshed');
  }
  return finish(config, problems, help);
}

export function parseEmulator(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<EmulatorConfig> {
  const { config, problems, help } = parseOptions(EMULATOR_OPTIONS, argv, env);
  return finish(config, problems, help);
}

export interface ProbeConfig {
  readonly url: string;
  readonly timeoutMs: number;
}

export function parseProbe(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<ProbeConfig> {
  const { config, problems, help } = parseOptions(PROBE_OPTIONS, argv, env);
  // In the same container as `serve`, the probe follows its ARC_IMDS_ADMIN_LISTEN unless told otherwise.
  const urlGiven = argv.some((a) => a === '--url' || a.startsWith('--url=')) || (env[envName('url')] ?? '') !== '';
  const admin = env[envName('admin-listen')];
  if (!urlGiven && admin && admin !== 'off') {
    try {
      const address = parseListenAddress(admin);
      if (address.kind === 'tcp') {
        const host = address.host === '0.0.0.0' ? '127.0.0.1' : address.host === '::' ? '::1' : address.host;
        config.url = `http://${host.includes(':') ? `[${host}]` : host}:${address.port}/readyz`;
      } else {
        problems.push(`${envName('admin-listen')}: the probe cannot reach a unix socket; give --url`);
      }
    } catch (err) {
      problems.push(`${envName('admin-listen')}: ${(err as Error).message}`);
    }
  }
  return finish(config, problems, help);
}

export function parseNetnsSetup(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<NetnsSetupConfig> {
  const { config, problems, help } = parseOptions(NETNS_SETUP_OPTIONS, argv, env);
  return finish(config, problems, help);
}

function sameAddress(a: ListenAddress, b: ListenAddress): boolean {
  if (a.kind === 'unix' || b.kind === 'unix') return a.kind === b.kind && (a as UnixAddress).path === (b as UnixAddress).path;
  return a.port !== 0 && a.port === b.port && (a.host === b.host || a.host === '0.0.0.0' || b.host === '0.0.0.0');
}

export function isLoopback(host: string): boolean {
  return host.startsWith('127.') || host === '::1';
}

export function parseDemo(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<DemoConfig> {
  const { config, problems, help } = parseOptions(DEMO_OPTIONS, argv, env);
  return finish(config, problems, help);
}

/** Help text for one command, generated from its option table so it cannot drift from the parser. */
export function helpText(command: string, summary: string, specs: readonly OptionSpec[]): string {
  const lefts = specs.map((s) => `  --${s.flag}${s.value ? ` ${s.value}` : ''}`);
  const width = Math.max(...lefts.map((l) => l.length)) + 2;
  const rows = specs.map((s, i) => {
    const def = s.default !== undefined ? ` (default ${s.default})` : '';
    return `${lefts[i]!.padEnd(width)}${s.help}${def}\n${''.padEnd(width)}env ${envName(s.flag)}`;
  });
  return `Usage: arc-imds-proxy ${command} [options]\n\n${summary}\n\nOptions:\n${rows.join('\n')}\n${'  --help'.padEnd(width)}show this help\n`;
}
