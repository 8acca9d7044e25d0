import assert from 'node:assert/strict'
import { test } from 'node:test'
import { createRequire } from 'node:module'
import { POLICY } from './policy.mjs'
import { raw } from './raw_http.mjs'

const require = createRequire(import.meta.url)
const { Engine } = require('../floodgate.js')

async function scenario(call) {
  let r = await call('GET', '/api/items')
  assert.equal(r.status, 200)
  assert.equal(r.header('ratelimit-policy'), '"api";q=100;w=60')
  assert.equal((await call('POST', '/auth/login')).status, 200)
  assert.equal((await call('POST', '/auth/login')).status, 200)
  r = await call('POST', '/auth/login')
  assert.equal(r.status, 429)
  assert.equal(r.header('retry-after'), '30')
  assert.deepEqual(r.json, { error: 'rate_limited', retry_after: 30, rule: 'login' })
  assert.equal(r.header('content-type'), 'application/json; charset=utf-8')
  assert.equal((await call('POST', '/oauth/token')).status, 401)
  assert.equal((await call('POST', '/oauth/token', { 'x-client-id': 'app' })).status, 200)
  assert.equal((await call('GET', '/api/items', { 'x-api-key': 'sk_revoked' })).status, 403)
}

test('express, over real HTTP, with trust proxy', async () => {
  const express = require('express')
  const { floodgate } = require('../express.js')
  const app = express()
  app.set('trust proxy', 'loopback')
  app.use(floodgate(Engine.fromToml(POLICY)))
  app.all('/{*any}', (req, res) => res.json({ ok: true }))
  const server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s))
  })
  const base = `http://127.0.0.1:${server.address().port}`
  try {
    await scenario(async (method, path, headers = {}) => {
      const res = await fetch(base + path, { method, headers: { 'x-forwarded-for': '203.0.113.80', ...headers } })
      const text = await res.text()
      return { status: res.status, header: (n) => res.headers.get(n), json: text.startsWith('{') ? JSON.parse(text) : null }
    })
  } finally {
    server.close()
  }
})

test('an Express refusal is the JSON answer alone (type and length, no ETag, no body to HEAD) on the raw and the async path, a forged X-Forwarded-For a 400 on both', async () => {
  // Read as raw bytes: what a client gets, not what fetch makes of it.
  const exchange = (port, method, headers = []) => raw(port, method, '/x', [['If-None-Match', '*'], ...headers])
  const express = require('express')
  const { floodgate } = require('../express.js')
  const policy = '[[rule]]\nname = "tight"\nmatch = "/**"\nkey = "ip"\nquotas = ["1/min"]\n'
  for (const options of [{}, { async: true }]) {
    const app = express()
    app.set('trust proxy', 'loopback')
    app.use(floodgate(Engine.fromToml(policy), options))
    app.get('/x', (req, res) => res.json({ ok: true }))
    const server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s))
    })
    const port = server.address().port
    try {
      // The app's own answer honours If-None-Match (res.json hashes it); a refusal does not.
      assert.equal((await exchange(port, 'GET')).status, 304)
      const get = await exchange(port, 'GET')
      assert.equal(get.status, 429, JSON.stringify(options))
      assert.deepEqual(JSON.parse(get.body), { error: 'rate_limited', retry_after: 60, rule: 'tight' })
      assert.equal(get.headers.get('content-type'), 'application/json; charset=utf-8')
      assert.equal(get.headers.get('content-length'), String(Buffer.byteLength(get.body)))
      assert.equal(get.headers.get('retry-after'), '60')
      assert.ok(get.headers.get('ratelimit').startsWith('"tight";r=0;t='), get.headers.get('ratelimit'))
      assert.equal(get.headers.get('etag'), undefined, 'a refusal is not hashed into an ETag')
      const head = await exchange(port, 'HEAD')
      assert.equal(head.status, 429)
      assert.equal(head.headers.get('content-length'), get.headers.get('content-length'))
      assert.equal(head.body, '', 'no body to HEAD')
      // A trusted proxy passing on a forged X-Forwarded-For: Express makes
      // req.ip of what is no address; the engine cannot key it: a 400, the
      // same way.
      const bad = await exchange(port, 'GET', [['X-Forwarded-For', 'not-an-address']])
      assert.equal(bad.status, 400)
      assert.equal(JSON.parse(bad.body).error, 'bad_request')
      assert.equal(bad.headers.get('content-type'), 'application/json; charset=utf-8')
      assert.equal(bad.headers.get('content-length'), String(Buffer.byteLength(bad.body)))
      assert.equal(bad.headers.get('etag'), undefined)
    } finally {
      server.close()
    }
  }
})

