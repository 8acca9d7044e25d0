// Engine.checkRequest on the raw Node-API path (src/request.rs + floodgate.js):
// the same verdicts as the napi-rs path (checkRequestAsync still converts with
// napi-rs), on every kind of verdict, odd strings included; bad input; and the
// middleware reading only the headers the policy names, over real HTTP.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createRequire } from 'node:module'
import { collected } from './collected.mjs'

const require = createRequire(import.meta.url)
const { Engine, Limiter } = require('../floodgate.js')
const native = require('../index.js')
const T = 1_700_000_000_000

const POLICY = `
[settings]
headers = "draft-6"
[lists]
deny_ips = ["192.0.2.0/24"]
[jwt]
algorithms = ["HS256"]
secret_file = "${new URL('../../../core/tests/keys/hs_secret.txt', import.meta.url).pathname}"
on_invalid = "reject"
[ban]
after = 2
within = "1m"
duration = "5m"
[[rule]]
name = "by-user"
match = "/u/**"
quotas = ["3/min"]
key = "header:x-user"
[[rule]]
name = "per-ip"
match = "/**"
quotas = ["5/min", "50/hour"]
key = "ip"
ban = true
`

function same(fast, slow, what) {
  const clean = (v) => JSON.parse(JSON.stringify(v))
  assert.deepEqual(clean(fast), clean(slow), what)
  assert.deepEqual(Object.keys(fast).sort(), [...native.verdictFields()].map((n) => n.replace(/_(.)/g, (_, c) => c.toUpperCase()) + (n.endsWith('_after') ? 'Ms' : '')).sort())
}

test('the raw path gives the napi-rs path\'s verdicts, every kind', async () => {
  const [a, b] = [Engine.fromToml(POLICY), Engine.fromToml(POLICY)]
  const long = 'ü'.repeat(300) // 600 bytes: past the arena's first read, and not ASCII
  const requests = [
    { method: 'GET', path: '/x', clientIp: '203.0.113.1' },
    { method: 'GET', path: '/u/1?q=1', clientIp: '203.0.113.1', headers: { 'X-User': 'zoë 😀' } },
    { method: 'GET', path: '/u/1', clientIp: '203.0.113.1', headers: { 'x-user': ['a', 'b'] } },
    { method: 'GET', path: '/u/1', clientIp: '203.0.113.1', headers: { 'x-user': long } },
    { method: 'GET', path: '/u/1', clientIp: '::ffff:203.0.113.2', headers: { 'x-user': 42 } },
    { method: 'GET', path: '/x', clientIp: '192.0.2.9' }, // deny-listed
    { method: 'GET', path: '/x', clientIp: '203.0.113.3', headers: { authorization: 'Bearer not.a.jwt' } }, // 401
    { method: 'GET', path: '/x' }, // no address: no rule keys it
    // Lone surrogates (no UTF-8 for them): U+FFFD to both paths.
    { method: 'GET', path: '/u/\ud800', clientIp: '203.0.113.5', headers: { 'x-user': 'a\udc00' } },
  ]
  for (let round = 0; round < 9; round++) {
    for (const [i, r] of requests.entries()) {
      const req = { ...r, nowMs: T + round * 1000 }
      same(a.checkRequest(req), await b.checkRequestAsync(req), `round ${round}, request ${i}`)
    }
  }
  // The flood was limited, then banned, on both.
  const v = a.checkRequest({ method: 'GET', path: '/x', clientIp: '203.0.113.1', nowMs: T + 10_000 })
  assert.equal(v.reason, 'banned')
  const wait = Number(v.headers['Retry-After'])
  assert.ok(wait > 200 && wait <= 300, `a ban of 5 minutes: ${wait}`)
  assert.deepEqual(JSON.parse(v.body), { error: 'rate_limited', retry_after: wait, rule: 'per-ip' })
  const bad = a.checkRequest({ method: 'GET', path: '/x', clientIp: '203.0.113.4', headers: { Authorization: 'Bearer x' }, nowMs: T })
  assert.equal(bad.status, 401)
  assert.equal(bad.tokenProblem, 'malformed')
  assert.match(bad.headers['WWW-Authenticate'], /invalid_token/)
})

