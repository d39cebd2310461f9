// A warning that can come in floods, logged at most once per interval without losing count. The first is
// written at once; the rest of its interval is counted, and when the interval ends one more line says how many
// came since the last line (with the latest one's fields), so a flood that stops inside an interval is still
// summed up in the log within that interval, not when the next one happens to arrive.
import type { Logger } from 'pino';

/** What each line of a throttled warning carries besides its own fields: how many it stands for. */
export const SINCE_LAST_LINE = 'refusedSinceLastLine';

export class ThrottledWarning {
  readonly #log: Logger;
  readonly #message: string;
  readonly #intervalMs: number;
  #lastLineAt = Number.NEGATIVE_INFINITY;
  /** Warnings since the last line, and the latest one's fields. */
  #pending = 0;
  #latest: Record<string, unknown> | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(log: Logger, message: string, intervalMs: number) {
    this.#log = log;
    this.#message = message;
    this.#intervalMs = intervalMs;
  }

  warn(fields: Record<string, unknown>): void {
    const now = performance.now();
    if (this.#timer === undefined && now - this.#lastLineAt >= this.#intervalMs) {
      this.#write(fields, now);
      return;
    }
    this.#pending++;
    this.#latest = fields;
    // Unref'd: a summary still due never keeps the process alive; close() writes it at shutdown.
    this.#timer ??= setTimeout(() => this.#summarise(), this.#lastLineAt + this.#intervalMs - now).unref();
  }

  /** Write what is still counted (at shutdown). */
  close(): void {
    clearTimeout(this.#timer);
    this.#summarise();
  }

  #summarise(): void {
    this.#timer = undefined;
    if (this.#pending === 0 || this.#latest === undefined) return;
    this.#write({ ...this.#latest, [SINCE_LAST_LINE]: this.#pending }, performance.now());
  }

  #write(fields: Record<string, unknown>, now: number): void {
    this.#log.warn(fields, this.#message);
    this.#lastLineAt = now;
    this.#pending = 0;
    this.#latest = undefined;
  }
}