test('a proxy that writes the client\'s port into X-Forwarded-For (203.0.113.9:5678): Express and Fastify key the address, every port one client', async () => {
  // Express's and Fastify's req.ip pass such a hop on whole; the engine read
  // it as no address and answered every request 400.
  const policy = '[[rule]]\nname = "tight"\nmatch = "/**"\nkey = "ip"\nquotas = ["2/min"]\n'
  const express = require('express')
  const { floodgate } = require('../express.js')
  const Fastify = require('fastify')
  const servers = []
  for (const async of [false, true]) {
    const e = express()
    e.set('trust proxy', 'loopback')
    e.use(floodgate(Engine.fromToml(policy), { async }))
    e.get('/x', (req, res) => res.json({ ok: true }))
    const es = await new Promise((resolve) => {
      const s = e.listen(0, '127.0.0.1', () => resolve(s))
    })
    servers.push({ base: `http://127.0.0.1:${es.address().port}`, close: async () => es.close() })
    const f = Fastify({ trustProxy: '127.0.0.1' })
    await f.register(require('../fastify.js'), { engine: Engine.fromToml(policy), async })
    f.get('/x', async () => ({ ok: true }))
    await f.listen({ port: 0, host: '127.0.0.1' })
    servers.push({ base: `http://127.0.0.1:${f.server.address().port}`, close: () => f.close() })
  }
  try {
    for (const { base } of servers) {
      const get = (xff) => fetch(`${base}/x`, { headers: { 'x-forwarded-for': xff } }).then((r) => r.status)
      assert.equal(await get('203.0.113.9:5678'), 200, base)
      assert.equal(await get('[2001:db8::9]:443'), 200, base)
      assert.equal(await get('203.0.113.9:6000'), 200, base)
      assert.equal(await get('203.0.113.9'), 429, `${base}: ports are one client`)
      assert.equal(await get('[2001:db8::9]:444'), 200, base)
      assert.equal(await get('2001:db8::9'), 429, base)
      assert.equal(await get('not-an-address'), 400, base)
    }
  } finally {
    for (const s of servers) await s.close()
  }
})

