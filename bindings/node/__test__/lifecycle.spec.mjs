// The request lifecycle: engine.settle, and the Express and Fastify middleware
// settling over real HTTP. Attacks as an attacker sends them: many connections
// at once, before any response.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Engine, needsSettle } = require('../floodgate.js')

const LOGIN_LIMIT = 5
const POLICY = `
[[rule]]
name = "login"
match = "POST /login"
key = "header:x-username"
algorithm = "fixed_window"
quotas = ["${LOGIN_LIMIT}/hour"]
count = "failures"

[[rule]]
name = "slow"
match = "GET /slow"
key = "ip"
quotas = ["1000/s"]
max_in_flight = 2

[[rule]]
name = "graphql"
match = "POST /graphql"
key = "ip"
algorithm = "fixed_window"
quotas = ["100/hour"]
cost = 10
cost_from = "response"
`

const NOW = 1_800_000_000_000

test('engine.settle gives back, charges and refuses a second settlement', () => {
  const e = Engine.fromToml(POLICY)
  const login = (user) =>
    e.checkRequest({ method: 'POST', path: '/login', clientIp: '192.0.2.1', headers: { 'X-Username': user }, nowMs: NOW })
  for (let i = 0; i < 20; i++) {
    const v = login('alice')
    assert.ok(v.allowed && needsSettle(v))
    e.settle(v, { status: 200, nowMs: NOW })
  }
  const v = login('alice')
  e.settle(v, { status: 401, nowMs: NOW })
  assert.throws(() => e.settle(v, { status: 401 }), { code: 'ERR_FG_ALREADY_SETTLED' })
  assert.deepEqual(Object.keys(v).length, 13, 'the settlement is not a field')
  const w = login('alice')
  assert.throws(() => e.settle(w, { status: 1000 }), { code: 'ERR_FG_INVALID_REQUEST' })
  assert.throws(() => e.settle(w, { status: 200, cost: -1 }), { code: 'ERR_FG_INVALID_COST' })
  assert.throws(() => e.settle(w, null), { code: 'ERR_FG_INVALID_ARGUMENT' })
  e.settle({ allowed: true }, { status: 200 }) // nothing to settle: a no-op
  assert.ok(e.settles)
  assert.ok(!Engine.fromToml('[[rule]]\nname = "a"\nmatch = "/**"\nkey = "ip"\nquotas = ["1/s"]\n').settles)
  const other = Engine.fromToml(POLICY)
  assert.throws(() => other.settle(w, { status: 200 }), { code: 'ERR_FG_INVALID_REQUEST' })
  const gql = () => e.checkRequest({ method: 'POST', path: '/graphql', clientIp: '192.0.2.1', nowMs: NOW })
  const g = gql()
  assert.equal(g.remaining, 90)
  e.settle(g, { status: 200, cost: 30, nowMs: NOW })
  assert.equal(gql().remaining, 60)
  const slow = () => e.checkRequest({ method: 'GET', path: '/slow', clientIp: '192.0.2.1', nowMs: NOW })
  const a = slow()
  slow()
  const c = slow()
  assert.equal(c.reason, 'concurrency')
  assert.equal(c.headers['Retry-After'], '1')
  e.settle(a, { status: 200, nowMs: NOW })
  assert.ok(slow().allowed)
})

function apps(async) {
  const express = require('express')
  const { floodgate } = require('../express.js')
  const Fastify = require('fastify')
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
  return {
    async express() {
      const app = express()
      app.use(floodgate(Engine.fromToml(POLICY), { async }))
      app.post('/login', async (req, res) => {
        await sleep(50)
        const ok = req.headers['x-password'] === 'right'
        res.status(ok ? 200 : 401).json({ ok })
      })
      app.get('/slow', async (req, res) => {
        await sleep(800)
        res.json({ ok: true })
      })
      app.post('/graphql', (req, res) => {
        res.setHeader('Floodgate-Cost', req.query.cost)
        res.write('{}')
        res.end('{}')
      })
      const server = await new Promise((resolve) => {
        const s = app.listen(0, '127.0.0.1', () => resolve(s))
      })
      return { port: server.address().port, close: () => server.close() }
    },
    async fastify() {
      const app = Fastify()
      await app.register(require('../fastify.js'), { engine: Engine.fromToml(POLICY), async })
      app.post('/login', async (request, reply) => {
        await sleep(50)
        const ok = request.headers['x-password'] === 'right'
        reply.code(ok ? 200 : 401)
        return { ok }
      })
      app.get('/slow', async () => {
        await sleep(800)
        return { ok: true }
      })
      app.post('/graphql', async (request, reply) => {
        reply.header('Floodgate-Cost', request.query.cost)
        return '{}{}'
      })
      await app.listen({ port: 0, host: '127.0.0.1' })
      return { port: app.server.address().port, close: () => app.close() }
    },
  }
}

