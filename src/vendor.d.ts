// Types for the files of undici and prom-client that src/ imports directly instead of their index (see
// src/upstream/client.ts and src/observability/metrics.ts for why). Each is the CommonJS module.exports of that
// file, typed with what the package's own declarations say it is.

declare module 'undici/lib/dispatcher/pool.js' {
  const Pool: typeof import('undici').Pool;
  export default Pool;
}
declare module 'undici/lib/core/errors.js' {
  const errors: typeof import('undici').errors;
  export default errors;
}

declare module 'prom-client/lib/registry.js' {
  const Registry: typeof import('prom-client').Registry;
  export default Registry;
}
declare module 'prom-client/lib/counter.js' {
  const Counter: typeof import('prom-client').Counter;
  export default Counter;
}
declare module 'prom-client/lib/gauge.js' {
  const Gauge: typeof import('prom-client').Gauge;
  export default Gauge;
}
declare module 'prom-client/lib/histogram.js' {
  const Histogram: typeof import('prom-client').Histogram;
  export default Histogram;
}
/** One of prom-client's default metrics: registers its metric(s) on the registry. */
declare module 'prom-client/lib/metrics/*.js' {
  const register: (registry: import('prom-client').Registry, config: Record<string, unknown>) => void;
  export default register;
}
