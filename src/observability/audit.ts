// The audit trail: who got tokens for what. One line when a client address first receives a token for a
// (resource, identity), then at most one a minute per such triple with the count since the last line. Tokens
// minted upstream are logged where they are fetched. Cheap on the hit path: two map lookups and an increment.
// Never any token or key material: only the address, the resource, the selector kind and value.
import type { TokenRequest } from '../values/token.js';
import { clip, type Logger } from './log.js';

const INTERVAL_MS = 60_000;
/** Distinct (client, resource, identity) triples remembered; beyond this the oldest are summarised and dropped. */
export const MAX_TRIPLES = 10_000;

interface Tally {
  readonly client: string;
  readonly subject: string;
  readonly resource: string;
  readonly selector: string;
  count: number;
  lastLoggedAt: number;
}

export class Audit {
  readonly #log: Logger;
  readonly #now: () => number;
  /** subject (resource + identity) -> client address -> tally: two lookups of strings the hit path already has. */
  readonly #bySubject = new Map<string, Map<string, Tally>>();
  /** Every tally, oldest first: what is dropped when there are too many. */
  readonly #tallies = new Set<Tally>();
  readonly #timer: NodeJS.Timeout;

  constructor(log: Logger, now: () => number = Date.now) {
    this.#log = log;
    this.#now = now;
    // Counts that no later request would report get reported by the minute anyway.
    this.#timer = setInterval(() => this.flush(), INTERVAL_MS);
    this.#timer.unref();
  }

  served(client: string, request: Pick<TokenRequest, 'resource' | 'selector' | 'subject'>): void {
    const now = this.#now();
    const tally = this.#bySubject.get(request.subject)?.get(client);
    if (tally === undefined) {
      this.#firstSeen(client, request, now);
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
      {
        audit: 'count',
        client: tally.client,
        resource: tally.resource,
        selector: tally.selector,
        count: tally.count,
        sinceS: Math.round((now - tally.lastLoggedAt) / 1000),
      },
      'tokens served',
    );
    tally.count = 0;
    tally.lastLoggedAt = now;
  }

  #firstSeen(client: string, request: Pick<TokenRequest, 'resource' | 'selector' | 'subject'>, now: number): void {
    if (this.#tallies.size >= MAX_TRIPLES) this.#evictOldest();
    const selector = request.selector ? `${request.selector.kind}=${request.selector.value}` : 'system';
    const tally: Tally = {
      client,
      subject: request.subject,
      resource: clip(request.resource)!,
      selector: clip(selector)!,
      count: 0,
      lastLoggedAt: now,
    };
    this.#tallies.add(tally);
    let byClient = this.#bySubject.get(tally.subject);
    if (byClient === undefined) {
      byClient = new Map();
      this.#bySubject.set(tally.subject, byClient);
    }
    byClient.set(client, tally);
    this.#log.info({ audit: 'first', client, resource: tally.resource, selector: tally.selector }, 'token served to a new client');
  }

  #evictOldest(): void {
    const tally = this.#tallies.values().next().value as Tally;
    if (tally.count > 0) this.#report(tally, this.#now());
    this.#tallies.delete(tally);
    const byClient = this.#bySubject.get(tally.subject);
    byClient?.delete(tally.client);
    if (byClient?.size === 0) this.#bySubject.delete(tally.subject);
  }
}
