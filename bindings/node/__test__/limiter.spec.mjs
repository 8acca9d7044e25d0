import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'
import { collected } from './collected.mjs'

const require = createRequire(import.meta.url)
const { Limiter, errorCodes } = require('../floodgate.js')
const vectors = fileURLToPath(new URL('../../../tests/vectors/', import.meta.url))

test('check returns a decision', () => {
  const l = new Limiter({ quota: '3/second' })
  const d = l.check('k', 1, 0)
  assert.deepEqual(d, { allowed: true, limit: 3, remaining: 2, retryAfterMs: 0, resetAfterMs: d.resetAfterMs, quota: 0 })
  l.check('k', 2, 0)
  const denied = l.check('k', undefined, 0)
  assert.equal(denied.allowed, false)
  assert.ok(Math.abs(denied.retryAfterMs - 1000 / 3) < 0.001)
  assert.equal(l.check(Buffer.from([0xff, 0]), 0, 0).allowed, true)
  assert.equal(l.reset('k'), true)
  assert.equal(l.reset('nope'), false)
})

test('the shared vectors', () => {
  let ran = 0
  for (const f of readdirSync(vectors).filter((n) => n.endsWith('.json')).sort()) {
    const v = JSON.parse(readFileSync(vectors + f, 'utf8'))
    const algorithms = new Set(v.quotas.map((q) => q.algorithm))
    if (algorithms.size > 1) {
      // One algorithm per limiter in this API: check each quota's own vector elsewhere.
      continue
    }
    const l = new Limiter({
      quota: v.quotas.map((q) => q.quota),
      algorithm: [...algorithms][0],
      maxKeyBytes: v.options?.max_key_bytes,
    })
    for (const [i, step] of v.steps.entries()) {
      const key = step.key_hex !== undefined ? Buffer.from(step.key_hex, 'hex') : step.key
      const op = step.op ?? 'check'
      const now = step.now_ns / 1e6
      if (op === 'reset') {
        if (step.expect_error) assert.throws(() => l.reset(key), { code: 'ERR_FG_' + step.expect_error.toUpperCase() })
        else assert.equal(l.reset(key), step.expect_reset)
        continue
      }
      const cost = op === 'peek' ? 0 : step.cost
      if (step.expect_error) {
        assert.throws(() => l.check(key, cost, now), { code: 'ERR_FG_' + step.expect_error.toUpperCase() }, `${v.name} ${i}`)
        continue
      }
      const d = l.check(key, cost, now)
      const e = step.expect
      assert.deepEqual(
        {
          allowed: d.allowed,
          limit: d.limit,
          remaining: d.remaining,
          retry_after_ns: Math.round(d.retryAfterMs * 1e6),
          reset_after_ns: Math.round(d.resetAfterMs * 1e6),
          quota: d.quota,
        },
        e,
        `${v.name} step ${i}`,
      )
      ran++
    }
  }
  assert.ok(ran > 25, `ran ${ran}`)
})

test('every error code is thrown with err.code', () => {
  const codes = errorCodes()
  assert.equal(new Set(codes).size, codes.length)
  const cases = [
    [() => new Limiter({ quota: '0/s' }), 'ERR_FG_INVALID_QUOTA'],
    [() => new Limiter({ quota: 'ten per second' }), 'ERR_FG_QUOTA_PARSE'],
    [() => new Limiter({ quota: '1/s', algorithm: 'leaky' }), 'ERR_FG_UNKNOWN_ALGORITHM'],
    [() => new Limiter({ quota: [] }), 'ERR_FG_NO_QUOTAS'],
    [() => new Limiter({ quota: Array(40).fill('1/s') }), 'ERR_FG_TOO_MANY_QUOTAS'],
    [() => new Limiter({ quota: '100000/s', algorithm: 'sliding_log' }), 'ERR_FG_LOG_LIMIT_TOO_LARGE'],
  ]
  for (const [fn, code] of cases) {
    assert.ok(codes.includes(code), code)
    assert.throws(fn, (err) => err.code === code && err.message.length > 0)
  }
})

test('errors carry the core error\'s fields', () => {
  const l = new Limiter({ quota: '2/second', maxKeyBytes: 8 })
  assert.throws(() => l.check('k'.repeat(9), 1, 0), { code: 'ERR_FG_KEY_TOO_LONG', len: 9, max: 8 })
  assert.throws(() => l.check('k', 3, 0), { code: 'ERR_FG_COST_EXCEEDS_BURST', cost: 3, burst: 2, quota: 0 })
  assert.throws(() => l.check('k', -1, 0), (e) => e.code === 'ERR_FG_INVALID_COST' && typeof e.problem === 'string')
  assert.throws(() => new Limiter({ quota: 'ten per second' }), { code: 'ERR_FG_QUOTA_PARSE', input: 'ten per second' })
  assert.throws(() => new Limiter({ quota: '1/s', algorithm: 'leaky' }), { code: 'ERR_FG_UNKNOWN_ALGORITHM', name: 'leaky' })
  assert.throws(() => new Limiter({ quota: Array(40).fill('1/s') }), (e) => e.code === 'ERR_FG_TOO_MANY_QUOTAS' && e.count === 40 && e.max > 0)
  // The same fields whichever path threw: the raw hot path above, napi-rs's glue here.
  assert.throws(() => l.reset(''), { code: 'ERR_FG_EMPTY_KEY' })
})

