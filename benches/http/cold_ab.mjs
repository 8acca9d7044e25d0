// node benches/http/cold_ab.mjs A.node [B.node] [--n N] [--policy FILE]
//
// What one request's check costs with its code cold, as between real
// requests, for two builds of the Node addon loaded into one process: each
// check runs right after a request handled by a Fastify app (fastify.inject:
// a request's worth of other code, as a server runs between two checks), and
// is timed alone (process.hrtime).
// The two builds take turns, so a noisy host (other VMs, CPU quotas) slows
// both alike: their ratio is readable where wrk's throughput is not
// (benches/README.md). Each check is also timed a second time at once
// (warm: the hot-loop figure). Also timed, for scale: an empty JS call and
// the addon's smallest crossing (a keyed `Limiter` check: one key string
// and a cost, one store check).
//
// Builds to compare: the release addon as built (`npm run build:release` in
// bindings/node, then copy floodgate.linux-x64-gnu.node aside), before and
// after a change. With one build, it is compared with itself (an A/A run:
// the spread that is noise).
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)
const args = process.argv.slice(2)
const opt = (name, dflt) => {
  const i = args.indexOf(name)
  if (i < 0) return dflt
  const [, v] = args.splice(i, 2)
  return v
}
const n = Number(opt('--n', 4000))
const policy = opt('--policy', join(here, 'policy.toml'))
if (args.length < 1 || args.length > 2) {
  console.error('usage: node cold_ab.mjs A.node [B.node] [--n N] [--policy FILE]')
  process.exit(2)
}
// Two copies of one file would be one library to the loader: B is copied.
const dir = mkdtempSync(join(tmpdir(), 'fg-cold-'))
const paths = [args[0], args[1] ?? args[0]].map((p, i) => {
  const to = join(dir, `${'ab'[i]}.node`)
  copyFileSync(p, to)
  return to
})

function load(path) {
  const m = { exports: {} }
  process.dlopen(m, path)
  const engine = m.exports.Engine.fromFile(policy)
  // As the middleware calls it: one argument per header the policy reads
  // (none of them sent here).
  const headers = engine.requestHeaders.length
  const [, , check] = engine.handle()
  const [, , keyed] = new m.exports.NativeLimiter({ quota: '1000000/minute' }).handle()
  return {
    check:
      headers === 0
        ? () => check('GET', '/api/items', '127.0.0.1')
        : headers === 1
          ? () => check('GET', '/api/items', '127.0.0.1', undefined)
          : () => check('GET', '/api/items', '127.0.0.1', ...new Array(headers)),
    keyed: () => keyed('127.0.0.1', 1),
  }
}
const [A, B] = paths.map(load)
rmSync(dir, { recursive: true, force: true }) // loaded: the copies can go
const noop = (a, b, c) => a
const cases = {
  'empty JS call': [() => noop('GET', '/api/items', '127.0.0.1')],
  'keyed check (the smallest crossing)': [A.keyed, B.keyed],
  'request check': [A.check, B.check],
}

const fastify = require('fastify')()
fastify.get('/api/items', async () => ({ ok: true }))
await fastify.ready()
const inject = { method: 'GET', url: '/api/items' }

const times = {}
for (const [name, fns] of Object.entries(cases)) times[name] = fns.map(() => ({ cold: [], warm: [] }))
const timed = (f, into) => {
  const t0 = process.hrtime.bigint()
  f()
  into.push(Number(process.hrtime.bigint() - t0))
}
for (let i = 0; i < n; i++) {
  for (const [name, fns] of Object.entries(cases)) {
    for (let k = 0; k < fns.length; k++) {
      const j = (k + i) % fns.length // A first, then B first
      await fastify.inject(inject)
      timed(fns[j], times[name][j].cold)
      timed(fns[j], times[name][j].warm)
    }
  }
}
// The first quarter is the warm-up (JIT, first inserts): left out.
const mid = (a) => {
  const s = a.slice().sort((x, y) => x - y)
  return s[s.length >> 1]
}
const median = (a) => mid(a.slice(a.length >> 2))
// The ratio B / A of the cold medians in each fifth of the run: its spread.
const fifths = (a, b) => {
  const out = []
  const from = a.length >> 2
  const step = Math.floor((a.length - from) / 5)
  for (let f = 0; f < 5; f++) {
    const s = from + f * step
    out.push(mid(b.slice(s, s + step)) / mid(a.slice(s, s + step)))
  }
  return out
}
console.log(`${n} rounds; A ${args[0]}, B ${args[1] ?? '(A again)'}; medians in ns`)
for (const [name, t] of Object.entries(times)) {
  const cell = (x) => `cold ${median(x.cold)}, warm ${median(x.warm)}`
  if (t.length === 1) {
    console.log(`${name}: ${cell(t[0])}`)
    continue
  }
  const r = (median(t[1].cold) / median(t[0].cold)).toFixed(3)
  const spread = fifths(t[0].cold, t[1].cold).map((x) => x.toFixed(2)).join(' ')
  console.log(`${name}: A ${cell(t[0])} | B ${cell(t[1])} | cold B/A ${r} (by fifths: ${spread})`)
}
