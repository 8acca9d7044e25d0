'use strict'
// Fastify plugin:
//   const fastify = require('fastify')({ trustProxy: '10.0.0.0/8' })   // request.ip honours it
//   fastify.register(require('floodgate/fastify'), { engine: Engine.fromFile('policy.toml') })
// Applies to every route (the plugin is not encapsulated). Checks run async on a
// Redis store (`engine.mayBlock`; { async } overrides). The engine sees
// `request.url` (normalised as routers do, see
// express.js), Node's header values and `request.ip` (X-Forwarded-For from the
// proxies `trustProxy` names, nothing else). A request the engine cannot use is
// answered 400.
const { clientIp, headerPicker, isBadRequest, BAD_REQUEST } = require('./express.js')

function floodgatePlugin(fastify, opts, done) {
  const engine = opts.engine
  if (!engine) return done(new Error('floodgate/fastify: options.engine is required'))
  const async = opts.async ?? engine.mayBlock
  const pick = headerPicker(engine)
  fastify.addHook('onRequest', async (request, reply) => {
    const req = {
      method: request.method,
      path: request.url,
      clientIp: clientIp(request.ip),
      headers: pick(request.headers),
    }
    let v
    try {
      v = async ? await engine.checkRequestAsync(req) : engine.checkRequest(req)
    } catch (err) {
      if (!isBadRequest(err)) throw err
      reply.code(400).type('application/json').send(BAD_REQUEST)
      return reply
    }
    reply.headers(v.headers)
    if (!v.allowed) {
      reply.code(v.status).type('application/json').send(v.body)
      return reply
    }
  })
  done()
}
floodgatePlugin[Symbol.for('skip-override')] = true
floodgatePlugin[Symbol.for('fastify.display-name')] = 'floodgate'

module.exports = floodgatePlugin
module.exports.default = floodgatePlugin
module.exports.floodgate = floodgatePlugin
