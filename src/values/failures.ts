// Typed failures: what the upstream and the token cache throw. They say what happened, never what a client
// should be answered: that is decided in one place, the table in src/imds/errors.ts.

/**
 * What went wrong talking to the upstream (HIMDS or a relay):
 *   refused      nothing listens (connection refused, no socket file, permission denied on the socket)
 *   timeout      no answer within the attempt deadline (connect or response)
 *   reset        the connection broke (reset, closed mid-answer)
 *   status       it answered with a status we do not turn into a token (with its code, Retry-After, and the
 *                `error` / `error_description` of its JSON body, if any)
 *   bad_body     it answered 200 (or spoke HTTP) with something unusable
 *   challenge    the key-file challenge could not be answered (with the reason, a bounded set)
 *   identity     a user-assigned identity that the upstream did not echo (legacy agents): fail closed
 */
export const UPSTREAM_FAILURE_KINDS = ['refused', 'timeout', 'reset', 'status', 'bad_body', 'challenge', 'identity'] as const;
export type UpstreamFailureKind = (typeof UPSTREAM_FAILURE_KINDS)[number];

/** Why a key-file challenge failed; a metric label (bounded set). */
export type ChallengeFailure =
  | 'bad_realm'
  | 'missing'
  | 'symlink'
  | 'not_regular'
  | 'too_large'
  | 'empty'
  | 'bad_key'
  | 'permission'
  | 'io'
  | 'key_rejected';

export interface UpstreamStatus {
  readonly status: number;
  readonly retryAfter: string | undefined;
  /** The upstream's `error` and `error_description`, when its body was a JSON object with them. */
  readonly error: string | undefined;
  readonly description: string | undefined;
}

export class UpstreamFailure extends Error {
  readonly kind: UpstreamFailureKind;
  /** Stable: `upstream_` + kind. */
  readonly code: `upstream_${UpstreamFailureKind}`;
  /** For `status`. */
  readonly upstream: UpstreamStatus | undefined;
  /** For `challenge`. */
  readonly reason: ChallengeFailure | undefined;

  constructor(kind: UpstreamFailureKind, message: string, options: { upstream?: UpstreamStatus; reason?: ChallengeFailure; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'UpstreamFailure';
    this.kind = kind;
    this.code = `upstream_${kind}`;
    this.upstream = options.upstream;
    this.reason = options.reason;
  }

  /** Worth another attempt: the upstream may answer next time. */
  get retryable(): boolean {
    return this.kind === 'refused' || this.kind === 'timeout' || this.kind === 'reset' || (this.kind === 'status' && this.upstream?.status === 503);
  }
}

/**
 * Why the token cache ended a request without a token of the upstream's:
 *   saturated   every fetch slot and queue place is taken (--upstream-concurrency + --upstream-queue)
 *   abandoned   the client went away (and with the last one, the fetch)
 *   deadline    the fetch waited for a slot past its deadline
 */
export const FETCH_FAILURE_KINDS = ['saturated', 'abandoned', 'deadline'] as const;
export type FetchFailureKind = (typeof FETCH_FAILURE_KINDS)[number];

export class FetchFailure extends Error {
  readonly kind: FetchFailureKind;
  /** Stable: `fetch_` + kind. */
  readonly code: `fetch_${FetchFailureKind}`;
  constructor(kind: FetchFailureKind, message: string) {
    super(message);
    this.name = 'FetchFailure';
    this.kind = kind;
    this.code = `fetch_${kind}`;
  }
}
