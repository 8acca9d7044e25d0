// Several worker processes, as Node servers are deployed: an Express app under
// `cluster` with 4 workers (the primary hands connections round-robin), hit
// over HTTP by one client. On the shared-memory store the number of 200s
// equals the quota exactly; on the in-process store each worker counts alone.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'

const require = createRequire(import.meta.url)
const { Limiter } = require('../floodgate.js')

const LIMIT = 150
const REQUESTS = 1200
const here = path.dirname(new URL(import.meta.url).pathname)
const shmDir = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir()
const tablePath = (name) => path.join(shmDir, `fg-node-${name}-${process.pid}-${Date.now()}`)

function policy(store, table) {
  const head = store === 'shm' ? `[store]\nkind = "shared_memory"\npath = "${table}"\nmax_keys = 65536\n` : ''
  return `${head}
[[rule]]
name = "api"
match = "/api/**"
key = "ip"
quotas = ["${LIMIT}/hour"]
`
}

function get(port) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/api/items', agent: false }, (res) => {
      let body = ''
      res.on('data', (c) => (body += c))
      res.on('end', () => resolve([res.statusCode, res.statusCode === 200 ? JSON.parse(body).pid : 0]))
    })
    req.on('error', reject)
  })
}

async function run(store) {
  const table = tablePath(store)
  const file = path.join(os.tmpdir(), `fg-cluster-${process.pid}-${store}.toml`)
  fs.writeFileSync(file, policy(store, table))
  const child = spawn(process.execPath, [path.join(here, 'cluster_app.cjs'), file], { stdio: ['ignore', 'pipe', 'inherit'] })
  try {
    const port = await new Promise((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (c) => {
        out += c
        const m = out.match(/ready (\d+)/)
        if (m) resolve(Number(m[1]))
      })
      child.on('exit', (code) => reject(new Error(`cluster exited with ${code}`)))
    })
    const results = []
    let next = 0
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < REQUESTS) {
          next++
          results.push(await get(port))
        }
      }),
    )
    return results
  } finally {
    child.kill('SIGTERM')
    await new Promise((r) => (child.exitCode != null ? r() : child.on('exit', r)))
    fs.rmSync(file, { force: true })
    fs.rmSync(table, { force: true })
  }
}

test('cluster of 4 Express workers on shared memory admits exactly the quota', async () => {
  const results = await run('shm')
  const ok = results.filter(([s]) => s === 200).map(([, pid]) => pid)
  assert.deepEqual(new Set(results.map(([s]) => s)), new Set([200, 429]))
  assert.ok(new Set(ok).size >= 2, `requests reached ${new Set(ok).size} worker(s)`)
  assert.equal(ok.length, LIMIT)
})

test('the same cluster on the in-process store drifts: each worker counts alone', async () => {
  const results = await run('memory')
  const ok = results.filter(([s]) => s === 200).map(([, pid]) => pid)
  assert.ok(new Set(ok).size >= 2)
  assert.ok(ok.length > LIMIT && ok.length <= 4 * LIMIT, `${ok.length} admitted`)
})

test('Limiter({ sharedMemory }) counts once across child processes', async () => {
  const table = tablePath('limiter')
  try {
    const code = `
      const { Limiter } = require(${JSON.stringify(path.join(here, '..', 'floodgate.js'))})
      const l = new Limiter({ quota: '100/hour', sharedMemory: process.argv[1], maxKeys: 1000 })
      let n = 0
      for (let i = 0; i < 80; i++) if (l.check('hot').allowed) n++
      console.log(n)`
    // The first creates the table; the others open it.
    const counts = await Promise.all(
      Array.from({ length: 4 }, () =>
        new Promise((resolve, reject) => {
          const c = spawn(process.execPath, ['-e', code, table], { stdio: ['ignore', 'pipe', 'inherit'] })
          let out = ''
          c.stdout.on('data', (d) => (out += d))
          c.on('exit', (status) => (status === 0 ? resolve(Number(out.trim())) : reject(new Error(`exit ${status}`))))
        }),
      ),
    )
    assert.equal(counts.reduce((a, b) => a + b, 0), 100)
    const l = new Limiter({ quota: '100/hour', sharedMemory: table, maxKeys: 1000 })
    assert.equal(l.sharedMemory, table)
    assert.equal(l.check('hot').allowed, false)
    assert.throws(() => new Limiter({ quota: '99/hour', sharedMemory: table, maxKeys: 1000 }), {
      code: 'ERR_FG_STORE_MISMATCH',
      path: table,
    })
    assert.throws(() => new Limiter({ quota: '10/s', algorithm: 'sliding_log', sharedMemory: `${table}-log` }), {
      code: 'ERR_FG_INVALID_OPTION',
    })
    assert.equal(new Limiter({ quota: '1/s' }).sharedMemory, null)
  } finally {
    fs.rmSync(table, { force: true })
  }
})
