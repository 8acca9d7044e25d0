'use strict'
// The package's entry point. `index.js` is napi-rs's generated loader of the
// native addon; this file re-exports it, and wraps the one class whose calls are
// hot enough for the glue to matter: `Limiter.check` calls the raw Node-API
// function bound to its limiter (src/fast.rs), gets the numbers through a
// Float64Array, and builds the Decision here, where V8 makes an object in
// nanoseconds (napi-rs's generated glue and an object made from native code
// cost about a microsecond, twenty times the check).
const native = require('./index.js')

const { engineSettlement, engineSettle } = native

function decision(allowed, out) {
  return {
    allowed,
    limit: out[0],
    remaining: out[1],
    retryAfterMs: out[2],
    resetAfterMs: out[3],
    quota: out[4],
  }
}

/** An in-memory rate limiter: `new Limiter({ quota: '100/minute', burst: 20 })`. */
class Limiter {
  #native
  #check
  #out

  /** @param {import('./index').LimiterOptions} options */
  constructor(options) {
    this.#native = new native.NativeLimiter(options)
    ;[, this.#out, this.#check] = this.#native.handle()
  }

  /**
   * Checks `cost` units (default 1; 0 peeks) for `key` (string or Buffer),
   * synchronously. `nowMs` replaces the clock (replays and tests).
   * @returns {import('./index').Decision}
   */
  check(key, cost, nowMs) {
    const c = cost ?? 1
    const allowed = nowMs == null ? this.#check(key, c) : this.#check(key, c, nowMs)
    return decision(allowed, this.#out)
  }

  /** Forgets `key`; true if it was held. */
  reset(key) {
    return this.#native.reset(key)
  }

  /** Keys held now (counts every shard: not for the hot path). */
  get size() {
    return this.#native.size
  }

  /** The shared-memory table's path (`sharedMemory` option), or null. */
  get sharedMemory() {
    return this.#native.sharedMemory ?? null
  }
}

// `Engine.checkRequest` through the engine's raw check (src/request.rs): the
// request's parts go in as arguments, the verdict's numbers come back in a
// Float64Array and its strings as one string, sliced here by the lengths the
// numbers give. The same object the napi-rs method built, at a fraction of the
// cost (benches/README.md).
const [REASONS, TOKEN_PROBLEMS, RESPONSE_HEADERS] = native.verdictTables()
const [ALLOWED, STATUS, RETRY, RESET, LIMIT, REMAINING, AUTH, REASON, TOKEN, RULE_LEN, ID_LEN, BODY_LEN, COUNT, SETTLE, HEADERS] =
  Array.from({ length: 15 }, (_, i) => i)
const CHECK = Symbol('floodgate.check')
const HANDLE = Symbol('floodgate.handle')
/** Where a verdict keeps what `engine.settle` settles (not enumerable: not a field). */
const SETTLEMENT = Symbol('floodgate.settlement')

/** A header value as the engine takes it: arrays joined with ", " (as Node joins repeated headers). */
function headerText(v) {
  if (typeof v === 'string') return v
  if (v == null) return undefined
  if (Array.isArray(v)) return v.filter((s) => typeof s === 'string').join(', ')
  return typeof v === 'object' ? JSON.stringify(v) : String(v)
}

/** The value of header `name` (lower case) in `headers`; `lower`: the object's keys are lower case (Node's `req.headers`). */
function headerOf(headers, name, lower) {
  if (headers == null) return undefined
  let v = headers[name]
  if (v === undefined && !lower) {
    for (const k in headers) {
      if (k.length === name.length && k.toLowerCase() === name) {
        v = headers[k]
        break
      }
    }
  }
  return headerText(v)
}

function verdictOf(text, o) {
  let at = 0
  let rule
  let identity
  let n = o[RULE_LEN]
  if (n >= 0) {
    rule = text.slice(at, at + n)
    at += n
  }
  n = o[ID_LEN]
  if (n >= 0) {
    identity = text.slice(at, at + n)
    at += n
  }
  const headers = {}
  const count = o[COUNT]
  for (let i = 0, slot = HEADERS; i < count; i++, slot += 2) {
    n = o[slot + 1]
    headers[RESPONSE_HEADERS[o[slot]]] = text.slice(at, at + n)
    at += n
  }
  n = o[BODY_LEN]
  const token = o[TOKEN]
  return {
    allowed: o[ALLOWED] === 1,
    status: o[STATUS],
    retryAfterMs: o[RETRY],
    headers,
    rule,
    identity,
    reason: REASONS[o[REASON]],
    limit: o[LIMIT],
    remaining: o[REMAINING],
    authenticated: o[AUTH] === 1,
    resetAfterMs: o[RESET],
    tokenProblem: token >= 0 ? TOKEN_PROBLEMS[token] : undefined,
    body: n > 0 ? text.slice(at, at + n) : '',
  }
}

/** Where the middleware path (`rawChecker`) of an engine is kept. */
const RAW = Symbol('floodgate.raw')

/**
 * The engine's raw checker: `{ check, out, verdict }`. `check(method, path,
 * clientIp, headers, lower, nowMs)` decides (one argument per header the policy
 * reads) and returns the verdict's text, its numbers left in `out`;
 * `verdict(text)` builds the Verdict of that check (with its settlement).
 */
function rawOf(engine) {
  let raw = engine[RAW]
  if (raw !== undefined) return raw
  const [handle, out, bound] = engine.handle()
  Object.defineProperty(engine, HANDLE, { value: handle })
  const names = engine.requestHeaders
  const [a, b, c] = names
  let check
  // The time goes last, and only when given (the middleware never pass one):
  // the native check then asks no `typeof` of it.
  switch (names.length) {
    case 0:
      check = (m, p, ip, h, lower, now) => (now == null ? bound(m, p, ip) : bound(m, p, ip, now))
      break
    case 1:
      check = (m, p, ip, h, lower, now) =>
        now == null ? bound(m, p, ip, headerOf(h, a, lower)) : bound(m, p, ip, headerOf(h, a, lower), now)
      break
    case 2:
      check = (m, p, ip, h, lower, now) =>
        now == null
          ? bound(m, p, ip, headerOf(h, a, lower), headerOf(h, b, lower))
          : bound(m, p, ip, headerOf(h, a, lower), headerOf(h, b, lower), now)
      break
    case 3:
      check = (m, p, ip, h, lower, now) =>
        now == null
          ? bound(m, p, ip, headerOf(h, a, lower), headerOf(h, b, lower), headerOf(h, c, lower))
          : bound(m, p, ip, headerOf(h, a, lower), headerOf(h, b, lower), headerOf(h, c, lower), now)
      break
    default:
      check = (m, p, ip, h, lower, now) => {
        const values = names.map((name) => headerOf(h, name, lower))
        if (now != null) values.push(now)
        return bound(m, p, ip, ...values)
      }
  }
  const verdict = (text) => {
    const v = verdictOf(text, out)
    if (out[SETTLE] === 1) Object.defineProperty(v, SETTLEMENT, { value: engineSettlement(handle) })
    return v
  }
  raw = { check, out, verdict }
  Object.defineProperty(engine, RAW, { value: raw })
  return raw
}

/** The engine's checker: `(method, path, clientIp, headers, lower, nowMs) => Verdict`. */
function checker(engine) {
  const { check, verdict } = rawOf(engine)
  return (m, p, ip, h, lower, now) => verdict(check(m, p, ip, h, lower, now))
}

const NativeEngine = native.Engine

/** A line of the core's default logging policy, on the console (`logSummaries`). */
function toConsole(l) {
  if (l.level === 'warning') console.warn(l.line)
  else console.info(l.line)
}

// Every engine made from now on in this JS environment logs by the core's
// policy (a Redis fallback and recovery as they happen, one summary line per
// 10 s, never a line per denial), as the Python package does, until `onEvent`
// or `logSummaries` replaces it. The console is looked up per line.
native.setDefaultLog(toConsole)

Object.defineProperty(NativeEngine.prototype, CHECK, {
  get() {
    const check = checker(this)
    Object.defineProperty(this, CHECK, { value: check })
    return check
  },
})

/**
 * Decides a request synchronously (in-memory engines: about a microsecond).
 * `request`: `{ method, path, clientIp?, headers?, nowMs? }`; header names in
 * any case, array values joined with ", ".
 */
NativeEngine.prototype.checkRequest = function checkRequest(request) {
  if (request == null || typeof request !== 'object') {
    const err = new TypeError('checkRequest needs a request object')
    err.code = 'ERR_FG_INVALID_ARGUMENT'
    throw err
  }
  if (request.body !== undefined) {
    // For a rule keyed by a body field: the napi-rs path, which carries it.
    const [verdict, settlement] = this.checkRequestSettled(withBodyText(request))
    if (settlement !== undefined) Object.defineProperty(verdict, SETTLEMENT, { value: settlement })
    return verdict
  }
  return this[CHECK](request.method, request.path, request.clientIp, request.headers, false, request.nowMs)
}

/**
 * A request's `body` as the engine takes it (text): a string as it is, a
 * Buffer as UTF-8; anything else (what a body parser made of the body) is
 * sent as its JSON, typed `application/json`. `parsed`: the body is what the
 * framework's parser made of it, inflated already (Express's parsers inflate
 * gzip and deflate), so its Content-Encoding is not passed on (the engine
 * refuses a compressed body, which it cannot read).
 */
function withBodyText(request, parsed = false) {
  const body = request.body
  if (body === undefined) return request
  const json = typeof body !== 'string' && !Buffer.isBuffer(body) && !(body instanceof Uint8Array)
  if (!json && !parsed && typeof body === 'string') return request
  const headers = {}
  for (const k in request.headers ?? {}) {
    const name = k.toLowerCase()
    if (!(parsed && name === 'content-encoding') && !(json && name === 'content-type')) headers[k] = request.headers[k]
  }
  if (!json) return { ...request, headers, body: typeof body === 'string' ? body : Buffer.from(body).toString('utf8') }
  headers['content-type'] = 'application/json'
  let text
  try {
    text = body === null ? 'null' : JSON.stringify(body)
  } catch (cause) {
    // What a parser made of the body has no JSON (a cycle, a BigInt, a
    // stream: @fastify/multipart's field objects): no name the engine can
    // read, so the request is one it cannot use.
    const err = new TypeError('the request body has no JSON form', { cause })
    err.code = 'ERR_FG_INVALID_REQUEST'
    throw err
  }
  return { ...request, headers, body: text }
}

/**
 * Settles an admitted request once its response is known: gives back the
 * charge of rules that do not count `status` (`count = "failures"`...), replaces
 * the estimate by `cost` on rules with `cost_from = "response"`, and frees the
 * request's places in flight. Throws `ERR_FG_ALREADY_SETTLED` the second time.
 * A verdict with nothing to settle is a no-op.
 */
NativeEngine.prototype.settle = function settle(verdict, outcome) {
  const s = verdict == null ? undefined : verdict[SETTLEMENT]
  if (s === undefined) return
  if (outcome == null || typeof outcome !== 'object') {
    const err = new TypeError('settle needs { status, cost? }')
    err.code = 'ERR_FG_INVALID_ARGUMENT'
    throw err
  }
  this[CHECK] // the handle is made with the checker
  engineSettle(this[HANDLE], s, outcome.status, outcome.cost, outcome.nowMs)
}

/**
 * `settle` on the core's async engine: for engines whose settlement may wait
 * on Redis (`engine.mayBlock`), so neither the event loop nor a thread does. Resolves once
 * settled; rejects with `ERR_FG_ALREADY_SETTLED` the second time. Bad
 * arguments throw synchronously, as in `settle`.
 */
NativeEngine.prototype.settleAsync = function settleAsync(verdict, outcome) {
  const s = verdict == null ? undefined : verdict[SETTLEMENT]
  if (s === undefined) return Promise.resolve()
  if (outcome == null || typeof outcome !== 'object') {
    const err = new TypeError('settleAsync needs { status, cost? }')
    err.code = 'ERR_FG_INVALID_ARGUMENT'
    throw err
  }
  return this.settleSettlementAsync(s, outcome.status, outcome.cost, outcome.nowMs)
}

/**
 * Decides a request without holding a thread while Redis answers (the core's
 * async engine, on a tokio worker, round trips pipelined on one multiplexed
 * connection): use it with a Redis store. The verdict carries its settlement
 * like `checkRequest`'s.
 */
NativeEngine.prototype.checkRequestAsync = function checkRequestAsync(request) {
  // Not `async`: a bad request throws synchronously, before the task starts.
  return this.checkRequestAsyncSettled(withBodyText(request)).then(([verdict, settlement]) => {
    if (settlement !== undefined) Object.defineProperty(verdict, SETTLEMENT, { value: settlement })
    return verdict
  })
}

/**
 * What the middleware call once a response is done: `settle`, or `settleAsync`
 * on an engine that may wait on Redis (the event loop never does). A verdict
 * the handler already settled keeps that first settlement.
 */
function settleQuietly(engine, verdict, outcome) {
  try {
    if (engine.mayBlock) engine.settleAsync(verdict, outcome).catch(() => {})
    else engine.settle(verdict, outcome)
  } catch {
    // already settled by the handler: the first settlement stands
  }
}

/** Whether `engine.settle(verdict, ...)` has something to settle. */
function needsSettle(verdict) {
  return verdict != null && verdict[SETTLEMENT] !== undefined
}

// The middleware's path (express.js, fastify.js): most requests are allowed
// with nothing to settle, and all the middleware does with those is set the
// rate-limit headers. `rawChecker` decides without building a Verdict object;
// `plain(raw)` says whether that is all there is to do, and `setReplyHeaders` /
// `setResponseHeaders` copy the headers from the verdict's text, one call each.
// A denial's status and body come from `denial(raw, text)`; a verdict to settle
// takes `raw.verdict(text)`.

const LOWER_HEADERS = RESPONSE_HEADERS.map((n) => n.toLowerCase())

/** `{ check(method, path, clientIp, headers) => text, out, verdict(text) }`; `headers` is Node's `req.headers`. */
function rawChecker(engine) {
  const raw = rawOf(engine)
  const check = raw.check
  return {
    check: (m, p, ip, h) => check(m, p, ip, h, true, undefined),
    out: raw.out,
    verdict: raw.verdict,
  }
}

/** Whether the last check of `raw` allowed its request with nothing to settle. */
function plain(raw) {
  return raw.out[ALLOWED] === 1 && raw.out[SETTLE] === 0
}

/** Whether the last check of `raw` denied its request (a denial has nothing to settle). */
function denied(raw) {
  return raw.out[ALLOWED] === 0
}

/** The last check of `raw` denied its request: `[status, body]` (its headers: `setReplyHeaders`...). */
function denial(raw, text) {
  const o = raw.out
  return [o[STATUS], text.slice(text.length - o[BODY_LEN])]
}

/** Where the headers start in a verdict's text (after the rule and identity). */
function headersAt(o) {
  return Math.max(0, o[RULE_LEN]) + Math.max(0, o[ID_LEN])
}

// Two setters rather than one taking a callback: each call site stays
// monomorphic, and no closure is made per request.

/** Sets the last verdict's headers on a Fastify reply (`reply.header`, lower-case names). */
function setReplyHeaders(reply, o, text) {
  let at = headersAt(o)
  for (let i = 0, slot = HEADERS, count = o[COUNT]; i < count; i++, slot += 2) {
    const n = o[slot + 1]
    reply.header(LOWER_HEADERS[o[slot]], text.slice(at, at + n))
    at += n
  }
}

/** Sets the last verdict's headers on a Node response (`res.setHeader`). */
function setResponseHeaders(res, o, text) {
  let at = headersAt(o)
  for (let i = 0, slot = HEADERS, count = o[COUNT]; i < count; i++, slot += 2) {
    const n = o[slot + 1]
    res.setHeader(RESPONSE_HEADERS[o[slot]], text.slice(at, at + n))
    at += n
  }
}

// Proxy settings that defeat every IP-keyed limit, warned of once per
// middleware (express-rate-limit warns of the same): a trust setting that
// believes any X-Forwarded-For (anyone then picks their own address per
// request), and a server behind a proxy it does not trust (every client is
// the proxy's address: one limit for all of them).

/**
 * Whether a request's socket comes from where a reverse proxy sits: a
 * loopback, private, link-local or CGNAT address (the core's list, IPv4-mapped
 * IPv6 as IPv4; a zone id cut), or a Unix socket (no address, on a server
 * listening on a path).
 */
function fromProxy(socket) {
  const addr = socket?.remoteAddress
  if (addr === undefined) return typeof socket?.server?.address?.() === 'string'
  return native.isProxyAddress(addr.split('%', 1)[0])
}

/** The warnings' codes and texts. */
const TRUST_ALL =
  'floodgate: ERR_FG_TRUST_PROXY_ALL: the proxy setting (`trust proxy` / `trustProxy`) is true, which believes any ' +
  "X-Forwarded-For: a client picks its own address per request and escapes every IP-keyed rule. Name the proxies' " +
  'addresses or networks, or count the hops (Express: 1).'
const UNTRUSTED_PROXY =
  'floodgate: ERR_FG_UNTRUSTED_PROXY: a request from a private or loopback address carried X-Forwarded-For, but ' +
  'no proxy is trusted: every client behind that proxy is its address (on a Unix socket, the one client "-"), and ' +
  'they share each IP-keyed limit. Trust the proxy (`trust proxy` / `trustProxy`; README, "Client addresses").'

/** Requests whose proxy settings a middleware checks. */
const CHECKED_REQUESTS = 1000

/**
 * A checker of the first `n` requests' proxy settings, warning once of each
 * problem (`validate: false` turns it off): `(trustsAll, socket, forwarded,
 * trustsPeer) => whether to go on checking`. `trustsAll()` says whether the
 * framework believes any header, `forwarded` is the request's X-Forwarded-For,
 * `trustsPeer()` whether the framework trusts the socket's peer.
 */
function proxyWarnings(n = CHECKED_REQUESTS, warn = (line) => console.warn(line)) {
  let left = n
  let allWarned = false
  let untrustedWarned = false
  return (trustsAll, socket, forwarded, trustsPeer) => {
    left--
    if (!allWarned && trustsAll()) {
      allWarned = true
      warn(TRUST_ALL)
    }
    if (!untrustedWarned && forwarded !== undefined && fromProxy(socket) && !trustsPeer()) {
      untrustedWarned = true
      warn(UNTRUSTED_PROXY)
    }
    return left > 0 && !(allWarned && untrustedWarned)
  }
}

module.exports = {
  Limiter,
  RedisLimiter: native.RedisLimiter,
  Engine: native.Engine,
  rawChecker,
  plain,
  denied,
  denial,
  setReplyHeaders,
  setResponseHeaders,
  proxyWarnings,
  needsSettle,
  settleQuietly,
  withBodyText,
  MAX_BODY_BYTES: native.MAX_BODY_BYTES,
  tooLargeBody: native.tooLargeBody,
  errorCodes: native.errorCodes,
}