test('the raw path: bad input is a clear error, and the engine goes on', () => {
  const e = Engine.fromToml(POLICY)
  const ok = () => assert.equal(e.checkRequest({ method: 'GET', path: '/x', clientIp: '203.0.113.9', nowMs: T }).allowed, true)
  assert.throws(() => e.checkRequest({ method: 42, path: '/x' }), { code: 'ERR_FG_INVALID_ARGUMENT' })
  assert.throws(() => e.checkRequest({ method: 'GET' }), { code: 'ERR_FG_INVALID_ARGUMENT' })
  assert.throws(() => e.checkRequest({ method: 'G ET', path: '/x' }), { code: 'ERR_FG_INVALID_REQUEST', field: 'method' })
  assert.throws(() => e.checkRequest({ method: 'GET', path: '/x', clientIp: 'not-an-ip' }), { code: 'ERR_FG_INVALID_REQUEST', field: 'client_ip' })
  // Optional strings: undefined and null are absent, anything else not a string is refused.
  for (const clientIp of [42, {}, true]) {
    assert.throws(() => e.checkRequest({ method: 'GET', path: '/x', clientIp }), { code: 'ERR_FG_INVALID_ARGUMENT', message: /clientIp must be a string/ })
  }
  // Absent: the IP-keyed rule charges the one key of requests without an address.
  const nameless = e.checkRequest({ method: 'GET', path: '/x', clientIp: null, nowMs: T })
  assert.deepEqual([nameless.reason, nameless.identity], ['allowed', '-'])
  // The raw check: (method, path, clientIp, ...one value per header the
  // policy reads, nowMs?). It reads an argument first and asks its type only
  // when it is not what the check takes: every other type is still refused.
  const [, out, check] = e.handle()
  const [REASONS] = native.verdictTables()
  const REASON_SLOT = 7 // the `out` layout, src/request.rs
  const names = e.requestHeaders
  const values = (user) => names.map((n) => (n === 'x-user' ? user : undefined))
  const none = values(undefined)
  // A header value is a string or none (checkRequest turns numbers, arrays
  // and objects into text first): anything else is no value.
  for (const absent of [null, undefined, 42, {}]) {
    check('GET', '/u/1', '203.0.113.50', ...values(absent), T)
    assert.equal(out[REASON_SLOT], REASONS.indexOf('allowed'))
  }
  for (const now of ['soon', {}, true, 1n, NaN, -1]) {
    assert.throws(() => check('GET', '/u/1', '203.0.113.50', ...none, now), { code: 'ERR_FG_INVALID_ARGUMENT' })
  }
  for (const now of [null, undefined]) assert.equal(typeof check('GET', '/u/1', '203.0.113.50', ...none, now), 'string')
  for (const ip of [42, {}, true, 1n, Buffer.from('203.0.113.50')]) {
    assert.throws(() => check('GET', '/u/1', ip, ...none, T), { code: 'ERR_FG_INVALID_ARGUMENT', message: /clientIp must be a string/ })
  }
  for (const method of [undefined, null, 42]) {
    assert.throws(() => check(method, '/u/1', '203.0.113.50', ...none, T), { code: 'ERR_FG_INVALID_ARGUMENT', message: /method must be a string/ })
  }
  assert.throws(() => check('GET', undefined, '203.0.113.50', ...none, T), { code: 'ERR_FG_INVALID_ARGUMENT', message: /path must be a string/ })
  assert.equal(typeof check('GET', '/u/1', null), 'string')
  // The time, after the header values, is the one the check decides at:
  // carol's 3/min is spent at T, and whole again two minutes later.
  const carol = (now, ip) => {
    check('GET', '/u/2', ip, ...values('carol'), now)
    return out[0] === 1
  }
  assert.deepEqual([1, 2, 3, 4].map((i) => carol(T, `203.0.113.${70 + i}`)), [true, true, true, false])
  assert.equal(carol(T + 120_000, '203.0.113.80'), true)
  assert.throws(() => e.checkRequest({ method: 'GET', path: '/x', nowMs: NaN }), { code: 'ERR_FG_INVALID_ARGUMENT' })
  assert.throws(() => e.checkRequest({ method: 'GET', path: '/x', nowMs: 'soon' }), { code: 'ERR_FG_INVALID_ARGUMENT' })
  assert.throws(() => e.checkRequest('GET /x'), { code: 'ERR_FG_INVALID_ARGUMENT' })
  ok()
  // A huge path and header value, and NUL bytes: decided, not crashed.
  const v = e.checkRequest({ method: 'GET', path: '/u/' + 'a'.repeat(100_000), clientIp: '203.0.113.9', headers: { 'x-user': 'a\0b'.repeat(10_000) }, nowMs: T })
  assert.equal(v.rule, 'by-user')
  ok()
  // The raw check is bound to its engine: called detached, with another
  // `this` or with no argument at all, it decides on that engine or refuses
  // the request, never reads another value as an engine.
  const other = Engine.fromToml('[[rule]]\nname = "other"\nmatch = "/**"\nkey = "ip"\nquotas = ["1/s"]\n')
  const [, otherOut, otherCheck] = other.handle()
  const otherNone = other.requestHeaders.map(() => undefined)
  const detached = otherCheck
  detached('GET', '/', '203.0.113.60', ...otherNone, T)
  assert.equal(otherOut[0], 1, 'allowed')
  otherCheck.call(e, 'GET', '/', '203.0.113.60', ...otherNone, T + 10)
  assert.equal(otherOut[0], 0, 'the second request of 1/s on the same engine: denied')
  assert.throws(() => otherCheck(), { code: 'ERR_FG_INVALID_ARGUMENT' })
  assert.throws(() => native.engineSettle({}, {}, 200), { code: 'ERR_FG_INVALID_ARGUMENT' })
  assert.ok(new Limiter({ quota: '1/s' }).check('k').allowed)
  ok()
})

