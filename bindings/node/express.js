'use strict'
// Express middleware:
//   const { Engine } = require('floodgate')
//   const { floodgate } = require('floodgate/express')
//   app.set('trust proxy', ['10.0.0.0/8'])          // req.ip honours it
//   app.use(floodgate(Engine.fromFile('policy.toml')))
// Answers 429/403/401 with a JSON body and the verdict's headers; sets the
// rate-limit headers on allowed responses. With a Redis store
// (`engine.mayBlock`) the check runs on the core's async engine by itself (no
// thread waits for Redis);
// { async: true | false } overrides that.
//
// What the engine sees is what Express acts on: the request target as Express
// routes it (the engine normalises it the way routers do: absolute-form cut to
// its path, decoded, case-folded unless `case_sensitive_paths`, HEAD under GET),
// Node's header values (repeated headers joined with ", ", a repeated
// Authorization dropped), and `req.ip`, which honours only X-Forwarded-For and
// only from the proxies `trust proxy` names. A request the engine cannot use (a
// method that is no HTTP token) is answered 400.
//
// In its first 1,000 requests the middleware warns once (console.warn) of a
// `trust proxy` of true (ERR_FG_TRUST_PROXY_ALL) and of X-Forwarded-For from
// an untrusted private, loopback or Unix-socket peer (ERR_FG_UNTRUSTED_PROXY);
// { validate: false } turns that off.

function clientIp(ip) {
  if (!ip) return undefined
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip
}

/**
 * `req.ip` without its cost when the answer is the peer: Express's `req.ip` is
 * the socket's address unless `trust proxy` trusts that address (hop 0), and
 * only then what proxy-addr finds in X-Forwarded-For. Asking `trust proxy fn`
 * about the peer first skips proxy-addr's header parsing and arrays and gives
 * the same address (`req.ip` was 1.1% of a busy Express server's samples; in
 * a loop, 192-208 ns -> 35-40 ns).
 */
function requestIp(req) {
  const app = req.app
  const peer = req.socket?.remoteAddress
  if (app === undefined || peer === undefined) return req.ip
  const trust = app.get('trust proxy fn')
  return typeof trust === 'function' && !trust(peer, 0) ? peer : req.ip
}

const { badRequestBody } = require('./index.js')
const {
  rawChecker,
  plain,
  denied,
  denial,
  setResponseHeaders,
  proxyWarnings,
  needsSettle,
  settleQuietly,
  withBodyText,
  MAX_BODY_BYTES,
  tooLargeBody,
} = require('./floodgate.js')

/** A checker of Express's proxy settings, per middleware (`options.validate`). */
function expressWarnings(options) {
  if (options.validate === false) return undefined
  const check = proxyWarnings()
  let checking = true
  return (req) => {
    if (!checking) return
    const app = req.app
    const trust = app?.get('trust proxy fn')
    checking = check(
      () => app?.get('trust proxy') === true,
      req.socket,
      req.headers['x-forwarded-for'],
      () => typeof trust === 'function' && trust(req.socket?.remoteAddress, 0),
    )
  }
}

/** The response header a handler sets to report its request's real cost (rules
 * with `cost_from = "response"`); removed before the response is sent. A
 * handler may set `req.floodgateCost` instead. */
const COST_HEADER = 'floodgate-cost'

/** A cost as a handler reported it, or undefined (the estimate stands). */
function parseCost(v) {
  if (v === undefined || v === null) return undefined
  const n = Number(v)
  return Number.isInteger(n) && n >= 0 ? n : undefined
}

/**
 * Settles `v` when the response is done: with its status once sent in full
 * (`finish`), or 499 if the connection closed first (`close`). Reads and removes
 * the `Floodgate-Cost` header as the headers are written.
 */
function settleWhenDone(engine, req, res, v) {
  let cost
  const writeHead = res.writeHead
  res.writeHead = function writeHeadAndWatch(...args) {
    const c = this.getHeader(COST_HEADER)
    if (c !== undefined) {
      cost = parseCost(c)
      this.removeHeader(COST_HEADER)
    }
    return writeHead.apply(this, args)
  }
  let done = false
  const settle = () => {
    if (done) return
    done = true
    const status = res.writableFinished ? res.statusCode : 499
    settleQuietly(engine, v, { status, cost: parseCost(req.floodgateCost) ?? cost })
  }
  res.once('finish', settle)
  res.once('close', settle)
}

const BAD_REQUEST = badRequestBody()
const TOO_LARGE = tooLargeBody()

const NO_BODY =
  'floodgate: ERR_FG_NO_BODY: a rule keys on a field of the request body (key = "body:..."), but req.body is not ' +
  'set: put the body parsers your routes use (express.json(), express.urlencoded(), multer\'s upload.none() for ' +
  'multipart logins) before floodgate(). Until then such a request with a body is refused (400): a parser after ' +
  'the middleware could give the handler a name the rule never counted.'

/** Whether a request has a body (as body parsers tell: a length or chunks). */
const hasBody = (req) =>
  req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] ?? '0') !== '0'

/**
 * The check of a request a rule keyed by a body field meets
 * (`engine.readsBody`): with what the body parsers before the middleware made
 * of the body (`req.body`, sent as JSON; a string or Buffer as it is). A body
 * over MAX_BODY_BYTES is answered 413. A body no parser read is refused (400;
 * warned of once): a parser on the route, after the middleware (multer for a
 * multipart login), would give the handler a name the rule never saw.
 */
