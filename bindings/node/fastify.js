'use strict'
// Fastify plugin:
//   const fastify = require('fastify')({ trustProxy: '10.0.0.0/8' })   // request.ip honours it
//   fastify.register(require('floodgate/fastify'), { engine: Engine.fromFile('policy.toml') })
// Applies to every route (the plugin is not encapsulated). Checks run async on a
// Redis store (`engine.mayBlock`; { async } overrides). The engine sees
// `request.url` (normalised as routers do, see
// express.js), Node's header values and `request.ip` (X-Forwarded-For from the
// proxies `trustProxy` names, nothing else). A request the engine cannot use is
// answered 400. In its first 1,000 requests it warns once (console.warn) of
// X-Forwarded-For from an untrusted private, loopback or Unix-socket peer
// (ERR_FG_UNTRUSTED_PROXY); { validate: false } turns that off.
// { hijackDenials: true } writes each refusal (429, 403, 401...) straight to
// the response after reply.hijack(), with the headers already set on the reply
// (@fastify/cors's, @fastify/helmet's): a flood's answers skip Fastify's send
// path, but the app's onSend hooks do not run for them (its onResponse hooks
// and the request log still do).
const { clientIp, hasBody, headerPicker, isBadRequest, BAD_REQUEST, TOO_LARGE, COST_HEADER, JSON_TYPE, parseCost } = require('./express.js')
const {
  rawChecker,
  plain,
  denied,
  denial,
  setReplyHeaders,
  proxyWarnings,
  needsSettle,
  settleQuietly,
  withBodyText,
  MAX_BODY_BYTES,
} = require('./floodgate.js')

const NO_BODY =
  'floodgate: ERR_FG_NO_BODY: a rule keys on a field of the request body (key = "body:..."), but no content ' +
  "type parser gave Fastify this request's body (request.body is undefined): such a request is refused (400), " +
  'since the handler could read a name the rule never counted. For multipart logins, register ' +
  "@fastify/multipart with attachFieldsToBody: 'keyValues'."

/** The verdict a request must settle (on the request object). */
const PENDING = Symbol('floodgate.pending')
/** A request a rule keyed by a body field meets: checked once its body is parsed. */
const BY_BODY = Symbol('floodgate.byBody')

// Every answer the plugin sends has type JSON_TYPE given whole: what Fastify
// sends for `application/json` anyway, but given whole, `reply.send` skips
// re-reading the type and appending the charset (0.5 µs of a 429's ~19 µs of
// server CPU, benches/README.md).