for (const [kind, async] of [
  ['express', false],
  ['fastify', false],
  ['express', true],
  ['fastify', true],
]) {
  const path = async ? 'checkRequestAsync (the Redis path)' : 'the raw path'
  test(`${kind} on ${path}: only failed logins count, places in flight, the real cost, over HTTP`, async () => {
    const { port, close } = await apps(async)[kind]()
    const base = `http://127.0.0.1:${port}`
    const call = async (method, path, headers = {}) => {
      const res = await fetch(base + path, { method, headers: { connection: 'close', ...headers } })
      return { status: res.status, headers: res.headers, body: await res.text() }
    }
    const login = async (user, pw) => (await call('POST', '/login', { 'x-username': user, 'x-password': pw })).status
    try {
      for (let i = 0; i < 20; i++) assert.equal(await login('alice', 'right'), 200)
      // Credential stuffing: 40 guesses at once, each charged on arrival.
      const statuses = await Promise.all(Array.from({ length: 40 }, () => login('bob', 'guess')))
      assert.equal(statuses.filter((s) => s === 401).length, LOGIN_LIMIT, String(statuses))
      assert.equal(statuses.filter((s) => s === 429).length, 40 - LOGIN_LIMIT)
      assert.equal(await login('bob', 'right'), 429, 'the failures used the quota up')
      assert.equal(await login('alice', 'right'), 200)
      // Six slow requests at once, two places.
      const slow = await Promise.all(Array.from({ length: 6 }, () => call('GET', '/slow')))
      assert.deepEqual(slow.map((r) => r.status).sort(), [200, 200, 429, 429, 429, 429])
      assert.ok(slow.filter((r) => r.status === 429).every((r) => r.headers.get('retry-after') === '1'))
      // Settled after the response has left (on the async path, a round trip
      // later): poll for up to 5 s.
      let again = await call('GET', '/slow')
      for (let i = 0; i < 100 && again.status === 429; i++) {
        await new Promise((res) => setTimeout(res, 50))
        again = await call('GET', '/slow')
      }
      assert.equal(again.status, 200, 'places come back once settled')
      // The real cost replaces the estimate; the cost header never reaches the client.
      let r = await call('POST', '/graphql?cost=40')
      assert.equal(r.status, 200)
      assert.equal(r.headers.get('floodgate-cost'), null)
      assert.match(r.headers.get('ratelimit'), /;r=90;/)
      // Settled on 'finish' / onResponse, just after the client read the body.
      await new Promise((res) => setTimeout(res, 50))
      r = await call('POST', '/graphql?cost=1')
      assert.match(r.headers.get('ratelimit'), /;r=50;/)
    } finally {
      await close()
    }
  })
}

test('checkRequestAsync verdicts settle like checkRequest ones', async () => {
  const e = Engine.fromToml(POLICY)
  const req = { method: 'POST', path: '/login', clientIp: '192.0.2.9', headers: { 'x-username': 'zoe' }, nowMs: NOW }
  for (let i = 0; i < 10; i++) {
    const v = await e.checkRequestAsync(req)
    assert.ok(v.allowed && needsSettle(v))
    e.settle(v, { status: 200, nowMs: NOW })
    assert.throws(() => e.settle(v, { status: 200 }), { code: 'ERR_FG_ALREADY_SETTLED' })
  }
  const last = await e.checkRequestAsync(req)
  assert.ok(!Object.keys(last).includes('settlement'), 'the settlement is not a field')
})

