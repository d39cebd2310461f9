// Value parsers for options: each returns the value or throws a one-line message (the option parser collects
// them, so every problem is reported at once).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { ListenAddress, TcpAddress, UnixAddress, UpstreamAddress } from './addresses.js';
import { isWorkloadName } from './workload.js';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function parsePort(text: string, allowZero: boolean): number {
  if (!/^\d{1,5}$/.test(text)) throw new Error(`port '${text}' is not a number`);
  const port = Number(text);
  if (port > 65535 || (port === 0 && !allowZero)) throw new Error(`port ${port} is out of range`);
  return port;
}

// sun_path holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH = 107;

export function parseUnixAddress(text: string): UnixAddress {
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

/** Node timers hold at most 2^31-1 ms (about 24.8 days); longer ones fire at once. */
const MAX_DURATION_MS = 2 ** 31 - 1;

/** Plain seconds, or a number with `ms`/`s`/`m`/`h`: `5`, `5s`, `500ms`, `5m`. Returns milliseconds. */
export function parseDuration(text: string): number {
  const m = DURATION.exec(text.trim());
  if (!m) throw new Error(`'${text}' is not a duration (e.g. 5, 5s, 500ms, 5m, 1h)`);
  const ms = Math.round(Number(m[1]) * UNIT_MS[m[2] ?? 's']!);
  if (ms > MAX_DURATION_MS) throw new Error(`'${text}' is too long (at most 24 days)`);
  return ms;
}

export function parseApiVersion(text: string): string {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) throw new Error(`'${text}' is not an api-version (YYYY-MM-DD)`);
  return text;
}

export function parseTokensDir(text: string): string {
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

export function positiveInt(text: string): number {
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

export function ratio(text: string): number {
  const n = Number(text);
  if (!/^\d*\.?\d+$/.test(text) || !(n > 0 && n < 1)) throw new Error(`'${text}' is not a fraction between 0 and 1 (e.g. 0.5)`);
  return n;
}

export function resource(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
  if (text === '' || text.length > 2048 || /[\u0000-\u001f\u007f]/.test(text))
    throw new Error(`'${text}' is not a resource (e.g. https://management.azure.com/)`);
  return text;
}

/** Azure IMDS's identity endpoint limits: what `imds` means for --rate-limit and --concurrency-limit. */
export const IMDS_RATE_LIMIT = 20;
export const IMDS_CONCURRENCY_LIMIT = 5;

export function limit(imds: number) {
  return (text: string): number | undefined => {
    if (text === 'off') return undefined;
    if (text === 'imds') return imds;
    return wholeInRange(1, 1_000_000)(text);
  };
}

export function resourcePattern(text: string): string {
  resource(text);
  if (text.indexOf('*') !== -1 && text.indexOf('*') !== text.length - 1) {
    throw new Error(`'${text}': * may only end a prefix (e.g. https://vault.azure.net*, which matches up to a / or :)`);
  }
  if (text === '*') throw new Error(`'*' allows everything: leave --allow-resource out instead`);
  return text;
}

export function fileMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text)) throw new Error(`'${text}' is not an octal file mode (e.g. 0660)`);
  const mode = parseInt(text, 8);
  if (mode & 0o111) throw new Error(`'${text}': a socket needs no execute bits`);
  return mode;
}

/** A group name (looked up in /etc/group) or a numeric gid. */
export function group(text: string): number {
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

export function ipv4(text: string): string {
  if (!IPV4.test(text)) throw new Error(`'${text}' is not an IPv4 address`);
  return text;
}

/** http://HOST:PORT[/readyz]: a base URL gets /readyz. */
export function probeUrl(text: string): string {
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

export function httpStatus(text: string): number {
  const n = positiveInt(text);
  if (n < 400 || n > 599) throw new Error(`'${text}' is not an HTTP error status (400-599)`);
  return n;
}

export function positiveDuration(text: string): number {
  const ms = parseDuration(text);
  if (ms <= 0) throw new Error(`'${text}' must be greater than zero`);
  return ms;
}

/** NAMESPACE/POD (kubelet expands $(POD_NAMESPACE)/$(POD_NAME) from the downward API before this sees it). */
export function workloadName(text: string): string {
  if (!isWorkloadName(text)) {
    throw new Error(`'${text}' is not NAMESPACE/POD (printable, no spaces, at most 253 characters each)`);
  }
  return text;
}

export function yesNo(text: string): boolean {
  if (/^(true|1|yes)$/i.test(text)) return true;
  if (/^(false|0|no)$/i.test(text)) return false;
  throw new Error(`'${text}' is not true or false`);
}

/** A Kubernetes resource quantity (the forms resources use: 100m, 0.5, 64Mi, 1G, 2e3). */
export function quantity(text: string): string {
  if (!/^(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/.test(text) || text.length > 32) {
    throw new Error(`'${text}' is not a Kubernetes quantity (e.g. 10m, 0.5, 48Mi, 1Gi)`);
  }
  return text;
}
