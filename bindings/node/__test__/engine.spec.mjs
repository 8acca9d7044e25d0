import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Engine, RedisLimiter } = require('../floodgate.js')

import { POLICY } from './policy.mjs'
const T = 1_700_000_000_000

test('checkRequest and the verdict', () => {
  const e = Engine.fromToml(POLICY)
  for (let i = 0; i < 2; i++) {
    const v = e.checkRequest({ method: 'POST', path: '/auth/login', clientIp: '203.0.113.7', nowMs: T })
    assert.equal(v.allowed, true)
    assert.equal(v.rule, 'login')
  }
  const v = e.checkRequest({ method: 'POST', path: '/auth/login', clientIp: '203.0.113.7', nowMs: T })
  assert.equal(v.status, 429)
  assert.equal(v.reason, 'rate_limited')
  assert.equal(v.retryAfterMs, 30000)
  assert.equal(v.headers['Retry-After'], '30')
  assert.equal(v.headers['RateLimit-Policy'], '"login";q=2;w=60')
  assert.equal(e.checkRequest({ method: 'POST', path: '/oauth/token' }).status, 401)
  assert.equal(e.checkRequest({ method: 'POST', path: '/oauth/token', headers: { 'x-client-id': 'a' } }).allowed, true)
  assert.equal(e.checkRequest({ method: 'GET', path: '/', headers: { 'x-api-key': 'sk_revoked' } }).status, 403)
  assert.match(e.metrics(), /floodgate_requests_total/)
  const o = Engine.fromObject({ rule: [{ name: 'all', match: '/**', quotas: ['1/s'] }] })
  assert.equal(o.checkRequest({ method: 'GET', path: '/', clientIp: '::1' }).allowed, true)
})

test('policy and request errors carry codes', () => {
  assert.throws(() => Engine.fromToml('[[rule]]\nname = "x"\nmatch = "/**"\nquotas = ["ten"]\n'), (err) => err.code === 'ERR_FG_INVALID_CONFIG' && /line 4/.test(err.message) && err.line === 4 && typeof err.location === 'string' && typeof err.detail === 'string')
  assert.throws(() => Engine.fromFile('/nonexistent.toml'), { code: 'ERR_FG_INVALID_CONFIG' })
  const e = Engine.fromToml(POLICY)
  assert.throws(() => e.checkRequest({ method: '', path: '/' }), { code: 'ERR_FG_INVALID_REQUEST' })
  assert.throws(() => e.checkRequest({ method: 'GET', path: '/', clientIp: 'nope' }), { code: 'ERR_FG_INVALID_REQUEST', field: 'client_ip' })
  assert.throws(() => e.checkRequest(null))
})

test('events reach the callback without blocking', async () => {
  const e = Engine.fromToml(POLICY)
  const seen = []
  e.onEvent((ev) => seen.push(ev))
  for (let i = 0; i < 3; i++) e.checkRequest({ method: 'POST', path: '/auth/login', clientIp: '198.51.100.1', nowMs: T })
  await new Promise((r) => setTimeout(r, 50))
  const denied = seen.filter((ev) => ev.kind === 'denied')
  assert.equal(denied.length, 1)
  assert.equal(denied[0].rule, 'login')
  assert.equal(denied[0].status, 429)
  assert.equal(denied[0].level, 'debug', 'per-request events are debug: log counts, not lines')
})

/** Runs `body` with console.warn and console.info captured: the lines written. */
async function consoleLines(body) {
  const lines = []
  const { warn, info } = console
  console.warn = (line) => lines.push(['warn', line])
  console.info = (line) => lines.push(['info', line])
  try {
    await body()
    // Lines reach the JS thread through a queue: let it run.
    await new Promise((r) => setTimeout(r, 100))
  } finally {
    console.warn = warn
    console.info = info
  }
  return lines
}

// A Redis store nobody answers on (port 1 refuses at once): the first check
// falls back to the local limiter, a state change.
const DOWN = '[store]\nkind = "redis"\nurl = "redis://127.0.0.1:1/"\ntimeout_ms = 50\nfail_mode = "local"\n'
const LOGIN = { method: 'POST', path: '/auth/login', clientIp: '198.51.100.1' }

