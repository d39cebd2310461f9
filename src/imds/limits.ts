// Optional per-listener limits on the token route, modelled on IMDS's identity endpoint (20 requests/s,
// 5 concurrent), answered with IMDS's own 429. Off by default: a sidecar serves one workload whose bursts the
// cache absorbs, and HIMDS is already protected by single-flight and --upstream-concurrency. Switch them on
// where one listener is shared by workloads that should not starve each other (a host relay's socket).

export interface LimitsConfig {
  /** Token requests per second (token bucket, burst = one second's worth); undefined: off. */
  readonly rateLimit: number | undefined;
  /** Token requests in flight at once; undefined: off. */
  readonly concurrencyLimit: number | undefined;
}

export class ListenerLimits {
  readonly #rate: number | undefined;
  readonly #concurrency: number | undefined;
  #tokens: number;
  #refilledAt: number;
  #inFlight = 0;
  readonly now: () => number;

  constructor(config: LimitsConfig, now: () => number = () => performance.now()) {
    this.now = now;
    this.#rate = config.rateLimit;
    this.#concurrency = config.concurrencyLimit;
    this.#tokens = config.rateLimit ?? 0;
    this.#refilledAt = now();
  }

  get enabled(): boolean {
    return this.#rate !== undefined || this.#concurrency !== undefined;
  }

  /** Take a slot for one request; false means answer 429. Every true must be followed by release(). */
  acquire(): boolean {
    if (this.#concurrency !== undefined && this.#inFlight >= this.#concurrency) return false;
    if (this.#rate !== undefined) {
      const now = this.now();
      this.#tokens = Math.min(this.#rate, this.#tokens + ((now - this.#refilledAt) / 1000) * this.#rate);
      this.#refilledAt = now;
      if (this.#tokens < 1) return false;
      this.#tokens -= 1;
    }
    this.#inFlight++;
    return true;
  }

  release(): void {
    this.#inFlight--;
  }
}
