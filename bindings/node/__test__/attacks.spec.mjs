// Attacks on the Express and Fastify middleware, sent as an attacker sends them:
// raw bytes over a socket (no client-side normalisation) to real servers on
// 127.0.0.1, behind a trusted "proxy" (loopback) that appends X-Forwarded-For.
// Each test counts how many requests reached a handler.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createHmac, generateKeyPairSync, sign as rsaSign } from 'node:crypto'
import { createRequire } from 'node:module'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import zlib from 'node:zlib'
import { raw } from './raw_http.mjs'

const require = createRequire(import.meta.url)
const { Engine } = require('../floodgate.js')

const POLICY = readFileSync(new URL('../../../tests/policies/attacks.toml', import.meta.url), 'utf8')

let clients = 0
// One of 198.18.0.0/15's addresses, a new one each call.
const freshClient = () => (++clients, `198.18.${Math.floor(clients / 250)}.${(clients % 250) + 1}`)

async function express(options = {}) {
  const express = require('express')
  const { floodgate } = require('../express.js')
  const app = express()
  app.set('trust proxy', 'loopback')
  // Body parsers first: the policy keys the login on the body's username.
  app.use(express.json(), express.urlencoded({ extended: false }))
  app.use(floodgate(Engine.fromToml(POLICY), options))
  // Multipart logins (fetch's FormData) read by multer on the route, after
  // the middleware, as multer's docs show it.
  const upload = require('multer')()
  app.post('/auth/login', upload.none(), (req, res) => res.json({ handler: 'login', username: req.body?.username ?? null }))
  app.get('/page', (req, res) => res.json({ handler: 'page', key: req.get('x-api-key') ?? null }))
  const server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s))
  })
  return { port: server.address().port, close: () => new Promise((r) => server.close(r)) }
}