test('by default an engine logs a Redis fallback as it happens, never a line per denial', async () => {
  const lines = await consoleLines(async () => {
    const memory = Engine.fromToml(POLICY)
    for (let i = 0; i < 200; i++) memory.checkRequest({ ...LOGIN, nowMs: T })
    assert.equal(memory.checkRequest({ ...LOGIN, nowMs: T }).status, 429)
    const down = Engine.fromToml(DOWN + POLICY)
    for (let i = 0; i < 3; i++) assert.equal((await down.checkRequestAsync(LOGIN)).allowed, i < 2)
  })
  // 199 denials (a summary comes with the first event 10 s on), one state change.
  assert.deepEqual(lines, [['warn', 'floodgate: store_fallback (rule login)']])
})

test('onEvent and logSummaries replace the default lines', async () => {
  const mine = []
  const lines = await consoleLines(async () => {
    const quiet = Engine.fromToml(DOWN + POLICY)
    const events = []
    quiet.onEvent((e) => events.push(e.kind))
    await quiet.checkRequestAsync(LOGIN)
    const elsewhere = Engine.fromToml(DOWN + POLICY)
    elsewhere.logSummaries((l) => mine.push(l), 60_000)
    await elsewhere.checkRequestAsync(LOGIN)
    await new Promise((r) => setTimeout(r, 100))
    assert.deepEqual(events, ['store_fallback'])
  })
  assert.deepEqual(lines, [])
  assert.deepEqual(mine, [{ level: 'warning', kind: 'store_fallback', line: 'floodgate: store_fallback (rule login)' }])
  const e = Engine.fromToml(POLICY)
  for (const bad of [0, 999, NaN, Infinity, -5]) {
    assert.throws(() => e.logSummaries(() => {}, bad), { code: 'ERR_FG_INVALID_ARGUMENT' }, String(bad))
  }
})

const redisUrl = process.env.FG_TEST_REDIS_URL
test('Promise API on Redis', { skip: !redisUrl && 'FG_TEST_REDIS_URL not set' }, async () => {
  const prefix = `node-${process.pid}-${Date.now()}`
  const l = new RedisLimiter({ url: redisUrl, quota: '5/minute', failMode: 'closed', timeoutMs: 200, prefix })
  const results = await Promise.all(Array.from({ length: 8 }, () => l.checkAsync('k')))
  assert.equal(results.filter((d) => d.allowed).length, 5)
  assert.equal(l.fallbacks, 0)
  await assert.rejects(l.checkAsync(''), { code: 'ERR_FG_EMPTY_KEY' })
  await assert.rejects(l.checkAsync('x'.repeat(300)), { code: 'ERR_FG_KEY_TOO_LONG', len: 300, max: 256 })
  const e = Engine.fromToml(`[store]\nkind = "redis"\nurl = "${redisUrl}"\ntimeout_ms = 200\nprefix = "${prefix}"\n` + POLICY)
  const verdicts = await Promise.all(Array.from({ length: 6 }, () => e.checkRequestAsync({ method: 'POST', path: '/auth/login', clientIp: '192.0.2.9' })))
  assert.equal(verdicts.filter((v) => v.allowed).length, 2)
  assert.throws(() => new RedisLimiter({ url: 'redis://127.0.0.1:1/', quota: '1/s', timeoutMs: 50 }), { code: 'ERR_FG_STORE_UNAVAILABLE', store: 'redis' })
  // A bad request is refused before the task starts: a synchronous throw.
  assert.throws(() => e.checkRequestAsync({ method: 'GET', path: '/', clientIp: 'nope' }), { code: 'ERR_FG_INVALID_REQUEST', field: 'client_ip' })
})

test('checkRequestAsync holds no thread while Redis stalls: the libuv pool stays free for fs', { skip: !redisUrl && 'FG_TEST_REDIS_URL not set' }, async () => {
  // The core's async engine: round trips on a tokio worker's multiplexed
  // connection. (On the libuv pool, 4 threads by default, 8 checks waiting on
  // a stalled Redis would occupy all of them, and fs, dns.lookup, zlib and
  // crypto would wait too.)
  const { spawn } = require('node:child_process')
  const fs = require('node:fs/promises')
  const port = new URL(redisUrl).port
  const prefix = `node-stall-${process.pid}-${Date.now()}`
  const e = Engine.fromToml(`[store]\nkind = "redis"\nurl = "${redisUrl}"\ntimeout_ms = 3000\nprefix = "${prefix}"\n` + POLICY)
  const want = e.checkRequest({ method: 'POST', path: '/auth/login', clientIp: '192.0.2.10' })
  const got = await e.checkRequestAsync({ method: 'POST', path: '/auth/login', clientIp: '192.0.2.11' })
  assert.deepEqual([got.allowed, got.rule, got.limit, got.remaining], [want.allowed, want.rule, want.limit, want.remaining])
  // CLIENT PAUSE: Redis answers no other client for 600 ms (DEBUG SLEEP needs
  // enable-debug-command, which the CI's server does not have).
  const pause = spawn('redis-cli', ['-p', port, 'CLIENT', 'PAUSE', '600', 'ALL'])
  const paused = new Promise((r) => pause.on('exit', r))
  await new Promise((r) => setTimeout(r, 100))
  const checks = Array.from({ length: 8 }, (_, i) => e.checkRequestAsync({ method: 'GET', path: '/api/x', clientIp: `198.51.100.${i}` }))
  const t0 = performance.now()
  await Promise.all(Array.from({ length: 4 }, () => fs.readFile(new URL(import.meta.url))))
  const fsMs = performance.now() - t0
  const t1 = performance.now()
  const verdicts = await Promise.all(checks)
  const checksMs = performance.now() - t1
  assert.equal(await paused, 0)
  assert.ok(checksMs > 200, `the checks did wait for the paused Redis (${checksMs.toFixed(0)} ms)`)
  assert.ok(fsMs < 300, `fs waited ${fsMs.toFixed(0)} ms behind checks stalled on Redis`)
  assert.equal(verdicts.filter((v) => v.allowed).length, 8, 'answered by Redis once it woke')
})

