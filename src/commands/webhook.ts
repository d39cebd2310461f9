// `webhook`: the Kubernetes mutating admission webhook (src/webhook/). Its options, in the same table shape as
// every other command's. Parsing reads no file: the certificate files are loaded (and their problems
// reported) when the server starts.
import path from 'node:path';
import { envName, logLevelOption, type OptionSpec, type Parsed } from '../options/parser.js';
import { PULL_POLICIES, type WebhookConfig } from '../webhook/config.js';
import { oneOf, parseDuration, parseTcpAddress, quantity, wholeInRange } from '../values/parsers.js';
import { defineCommand, parseCommand } from './command.js';

function image(text: string): string {
  if (!/^[\w][\w.\-/:@]{0,511}$/.test(text)) throw new Error(`'${text}' is not an image reference (e.g. registry.example.com/arc-imds-proxy:0.1.0)`);
  return text;
}

function file(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point
  if (text === '' || /[\u0000-\u001f]/.test(text)) throw new Error(`'${text}' is not a file name`);
  return text;
}

function directory(text: string): string {
  if (!path.isAbsolute(text) || /\s/.test(text)) throw new Error(`'${text}' must be an absolute path without spaces`);
  const normal = path.normalize(text);
  return normal.length > 1 && normal.endsWith('/') ? normal.slice(0, -1) : normal;
}

function interval(text: string): number {
  const ms = parseDuration(text);
  if (ms < 100) throw new Error(`'${text}' is too short (at least 100ms)`);
  return ms;
}

const port = wholeInRange(1, 65535);

export const WEBHOOK_OPTIONS: readonly OptionSpec[] = [
  {
    flag: 'listen',
    key: 'listen',
    value: 'HOST:PORT',
    default: '0.0.0.0:8443',
    parse: parseTcpAddress,
    help: 'HTTPS listener for the API server: POST /mutate (AdmissionReview admission.k8s.io/v1) and GET /healthz',
  },
  {
    flag: 'tls-cert',
    key: 'tlsCert',
    value: 'FILE',
    parse: file,
    help: 'PEM certificate chain, re-read when it changes (rotation needs no restart); required',
  },
  { flag: 'tls-key', key: 'tlsKey', value: 'FILE', parse: file, help: 'PEM private key of --tls-cert, re-read with it; required' },
  {
    flag: 'tls-reload-interval',
    key: 'tlsReloadIntervalMs',
    value: 'DURATION',
    default: '10s',
    parse: interval,
    help: 'how often the certificate files are checked for a change',
  },
  { flag: 'image', key: 'image', value: 'IMAGE', parse: image, help: 'the arc-imds-proxy image the injected containers run (this image); required' },
  {
    flag: 'image-pull-policy',
    key: 'imagePullPolicy',
    value: 'POLICY',
    default: 'IfNotPresent',
    parse: oneOf(PULL_POLICIES),
    help: `of the injected containers: ${PULL_POLICIES.join(', ')}`,
  },
  {
    flag: 'socket-dir',
    key: 'socketDir',
    value: 'DIR',
    default: '/run/arc-imds',
    parse: directory,
    help: "the relay's socket directory on the node (mounted read-only into the sidecar; the socket is imds.sock)",
  },
  {
    flag: 'admin-port',
    key: 'adminPort',
    value: 'PORT',
    default: '9464',
    parse: port,
    help: "the sidecar's admin listener port (probes and metrics), on all of the pod's addresses",
  },
  {
    flag: 'loopback-port',
    key: 'loopbackPort',
    value: 'PORT',
    default: '9469',
    parse: port,
    help: 'where the sidecar listens (127.0.0.1:PORT) in pods annotated arc-imds-proxy/net-admin: "false"',
  },
  {
    flag: 'sidecar-cpu-request',
    key: 'sidecarCpuRequest',
    value: 'QUANTITY',
    default: '10m',
    parse: quantity,
    help: "the sidecar's CPU request (a pod may set arc-imds-proxy/sidecar-cpu-request)",
  },
  {
    flag: 'sidecar-memory-request',
    key: 'sidecarMemoryRequest',
    value: 'QUANTITY',
    default: '72Mi',
    parse: quantity,
    help: "the sidecar's memory request (a pod may set arc-imds-proxy/sidecar-memory-request)",
  },
  {
    flag: 'sidecar-memory-limit',
    key: 'sidecarMemoryLimit',
    value: 'QUANTITY',
    default: '192Mi',
    parse: quantity,
    help: "the sidecar's memory limit (a pod may set arc-imds-proxy/sidecar-memory-limit)",
  },
  {
    flag: 'sidecar-log-level',
    key: 'sidecarLogLevel',
    value: 'LEVEL',
    default: 'info',
    parse: logLevelOption.parse,
    help: "the sidecar's ARC_IMDS_LOG_LEVEL",
  },
  {
    flag: 'max-request-bytes',
    key: 'maxRequestBytes',
    value: 'N',
    default: '4194304',
    parse: wholeInRange(1024, 64 * 1024 * 1024),
    help: 'larger AdmissionReview bodies are refused (413) unread',
  },
  logLevelOption,
];

function check(config: Record<string, unknown>, problems: string[]): void {
  for (const [key, flag] of [
    ['tlsCert', 'tls-cert'],
    ['tlsKey', 'tls-key'],
    ['image', 'image'],
  ] as const) {
    if (config[key] === undefined && !problems.some((p) => p.startsWith(`--${flag}:`) || p.startsWith(`${envName(flag)}:`))) {
      problems.push(`--${flag} is required (or ${envName(flag)})`);
    }
  }
  if (config.adminPort !== undefined && config.adminPort === config.loopbackPort) {
    problems.push('--loopback-port must differ from --admin-port (both listen in the same pod)');
  }
}

export function parseWebhook(argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<WebhookConfig> {
  return parseCommand<WebhookConfig>({ options: WEBHOOK_OPTIONS, check }, argv, env);
}

export const webhook = defineCommand<WebhookConfig>({
  name: 'webhook',
  summary: 'Kubernetes mutating admission webhook: injects the sidecar into pods that opt in by label',
  description: 'Mutating admission webhook: inject the sidecar into pods labelled arc-imds-proxy/inject: "true".',
  options: WEBHOOK_OPTIONS,
  check,
  async start(config) {
    const [{ startWebhook }, { createLogger }] = await Promise.all([import('../webhook/server.js'), import('../observability/log.js')]);
    return startWebhook(config, createLogger(config.logLevel));
  },
});