async function fastify(options = {}) {
  const Fastify = require('fastify')
  const app = Fastify({ trustProxy: '127.0.0.1' })
  await app.register(require('@fastify/formbody'))
  // Multipart in @fastify/multipart's default mode: the handler reads the parts.
  await app.register(require('@fastify/multipart'))
  await app.register(require('../fastify.js'), { engine: Engine.fromToml(POLICY), ...options })
  app.post('/auth/login', async (req) => {
    let username = req.body?.username ?? null
    if (req.isMultipart()) {
      for await (const part of req.parts()) if (part.type === 'field' && part.fieldname === 'username') username = part.value
    }
    return { handler: 'login', username }
  })
  app.get('/page', async (req) => ({ handler: 'page', key: req.headers['x-api-key'] ?? null }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { port: app.server.address().port, close: () => app.close() }
}

const SPELLINGS = [
  ['POST', '/auth/login'],
  ['POST', '/AUTH/LOGIN'],
  ['POST', '/Auth/Login'],
  ['POST', '/auth%2Flogin'],
  ['POST', '//auth//login'],
  ['POST', '/auth/login/'],
  ['POST', '/auth/%6cogin'],
  ['POST', 'http://127.0.0.1/auth/login'],
  ['POST', 'http://evil.example/AUTH/login?x=1'],
  ['POST', '/auth/login;x=1'],
  ['POST', '/auth/login%3Bx=1'],
  ['POST', '/auth/login%00'],
  ['POST', '/auth/login%20'],
  ['POST', '/auth/login.'],
  ['POST', '/auth/login%2e'],
  ['POST', '/auth/x/../login'],
  ['POST', '/auth/%2e%2e/auth/login'],
  ['POST', '/auth\\login'],
  ['POST', '/auth/login#frag'],
  ['POST', '/auth/login?'],
  ['POST', '/auth/login//'],
  ['POST', '/auth/login%2F'],
  ['POST', '/auth/login/.'],
  ['POST', '/%61uth/login'],
  ['POST', '/auth/login%09'],
  ['POST', '/auth/LOG%49N'],
  ['post', '/auth/login'],
  ['POST', '/auth/login\t'],
  ['HEAD', '/page'],
  ['GET', '/page?x=1'],
]

for (const [name, start] of [['express', express], ['fastify', fastify]]) {
  test(`${name}: no spelling reaches a handler past its limit`, async () => {
    const server = await start()
    try {
      for (const [method, target] of SPELLINGS) {
        const xff = freshClient()
        const statuses = []
        for (let i = 0; i < 8; i++) statuses.push((await raw(server.port, method, target, [['X-Forwarded-For', xff]])).status)
        const handled = statuses.filter((s) => s === 200).length
        assert.ok(handled <= 3, `${method} ${target}: ${statuses}`)
        if (handled) assert.equal(statuses.filter((s) => s === 429).length, 8 - handled, `${method} ${target}: ${statuses}`)
      }
    } finally {
      await server.close()
    }
  })

  test(`${name}: a rule under a wildcard first segment holds on every tenant and spelling`, async () => {
    // `GET /{tenant}/reports/**`: no route serves these (404), but the limit
    // holds before routing, on every tenant's path and spelling as one quota.
    const server = await start()
    try {
      const xff = freshClient()
      const targets = ['/acme/reports/q1', '/ACME/Reports/q1', '/globex/reports/x/y', '//initech//reports', '/acme/reports%2Fq3']
      const statuses = []
      for (const target of [...targets, ...targets]) statuses.push((await raw(server.port, 'GET', target, [['X-Forwarded-For', xff]])).status)
      assert.equal(statuses.filter((s) => s === 429).length, statuses.length - 3, `${statuses}`)
      // Paths no rule names are not limited, the root included.
      for (const target of ['/acme/other', '/', '/reports']) {
        const other = []
        for (let i = 0; i < 5; i++) other.push((await raw(server.port, 'GET', target, [['X-Forwarded-For', xff]])).status)
        assert.ok(!other.includes(429), `${target}: ${other}`)
      }
    } finally {
      await server.close()
    }
  })

  test(`${name}: a spoofed Forwarded header is ignored`, async () => {
    const server = await start()
    try {
      const xff = freshClient()
      const statuses = []
      for (let i = 0; i < 12; i++) {
        const r = await raw(server.port, 'POST', '/auth/login', [['Forwarded', `for=203.0.113.${i}`], ['X-Forwarded-For', xff]])
        statuses.push(r.status)
      }
      assert.equal(statuses.filter((s) => s === 200).length, 3, `${statuses}`)
    } finally {
      await server.close()
    }
  })

  test(`${name}: a repeated API key cannot hide a revoked one`, async () => {
    const server = await start()
    try {
      for (const headers of [
        [['x-api-key', 'sk_revoked'], ['x-api-key', 'junk']],
        [['x-api-key', 'junk'], ['x-api-key', 'sk_revoked']],
      ]) {
        const r = await raw(server.port, 'GET', '/page', [['X-Forwarded-For', freshClient()], ...headers])
        assert.equal(r.status, 403, r.text)
      }
    } finally {
      await server.close()
    }
  })

  // Credential stuffing: one password each for a victim's account, from a
  // botnet's addresses, the username spelled as the login compares names
  // (case, spaces, escapes) and sent as JSON or a form. The login handler
  // echoes the username it parsed: the body still reaches it.
  for (const async of [false, true]) test(`${name}${async ? ' (async)' : ''}: credential stuffing from many addresses is held per username, however it is spelled`, async () => {
    const server = await start({ async })
    const FORM = 'application/x-www-form-urlencoded'
    const attempts = [
      ['application/json', '{"username":"victim","password":"123456"}'],
      [FORM, 'username=Victim&password=password'],
      ['application/json', '{"password":"qwerty","username":" VICTIM "}'],
      [FORM, 'password=letmein&username=%20victim%20'],
      ['application/json; charset=utf-8', '{"username":"vict\\u0069m"}'],
      [FORM, 'username=VICTIM'],
      ['application/json', '{"username":"decoy","username":"victim"}'],
    ]
    try {
      const answers = []
      for (const [type, body] of attempts) {
        answers.push(await raw(server.port, 'POST', '/auth/login', [['X-Forwarded-For', freshClient()], ['Content-Type', type]], body))
      }
      const reached = answers.filter((a) => a.status === 200).map((a) => JSON.parse(a.body).username.trim().toLowerCase())
      assert.deepEqual(reached, ['victim', 'victim', 'victim'], answers.map((a) => a.status).join())
      assert.ok(answers.slice(3).every((a) => a.status === 429), answers.map((a) => a.status).join())
      // Another account has its own attempts; a body past 64 KiB is refused whole.
      const other = await raw(server.port, 'POST', '/auth/login', [['X-Forwarded-For', freshClient()], ['Content-Type', 'application/json']], '{"username":"alice"}')
      assert.equal(other.status, 200, other.text)
      const padded = JSON.stringify({ username: 'victim', pad: 'x'.repeat(70_000) })
      const big = await raw(server.port, 'POST', '/auth/login', [['X-Forwarded-For', freshClient()], ['Content-Type', 'application/json']], padded)
      assert.equal(big.status, 413, big.text)
      assert.deepEqual(JSON.parse(big.body), { error: 'payload_too_large' })
      // Compressed: Express's parsers inflate it, and the name is held as any
      // other (the engine counts what the parser read); Fastify reads no gzip
      // body. Either way no handler sees the victim's name past the limit.
      const gz = await raw(server.port, 'POST', '/auth/login',
        [['X-Forwarded-For', freshClient()], ['Content-Type', 'application/json'], ['Content-Encoding', 'gzip']],
        zlib.gzipSync('{"username":"victim"}'))
      assert.ok(name === 'express' ? gz.status === 429 : [400, 415, 429].includes(gz.status), gz.text)
      // Multipart, read after the middleware saw no body (multer on the
      // route in Express, the handler's parts in @fastify/multipart's default
      // mode): refused (400), never a login past the limit.
      const form = '--XyZ\r\nContent-Disposition: form-data; name="username"\r\n\r\nvictim\r\n--XyZ--\r\n'
      const mp = await raw(server.port, 'POST', '/auth/login',
        [['X-Forwarded-For', freshClient()], ['Content-Type', 'multipart/form-data; boundary=XyZ']], form)
      assert.equal(mp.status, 400, mp.text)
      // A login with no body at all: no key for the rule, so not refused.
      const empty = await raw(server.port, 'POST', '/auth/login', [['X-Forwarded-For', freshClient()]])
      assert.equal(empty.status, 200, empty.text)
    } finally {
      await server.close()
    }
  })

  // The username as no name at all: repeated in a form (which the body
  // parsers make a list), a NoSQL operator, a list of one. Each is refused
  // (400) before the handler, never let past the per-username rule.
  for (const async of [false, true]) test(`${name}${async ? ' (async)' : ''}: a username repeated or sent as a list or an object is refused, not let past the rule`, async () => {
    const server = await start({ async })
    const shapes = [
      ['application/x-www-form-urlencoded', 'username=decoy&username=victim&password=x'],
      ['application/json', '{"username":{"$ne":null},"password":"x"}'],
      ['application/json', '{"username":{"$gt":""}}'],
      ['application/json', '{"username":["victim"]}'],
      ['application/json', '{"username":true}'],
    ]
    try {
      const statuses = []
      for (let round = 0; round < 2; round++) {
        for (const [type, body] of shapes) {
          const r = await raw(server.port, 'POST', '/auth/login', [['X-Forwarded-For', freshClient()], ['Content-Type', type]], body)
          statuses.push(r.status)
        }
      }
      assert.deepEqual(statuses, Array(10).fill(400))
    } finally {
      await server.close()
    }
  })

  test(`${name}: garbage and huge headers get an answer`, async () => {
    const server = await start()
    try {
      const r = await raw(server.port, 'GET', '/page', [['X-Forwarded-For', `garbage, ${freshClient()}`], ['x-big', 'a'.repeat(6000)]])
      assert.ok([200, 429, 431].includes(r.status), r.text)
      const m = await raw(server.port, 'M-SEARCH', '/page', [['X-Forwarded-For', freshClient()]])
      assert.notEqual(m.status, 500, m.text)
    } finally {
      await server.close()
    }
  })
}

// Express's req.ip is read without proxy-addr when the peer is not a trusted
// proxy (express.js requestIp): X-Forwarded-For from an untrusted peer must
// still be ignored, with trust proxy off (the default) or naming other hosts.
for (const trust of [undefined, '10.0.0.0/8']) {
  test(`express, trust proxy ${trust ?? 'off'}: a rotating X-Forwarded-For from an untrusted peer is ignored`, async () => {
    const expressApp = require('express')
    const { floodgate } = require('../express.js')
    const app = expressApp()
    if (trust !== undefined) app.set('trust proxy', trust)
    app.use(floodgate(Engine.fromToml(POLICY)))
    app.post('/auth/login', (req, res) => res.json({ ip: req.ip }))
    const server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s))
    })
    try {
      const statuses = []
      for (let i = 0; i < 10; i++) {
        const r = await raw(server.address().port, 'POST', '/auth/login', [['X-Forwarded-For', freshClient()]])
        statuses.push(r.status)
        if (r.status === 200) assert.match(r.text, /"ip":"(::ffff:)?127\.0\.0\.1"/)
      }
      assert.equal(statuses.filter((s) => s === 200).length, 3, `${statuses}`)
    } finally {
      await new Promise((r) => server.close(r))
    }
  })
}

