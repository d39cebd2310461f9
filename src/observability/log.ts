// JSON logs to stdout with pino. Secrets are never passed to the logger in the first place; redaction is the
// second line of defence for anything that might carry them (headers, token bodies, keys).
import { pino, type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from '../values/parsers.js';

export type { Logger } from 'pino';

export const REDACT_PATHS = [
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
  'access_token',
  '*.access_token',
  'refresh_token',
  '*.refresh_token',
  'key',
  '*.key',
];

/**
 * JSON lines to stdout (or `destination`). Never a pino transport: transports run in a worker thread whose file
 * pino finds relative to its own, which does not exist in the bundle that ships (scripts/bundle.mjs).
 */
export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  const options = {
    level,
    base: { name: 'arc-imds-proxy' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options);
}

/** Client-supplied text (URLs, resources) in log lines is cut to this many characters. */
export const LOG_TEXT_MAX = 256;

/** `text` cut to LOG_TEXT_MAX characters, saying how much was cut: a log line's size never follows the client. */
export function clip(text: string | undefined): string | undefined {
  if (text === undefined || text.length <= LOG_TEXT_MAX) return text;
  return `${text.slice(0, LOG_TEXT_MAX)}…(${text.length - LOG_TEXT_MAX} more)`;
}
