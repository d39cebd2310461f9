// What the webhook runs with: where it listens, its certificate, and what it injects (the webhook command's
// options, src/commands/webhook.ts, produce it).
import type { TcpAddress } from '../values/addresses.js';
import type { LogLevel } from '../values/parsers.js';

export type PullPolicy = 'Always' | 'IfNotPresent' | 'Never';
export const PULL_POLICIES: readonly PullPolicy[] = ['Always', 'IfNotPresent', 'Never'];

/** What the webhook injects, before a pod's annotations adjust it. */
export interface InjectionSettings {
  readonly image: string;
  readonly imagePullPolicy: PullPolicy;
  /** The relay's socket directory on the node (a hostPath); the socket is imds.sock in it. */
  readonly socketDir: string;
  /** The sidecar's admin listener (probes, metrics) port, on all of the pod's addresses. */
  readonly adminPort: number;
  /** Where the sidecar listens in the mode without NET_ADMIN: 127.0.0.1:PORT. */
  readonly loopbackPort: number;
  readonly sidecarCpuRequest: string;
  readonly sidecarMemoryRequest: string;
  readonly sidecarMemoryLimit: string;
  readonly sidecarLogLevel: LogLevel;
}

export interface WebhookConfig extends InjectionSettings {
  readonly listen: TcpAddress;
  readonly tlsCert: string;
  readonly tlsKey: string;
  /** How often the certificate files are checked for a change. */
  readonly tlsReloadIntervalMs: number;
  /** A larger AdmissionReview body is refused (413) without being read. */
  readonly maxRequestBytes: number;
  readonly logLevel: LogLevel;
}