test('a dual-stack peer (::ffff:127.0.0.1) is a trusted IPv4 proxy', async () => {
  const Fastify = require('fastify')
  const app = Fastify({ trustProxy: '127.0.0.1' })
  await app.register(require('../fastify.js'), { engine: Engine.fromToml(POLICY) })
  app.post('/auth/login', async () => ({ ok: true }))
  for (const who of ['203.0.113.1', '203.0.113.2']) {
    const codes = []
    for (let i = 0; i < 4; i++) {
      const res = await app.inject({
        method: 'POST',
        url: '/auth/login',
        remoteAddress: '::ffff:127.0.0.1',
        headers: { 'x-forwarded-for': who },
      })
      codes.push(res.statusCode)
    }
    assert.deepEqual(codes, [200, 200, 200, 429], who)
  }
  await app.close()
})

test("Fastify with @fastify/multipart's fields on the body: key values are held per username, field objects refused", async () => {
  // attachFieldsToBody: 'keyValues' gives the body the fields' values (the
  // documented setup); `true` gives objects, which are no name.
  const login = (user) => `--XyZ\r\nContent-Disposition: form-data; name="username"\r\n\r\n${user}\r\n--XyZ--\r\n`
  for (const [attach, want] of [['keyValues', [200, 200, 200, 429, 429]], [true, [400, 400, 400, 400, 400]]]) {
    const Fastify = require('fastify')
    const app = Fastify({ trustProxy: '127.0.0.1' })
    await app.register(require('@fastify/multipart'), { attachFieldsToBody: attach })
    await app.register(require('../fastify.js'), { engine: Engine.fromToml(POLICY) })
    app.post('/auth/login', async (req) => ({ username: req.body?.username?.value ?? req.body?.username ?? null }))
    await app.listen({ port: 0, host: '127.0.0.1' })
    try {
      const statuses = []
      for (const user of ['mp-victim', 'MP-Victim', ' mp-victim', 'mp-victim', 'mp-VICTIM']) {
        const r = await raw(app.server.address().port, 'POST', '/auth/login',
          [['X-Forwarded-For', freshClient()], ['Content-Type', 'multipart/form-data; boundary=XyZ']], login(user))
        statuses.push(r.status)
      }
      assert.deepEqual(statuses, want, String(attach))
    } finally {
      await app.close()
    }
  }
})

