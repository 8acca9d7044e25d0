// An Express app under Node's cluster module with 4 workers, for
// cluster.spec.mjs: `node cluster_app.cjs POLICY_FILE`. The primary prints
// `ready PORT` once every worker listens; each worker answers /api/items with
// its pid, behind the Floodgate middleware on the given policy.
const cluster = require('node:cluster')
const fs = require('node:fs')
const http = require('node:http')

const WORKERS = 4

if (cluster.isPrimary) {
  // A free port, chosen here so every worker listens on the same one.
  const probe = http.createServer().listen(0, '127.0.0.1', () => {
    const port = probe.address().port
    probe.close(() => {
      let listening = 0
      for (let i = 0; i < WORKERS; i++) cluster.fork({ FG_PORT: String(port) })
      cluster.on('listening', () => {
        if (++listening === WORKERS) console.log(`ready ${port}`)
      })
    })
  })
  process.on('SIGTERM', () => {
    for (const w of Object.values(cluster.workers)) w.kill()
    process.exit(0)
  })
} else {
  const express = require('express')
  const { Engine } = require('../floodgate.js')
  const { floodgate } = require('../express.js')
  const app = express()
  app.use(floodgate(Engine.fromToml(fs.readFileSync(process.argv[2], 'utf8'))))
  app.get('/api/items', (req, res) => res.json({ pid: process.pid }))
  app.listen(Number(process.env.FG_PORT), '127.0.0.1')
}