test('fastify plugin, over real HTTP', async () => {
  // The plugin's raw path (headers and denials set from the verdict's text)
  // through Node's HTTP server, as clients see it.
  const Fastify = require('fastify')
  const app = Fastify({ trustProxy: '127.0.0.1' })
  await app.register(require('../fastify.js'), { engine: Engine.fromToml(POLICY) })
  app.all('/*', async () => ({ ok: true }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${app.server.address().port}`
  try {
    await scenario(async (method, path, headers = {}) => {
      const res = await fetch(base + path, { method, headers: { 'x-forwarded-for': '203.0.113.82', ...headers } })
      const text = await res.text()
      return { status: res.status, header: (n) => res.headers.get(n), json: text.startsWith('{') ? JSON.parse(text) : null }
    })
  } finally {
    await app.close()
  }
})

test('a Fastify app whose Redis is down answers by the fail mode and logs it once, not per request', async () => {
  // The default logging as a server shows it: the engine made by the app,
  // requests over HTTP, a Redis nobody answers on (port 1 refuses at once).
  const lines = []
  const { warn, info } = console
  console.warn = (line) => lines.push(['warn', line])
  console.info = (line) => lines.push(['info', line])
  const Fastify = require('fastify')
  const app = Fastify()
  try {
    const down = '[store]\nkind = "redis"\nurl = "redis://127.0.0.1:1/"\ntimeout_ms = 50\nfail_mode = "local"\n'
    await app.register(require('../fastify.js'), { engine: Engine.fromToml(down + POLICY) })
    app.all('/*', async () => ({ ok: true }))
    await app.listen({ port: 0, host: '127.0.0.1' })
    const base = `http://127.0.0.1:${app.server.address().port}`
    const statuses = []
    for (let i = 0; i < 5; i++) statuses.push((await fetch(base + '/auth/login', { method: 'POST' })).status)
    // The local fallback keeps the 2/min login quota in this process.
    assert.deepEqual(statuses, [200, 200, 429, 429, 429])
    await new Promise((r) => setTimeout(r, 100))
  } finally {
    console.warn = warn
    console.info = info
    await app.close()
  }
  assert.deepEqual(lines, [['warn', 'floodgate: store_fallback (rule login)']])
})

test('two Fastify instances on one Redis over real HTTP: a flood of new clients each gets its own quota, a hot client exactly its quota', { skip: !process.env.FG_TEST_REDIS_URL && 'FG_TEST_REDIS_URL not set' }, async () => {
  // What the script does with keys that are not there yet (one SET NX GET,
  // the reply worked out from the quota or a per-call template) as a server
  // sees it: requests from two app instances (one engine each), concurrent,
  // so their checks travel in merged calls.
  const prefix = `fg-node-flood-${process.pid}`
  const policy = `[store]\nkind = "redis"\nurl = "${process.env.FG_TEST_REDIS_URL}"\ntimeout_ms = 1000\nprefix = "${prefix}"\nfail_mode = "closed"\n` +
    '[[rule]]\nname = "g"\nmatch = "/g/**"\nkey = "header:x-client"\nquotas = ["5/min"]\n' +
    '[[rule]]\nname = "w"\nmatch = "/w/**"\nkey = "header:x-client"\nquotas = ["3/s", "5/min"]\nalgorithm = "sliding_window"\n'
  const Fastify = require('fastify')
  const apps = []
  for (let i = 0; i < 2; i++) {
    const app = Fastify()
    await app.register(require('../fastify.js'), { engine: Engine.fromToml(policy) })
    app.get('/*', async () => ({ ok: true }))
    await app.listen({ port: 0, host: '127.0.0.1' })
    apps.push(`http://127.0.0.1:${app.server.address().port}`)
    apps[`close${i}`] = () => app.close()
  }
  const get = (i, path, client) => fetch(apps[i % 2] + path, { headers: { 'x-client': client } })
    .then(async (res) => ({ status: res.status, limit: res.headers.get('ratelimit'), text: await res.text() }))
  try {
    for (const [route, name, remaining, quota] of [['/g/x', '"g"', 4, 5], ['/w/x', '"w.1"', 2, 3]]) {
      const flood = await Promise.all(Array.from({ length: 120 }, (_, i) => get(i, route, `${route}-new-${i}`)))
      assert.deepEqual(new Set(flood.map((r) => r.status)), new Set([200]), route)
      for (const r of flood) assert.ok(r.limit.startsWith(`${name};r=${remaining};t=`), `${route}: ${r.limit}`)
      const hot = await Promise.all(Array.from({ length: 12 }, (_, i) => get(i, route, `${route}-hot`)))
      assert.equal(hot.filter((r) => r.status === 200).length, quota, `${route}: ${hot.map((r) => r.status)}`)
      assert.equal(hot.filter((r) => r.status === 429).length, 12 - quota)
    }
  } finally {
    await apps.close0()
    await apps.close1()
  }
})

test('Express and Fastify on a Redis that freezes: every request answered by the fail mode within the deadline, then back on Redis', { skip: !process.env.FG_TEST_REDIS_URL && 'FG_TEST_REDIS_URL not set' }, async () => {
  // A redis-server of this test's own: it is frozen (SIGSTOP).
  const { spawn, execFileSync } = require('node:child_process')
  const net = require('node:net')
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)) })
  })
  const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const cli = (...args) => execFileSync('redis-cli', ['-p', String(port), ...args]).toString()
  const evalsha = () => Number((cli('info', 'commandstats').match(/cmdstat_evalsha:calls=(\d+)/) || [0, 0])[1])
  const up = () => { try { return cli('ping').startsWith('PONG') } catch { return false } }
  for (let i = 0; i < 100 && !up(); i++) await new Promise((r) => setTimeout(r, 50))
  const policy = `[store]\nkind = "redis"\nurl = "redis://127.0.0.1:${port}/"\ntimeout_ms = 100\nfail_mode = "open"\n` +
    '[[rule]]\nname = "api"\nmatch = "/api/**"\nkey = "ip"\nquotas = ["1000/hour"]\n'
  const express = require('express')
  const Fastify = require('fastify')
  const servers = []
  try {
    const e = express()
    e.use(require('../express.js').floodgate(Engine.fromToml(policy)))
    e.all('/{*any}', (req, res) => res.json({ ok: true }))
    const es = await new Promise((resolve) => { const s = e.listen(0, '127.0.0.1', () => resolve(s)) })
    servers.push(['express', `http://127.0.0.1:${es.address().port}`, () => es.close()])
    const f = Fastify()
    await f.register(require('../fastify.js'), { engine: Engine.fromToml(policy) })
    f.all('/*', async () => ({ ok: true }))
    await f.listen({ port: 0, host: '127.0.0.1' })
    servers.push(['fastify', `http://127.0.0.1:${f.server.address().port}`, () => f.close()])
    for (const [name, base] of servers) {
      for (let i = 0; i < 5; i++) assert.equal((await fetch(base + '/api/items')).status, 200, name)
    }
    assert.ok(evalsha() >= 10, 'both counting on Redis')
    redis.kill('SIGSTOP')
    const slowest = {}
    try {
      for (const [name, base] of servers) {
        slowest[name] = 0
        for (let i = 0; i < 10; i++) {
          const t = performance.now()
          const res = await fetch(base + '/api/items')
          await res.text()
          slowest[name] = Math.max(slowest[name], performance.now() - t)
          assert.equal(res.status, 200, `${name}: fail mode open`)
        }
      }
    } finally {
      redis.kill('SIGCONT')
    }
    const shown = Object.entries(slowest).map(([n, ms]) => `${n} ${ms.toFixed(1)} ms`).join(', ')
    console.log(`Redis frozen: slowest request ${shown} (deadline 100 ms)`)
    // The deadline, plus what the server and this client take on a busy machine.
    for (const [name, ms] of Object.entries(slowest)) assert.ok(ms < 500, `${name}: ${ms} ms`)
    // Thawed: back on Redis (the breaker's next probe), counted after Redis
    // has run the calls that waited for it.
    await new Promise((r) => setTimeout(r, 300))
    const before = evalsha()
    for (const [name, base] of servers) {
      let back = false
      for (let i = 0; i < 100 && !back; i++) {
        const n = evalsha()
        await (await fetch(base + '/api/items')).text()
        back = evalsha() > n
        if (!back) await new Promise((r) => setTimeout(r, 50))
      }
      assert.ok(back, `${name}: never back on Redis`)
    }
    assert.ok(evalsha() > before)
  } finally {
    for (const [, , close] of servers) await close()
    redis.kill('SIGKILL')
  }
})

