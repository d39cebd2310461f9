// --allow-resource: which audiences this proxy hands out tokens for. Exact strings, or prefixes ending in `*`.
// No patterns given: every resource is allowed. Checked before the cache, so a refused resource never costs an
// upstream call.

export class ResourcePolicy {
  readonly #exact: ReadonlySet<string>;
  readonly #prefixes: readonly string[];
  readonly #open: boolean;

  constructor(patterns: readonly string[]) {
    this.#open = patterns.length === 0;
    this.#exact = new Set(patterns.filter((p) => !p.endsWith('*')));
    this.#prefixes = patterns.filter((p) => p.endsWith('*')).map((p) => p.slice(0, -1));
  }

  allows(resource: string): boolean {
    return this.#open || this.#exact.has(resource) || this.#prefixes.some((prefix) => resource.startsWith(prefix));
  }
}
