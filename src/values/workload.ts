// The workload a sidecar serves, as it tells its relay: NAMESPACE/POD, in a request header on every upstream
// request. The relay names it in its audit trail instead of the bare "unix" of a socket peer. It is asserted by
// whoever connects to the relay's socket, not authenticated: the socket's mode and group decide who may.

/** The header a sidecar sends its relay (lower-case, as node presents request headers). */
export const WORKLOAD_HEADER = 'x-arc-imds-workload';

const PART = /^[\x21-\x7e]{1,253}$/;

/** Whether `text` is NAMESPACE/POD: two printable parts without spaces, each at most 253 characters. */
export function isWorkloadName(text: string): boolean {
  const parts = text.split('/');
  return parts.length === 2 && parts.every((p) => PART.test(p));
}
