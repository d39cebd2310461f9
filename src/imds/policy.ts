// --allow-resource: which audiences this proxy hands out tokens for. Exact strings, or prefixes ending in `*`.
// No patterns given: every resource is allowed. Checked before the cache, so a refused resource never costs an
// upstream call.
//
// A prefix matches only up to a boundary: the resource is the prefix itself, or continues after it with `/` or
// `:` (a path or a port), unless the prefix already ends in one of those. So `https://vault.azure.net*` allows
// `https://vault.azure.net`, `https://vault.azure.net/` and `https://vault.azure.net:443/x`, but not
// `https://vault.azure.net.evil.example` (a host that merely starts with the same letters).

const BOUNDARY = new Set(['/', ':']);

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
    return this.#open || this.#exact.has(resource) || this.#prefixes.some((prefix) => matchesPrefix(resource, prefix));
  }
}

function matchesPrefix(resource: string, prefix: string): boolean {
  if (!resource.startsWith(prefix)) return false;
  if (resource.length === prefix.length || BOUNDARY.has(prefix.at(-1)!)) return true;
  return BOUNDARY.has(resource[prefix.length]!);
}