test('bad input throws a clear error and leaves state intact', () => {
  const l = new Limiter({ quota: '2/second' })
  assert.equal(l.check('k', 1, 0).allowed, true)
  assert.throws(() => l.check('', 1, 0), { code: 'ERR_FG_EMPTY_KEY' })
  assert.throws(() => l.check('x'.repeat(300), 1, 0), { code: 'ERR_FG_KEY_TOO_LONG' })
  for (const bad of [undefined, null, 12, {}]) assert.throws(() => l.check(bad, 1, 0))
  for (const cost of [-1, NaN, Infinity, 1.5]) assert.throws(() => l.check('k', cost, 0), { code: 'ERR_FG_INVALID_COST' })
  assert.throws(() => l.check('k', 3, 0), { code: 'ERR_FG_COST_EXCEEDS_BURST' })
  assert.throws(() => l.check('k', 1, NaN), { code: 'ERR_FG_INVALID_ARGUMENT' })
  assert.throws(() => l.check('k', 1, -5), { code: 'ERR_FG_INVALID_ARGUMENT' })
  const d = l.check('k', 1, 0)
  assert.equal(d.allowed, true)
  assert.equal(d.remaining, 0)
})

test('the raw hot path: handles, key sizes, types and time', () => {
  const native = require('../index.js')
  const l = new Limiter({ quota: '5/second', maxKeyBytes: 4096 })
  // Keys around the 1 KiB stack buffer, and past it, are the same keys each time.
  for (const n of [1019, 1020, 1022, 1023, 1024, 1025, 4096]) {
    const k = 'k'.repeat(n)
    assert.equal(l.check(k, 1, 0).remaining, 4, `${n} bytes`)
    assert.equal(l.check(k, 1, 0).remaining, 3, `${n} bytes, again`)
  }
  assert.throws(() => l.check('k'.repeat(4097), 1, 0), { code: 'ERR_FG_KEY_TOO_LONG' })
  // Multi-byte UTF-8 straddling the buffer's end, and a string key equals its bytes.
  const wide = 'é'.repeat(600)
  assert.equal(l.check(wide, 1, 0).remaining, 4)
  assert.equal(l.check(Buffer.from(wide), 1, 0).remaining, 3)
  assert.throws(() => l.check(Buffer.alloc(0), 1, 0), { code: 'ERR_FG_EMPTY_KEY' })
  assert.equal(l.check(new Uint8Array([0xff, 0xfe]), 1, 0).remaining, 4)
  // Wrong types and values: a clear error, never a crash.
  for (const bad of ['1', {}, [], true, 1n]) assert.throws(() => l.check('t', bad, 0), { code: 'ERR_FG_INVALID_ARGUMENT' })
  for (const bad of ['0', 1e300, -1, Infinity]) assert.throws(() => l.check('t', 1, bad), { code: 'ERR_FG_INVALID_ARGUMENT' })
  assert.equal(l.check('t', null, null).remaining, 4)
  // The raw check is bound to its limiter: detached or called with another
  // `this`, it checks that limiter; with no key it refuses.
  const [, rawOut, rawCheck] = new native.NativeLimiter({ quota: '3/second' }).handle()
  for (const self of [undefined, {}, l]) assert.equal(rawCheck.call(self, 'k', 1, 0), true)
  assert.equal(rawCheck('k', 1, 0), false, 'its own fourth request within the second')
  assert.equal(rawOut[1], 0, 'remaining')
  for (const bad of [undefined, null, {}, 42]) {
    assert.throws(() => rawCheck(bad, 1), { code: 'ERR_FG_INVALID_ARGUMENT' })
  }
  // Each limiter has its own decision memory.
  const a = new Limiter({ quota: '10/second' })
  const b = new Limiter({ quota: '3/second' })
  const da = a.check('x', 1, 0)
  const db = b.check('x', 1, 0)
  assert.deepEqual([da.limit, da.remaining, db.limit, db.remaining], [10, 9, 3, 2])
})

test('limiters are freed when collected', () => {
  // Each of the two values of a limiter's handle (the numbers' view, the
  // bound check) holds it; were one not freed, the
  // 1,600 limiters of rounds 3-10 (~150 KB each with their keys) would grow
  // the process by ~240 MB. Then a kept limiter still decides.
  const out = collected({
    limitMb: 80,
    iteration: `const l = new fg.Limiter({ quota: '5/second' })
      for (let k = 0; k < 50; k++) l.check('k' + k)`,
    after: `const kept = new fg.Limiter({ quota: '1/second' })
      if (!kept.check('k').allowed || kept.check('k').allowed) process.exit(2)
      process.stdout.write('ok')`,
  })
  assert.equal(out, 'ok')
})
