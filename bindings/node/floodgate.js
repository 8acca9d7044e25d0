'use strict'
// The package's entry point. `index.js` is napi-rs's generated loader of the
// native addon; this file re-exports it, and wraps the one class whose calls are
// hot enough for the glue to matter: `Limiter.check` calls the raw Node-API
// function `limiterCheck` (src/fast.rs), gets the numbers through a
// Float64Array, and builds the Decision here, where V8 makes an object in
// nanoseconds (napi-rs's generated glue and an object made from native code
// cost about a microsecond, twenty times the check).
const native = require('./index.js')

const { limiterCheck } = native

function decision(allowed, out) {
  return {
    allowed,
    limit: out[0],
    remaining: out[1],
    retryAfterMs: out[2],
    resetAfterMs: out[3],
    quota: out[4],
  }
}

/** An in-memory rate limiter: `new Limiter({ quota: '100/minute', burst: 20 })`. */
class Limiter {
  #native
  #handle
  #out

  /** @param {import('./index').LimiterOptions} options */
  constructor(options) {
    this.#native = new native.NativeLimiter(options)
    ;[this.#handle, this.#out] = this.#native.handle()
  }

  /**
   * Checks `cost` units (default 1; 0 peeks) for `key` (string or Buffer),
   * synchronously. `nowMs` replaces the clock (replays and tests).
   * @returns {import('./index').Decision}
   */
  check(key, cost, nowMs) {
    const c = cost ?? 1
    const allowed =
      nowMs == null ? limiterCheck(this.#handle, key, c) : limiterCheck(this.#handle, key, c, nowMs)
    return decision(allowed, this.#out)
  }

  /** Forgets `key`; true if it was held. */
  reset(key) {
    return this.#native.reset(key)
  }

  /** Keys held now (counts every shard: not for the hot path). */
  get size() {
    return this.#native.size
  }
}

module.exports = {
  Limiter,
  RedisLimiter: native.RedisLimiter,
  Engine: native.Engine,
  errorCodes: native.errorCodes,
}
