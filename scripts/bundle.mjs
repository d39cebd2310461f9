// @ts-check
// The second half of `npm run build`: bundles the program that ships (dist/cli.js, the bin, the image's
// ENTRYPOINT) from src/cli.ts with esbuild, after tsc has type-checked src/ and emitted its modules into dist/
// (which tests and tools import one by one). Why a bundle, measured on Node 24: loading ~170 modules one by one
// made Node's module resolver hot enough for V8 to optimise it with TurboFan at start-up, which maps about 5 MB
// more of the node binary into every sidecar; one file per command does not (docs/performance.md, "Bundle").
//
//   dist/cli.js            the entry: cli.ts, the option parser and every command's option table
//   dist/chunks/*.js       what a command loads when it runs (serve, emulate-himds, webhook, ...), and what
//                          several share; a role loads only its own chunks
//   dist/*.map             source maps to src/ (not shipped in the image; `node --enable-source-maps` uses them)
//   dist/THIRD-PARTY-LICENSES.txt  the licence of every package the bundle contains, as the packages ship it
//                          (with any licence file in a folder the bundled files came from)
//   dist/bundle-meta.json  esbuild's metafile: the inputs and imports of each output (for tests; not shipped)
//
// Two build-time substitutions, each for a reason:
//   - src/version.ts becomes the version string itself: at run time it reads ../package.json relative to its own
//     file, which in a chunk is another directory.
//   - undici's `require('node:http2')` fails as on a Node built without HTTP/2, a case undici handles (its h2
//     client is then unavailable). This proxy never enables HTTP/2 (no `allowH2`), and loading node:http2 brings
//     TLS and costs about 4 MB RSS per process on Node 24.
import { chmod, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DIST = path.join(ROOT, 'dist');
const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8'));

/** @type {esbuild.Plugin} */
const inlineVersion = {
  name: 'inline-version',
  setup(build) {
    build.onLoad({ filter: /[\\/]src[\\/]version\.ts$/ }, () => ({
      contents: `export const VERSION = ${JSON.stringify(pkg.version)};\n`,
      loader: 'ts',
    }));
  },
};

/** @type {esbuild.Plugin} */
const noHttp2ForUndici = {
  name: 'no-http2-for-undici',
  setup(build) {
    build.onResolve({ filter: /^(node:)?http2$/ }, (args) =>
      /[\\/]node_modules[\\/]undici[\\/]/.test(args.importer) ? { path: 'http2', namespace: 'not-built-in' } : undefined,
    );
    build.onLoad({ filter: /.*/, namespace: 'not-built-in' }, () => ({
      contents:
        "const e = new Error('node:http2 is left out of the arc-imds-proxy bundle (HTTP/2 upstreams are not supported)');\n" +
        "e.code = 'ERR_UNKNOWN_BUILTIN_MODULE';\nthrow e;\n",
      loader: 'js',
    }));
  },
};

await rm(path.join(DIST, 'chunks'), { recursive: true, force: true });
const result = await esbuild.build({
  absWorkingDir: ROOT,
  entryPoints: { cli: 'src/cli.ts' },
  outdir: DIST,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: `node${pkg.engines.node.replace(/^>=\s*/, '')}`,
  // The CommonJS dependencies require Node's built-ins; an ES module has no `require` of its own.
  banner: { js: "import { createRequire as __arcCreateRequire } from 'node:module';\nconst require = __arcCreateRequire(import.meta.url);" },
  minifySyntax: true,
  minifyWhitespace: true,
  keepNames: false,
  sourcemap: 'linked',
  sourcesContent: false,
  legalComments: 'none',
  metafile: true,
  plugins: [inlineVersion, noHttp2ForUndici],
  logLevel: 'warning',
});

// The bin: executable, as npm makes it on install, so that `./dist/cli.js` runs through its shebang here too.
await chmod(path.join(DIST, 'cli.js'), 0o755);

// Every package the bundle took code from, with its licence texts: the package's own, and any licence or
// notice file in a folder the bundled files came from (undici's fetch code carries a licence of its own). A
// file belongs to the package of the last node_modules/ in its path (nested dependencies are packages too).
const LICENCE_FILE = /^(licen[cs]e|copying|notice)([.-].*)?$/i;
/** package root -> the folders (relative to it) bundled files came from */
const packages = new Map();
for (const input of Object.keys(result.metafile.inputs)) {
  const at = input.lastIndexOf('node_modules/');
  if (at === -1) continue;
  const rest = input.slice(at + 'node_modules/'.length).split('/');
  const nameParts = rest[0]?.startsWith('@') ? 2 : 1;
  const root = path.join(ROOT, input.slice(0, at), 'node_modules', ...rest.slice(0, nameParts));
  const folders = packages.get(root) ?? new Set(['']);
  const within = rest.slice(nameParts, -1);
  for (let i = 1; i <= within.length; i++) folders.add(within.slice(0, i).join('/'));
  packages.set(root, folders);
}
const notices = [];
for (const [root, folders] of [...packages].sort(([a], [b]) => a.localeCompare(b))) {
  const meta = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8'));
  const texts = [];
  let atRoot = false;
  for (const folder of [...folders].sort()) {
    for (const file of (await readdir(path.join(root, folder))).filter((f) => LICENCE_FILE.test(f)).sort()) {
      const where = folder === '' ? file : `${folder}/${file}`;
      if (folder === '' && !/^notice/i.test(file)) atRoot = true;
      texts.push(`--- ${where}\n${(await readFile(path.join(root, folder, file), 'utf8')).trim()}`);
    }
  }
  if (!atRoot) {
    throw new Error(`bundle: ${meta.name} has no licence file at its root to ship with it`);
  }
  notices.push(`${'='.repeat(78)}\n${meta.name}@${meta.version} (${meta.license})\n${'='.repeat(78)}\n${texts.join('\n\n')}\n`);
}
await writeFile(
  path.join(DIST, 'THIRD-PARTY-LICENSES.txt'),
  `arc-imds-proxy's dist/ bundles code from these packages, under these licences.\n\n${notices.join('\n')}`,
);

// What went into each output file and what each imports (statically or when run): test/bundle.test.ts reads it
// to check that a role loads only its own code. Not shipped (the image takes cli.js, chunks/ and the licences).
await writeFile(path.join(DIST, 'bundle-meta.json'), JSON.stringify(result.metafile));