test('onEvent keeps a bounded queue and counts what it drops', async () => {
  const engine = Engine.fromToml(POLICY)
  let seen = 0
  engine.onEvent(() => {
    seen++
  })
  // 30,000 denials while the JS thread is busy: the queue holds 10,000.
  for (let i = 0; i < 30_000; i++) {
    engine.checkRequest({ method: 'POST', path: '/auth/login', clientIp: '203.0.113.9', headers: {} })
  }
  await new Promise((r) => setTimeout(r, 200))
  assert.ok(engine.droppedEvents >= 19_000, `dropped ${engine.droppedEvents}`)
  assert.equal(seen + engine.droppedEvents, 29_997)
})

test('a client that resets its connection right after sending is still limited (Express and Fastify, an async step before the limiter)', async () => {
  // Once the socket is gone, Node no longer knows the peer's address
  // (req.ip is undefined): the engine skipped IP-keyed rules for such a
  // request, and the handler ran for every attempt. The step before the
  // limiter waits for the close, as a body parser or session lookup may.
  const policy = '[[rule]]\nname = "login"\nmatch = "POST /auth/login"\nkey = "ip"\nquotas = ["2/min"]\n'
  const attempts = 10
  const express = require('express')
  const { floodgate } = require('../express.js')
  const Fastify = require('fastify')
  const afterClose = (socket, go) => (socket.destroyed ? go() : socket.once('close', go))
  for (const framework of ['express', 'fastify']) {
    let handled = 0
    let decided = 0
    let port
    let close
    if (framework === 'express') {
      const app = express()
      app.use((req, res, next) => afterClose(req.socket, () => { next(); decided++ }))
      app.use(floodgate(Engine.fromToml(policy)))
      app.post('/auth/login', (req, res) => { handled++; res.json({ ok: true }) })
      const server = await new Promise((resolve) => {
        const s = app.listen(0, '127.0.0.1', () => resolve(s))
      })
      port = server.address().port
      close = () => new Promise((r) => server.close(r))
    } else {
      const app = Fastify()
      app.addHook('onRequest', (request, reply, done) => afterClose(request.raw.socket, () => { done(); decided++ }))
      await app.register(require('../fastify.js'), { engine: Engine.fromToml(policy) })
      app.post('/auth/login', async () => { handled++; return { ok: true } })
      await app.listen({ port: 0, host: '127.0.0.1' })
      port = app.server.address().port
      close = () => app.close()
    }
    try {
      for (let i = 0; i < attempts; i++) {
        await new Promise((resolve, reject) => {
          const c = net.connect(port, '127.0.0.1', () => {
            c.write('POST /auth/login HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n')
            // Reset once the server has read the request (it waits for the close).
            setImmediate(() => setTimeout(() => { c.resetAndDestroy(); resolve() }, 10))
          })
          c.on('error', reject)
        })
      }
      for (let i = 0; i < 200 && decided < attempts; i++) await new Promise((r) => setTimeout(r, 10))
      assert.equal(decided, attempts, `${framework}: every attempt reached the limiter`)
      await new Promise((r) => setTimeout(r, 20))
      assert.equal(handled, 2, `${framework}: ${handled} of ${attempts} attempts reached the handler`)
    } finally {
      await close()
    }
  }
})