test('the middleware read only the headers the policy names (real HTTP)', async () => {
  const express = require('express')
  const { floodgate } = require('../express.js')
  const engine = Engine.fromToml(POLICY)
  const read = new Set()
  let watching = false
  const app = express()
  // Every header read while Floodgate's middleware runs is recorded.
  app.use((req, res, next) => {
    req.headers = new Proxy(req.headers, {
      get(target, name) {
        if (watching && typeof name === 'string') read.add(name)
        return target[name]
      },
    })
    watching = true
    next()
  })
  app.use(floodgate(engine))
  app.use((req, res, next) => {
    watching = false
    next()
  })
  app.get('/{*any}', (req, res) => res.json({ ok: true }))
  const server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s))
  })
  try {
    const headers = { cookie: 'c'.repeat(8_000), 'x-user': 'u1', 'user-agent': 'curl/8', accept: '*/*', 'x-extra': '1' }
    const res = await fetch(`http://127.0.0.1:${server.address().port}/u/1`, { headers })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('ratelimit-limit'), '3')
  } finally {
    server.close()
  }
  // x-forwarded-for is read by Express's own `req.ip` (proxy-addr), not by Floodgate.
  read.delete('x-forwarded-for')
  assert.deepEqual([...read].sort(), [...engine.requestHeaders].sort())
})

const GC_POLICY = '[[rule]]\nname = "r"\nmatch = "/**"\nkey = "ip"\nquotas = ["2/s"]\n'

test('engines are freed when collected, and a bound check keeps its own', () => {
  // Engines used through their bound checks and dropped: were the bound
  // function's finalizer to keep its engine (one Rc of three), the 1,600
  // engines of rounds 3-10 (~190 KB each with their first keys) would grow
  // the process by ~300 MB (an injected leak did: 306 MB). Then a bound check
  // kept alone (not the handle, nor the numbers' view, which hold the engine
  // too) decides on its engine: its verdict's text tells the denial.
  const out = collected({
    limitMb: 100,
    iteration: `const [, , check] = fg.Engine.fromToml(${JSON.stringify(GC_POLICY)}).handle()
      for (let k = 0; k < 50; k++) check('GET', '/x', '10.0.' + k + '.' + (i & 255))`,
    after: `let check
      { const [, , c] = fg.Engine.fromToml(${JSON.stringify(GC_POLICY)}).handle(); check = c }
      global.gc(); await tick(); await tick(); global.gc()
      const at = 1_800_000_000_000
      const seen = [1, 2, 3].map(() => check('GET', '/x', '203.0.113.1', undefined, at).includes('rate_limited') ? 0 : 1)
      process.stdout.write(seen.join(',') === '1,1,0' ? 'ok' : 'verdicts ' + seen.join(','))`,
  })
  assert.equal(out, 'ok')
})