test('in memory over real HTTP through Express and Fastify: a lone window quota and two token buckets (one atomic cell per key) give each new client its own quota and a hot client exactly its quota', async () => {
  // The engine keeps a lone sliding or fixed window quota of a key in one
  // 64-bit cell and two token buckets in one 128-bit cell, each charged by one
  // compare-and-swap (core/src/state.rs); concurrent requests race on them.
  const policy =
    '[[rule]]\nname = "w"\nmatch = "/w/**"\nkey = "header:x-client"\nquotas = ["5/min"]\nalgorithm = "sliding_window"\n' +
    '[[rule]]\nname = "f"\nmatch = "/f/**"\nkey = "header:x-client"\nquotas = ["5/min"]\nalgorithm = "fixed_window"\n' +
    '[[rule]]\nname = "p"\nmatch = "/p/**"\nkey = "header:x-client"\nquotas = ["5/min", "8/hour"]\n' +
    // Either bucket binding: both halves of the cell are charged.
    '[[rule]]\nname = "q"\nmatch = "/q/**"\nkey = "header:x-client"\nquotas = ["8/min", "5/hour"]\n'
  const express = require('express')
  const { floodgate } = require('../express.js')
  const Fastify = require('fastify')
  const servers = []
  const e = express()
  e.use(floodgate(Engine.fromToml(policy)))
  e.get('/{*any}', (req, res) => res.json({ ok: true }))
  const es = await new Promise((resolve) => {
    const s = e.listen(0, '127.0.0.1', () => resolve(s))
  })
  servers.push({ base: `http://127.0.0.1:${es.address().port}`, close: async () => es.close() })
  const f = Fastify()
  await f.register(require('../fastify.js'), { engine: Engine.fromToml(policy) })
  f.get('/*', async () => ({ ok: true }))
  await f.listen({ port: 0, host: '127.0.0.1' })
  servers.push({ base: `http://127.0.0.1:${f.server.address().port}`, close: () => f.close() })
  try {
    for (const { base } of servers) {
      const get = (path, client) => fetch(base + path, { headers: { 'x-client': client } })
        .then(async (res) => ({ status: res.status, limit: res.headers.get('ratelimit'), text: await res.text() }))
      for (const [route, name] of [['/w/x', '"w"'], ['/f/x', '"f"'], ['/p/x', '"p.1"'], ['/q/x', '"q.2"']]) {
        const flood = await Promise.all(Array.from({ length: 60 }, (_, i) => get(route, `${route}-new-${i}`)))
        assert.deepEqual(new Set(flood.map((r) => r.status)), new Set([200]), `${base}${route}`)
        for (const r of flood) assert.ok(r.limit.startsWith(`${name};r=4;t=`), `${base}${route}: ${r.limit}`)
        const hot = await Promise.all(Array.from({ length: 12 }, () => get(route, `${route}-hot`)))
        assert.equal(hot.filter((r) => r.status === 200).length, 5, `${base}${route}: ${hot.map((r) => r.status)}`)
        assert.equal(hot.filter((r) => r.status === 429).length, 7)
      }
    }
  } finally {
    for (const s of servers) await s.close()
  }
})

