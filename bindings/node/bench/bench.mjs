// Floodgate beside rate-limiter-flexible (RateLimiterMemory / RateLimiterRedis) in
// one process, on the same keys. `npm run build:release` first, then
//   node bench/bench.mjs [redis://127.0.0.1:6379/]
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { Limiter, RedisLimiter, Engine } = require('../floodgate.js')
const { RateLimiterMemory, RateLimiterRedis } = require('rate-limiter-flexible')

const N = 300_000
const keys = (n) => Array.from({ length: n }, (_, i) => `client:${String(i).padStart(12, '0')}`)

function best(fn, n, repeat = 5) {
  let b = Infinity
  for (let r = 0; r < repeat; r++) {
    const t = process.hrtime.bigint()
    fn(n)
    b = Math.min(b, Number(process.hrtime.bigint() - t) / n)
  }
  return b
}

async function bestAsync(fn, n, repeat = 3) {
  let b = Infinity
  for (let r = 0; r < repeat; r++) {
    const t = process.hrtime.bigint()
    await fn(n)
    b = Math.min(b, Number(process.hrtime.bigint() - t) / n)
  }
  return b
}

const rows = []
for (const n of [1, 10_000]) {
  const ks = keys(n)
  const fg = new Limiter({ quota: '1000000000/second' })
  const rlf = new RateLimiterMemory({ points: 1_000_000_000, duration: 1 })
  const base = best((m) => { let x = 0; for (let i = 0; i < m; i++) x += ks[i % n].length; return x }, N)
  const tFg = best((m) => { for (let i = 0; i < m; i++) fg.check(ks[i % n]) }, N) - base
  const tAwait = await bestAsync(async (m) => { for (let i = 0; i < m; i++) await rlf.consume(ks[i % n]) }, N / 5)
  const tBatch = await bestAsync(async (m) => {
    for (let i = 0; i < m; i += 100) {
      const batch = []
      for (let j = 0; j < 100; j++) batch.push(rlf.consume(ks[(i + j) % n]))
      await Promise.all(batch)
    }
  }, N / 5)
  rows.push([`${n} keys`, 'floodgate check (sync)', tFg, tAwait / tFg])
  rows.push([`${n} keys`, 'RLF consume, awaited', tAwait, 1])
  rows.push([`${n} keys`, 'RLF consume, Promise.all x100', tBatch, tAwait / tBatch])
}
console.log('workload     library                          ns/check   x RLF awaited')
for (const [w, l, ns, x] of rows) console.log(`${w.padEnd(12)} ${l.padEnd(32)} ${ns.toFixed(0).padStart(8)}   ${x.toFixed(1)}x`)

// Express requests/s with and without the middleware (real HTTP on loopback).
const express = require('express')
const { floodgate } = require('../express.js')
async function rps(withMw) {
  const app = express()
  if (withMw) app.use(floodgate(Engine.fromToml('[[rule]]\nname = "api"\nmatch = "/api/**"\nquotas = ["1000000000/s"]\nkey = "ip"\n')))
  app.get('/api/items', (req, res) => res.json({ items: [] }))
  const server = await new Promise((r) => { const s = app.listen(0, '127.0.0.1', () => r(s)) })
  const url = `http://127.0.0.1:${server.address().port}/api/items`
  const total = 4000
  const t = process.hrtime.bigint()
  for (let i = 0; i < total; i += 50) await Promise.all(Array.from({ length: 50 }, () => fetch(url).then((r) => r.text())))
  const secs = Number(process.hrtime.bigint() - t) / 1e9
  server.close()
  return total / secs
}
const bare = Math.max(await rps(false), await rps(false))
const withMw = Math.max(await rps(true), await rps(true))
console.log(`\nExpress, 50 in flight: ${bare.toFixed(0)} req/s without, ${withMw.toFixed(0)} with the middleware (${(withMw / bare).toFixed(2)}x)`)

const url = process.argv[2]
if (url) {
  const Redis = require('ioredis')
  const client = new Redis(url, { enableOfflineQueue: true })
  const fgr = new RedisLimiter({ url, quota: '1000000000/second', timeoutMs: 1000, prefix: 'nodebench' })
  const rlr = new RateLimiterRedis({ storeClient: client, points: 1_000_000_000, duration: 1, keyPrefix: 'rlfbench' })
  const ks = keys(1000)
  const M = 4000
  const seqFg = await bestAsync(async (m) => { for (let i = 0; i < m; i++) await fgr.checkAsync(ks[i % 1000]) }, M, 2)
  const seqRl = await bestAsync(async (m) => { for (let i = 0; i < m; i++) await rlr.consume(ks[i % 1000]) }, M, 2)
  const par = async (f, m) => { for (let i = 0; i < m; i += 64) await Promise.all(Array.from({ length: 64 }, (_, j) => f(ks[(i + j) % 1000]))) }
  const parFg = await bestAsync((m) => par((k) => fgr.checkAsync(k), m), M * 4, 2)
  const parRl = await bestAsync((m) => par((k) => rlr.consume(k), m), M * 4, 2)
  console.log(`\nRedis checks/s    floodgate   RLF     ratio`)
  console.log(`sequential        ${(1e9 / seqFg).toFixed(0).padStart(9)} ${(1e9 / seqRl).toFixed(0).padStart(7)}   ${(seqRl / seqFg).toFixed(2)}x`)
  console.log(`64 in flight      ${(1e9 / parFg).toFixed(0).padStart(9)} ${(1e9 / parRl).toFixed(0).padStart(7)}   ${(parRl / parFg).toFixed(2)}x`)
  client.disconnect()
}
