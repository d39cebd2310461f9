// `demo`: the proxy in front of the built-in HIMDS emulator on free loopback ports, until Ctrl-C
// (src/server/demo.ts). No root, nothing outside 127.0.0.1.
import { logLevelOption, type OptionSpec } from '../options/parser.js';
import type { LogLevel } from '../values/parsers.js';
import { defineCommand } from './command.js';
import { parseServe } from './serve.js';

export interface DemoConfig {
  readonly logLevel: LogLevel;
}

export const DEMO_OPTIONS: readonly OptionSpec[] = [logLevelOption];

export const demo = defineCommand<DemoConfig>({
  name: 'demo',
  summary: 'the proxy in front of the emulator on free loopback ports; prints curl commands',
  description: 'Run the proxy in front of the HIMDS emulator on free loopback ports.',
  options: DEMO_OPTIONS,
  async start(config) {
    const [{ startDemo }, { createLogger }] = await Promise.all([import('../server/demo.js'), import('../observability/log.js')]);
    // The same defaults as `serve`, from the same option table; only where to listen and what to ask differ.
    const serveConfigFor = (upstream: string, tokensDir: string) =>
      parseServe(
        [
          '--listen',
          '127.0.0.1:0',
          '--admin-listen',
          '127.0.0.1:0',
          '--upstream',
          upstream,
          '--tokens-dir',
          tokensDir,
          '--log-level',
          config.logLevel,
        ],
        {},
      ).config;
    const running = await startDemo(serveConfigFor, createLogger(config.logLevel));
    process.stdout.write(running.instructions);
    return running;
  },
});
