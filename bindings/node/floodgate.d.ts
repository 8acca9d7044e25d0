// Types of the package's entry point, floodgate.js. Everything but `Limiter` is
// napi-rs's generated typing of the native addon (index.d.ts), re-exported.
import type { Decision, LimiterOptions } from './index'

export {
  Engine,
  RedisLimiter,
  errorCodes,
  Decision,
  EngineEvent,
  LimiterOptions,
  RedisOptions,
  RequestInit,
  Verdict,
} from './index'

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