function floodgatePlugin(fastify, opts, done) {
  const engine = opts.engine
  if (!engine) return done(new Error('floodgate/fastify: options.engine is required'))
  const async = opts.async ?? engine.mayBlock
  const pick = headerPicker(engine)
  // Fastify keeps its trustProxy to itself: a proxy is untrusted when a
  // request from one carried X-Forwarded-For and request.ip is still the peer.
  // (A trustProxy of true cannot be seen from here.)
  let checking = opts.validate !== false
  const check = proxyWarnings()
  const validate = (request) => {
    const socket = request.socket
    checking = check(() => false, socket, request.headers['x-forwarded-for'], () => request.ip !== socket?.remoteAddress)
  }
  const badRequest = (reply) => reply.code(400).type(JSON_TYPE).send(BAD_REQUEST)
  // A refusal, its headers set on the reply. Hijacked, it is what Fastify's
  // send path would write for it (the reply's headers, the type, the length)
  // without the app's onSend hooks; Fastify's own path costs about the same
  // (benches/README.md, "Refusals written to the raw response").
  const refuse =
    opts.hijackDenials === true
      ? (reply, status, body) => {
          reply.hijack()
          const headers = reply.getHeaders()
          headers['content-type'] = JSON_TYPE
          headers['content-length'] = Buffer.byteLength(body)
          reply.raw.writeHead(status, headers)
          reply.raw.end(body)
          return reply
        }
      : (reply, status, body) => reply.code(status).type(JSON_TYPE).send(body)
  const answer = (reply, v) => {
    const h = v.headers
    for (const name in h) reply.header(name, h[name])
    if (v.allowed) return false
    refuse(reply, v.status, v.body)
    return true
  }
  // Rules keyed by a body field (a login's username): such a request is
  // checked in preValidation, once Fastify has parsed its body (it never
  // reaches a handler unparsed: a type with no parser is answered 415), with
  // what the parser made of it, sent as JSON. A policy with such a rule reads
  // the content type (and a reload cannot add a header to read).
  const bodies = engine.requestHeaders.includes('content-type')
  const byBody = (request) => bodies && engine.readsBody(request.method, request.url)
  let warnedNoBody = false
  if (bodies) {
    fastify.addHook('preValidation', (request, reply, next) => {
      if (request[BY_BODY] !== true) return next()
      // A body no parser read (@fastify/multipart's default mode, whose
      // handler reads the parts itself): the handler could read a name the
      // rule never counted. Refused, warned of once.
      if (request.body === undefined && hasBody(request.raw)) {
        if (!warnedNoBody) {
          warnedNoBody = true
          console.warn(NO_BODY)
        }
        return badRequest(reply)
      }
      let req
      try {
        req = withBodyText({
          method: request.method,
          path: request.url,
          clientIp: clientIp(request.ip),
          headers: pick(request.headers),
          body: request.body,
        }, true)
      } catch (err) {
        return isBadRequest(err) ? badRequest(reply) : next(err)
      }
      if (req.body !== undefined && Buffer.byteLength(req.body) > MAX_BODY_BYTES) {
        return reply.code(413).type(JSON_TYPE).send(TOO_LARGE)
      }
      const decided = (v) => {
        if (v.allowed && needsSettle(v)) request[PENDING] = { v, cost: undefined }
        if (!answer(reply, v)) next()
      }
      const failed = (err) => (isBadRequest(err) ? badRequest(reply) : next(err))
      if (async) {
        let pending
        try {
          pending = engine.checkRequestAsync(req)
        } catch (err) {
          return failed(err)
        }
        // Not returned: a callback hook that returned a promise would go on twice.
        pending.then(decided, failed)
        return
      }
      let v
      try {
        v = engine.checkRequest(req)
      } catch (err) {
        return failed(err)
      }
      decided(v)
    })
  }
  if (async) {
    fastify.addHook('onRequest', async (request, reply) => {
      if (checking) validate(request)
      if (byBody(request)) {
        request[BY_BODY] = true
        return
      }
      const req = {
        method: request.method,
        path: request.url,
        clientIp: clientIp(request.ip),
        headers: pick(request.headers),
      }
      let v
      try {
        v = await engine.checkRequestAsync(req)
      } catch (err) {
        if (!isBadRequest(err)) throw err
        return badRequest(reply)
      }
      if (v.allowed && needsSettle(v)) request[PENDING] = { v, cost: undefined }
      if (answer(reply, v)) return reply
    })
  } else {
    // In memory: a callback hook (an async one costs a promise per request) on
    // the raw path (floodgate.js), reading the policy's headers straight from
    // request.headers. An allowed request with nothing to settle needs only its
    // headers, set from the verdict's text without building a Verdict. A hook
    // that answers does not call `next`.
    const raw = rawChecker(engine)
    const o = raw.out
    fastify.addHook('onRequest', (request, reply, next) => {
      if (checking) validate(request)
      if (byBody(request)) {
        request[BY_BODY] = true
        return next()
      }
      let text
      try {
        text = raw.check(request.method, request.url, request.ip, request.headers)
      } catch (err) {
        if (!isBadRequest(err)) return next(err)
        return badRequest(reply)
      }
      if (plain(raw)) {
        setReplyHeaders(reply, o, text)
        return next()
      }
      if (denied(raw)) {
        setReplyHeaders(reply, o, text)
        const [status, body] = denial(raw, text)
        return refuse(reply, status, body)
      }
      const v = raw.verdict(text)
      if (v.allowed && needsSettle(v)) request[PENDING] = { v, cost: undefined }
      if (!answer(reply, v)) next()
    })
  }
  if (engine.settles) {
    // Settlement (rules with count, cost_from = "response" or max_in_flight):
    // the Floodgate-Cost header is read and removed as the reply is sent, and
    // the verdict settled once the response is done (499 if the client left).
    fastify.addHook('onSend', (request, reply, payload, next) => {
      const p = request[PENDING]
      if (p !== undefined) {
        const c = reply.getHeader(COST_HEADER)
        if (c !== undefined) {
          p.cost = parseCost(c)
          reply.removeHeader(COST_HEADER)
        }
      }
      next()
    })
    const settle = (request, status) => {
      const p = request[PENDING]
      if (p === undefined) return
      request[PENDING] = undefined
      settleQuietly(engine, p.v, { status, cost: parseCost(request.floodgateCost) ?? p.cost })
    }
    fastify.addHook('onResponse', (request, reply, next) => {
      settle(request, reply.statusCode)
      next()
    })
    fastify.addHook('onRequestAbort', (request, next) => {
      settle(request, 499)
      next()
    })
  }
  done()
}
floodgatePlugin[Symbol.for('skip-override')] = true
floodgatePlugin[Symbol.for('fastify.display-name')] = 'floodgate'

module.exports = floodgatePlugin
module.exports.default = floodgatePlugin
module.exports.floodgate = floodgatePlugin
