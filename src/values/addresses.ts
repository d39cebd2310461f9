// Addresses: where a listener listens and where the upstream is reached. Value types any layer may use.

export type TcpAddress = { readonly kind: 'tcp'; readonly host: string; readonly port: number };
/** A unix socket: how the sidecar in an application's network namespace reaches the relay on the host. */
export type UnixAddress = { readonly kind: 'unix'; readonly path: string };

/** Where a server listens. */
export type ListenAddress = TcpAddress | UnixAddress;

/** Where the upstream (HIMDS, or a relay) is reached. `origin` is what undici dials (or names, over a socket). */
export type UpstreamAddress = (TcpAddress | UnixAddress) & { readonly origin: string };

/** The address Azure VM IMDS answers on, and that Arc onboarding probes (docs/protocol.md#1-himds-the-upstream). */
export const IMDS_ADDRESS = '169.254.169.254';

export const DEFAULT_TOKENS_DIR = '/var/opt/azcmagent/tokens';
export const DEFAULT_HIMDS = 'http://127.0.0.1:40342';
export const DEFAULT_ADMIN = '127.0.0.1:9464';

/** `unix:PATH`, `HOST:PORT` or `[V6]:PORT`, as flags take them and log lines show them. */
export function describeAddress(address: ListenAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

export function isLoopback(host: string): boolean {
  return host.startsWith('127.') || host === '::1';
}

/** Whether two listeners would clash (port 0 never does; 0.0.0.0 clashes with every host on its port). */
export function sameAddress(a: ListenAddress, b: ListenAddress): boolean {
  if (a.kind === 'unix' || b.kind === 'unix') return a.kind === b.kind && (a as UnixAddress).path === (b as UnixAddress).path;
  return a.port !== 0 && a.port === b.port && (a.host === b.host || a.host === '0.0.0.0' || b.host === '0.0.0.0');
}
