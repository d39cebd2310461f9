// What a command is: its name, a one-line summary for the usage list, its options (declared once, in the
// option parser's terms), how it checks them, and what it runs. cli.ts only dispatches to these.
import { finish, helpText, parseOptions, type OptionSpec, type Parsed } from '../options/parser.js';

/** A command that keeps running until it is closed (a server); one-shot commands return nothing. */
export interface Running {
  close(): Promise<void>;
}

export interface Command {
  readonly name: string;
  readonly summary: string;
  readonly options: readonly OptionSpec[];
  /** Parse argv and the environment; print help, or run. Throws ConfigError with every problem. */
  run(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<Running | undefined>;
}

export interface CommandSpec<C> {
  readonly name: string;
  readonly summary: string;
  /** The first paragraph of --help. */
  readonly description: string;
  readonly options: readonly OptionSpec[];
  /** Cross-checks beyond each value's own parser: push a line per problem. */
  readonly check?: (config: Record<string, unknown>, problems: string[], argv: readonly string[], env: NodeJS.ProcessEnv) => void;
  /** What the command does; heavy modules are imported here, so a command loads only its own code. */
  readonly start: (config: C) => Promise<Running | undefined>;
}

/** Parse a command's options (its own checks included) into its frozen config. */
export function parseCommand<C>(spec: Pick<CommandSpec<C>, 'options' | 'check'>, argv: readonly string[], env: NodeJS.ProcessEnv): Parsed<C> {
  const { config, problems, help } = parseOptions(spec.options, argv, env);
  if (!help) spec.check?.(config, problems, argv, env);
  return finish<C>(config, problems, help);
}

export function defineCommand<C>(spec: CommandSpec<C>): Command {
  return {
    name: spec.name,
    summary: spec.summary,
    options: spec.options,
    async run(argv, env) {
      const { config, help } = parseCommand<C>(spec, argv, env);
      if (help) {
        process.stdout.write(helpText(spec.name, spec.description, spec.options));
        return undefined;
      }
      return spec.start(config);
    },
  };
}

/**
 * Exit status by error code. 2: the configuration (or the place it runs in) is wrong and a restart will not
 * help; 1: the environment failed, or a probe found the service not ready. Anything else is 1 with its stack.
 * Every code here is documented in docs/errors.md (a test checks both ways).
 */
export const EXIT_STATUS: Readonly<Record<string, number>> = {
  config_invalid: 2,
  listen_address_unavailable: 2,
  listen_permission: 2,
  host_namespace_refused: 2,
  webhook_tls_invalid: 2,
  netns_host_namespace: 2,
  listen_in_use: 1,
  listen_socket_path: 1,
  listen_failed: 1,
  netns_no_ip: 1,
  netns_no_permission: 1,
  netns_failed: 1,
  probe_not_ready: 1,
};
