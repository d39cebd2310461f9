// The audit trail: who got tokens for what. One line when a client address first receives a token for a
// (resource, identity), then at most one a minute per such triple with the count since the last line. Tokens
// minted upstream are logged where they are fetched. Cheap on the hit path: a map lookup and an increment.
// Never any token or key material: only the address, the resource, the selector kind and value.
import type { Selector } from '../tokens/token.js';
import type { Logger } from './log.js';

const INTERVAL_MS = 60_000;
/** Distinct (client, resource, identity) triples remembered; beyond this the oldest are summarised and dropped. */
const MAX_TRIPLES = 10_000;

interface Tally {
  readonly client: string;
  readonly resource: string;
  readonly selector: string;
  count: number;
  lastLoggedAt: number;
}

export class Audit {
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #tallies = new Map<string, Tally>();
  readonly #timer: NodeJS.Timeout;

  constructor(log: Logger, now: () => number = Date.now) {
    this.#log = log;
    this.#now = now;
    // Counts that no later request would report get reported by the minute anyway.
    this.#timer = setInterval(() => this.flush(), INTERVAL_MS);
    this.#timer.unref();
  }

  served(client: string, resource: string, selector: Selector | undefined): void {
    const selectorText = selector ? `${selector.kind}=${selector.value}` : 'system';
    const key = `${client}\u0000${resource}\u0000${selectorText}`;
    const tally = this.#tallies.get(key);
    const now = this.#now();
    if (!tally) {
      if (this.#tallies.size >= MAX_TRIPLES) this.#evictOldest();
      this.#tallies.set(key, { client, resource, selector: selectorText, count: 0, lastLoggedAt: now });
      this.#log.info({ audit: 'first', client, resource, selector: selectorText }, 'token served to a new client');
      return;
    }
    tally.count++;
    if (now - tally.lastLoggedAt >= INTERVAL_MS) this.#report(tally, now);
  }

  /** Report every pending count (each minute, and at shutdown). */
  flush(): void {
    const now = this.#now();
    for (const tally of this.#tallies.values()) if (tally.count > 0) this.#report(tally, now);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.flush();
  }

  #report(tally: Tally, now: number): void {
    this.#log.info(
      { audit: 'count', client: tally.client, resource: tally.resource, selector: tally.selector, count: tally.count, sinceS: Math.round((now - tally.lastLoggedAt) / 1000) },
      'tokens served',
    );
    tally.count = 0;
    tally.lastLoggedAt = now;
  }

  #evictOldest(): void {
    const [key, tally] = this.#tallies.entries().next().value as [string, Tally];
    if (tally.count > 0) this.#report(tally, this.#now());
    this.#tallies.delete(key);
  }
}