function bodyChecker(engine, async, pick, done, fail) {
  let warned = false
  return function checkWithBody(req, res, next, path) {
    if (req.body === undefined && hasBody(req)) {
      if (!warned) {
        warned = true
        console.warn(NO_BODY)
      }
      return refuse(res, 400, BAD_REQUEST)
    }
    let request
    try {
      request = withBodyText({
        method: req.method,
        path,
        clientIp: clientIp(requestIp(req)),
        headers: pick(req.headers),
        body: req.body,
      }, true)
    } catch (err) {
      return fail(res, next, err)
    }
    if (request.body !== undefined && Buffer.byteLength(request.body) > MAX_BODY_BYTES) return refuse(res, 413, TOO_LARGE)
    if (async) {
      let pending
      try {
        pending = engine.checkRequestAsync(request)
      } catch (err) {
        return fail(res, next, err)
      }
      return pending.then(
        (v) => done(req, res, next, v),
        (err) => fail(res, next, err),
      )
    }
    let v
    try {
      v = engine.checkRequest(request)
    } catch (err) {
      return fail(res, next, err)
    }
    done(req, res, next, v)
  }
}

// Only the headers the policy reads cross into the engine: converting all of
// req.headers (a dozen or more strings) costs more than the check itself.
function headerPicker(engine) {
  const names = engine.requestHeaders
  return function pick(headers) {
    const out = {}
    for (const name of names) {
      const value = headers[name]
      if (value !== undefined) out[name] = value
    }
    return out
  }
}

function isBadRequest(err) {
  return err != null && err.code === 'ERR_FG_INVALID_REQUEST'
}

/** The type of every answer the middleware (and the Fastify plugin) sends: what `res.json` sends. */
const JSON_TYPE = 'application/json; charset=utf-8'

/**
 * Answers a request the engine refuses (429, 403, 401, or 400 for a request it
 * cannot use) with its JSON body: the status, type, length and body that
 * `res.status(s).type('application/json').send(body)` sends, without the rest
 * of `res.send`, which means nothing for a refusal: it hashed every body into
 * an ETag (SHA-1, a `Buffer` copy of the body first) and compared it with the
 * request's conditional headers, so a flood paid a hash per denial. A HEAD
 * request gets the headers alone (Node drops the body of an answer to HEAD).
 */
function refuse(res, status, body) {
  res.statusCode = status
  res.setHeader('Content-Type', JSON_TYPE)
  res.setHeader('Content-Length', Buffer.byteLength(body))
  res.end(body)
}

// One `setHeader` per header: `res.set(object)` goes through Express's
// per-field checks for each.
function setHeaders(res, headers) {
  for (const name in headers) res.setHeader(name, headers[name])
}

function floodgate(engine, options = {}) {
  const async = options.async ?? engine.mayBlock
  const pick = headerPicker(engine)
  const answer = (res, next, v) => {
    setHeaders(res, v.headers)
    if (v.allowed) return next()
    refuse(res, v.status, v.body)
  }
  const fail = (res, next, err) => (isBadRequest(err) ? refuse(res, 400, BAD_REQUEST) : next(err))
  const validate = expressWarnings(options)
  const decided = (req, res, next, v) => {
    if (v.allowed && needsSettle(v)) settleWhenDone(engine, req, res, v)
    answer(res, next, v)
  }
  // Rules keyed by a body field: a policy with one reads the content type
  // (and a reload cannot add a header to read).
  const withBody = engine.requestHeaders.includes('content-type') ? bodyChecker(engine, async, pick, decided, fail) : undefined
  if (async) {
    return function floodgateMiddleware(req, res, next) {
      if (validate !== undefined) validate(req)
      const url = req.originalUrl || req.url
      if (withBody !== undefined && engine.readsBody(req.method, url)) return withBody(req, res, next, url)
      const request = {
        method: req.method,
        path: url,
        clientIp: clientIp(requestIp(req)),
        headers: pick(req.headers),
      }
      // A request the engine cannot use (a forged X-Forwarded-For a trusted
      // proxy passed on: no address) is refused before any promise is made.
      let pending
      try {
        pending = engine.checkRequestAsync(request)
      } catch (err) {
        return fail(res, next, err)
      }
      pending.then(
        (v) => decided(req, res, next, v),
        (err) => fail(res, next, err),
      )
    }
  }
  // In memory: the raw path (floodgate.js), reading the policy's headers
  // straight from req.headers; an allowed request with nothing to settle gets
  // its headers from the verdict's text, no Verdict built. The core unmaps
  // ::ffff: addresses itself.
  const raw = rawChecker(engine)
  const o = raw.out
  return function floodgateMiddleware(req, res, next) {
    if (validate !== undefined) validate(req)
    const url = req.originalUrl || req.url
    if (withBody !== undefined && engine.readsBody(req.method, url)) return withBody(req, res, next, url)
    let text
    try {
      text = raw.check(req.method, url, requestIp(req), req.headers)
    } catch (err) {
      return fail(res, next, err)
    }
    if (plain(raw)) {
      setResponseHeaders(res, o, text)
      return next()
    }
    if (denied(raw)) {
      setResponseHeaders(res, o, text)
      const [status, body] = denial(raw, text)
      return refuse(res, status, body)
    }
    decided(req, res, next, raw.verdict(text))
  }
}

module.exports = {
  floodgate,
  hasBody,
  clientIp,
  requestIp,
  headerPicker,
  isBadRequest,
  setHeaders,
  BAD_REQUEST,
  TOO_LARGE,
  COST_HEADER,
  JSON_TYPE,
  parseCost,
}
