// The layers of src/, checked on every `npm test` (test/layers.test.ts runs depcruise with this file):
//   cli -> commands -> server -> imds (the IMDS front) -> tokens (the cache) -> upstream, and every layer ->
//   values (addresses, tokens, typed failures) and observability. Nothing below imports from above.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    { name: 'no-cycles', severity: 'error', comment: 'No import cycles anywhere.', from: {}, to: { circular: true } },
    {
      name: 'commands-only-from-cli',
      severity: 'error',
      comment: 'Only cli.ts (and commands themselves) import the command and option layer.',
      from: { path: '^src/', pathNot: '^src/(cli\\.ts|commands/)' },
      to: { path: '^src/(commands|options)/' },
    },
    {
      name: 'cache-and-upstream-know-no-imds',
      severity: 'error',
      comment: 'The cache and the upstream throw typed failures; only the IMDS front decides what clients see.',
      from: { path: '^src/(tokens|upstream)/' },
      to: { path: '^src/(imds|server|commands|options)/' },
    },
    {
      name: 'upstream-knows-no-cache',
      severity: 'error',
      from: { path: '^src/upstream/' },
      to: { path: '^src/tokens/' },
    },
    {
      name: 'imds-front-below-server',
      severity: 'error',
      from: { path: '^src/imds/' },
      to: { path: '^src/(server|commands|options)/' },
    },
    {
      name: 'values-are-leaves',
      severity: 'error',
      comment: 'Value types import nothing of the project but each other.',
      from: { path: '^src/values/' },
      to: { path: '^src/', pathNot: '^src/values/' },
    },
    {
      name: 'observability-below-the-pipeline',
      severity: 'error',
      from: { path: '^src/observability/' },
      to: { path: '^src/(server|imds|tokens|upstream|commands|options|emulator)/' },
    },
    {
      name: 'emulator-stands-alone',
      severity: 'error',
      comment: 'The HIMDS emulator is a separate program in the same package: it shares only value types.',
      from: { path: '^src/emulator/' },
      to: { path: '^src/', pathNot: '^src/(emulator|values)/' },
    },
    {
      name: 'webhook-stands-alone',
      severity: 'error',
      comment: 'The admission webhook builds pod patches; it shares value types and observability, nothing of the proxy.',
      from: { path: '^src/webhook/' },
      to: { path: '^src/(server|imds|tokens|upstream|commands|options|emulator)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(dist|node_modules)/' },
  },
};
