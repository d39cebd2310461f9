// Readiness that means "a token can be minted now": checked in the background at an interval, so probes
// answer from memory and never reach HIMDS. 503 while draining, whatever the last check said.
import type { Logger } from './log.js';

/** Resolves with why it is ready when a token could be minted; rejects with the reason why not. */
export type ReadinessCheck = (signal: AbortSignal) => Promise<string | undefined>;

export interface ReadinessState {
  readonly ready: boolean;
  readonly reason: string;
  /** ISO time of the last completed check, or null before the first. */
  readonly checkedAt: string | null;
}

export class Readiness {
  readonly #check: ReadinessCheck;
  readonly #intervalMs: number;
  readonly #timeoutMs: number;
  readonly #log: Logger;
  #ready = false;
  #reason = 'starting: the first readiness check has not completed';
  #checkedAt: string | null = null;
  #draining = false;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;

  constructor(check: ReadinessCheck, options: { intervalMs: number; timeoutMs: number }, log: Logger) {
    this.#check = check;
    this.#intervalMs = options.intervalMs;
    this.#timeoutMs = options.timeoutMs;
    this.#log = log;
  }

  /** Check now, then every interval. */
  start(): Promise<void> {
    const first = this.checkNow();
    this.#timer = setInterval(() => void this.checkNow(), this.#intervalMs);
    this.#timer.unref();
    return first;
  }

  /** Run a check unless one is running (then wait for that one). */
  checkNow(): Promise<void> {
    this.#running ??= this.#check(AbortSignal.timeout(this.#timeoutMs))
      .then(
        (why) => this.#record(true, why ?? 'a token can be minted'),
        (err: unknown) => this.#record(false, (err as Error).message),
      )
      .finally(() => {
        this.#running = undefined;
      });
    return this.#running;
  }

  #record(ready: boolean, reason: string): void {
    if (ready !== this.#ready || reason !== this.#reason) {
      if (ready) this.#log.info(`ready: ${reason}`);
      else this.#log.warn({ reason }, 'not ready');
    }
    this.#ready = ready;
    this.#reason = reason;
    this.#checkedAt = new Date().toISOString();
  }

  /** From now on not ready: the process is shutting down. */
  drain(): void {
    this.#draining = true;
    this.stop();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  get state(): ReadinessState {
    if (this.#draining) return { ready: false, reason: 'draining: shutting down', checkedAt: this.#checkedAt };
    return { ready: this.#ready, reason: this.#reason, checkedAt: this.#checkedAt };
  }
}