// Behind nginx over a Unix socket, the server sees no peer address. The trust
// function README.md gives ("the proxy on the Unix socket": the first hop,
// when it has no address) names each client from what nginx appends to
// X-Forwarded-For, whatever a client writes to the left of it. (Fastify fails
// closed on a hop count such as `trustProxy: 1`; Express's `true` and
// Fastify's `true` would believe the client's own leftmost text.)
test('behind a proxy on a Unix socket, the documented trust function names each client (Express and Fastify)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'floodgate-uds-'))
  const unixProxy = (addr, i) => i === 0 && !addr
  try {
    for (const framework of ['express', 'fastify']) {
      for (const trust of [undefined, unixProxy]) {
        const path = join(dir, `${framework}-${trust ? 'trusted' : 'untrusted'}.sock`)
        let close
        if (framework === 'express') {
          const app = require('express')()
          if (trust) app.set('trust proxy', trust)
          app.use(require('../express.js').floodgate(Engine.fromToml(POLICY)))
          app.post('/auth/login', (req, res) => res.json({ handler: 'login' }))
          const server = await new Promise((resolve) => {
            const s = app.listen(path, () => resolve(s))
          })
          close = () => new Promise((r) => server.close(r))
        } else {
          const app = require('fastify')(trust ? { trustProxy: trust } : {})
          await app.register(require('../fastify.js'), { engine: Engine.fromToml(POLICY) })
          app.post('/auth/login', async () => ({ handler: 'login' }))
          await app.listen({ path })
          close = () => app.close()
        }
        try {
          const login = async (xff) => (await raw(path, 'POST', '/auth/login', [['X-Forwarded-For', xff]])).status
          // Four clients as nginx reports them, each with a spoofed hop of its own.
          const four = []
          for (let i = 1; i <= 4; i++) four.push(await login(`203.0.113.${i}, 198.51.100.${50 + i}`))
          if (!trust) {
            // No address: one client, `-`, limited together (never unlimited).
            assert.deepEqual(four, [200, 200, 200, 429], framework)
            continue
          }
          assert.deepEqual(four, [200, 200, 200, 200], framework)
          // One client rotating its own text: held to the login limit of 3.
          const one = []
          for (let i = 0; i < 5; i++) one.push(await login(`203.0.113.${i}, 198.51.100.60`))
          assert.deepEqual(one, [200, 200, 200, 429, 429], framework)
        } finally {
          await close()
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

// JWT attacks (tests/policies/jwt_attacks.toml, shared with the Python
// tests): GET /me is limited per verified subject (3/min) and per address for
// everyone else (2/min); only RS256 tokens by the issuer's key verify. Each
// forgery claims a subject of its own, so one keyed on its claim would get a
// fresh quota and reach the handler past the address's limit. The engine is
// asked on the sync path and on the async one (a Redis store's).

const KEYS = new URL('../../../core/tests/keys/', import.meta.url)
const ISSUER_KEY = readFileSync(new URL('rsa_private.pem', KEYS), 'utf8')
const PUBLIC_PEM = readFileSync(new URL('rsa_public.pem', KEYS))
const b64 = (data) => Buffer.from(data).toString('base64url')

/** A token put together by hand, as an attacker does: `sign` gets the signing input. */
function encode(header, claims, sign) {
  const input = `${b64(JSON.stringify(header))}.${b64(JSON.stringify(claims))}`
  return `${input}.${b64(sign(Buffer.from(input)))}`
}
const claims = (sub, over = {}) => ({ sub, iss: 'https://auth.example.com', aud: 'api', exp: Math.floor(Date.now() / 1000) + 600, ...over })
const rs256 = (key) => (input) => rsaSign('sha256', input, key)
const ps256 = (key) => (input) => rsaSign('sha256', input, { key, padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: 32 })
const hs256 = (secret) => (input) => createHmac('sha256', secret).update(input).digest()
const unsigned = () => Buffer.alloc(0)
/** A token signed by the issuer's key (valid unless `over` spoils a claim). */
const issued = (sub, over = {}) => encode({ alg: 'RS256', typ: 'JWT', kid: 'main' }, claims(sub, over), rs256(ISSUER_KEY))

/** Tokens an attacker can make without the issuer's key, the i-th claiming `sub(i)`; and issued ones whose claims refuse them. */
function forgeries(sub) {
  const own = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const ownJwk = own.publicKey.export({ format: 'jwk' })
  const [head, , signature] = issued('someone-else').split('.')
  const now = Math.floor(Date.now() / 1000)
  const makers = [
    (c) => encode({ alg: 'none', typ: 'JWT' }, c, unsigned),
    (c) => encode({ alg: 'None', typ: 'JWT' }, c, unsigned),
    (c) => encode({ alg: 'NONE', kid: 'main' }, c, unsigned),
    (c) => encode({ alg: 'none' }, c, unsigned) + signature,
    // Algorithm confusion: HMAC keyed with the public key's PEM, which anyone can download.
    (c) => encode({ alg: 'HS256', kid: 'main' }, c, hs256(PUBLIC_PEM)),
    (c) => encode({ alg: 'HS256' }, c, hs256(PUBLIC_PEM)),
    (c) => encode({ alg: 'HS256', kid: 'main' }, c, hs256('')),
    (c) => encode({ alg: 'HS256', kid: '../../../../../../dev/null' }, c, hs256('')),
    (c) => encode({ alg: 'RS256', kid: 'main' }, c, rs256(own.privateKey)),
    (c) => encode({ alg: 'RS256', kid: 'main', jwk: ownJwk }, c, rs256(own.privateKey)),
    (c) => encode({ alg: 'RS256', kid: 'evil', jku: 'http://127.0.0.1:9/jwks.json' }, c, rs256(own.privateKey)),
    (c) => encode({ alg: 'PS256', kid: 'main' }, c, ps256(ISSUER_KEY)), // the issuer's key, not on the allow-list
    (c) => encode({ alg: 'RS256', kid: 'main' }, c, unsigned),
    (c) => encode({ alg: 'RS256', kid: 'main' }, c, unsigned) + signature,
    (c) => `${head}.${b64(JSON.stringify(c))}.${signature}`,
    (c) => issued(c.sub, { exp: now - 3600 }),
    (c) => issued(c.sub, { nbf: now + 3600 }),
    (c) => issued(c.sub, { exp: String(now + 600) }),
    (c) => issued(c.sub, { iss: 'https://evil.example' }),
    (c) => issued(c.sub, { aud: 'another-api' }),
    (c) => `eyJhbGciOiJSUzI1NiJ9.!!!.${c.sub}`,
    (c) => encode({ alg: 'RS256', kid: 'main' }, { ...c, pad: 'x'.repeat(12000) }, unsigned) + signature,
  ]
  return makers.map((make, i) => make(claims(sub(i))))
}

/** A server of `kind` on the JWT policy (its key file beside it): `{ port, close }`. */
async function jwtServer(kind, async) {
  const dir = mkdtempSync(join(tmpdir(), 'fg-jwt-'))
  writeFileSync(join(dir, 'policy.toml'), readFileSync(new URL('../../../tests/policies/jwt_attacks.toml', import.meta.url)))
  copyFileSync(new URL('rsa_public.pem', KEYS), join(dir, 'rsa_public.pem'))
  const engine = Engine.fromFile(join(dir, 'policy.toml'))
  rmSync(dir, { recursive: true })
  if (kind === 'express') {
    const app = require('express')()
    app.set('trust proxy', 'loopback')
    app.use(require('../express.js').floodgate(engine, { async }))
    app.get(['/me', '/export'], (req, res) => res.json({ handler: 'me' }))
    const server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s))
    })
    return { port: server.address().port, close: () => new Promise((r) => server.close(r)) }
  }
  const app = require('fastify')({ trustProxy: '127.0.0.1' })
  await app.register(require('../fastify.js'), { engine, async })
  app.get('/me', async () => ({ handler: 'me' }))
  app.get('/export', async () => ({ handler: 'me' }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { port: app.server.address().port, close: () => app.close() }
}

const get = (port, path, xff, authorization) =>
  raw(port, 'GET', path, [['X-Forwarded-For', xff], ...(authorization ? [['Authorization', authorization]] : [])])
const me = async (port, xff, authorization) => (await get(port, '/me', xff, authorization)).status

for (const kind of ['express', 'fastify']) {
  for (const async of [false, true]) {
    const name = `${kind}${async ? ' (async)' : ''}`

    test(`${name}: forged tokens fall to the address's limit`, async () => {
      const server = await jwtServer(kind, async)
      try {
        const xff = freshClient()
        const statuses = []
        for (const token of forgeries((i) => `mallory-${i}`)) statuses.push(await me(server.port, xff, `Bearer ${token}`))
        // Anonymous, all of them: the address's 2, then 429 (431 if the server refuses the huge one).
        assert.deepEqual(statuses.slice(0, 2), [200, 200], `${statuses}`)
        assert.ok(statuses.slice(2).every((s) => s === 429 || s === 431), `${statuses}`)
      } finally {
        await server.close()
      }
    })

    test(`${name}: a forged or tampered token never spends its victim's quota`, async () => {
      const server = await jwtServer(kind, async)
      try {
        const victim = issued('alice')
        const home = freshClient()
        const statuses = [await me(server.port, home, `Bearer ${victim}`)] // verified once, and cached
        const [head, body, signature] = victim.split('.')
        const middle = signature.length >> 1
        const flipped = signature.slice(0, middle) + (signature[middle] === 'A' ? 'B' : 'A') + signature.slice(middle + 1)
        const tampered = [
          `${head}.${body}.${flipped}`,
          `${head}.${body}.`,
          `${head}.${body}`,
          `${b64('{"alg":"HS256","kid":"main"}')}.${body}.${signature}`,
          `${head}.${b64(body)}.${signature}`,
        ]
        // Each from an address of its own: the address's limit lets them
        // through, and none may count on alice's 3.
        for (const token of [...tampered, ...forgeries(() => 'alice')]) await me(server.port, freshClient(), `Bearer ${token}`)
        for (let i = 0; i < 3; i++) statuses.push(await me(server.port, home, `Bearer ${victim}`))
        assert.deepEqual(statuses, [200, 200, 200, 429])
      } finally {
        await server.close()
      }
    })

    // An attacker with an account of its own mints fresh tokens. Were a token
    // past its network's verification budget (5 failed checks a minute) taken
    // for no token, /export (limited per subject, and the app serving only
    // signed-in users) would serve the attacker's account without limit.
    test(`${name}: spending its own verification budget never frees a subject of its limit`, async () => {
      const server = await jwtServer(kind, async)
      try {
        const xff = freshClient()
        for (const token of forgeries((i) => `mallory-${i}`).slice(0, 5)) await get(server.port, '/export', xff, `Bearer ${token}`)
        const answers = []
        for (let i = 0; i < 4; i++) answers.push(await get(server.port, '/export', xff, `Bearer ${issued('mallory', { jti: `a${i}` })}`))
        assert.deepEqual(
          answers.map((a) => a.status),
          [429, 429, 429, 429],
        )
        const wait = Number(answers[0].headers.get('retry-after'))
        assert.ok(wait >= 1 && wait <= 12, `${wait}`)
        assert.deepEqual(JSON.parse(answers[0].body), { error: 'rate_limited', retry_after: wait, rule: null })
        // From an address with budget left, the same subject's fresh tokens
        // are checked, and held to the subject's 2.
        const other = freshClient()
        const statuses = []
        for (let i = 0; i < 3; i++) statuses.push((await get(server.port, '/export', other, `Bearer ${issued('mallory', { jti: `b${i}` })}`)).status)
        assert.deepEqual(statuses, [200, 200, 429])
      } finally {
        await server.close()
      }
    })

    test(`${name}: a verified subject has one limit whatever its address and spelling`, async () => {
      const server = await jwtServer(kind, async)
      try {
        const token = issued('carol')
        const statuses = []
        for (const spelling of [`Bearer ${token}`, `bearer ${token}`, `BEARER   ${token} `, `Bearer ${token}`]) {
          statuses.push(await me(server.port, freshClient(), spelling))
        }
        assert.deepEqual(statuses, [200, 200, 200, 429])
        assert.equal(await me(server.port, freshClient(), `Bearer ${issued('dave')}`), 200)
      } finally {
        await server.close()
      }
    })
  }
}
