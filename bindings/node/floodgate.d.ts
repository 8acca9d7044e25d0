// Types of the package's entry point, floodgate.js. Everything but `Limiter` is
// napi-rs's generated typing of the native addon (index.d.ts), re-exported.
import type { Decision, LimiterOptions, Verdict } from './index'

export {
  Engine,
  RedisLimiter,
  errorCodes,
  MAX_BODY_BYTES,
  Decision,
  EngineEvent,
  LimiterOptions,
  LogLine,
  RedisOptions,
  RequestInit,
  Verdict,
} from './index'

/** How a request ended, for `engine.settle`. */
export interface SettleOutcome {
  /** The response's HTTP status (100-599). */
  status: number
  /** The real cost, for rules with `cost_from = "response"` (default: the estimate stands). */
  cost?: number | null
  /** Unix time in ms, for replays and tests. */
  nowMs?: number | null
}

declare module './index' {
  interface Engine {
    /**
     * Settles an admitted request once its response is known: gives back the
     * charge of rules that do not count `status` (`count = "failures"`...),
     * replaces the estimate by `cost` on rules with `cost_from = "response"`, and
     * frees the request's places in flight. A verdict with nothing to settle is
     * a no-op.
     * @throws Error with `err.code` `ERR_FG_ALREADY_SETTLED` the second time,
     * `ERR_FG_INVALID_REQUEST` for a status out of range, `ERR_FG_INVALID_COST`.
     */
    settle(verdict: Verdict, outcome: SettleOutcome): void
    /**
     * `settle` on the libuv thread pool, for engines whose settlement may wait
     * on Redis (`mayBlock`): the event loop never waits. Rejects with
     * `ERR_FG_ALREADY_SETTLED` the second time; bad arguments throw at once.
     */
    settleAsync(verdict: Verdict, outcome: SettleOutcome): Promise<void>
  }
}

/** Whether `engine.settle(verdict, ...)` has something to settle. */
export declare function needsSettle(verdict: Verdict): boolean

/** An in-memory rate limiter: `new Limiter({ quota: '100/minute', burst: 20 })`. */
export declare class Limiter {
  constructor(options: LimiterOptions)
  /**
   * Checks `cost` units (default 1; 0 peeks) for `key` (string or Buffer),
   * synchronously, in about 0.1-0.2 µs. `nowMs` (Unix time in ms) replaces the
   * clock, for replays and tests.
   * @throws Error with `err.code` `ERR_FG_EMPTY_KEY`, `ERR_FG_KEY_TOO_LONG`,
   * `ERR_FG_INVALID_COST`, `ERR_FG_COST_EXCEEDS_BURST`, or
   * `ERR_FG_INVALID_ARGUMENT` (a key that is not a string or Buffer, a cost or
   * `nowMs` that is not a number, a bad `nowMs`), with the error's fields
   * (`len` and `max`; `cost`, `burst` and `quota`; `problem`). A denial is not
   * an error.
   */
  check(key: string | Buffer, cost?: number | null, nowMs?: number | null): Decision
  /** Forgets `key`; true if it was held. */
  reset(key: string | Buffer): boolean
  /** Keys held now (counts every shard: not for the hot path). */
  get size(): number
}
