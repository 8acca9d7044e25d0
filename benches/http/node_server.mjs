// node node_server.mjs <express|fastify> <none|floor|check|floodgate|hijack|peer> <port>
// (hijack: Fastify's plugin with { hijackDenials: true })
// The same handler ({"ok":true}) behind no limiter, Floodgate's middleware or
// the peer middleware, each at 1,000,000 requests per minute per IP; or
// behind the floor: a middleware that only sets two constant rate-limit
// headers (what any limiter setting them pays, before deciding anything); or
// `check`: the floor plus Floodgate's check (the middleware's raw path) whose
// verdict is not used (what deciding costs, apart from the headers).
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)
const [framework, mode, port] = process.argv.slice(2)
const rawChecker = (engine) => require(join(here, '../../bindings/node/floodgate.js')).rawChecker(engine)
const floodgateEngine = () => {
  const { Engine } = require(join(here, '../../bindings/node/floodgate.js'))
  return Engine.fromFile(process.env.FG_BENCH_POLICY || join(here, 'policy.toml'))
}
// The peers' limit per minute: generous, or 1 when the bench floods (--tight).
const peerLimit = Number(process.env.FG_BENCH_PEER_MAX || 1_000_000)
// The floor's headers: what Floodgate sends for policy.toml (draft-10).
const FLOOR_POLICY = '"everything";q=1000000;w=60'
const FLOOR_RATE = '"everything";r=999999;t=60;pk=:AAAAAAAAAAA=:'

if (framework === 'express') {
  const express = require('express')
  const app = express()
  if (mode === 'floodgate') {
    const { floodgate } = require(join(here, '../../bindings/node/express.js'))
    app.use(floodgate(floodgateEngine()))
  } else if (mode === 'floor' || mode === 'check') {
    const raw = mode === 'check' ? rawChecker(floodgateEngine()) : undefined
    app.use((req, res, next) => {
      if (raw !== undefined) raw.check(req.method, req.originalUrl || req.url, req.socket.remoteAddress, req.headers)
      res.setHeader('RateLimit-Policy', FLOOR_POLICY)
      res.setHeader('RateLimit', FLOOR_RATE)
      next()
    })
  } else if (mode === 'peer') {
    const { rateLimit } = require('express-rate-limit')
    app.use(rateLimit({ windowMs: 60_000, limit: peerLimit, standardHeaders: 'draft-8', legacyHeaders: false }))
  }
  app.get('/items', (req, res) => res.json({ ok: true }))
  app.listen(Number(port), '127.0.0.1')
} else if (framework === 'fastify') {
  const fastify = require('fastify')({ logger: false })
  if (mode === 'floodgate' || mode === 'hijack') {
    const hijackDenials = mode === 'hijack'
    await fastify.register(require(join(here, '../../bindings/node/fastify.js')), { engine: floodgateEngine(), hijackDenials })
  } else if (mode === 'floor' || mode === 'check') {
    const raw = mode === 'check' ? rawChecker(floodgateEngine()) : undefined
    fastify.addHook('onRequest', (request, reply, next) => {
      if (raw !== undefined) raw.check(request.method, request.url, request.ip, request.headers)
      reply.header('ratelimit-policy', FLOOR_POLICY)
      reply.header('ratelimit', FLOOR_RATE)
      next()
    })
  } else if (mode === 'peer') {
    await fastify.register(require('@fastify/rate-limit'), { max: peerLimit, timeWindow: 60_000 })
  }
  fastify.get('/items', async () => ({ ok: true }))
  await fastify.listen({ port: Number(port), host: '127.0.0.1' })
} else {
  throw new Error(`unknown framework ${framework}`)
}