test('a GCRA quota advertises its whole window over real HTTP (99/min is w=60)', async () => {
  // The emission interval is rounded up to whole nanoseconds; the window a
  // client is told must not be (it read w=61 for 99/min).
  const Fastify = require('fastify')
  const app = Fastify()
  const policy = '[[rule]]\nname = "odd"\nmatch = "/**"\nquotas = ["99/min", "600/min burst 100"]\nkey = "ip"\n'
  await app.register(require('../fastify.js'), { engine: Engine.fromToml(policy) })
  app.get('/x', async () => ({ ok: true }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  try {
    const res = await fetch(`http://127.0.0.1:${app.server.address().port}/x`)
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('ratelimit-policy'), '"odd.1";q=99;w=60, "odd.2";q=100;w=10')
  } finally {
    await app.close()
  }
})

test('fastify with hijackDenials: refusals written to the raw response keep the reply\'s headers (CORS), the type and length, onResponse hooks and the request log; only onSend hooks are skipped', async () => {
  const origin = 'https://app.example'
  for (const async of [false, true]) {
    const logged = []
    const app = require('fastify')({
      trustProxy: '127.0.0.1',
      logger: { stream: { write: (line) => logged.push(JSON.parse(line)) } },
    })
    await app.register(require('@fastify/cors'), { origin })
    await app.register(require('../fastify.js'), { engine: Engine.fromToml(POLICY), hijackDenials: true, async })
    const sent = []
    const responded = []
    app.addHook('onSend', (request, reply, payload, next) => {
      sent.push(reply.statusCode)
      next()
    })
    app.addHook('onResponse', (request, reply, next) => {
      responded.push(reply.statusCode)
      next()
    })
    // (@fastify/cors has OPTIONS on every path: no catch-all here.)
    app.get('/api/items', async () => ({ ok: true }))
    for (const path of ['/auth/login', '/oauth/token']) app.post(path, async () => ({ ok: true }))
    await app.listen({ port: 0, host: '127.0.0.1' })
    const port = app.server.address().port
    const base = `http://127.0.0.1:${port}`
    const what = `async: ${async}`
    try {
      await scenario(async (method, path, headers = {}) => {
        const res = await fetch(base + path, { method, headers: { 'x-forwarded-for': '203.0.113.83', origin, ...headers } })
        const text = await res.text()
        if (res.status !== 200) {
          assert.equal(res.headers.get('access-control-allow-origin'), origin, `${what}: the ${res.status} keeps CORS's header`)
          assert.equal(res.headers.get('content-length'), String(Buffer.byteLength(text)), what)
        }
        return { status: res.status, header: (n) => res.headers.get(n), json: text.startsWith('{') ? JSON.parse(text) : null }
      })
      // HEAD: the refusal's length, no body.
      const head = await raw(port, 'HEAD', '/api/items', [['X-Forwarded-For', '203.0.113.83'], ['X-Api-Key', 'sk_revoked']])
      assert.equal(head.status, 403, what)
      assert.equal(head.body, '', what)
      assert.ok(Number(head.headers.get('content-length')) > 0, what)
      const refusal = await raw(port, 'POST', '/auth/login', [['X-Forwarded-For', '203.0.113.83']])
      assert.equal(refusal.status, 429, what)
      assert.ok(Number(refusal.headers.get('retry-after')) >= 1, what)
      assert.equal(refusal.headers.get('ratelimit-policy'), '"login";q=2;w=60', what)
    } finally {
      await app.close()
    }
    const refusals = [429, 401, 403, 403, 429]
    assert.deepEqual(responded.filter((c) => c !== 200), refusals, `${what}: onResponse runs for every refusal`)
    assert.deepEqual(sent.filter((c) => c !== 200), [], `${what}: onSend runs for none`)
    assert.equal(sent.filter((c) => c === 200).length, 4, `${what}: onSend runs for the app's answers`)
    const completed = logged.filter((l) => l.msg === 'request completed').map((l) => l.res.statusCode)
    assert.deepEqual(completed.filter((c) => refusals.includes(c)), refusals, `${what}: the request log has them`)
  }
})

test('fastify plugin, with inject', async () => {
  const Fastify = require('fastify')
  const app = Fastify({ trustProxy: true })
  await app.register(require('../fastify.js'), { engine: Engine.fromToml(POLICY) })
  app.all('/*', async () => ({ ok: true }))
  await scenario(async (method, url, headers = {}) => {
    const res = await app.inject({ method, url, headers: { 'x-forwarded-for': '203.0.113.81', ...headers } })
    return { status: res.statusCode, header: (n) => res.headers[n], json: res.body.startsWith('{') ? JSON.parse(res.body) : null }
  })
  await app.close()
})

test('a policy reading twelve headers keys on the last of them over real HTTP', async () => {
  // More header values than engineCheck reads on the stack (8): each rule is
  // keyed by its own header, one quota per key; the last rule's header decides.
  const rules = Array.from(
    { length: 12 },
    (_, i) => `[[rule]]\nname = "h${i}"\nmatch = "/**"\nkey = "header:x-h${i}"\nquotas = ["${i === 11 ? 1 : 100}/min"]\n`,
  ).join('\n')
  const Fastify = require('fastify')
  const app = Fastify()
  await app.register(require('../fastify.js'), { engine: Engine.fromToml(rules) })
  app.get('/*', async () => ({ ok: true }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const base = `http://127.0.0.1:${app.server.address().port}`
  const get = (last, skip) => {
    const headers = {}
    for (let i = 0; i < 12; i++) if (i !== skip) headers[`x-h${i}`] = i === 11 ? last : `v${i}`
    return fetch(base + '/items', { headers }).then(async (r) => ({ status: r.status, rule: (await r.json()).rule }))
  }
  try {
    assert.equal((await get('alice', 3)).status, 200)
    assert.deepEqual(await get('alice', 5), { status: 429, rule: 'h11' })
    assert.equal((await get('bob', -1)).status, 200)
    assert.equal((await get('bob', 0)).status, 429)
  } finally {
    await app.close()
  }
})

test('a 10,000-network blocklist over real HTTP: listed networks answered 403 at their edges, their neighbours and allow-listed ones not', async () => {
  // Every other /24 of 10.0.0.0/13 is listed (none merges with the next), an
  // IPv6 /48, and a /16 inside them allowed (the allow list never limits, but
  // a deny listing wins over it). Clients come through a trusted proxy.
  const nets = Array.from({ length: 10_000 }, (_, i) => `"10.${Math.floor(i / 128)}.${(i % 128) * 2}.0/24"`)
  const policy = `
[lists]
deny_ips = [${nets.join(', ')}, "2001:db8:dead::/48"]
allow_ips = ["10.200.0.0/16"]
[[rule]]
name = "per-ip"
match = "/**"
key = "ip"
quotas = ["1000/min"]
`
  const express = require('express')
  const { floodgate } = require('../express.js')
  const e = express()
  e.set('trust proxy', 'loopback')
  e.use(floodgate(Engine.fromToml(policy)))
  e.all('/{*any}', (req, res) => res.json({ ok: true }))
  const es = await new Promise((resolve) => { const s = e.listen(0, '127.0.0.1', () => resolve(s)) })
  const f = require('fastify')({ trustProxy: '127.0.0.1' })
  await f.register(require('../fastify.js'), { engine: Engine.fromToml(policy) })
  f.all('/*', async () => ({ ok: true }))
  await f.listen({ port: 0, host: '127.0.0.1' })
  try {
    for (const [name, base] of [['express', `http://127.0.0.1:${es.address().port}`], ['fastify', `http://127.0.0.1:${f.server.address().port}`]]) {
      const status = async (client) => (await fetch(base + '/api/items', { headers: { 'x-forwarded-for': client } })).status
      for (const [client, want] of [
        ['10.0.0.0', 403], ['10.0.0.255', 403], ['10.0.1.0', 200], ['10.0.1.255', 200],
        ['10.78.4.9', 403], ['10.78.5.9', 200], ['10.78.30.1', 403], ['10.78.31.1', 200],
        ['9.255.255.255', 200], ['10.200.7.7', 200], ['2001:db8:dead:1::5', 403], ['2001:db8:beef::5', 200],
      ]) {
        assert.equal(await status(client), want, `${name} ${client}`)
      }
    }
  } finally {
    await new Promise((resolve) => es.close(resolve))
    await f.close()
  }
})

test('a reload is seen by the very next request through Express and Fastify over real HTTP', async () => {
  // Each middleware's handle keeps its engine's policy between requests
  // (Engine::verdict_buf): a reload must still decide the next request.
  const policy = (limit) => `
[[rule]]
name = "api"
match = "/api/**"
key = "ip"
algorithm = "fixed_window"
quotas = ["${limit}/h"]
`
  const express = require('express')
  const { floodgate } = require('../express.js')
  const ee = Engine.fromToml(policy(2))
  const e = express()
  e.set('trust proxy', 'loopback')
  e.use(floodgate(ee))
  e.all('/{*any}', (req, res) => res.json({ ok: true }))
  const es = await new Promise((resolve) => { const s = e.listen(0, '127.0.0.1', () => resolve(s)) })
  const fe = Engine.fromToml(policy(2))
  const f = require('fastify')({ trustProxy: '127.0.0.1' })
  await f.register(require('../fastify.js'), { engine: fe })
  f.all('/*', async () => ({ ok: true }))
  await f.listen({ port: 0, host: '127.0.0.1' })
  try {
    for (const [name, engine, base] of [['express', ee, `http://127.0.0.1:${es.address().port}`], ['fastify', fe, `http://127.0.0.1:${f.server.address().port}`]]) {
      const status = async () => (await fetch(base + '/api/items', { headers: { 'x-forwarded-for': '203.0.113.90' } })).status
      assert.deepEqual([await status(), await status(), await status()], [200, 200, 429], `${name}: 2/h`)
      // To 5/h, the count of 2 carried over: three more, then a denial.
      engine.reloadToml(policy(5))
      assert.deepEqual([await status(), await status(), await status(), await status()], [200, 200, 200, 429], `${name}: 5/h after the reload`)
      engine.reloadToml(policy(1))
      assert.equal(await status(), 429, `${name}: 1/h after the second reload`)
    }
  } finally {
    await new Promise((resolve) => es.close(resolve))
    await f.close()
  }
})

// Proxy settings that defeat IP limits are warned of, once each, on
// console.warn (express-rate-limit warns of the same): Express's `trust proxy`
// of true (any client picks its own address), and X-Forwarded-For from a
// private, loopback or Unix-socket peer that no setting trusts (every client
// is the proxy). Correct settings, and `validate: false`, warn of nothing.
test('proxy settings that defeat IP limits are warned of once (Express and Fastify)', async () => {
  const { mkdtempSync, rmSync } = require('node:fs')
  const { tmpdir } = require('node:os')
  const { join } = require('node:path')
  const policy = '[[rule]]\nname = "a"\nmatch = "/**"\nkey = "ip"\nquotas = ["100/min"]\n'
  const dir = mkdtempSync(join(tmpdir(), 'floodgate-warn-'))
  const warn = console.warn
  const warned = []
  console.warn = (line) => warned.push(String(line).split(':')[1]?.trim())
  const express = async (trust, options, at = 0) => {
    const app = require('express')()
    if (trust !== undefined) app.set('trust proxy', trust)
    app.use(require('../express.js').floodgate(Engine.fromToml(policy), options))
    app.get('/x', (req, res) => res.send('ok'))
    const server = await new Promise((resolve) => {
      const s = typeof at === 'string' ? app.listen(at, () => resolve(s)) : app.listen(0, '127.0.0.1', () => resolve(s))
    })
    return { at: typeof at === 'string' ? at : server.address().port, close: () => new Promise((r) => server.close(r)) }
  }
  const fastify = async (trust, options = {}) => {
    const app = require('fastify')(trust === undefined ? {} : { trustProxy: trust })
    await app.register(require('../fastify.js'), { engine: Engine.fromToml(policy), ...options })
    app.get('/x', async () => 'ok')
    await app.listen({ port: 0, host: '127.0.0.1' })
    return { at: app.server.address().port, close: () => app.close() }
  }
  const cases = [
    ['express trust proxy true', () => express(true), ['ERR_FG_TRUST_PROXY_ALL']],
    ['express, no trust, behind a loopback proxy', () => express(undefined), ['ERR_FG_UNTRUSTED_PROXY']],
    ['express trusting loopback', () => express('loopback'), []],
    ['express trusting one hop', () => express(1), []],
    ['express, validate: false', () => express(true, { validate: false }), []],
    ['express on a Unix socket, no trust', () => express('loopback', {}, join(dir, 'a.sock')), ['ERR_FG_UNTRUSTED_PROXY']],
    ['express on a Unix socket, its proxy trusted', () => express((a, i) => i === 0 && !a, {}, join(dir, 'b.sock')), []],
    ['fastify, no trust, behind a loopback proxy', () => fastify(undefined), ['ERR_FG_UNTRUSTED_PROXY']],
    ['fastify trusting loopback', () => fastify('127.0.0.1'), []],
    ['fastify, validate: false', () => fastify(undefined, { validate: false }), []],
  ]
  try {
    for (const [name, start, want] of cases) {
      warned.length = 0
      const server = await start()
      try {
        const statuses = []
        statuses.push((await raw(server.at, 'GET', '/x')).status)
        for (let i = 0; i < 5; i++) statuses.push((await raw(server.at, 'GET', '/x', [['X-Forwarded-For', `203.0.113.${i}`]])).status)
        assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200], name)
      } finally {
        await server.close()
      }
      assert.deepEqual(warned, want, name)
    }
  } finally {
    console.warn = warn
    rmSync(dir, { recursive: true, force: true })
  }
})

// Browsers: with the CORS middleware before the limiter (README, "CORS"), a
// preflight is answered there and never charged, and a 429 carries the CORS
// headers and exposes Retry-After and RateLimit, so the page's code can read
// why it was refused (without them it sees an opaque network error).
test('behind CORS, preflights are not charged and a 429 is readable cross-origin (Express and Fastify)', async () => {
  const policy = '[[rule]]\nname = "page"\nmatch = "/page"\nkey = "ip"\nquotas = ["3/min"]\n'
  const origin = 'https://app.example'
  const exposed = ['Retry-After', 'RateLimit', 'RateLimit-Policy']
  const servers = {
    express: async () => {
      const app = require('express')()
      app.use(require('cors')({ origin, exposedHeaders: exposed }))
      app.use(require('../express.js').floodgate(Engine.fromToml(policy)))
      app.get('/page', (req, res) => res.json({ ok: true }))
      const server = await new Promise((resolve) => {
        const s = app.listen(0, '127.0.0.1', () => resolve(s))
      })
      return { port: server.address().port, close: () => new Promise((r) => server.close(r)) }
    },
    fastify: async () => {
      const app = require('fastify')()
      await app.register(require('@fastify/cors'), { origin, exposedHeaders: exposed })
      await app.register(require('../fastify.js'), { engine: Engine.fromToml(policy) })
      app.get('/page', async () => ({ ok: true }))
      await app.listen({ port: 0, host: '127.0.0.1' })
      return { port: app.server.address().port, close: () => app.close() }
    },
  }
  for (const [name, start] of Object.entries(servers)) {
    const { port, close } = await start()
    try {
      const preflight = [['Origin', origin], ['Access-Control-Request-Method', 'GET']]
      for (let i = 0; i < 6; i++) {
        const r = await raw(port, 'OPTIONS', '/page', preflight)
        assert.equal(r.status, 204, `${name}: the preflight is CORS's answer`)
        assert.equal(r.headers.get('access-control-allow-origin'), origin, name)
      }
      const replies = []
      for (let i = 0; i < 4; i++) replies.push(await raw(port, 'GET', '/page', [['Origin', origin]]))
      assert.deepEqual(replies.map((r) => r.status), [200, 200, 200, 429], `${name}: preflights charged nothing`)
      const refused = replies[3]
      assert.equal(refused.headers.get('access-control-allow-origin'), origin, `${name}: the 429 is readable`)
      const expose = (refused.headers.get('access-control-expose-headers') ?? '').toLowerCase()
      for (const h of exposed) assert.ok(expose.includes(h.toLowerCase()), `${name}: ${h} exposed`)
      assert.ok(Number(refused.headers.get('retry-after')) >= 1, name)
    } finally {
      await close()
    }
  }
})