test('Promise API when Redis goes down: fail modes answer, nothing hangs', { skip: !redisUrl && 'FG_TEST_REDIS_URL not set' }, async () => {
  // An own redis-server, stopped halfway (the shared one stays up for the rest).
  const { execFileSync } = require('node:child_process')
  const net = require('node:net')
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port
      s.close(() => resolve(p))
    })
  })
  execFileSync('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'yes'])
  const url = `redis://127.0.0.1:${port}/`
  for (let i = 0; i < 50; i++) {
    try {
      execFileSync('redis-cli', ['-p', String(port), 'ping'], { stdio: 'ignore' })
      break
    } catch {
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  const closed = new RedisLimiter({ url, quota: '100/minute', failMode: 'closed', timeoutMs: 100 })
  const open = new RedisLimiter({ url, quota: '100/minute', failMode: 'open', timeoutMs: 100 })
  assert.equal((await closed.checkAsync('k')).allowed, true)
  assert.equal((await open.checkAsync('k')).allowed, true)
  execFileSync('redis-cli', ['-p', String(port), 'shutdown', 'nosave'], { stdio: 'ignore' })
  const t = Date.now()
  const [c, o] = await Promise.all([closed.checkAsync('k'), open.checkAsync('k')])
  assert.equal(c.allowed, false)
  assert.equal(o.allowed, true)
  assert.ok(closed.fallbacks >= 1 && open.fallbacks >= 1)
  assert.ok(Date.now() - t < 5000, 'answered within the timeouts')
})

test('worker threads: own handles and Redis promises, clean exit', { skip: !redisUrl && 'FG_TEST_REDIS_URL not set' }, async () => {
  const { Worker } = require('node:worker_threads')
  const code = `
    const { parentPort, workerData } = require('node:worker_threads')
    const { Limiter, RedisLimiter } = require(workerData.entry)
    const l = new Limiter({ quota: '3/second' })
    const local = [1, 2, 3, 4].map(() => l.check('k', 1, 0).allowed)
    const r = new RedisLimiter({ url: workerData.url, quota: '5/minute', prefix: workerData.prefix, timeoutMs: 500 })
    Promise.all(Array.from({ length: 8 }, () => r.checkAsync('w'))).then((ds) => {
      parentPort.postMessage({ local, allowed: ds.filter((d) => d.allowed).length })
    })
  `
  const prefix = `node-worker-${process.pid}-${Date.now()}`
  const run = () =>
    new Promise((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: { entry: require.resolve('../floodgate.js'), url: redisUrl, prefix } })
      let msg
      w.on('message', (m) => { msg = m })
      w.on('error', reject)
      w.on('exit', (c) => (c === 0 ? resolve(msg) : reject(new Error(`worker exited with ${c}`))))
    })
  const [a, b] = await Promise.all([run(), run()])
  assert.deepEqual(a.local, [true, true, true, false])
  assert.equal(a.allowed + b.allowed, 5) // one shared Redis limit across both workers
})