test('settleAsync settles on the thread pool, once', async () => {
  const e = Engine.fromToml(POLICY)
  const login = () =>
    e.checkRequest({ method: 'POST', path: '/login', clientIp: '192.0.2.3', headers: { 'x-username': 'kim' }, nowMs: NOW })
  for (let i = 0; i < 10; i++) await e.settleAsync(login(), { status: 200, nowMs: NOW })
  assert.equal(login().remaining, LOGIN_LIMIT - 1, 'ten successes given back')
  const v = login()
  const settled = [e.settleAsync(v, { status: 200, nowMs: NOW }), e.settleAsync(v, { status: 200, nowMs: NOW })]
  const results = await Promise.allSettled(settled)
  assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected'])
  assert.equal(results.find((r) => r.status === 'rejected').reason.code, 'ERR_FG_ALREADY_SETTLED')
  assert.throws(() => e.settleAsync(login(), { status: 'x' }), { code: 'ERR_FG_INVALID_ARGUMENT' })
  await assert.rejects(e.settleAsync(login(), { status: 1000 }), { code: 'ERR_FG_INVALID_REQUEST' })
  await e.settleAsync({ allowed: true }, { status: 200 }) // nothing to settle
})

test('Express on a Redis engine: failed logins counted together, places in flight shared by two instances', { skip: !process.env.FG_TEST_REDIS_URL && 'FG_TEST_REDIS_URL not set' }, async () => {
  const express = require('express')
  const { floodgate } = require('../express.js')
  const prefix = `fg-node-life-${process.pid}-${Date.now()}`
  const text = `[store]\nkind = "redis"\nurl = "${process.env.FG_TEST_REDIS_URL}"\nprefix = "${prefix}"\ntimeout_ms = 200\n` + POLICY
  // Two instances of one service (as on two machines): one engine each, one Redis.
  const servers = []
  const engines = []
  // Settlements counted by both engines (each lands on the libuv pool after 'finish').
  const settled = () =>
    engines.reduce((n, e) => n + Number(/^floodgate_settled_total (\d+)$/m.exec(e.metrics())?.[1] ?? 0), 0)
  const settledReach = async (n) => {
    for (let i = 0; i < 200 && settled() < n; i++) await new Promise((r) => setTimeout(r, 10))
    assert.ok(settled() >= n, `${settled()} settlements, want ${n}`)
  }
  for (let i = 0; i < 2; i++) {
    const engine = Engine.fromToml(text)
    engines.push(engine)
    assert.ok(engine.mayBlock)
    const app = express()
    app.use(floodgate(engine))
    app.post('/login', async (req, res) => {
      await new Promise((r) => setTimeout(r, 50))
      res.status(req.headers['x-password'] === 'right' ? 200 : 401).json({})
    })
    app.get('/slow', async (req, res) => {
      await new Promise((r) => setTimeout(r, 800))
      res.json({ ok: true })
    })
    servers.push(await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s))
    }))
  }
  const base = (i) => `http://127.0.0.1:${servers[i % 2].address().port}`
  const login = async (i, user, pw) =>
    (await fetch(base(i) + '/login', { method: 'POST', headers: { 'x-username': user, 'x-password': pw, connection: 'close' } })).status
  const slow = async (i) => (await fetch(base(i) + '/slow', { headers: { connection: 'close' } })).status
  try {
    for (let i = 0; i < 10; i++) assert.equal(await login(i, 'ann', 'right'), 200)
    const statuses = await Promise.all(Array.from({ length: 20 }, (_, i) => login(i, 'ben', 'guess')))
    assert.equal(statuses.filter((s) => s === 401).length, LOGIN_LIMIT, String(statuses))
    assert.equal(await login(0, 'ben', 'right'), 429)
    // Six slow requests at once over both instances: two places in Redis.
    const before = settled()
    const held = await Promise.all(Array.from({ length: 6 }, (_, i) => slow(i)))
    assert.deepEqual(held.sort(), [200, 200, 429, 429, 429, 429])
    await settledReach(before + 2)
    assert.deepEqual(await Promise.all([slow(0), slow(1)]), [200, 200], 'places come back once settled')
  } finally {
    for (const s of servers) s.close()
  }
})