test('a verdict has every field the core lists, and the core decides blocking and bodies', () => {
  const { verdictFields, badRequestBody } = require('../index.js')
  const camel = (n) => n.replace(/_(.)/g, (_, c) => c.toUpperCase()) + (n.endsWith('_after') ? 'Ms' : '')
  const e = Engine.fromToml(POLICY)
  assert.equal(e.mayBlock, false)
  const v = e.checkRequest({ method: 'GET', path: '/api/items', clientIp: '203.0.113.1' })
  const want = verdictFields().map(camel).sort()
  const got = Object.keys(v).sort()
  assert.deepEqual(got.filter((k) => !want.includes(k)), [], 'fields the core does not list')
  assert.deepEqual(want.filter((k) => !(k in v) && !['tokenProblem'].includes(k)), [], 'fields the core lists that are missing')
  assert.equal(v.body, '')
  assert.equal(badRequestBody(), '{"error":"bad_request"}')
})

test('requestHeaders lists what the policy reads; other headers are ignored', () => {
  const e = Engine.fromToml(POLICY)
  assert.ok(e.requestHeaders.includes('x-api-key'))
  assert.ok(e.requestHeaders.includes('x-client-id'))
  assert.ok(!e.requestHeaders.includes('cookie'))
  // A header the policy does not read cannot change the verdict, whatever it holds.
  const noise = { cookie: 'x'.repeat(100_000), 'x-numbers': 42, 'set-cookie': ['a', 'b'], 'x-client-id': 'app' }
  const v = e.checkRequest({ method: 'POST', path: '/oauth/token', headers: noise })
  assert.equal(v.allowed, true)
  assert.equal(v.identity, 'app')
})

test('reload keeps counters, refuses a bad policy, and answers SIGHUP', async () => {
  const fs = require('node:fs')
  const os = require('node:os')
  const path = require('node:path')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fg-reload-'))
  const file = path.join(dir, 'policy.toml')
  fs.writeFileSync(file, POLICY)
  const e = Engine.fromFile(file)
  const login = { method: 'POST', path: '/auth/login', clientIp: '192.0.2.60', nowMs: T }
  assert.equal(e.checkRequest(login).allowed, true)
  assert.equal(e.checkRequest(login).allowed, true)
  fs.writeFileSync(file, POLICY.replace('quotas = ["100/min"]', 'quotas = ["200/min"]'))
  const report = e.reload()
  assert.ok(report.kept.includes('login'))
  // api's quota changed, not its key: its counters are carried over.
  assert.deepEqual(report.carried, ['api'])
  assert.deepEqual(report.reset, [])
  assert.equal(e.checkRequest(login).allowed, false, 'the login counter was kept')
  assert.throws(() => e.reloadToml(POLICY.replace('quotas = ["2/min"]', 'quotas = ["two/min"]')), { code: 'ERR_FG_INVALID_CONFIG' })
  assert.equal(e.checkRequest(login).allowed, false, 'the running policy stays')
  fs.writeFileSync(file, POLICY + '\n[[rule]]\nname = "extra"\nmatch = "/extra"\nquotas = ["1/min"]\n')
  const onHup = () => e.reload()
  process.on('SIGHUP', onHup)
  process.kill(process.pid, 'SIGHUP')
  await new Promise((r) => setTimeout(r, 50))
  process.off('SIGHUP', onHup)
  assert.equal(e.checkRequest({ method: 'GET', path: '/extra', clientIp: '192.0.2.61', nowMs: T }).rule, 'extra')
  fs.rmSync(dir, { recursive: true })
})

test('calendar quotas: a month ends on the first, Retry-After points there', async () => {
  const { readFileSync } = await import('node:fs')
  const policy = readFileSync(new URL('../../../tests/policies/calendar.toml', import.meta.url), 'utf8')
  const e = Engine.fromToml(policy)
  const jan31 = 1_769_903_940_000 // 2026-01-31T23:59:00Z
  const get = (path, clientIp, nowMs) => e.checkRequest({ method: 'GET', path, clientIp, nowMs })
  for (let i = 0; i < 3; i++) assert.equal(get('/api/items', '198.51.100.7', jan31).allowed, true)
  const v = get('/api/items', '198.51.100.7', jan31)
  assert.equal(v.status, 429)
  assert.equal(v.retryAfterMs, 60_000)
  assert.equal(v.headers['Retry-After'], '60')
  assert.match(v.headers['RateLimit-Policy'], /;w=2592000$/)
  assert.equal(get('/api/items', '198.51.100.7', jan31 + 60_000).allowed, true)
  // Paris: at 23:59 UTC it is already February 1st; the day ends at 23:00 UTC.
  for (let i = 0; i < 2; i++) assert.equal(get('/export', '203.0.113.9', jan31).allowed, true)
  assert.equal(get('/export', '203.0.113.9', jan31).retryAfterMs, (23 * 3600 + 60) * 1000)
})
