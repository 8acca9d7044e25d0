// Compiled with `tsc --noEmit` by the tests: the typings describe the API.
import { Engine, Limiter, RedisLimiter, needsSettle, type Decision, type LogLine, type Verdict } from '../floodgate'

const limiter = new Limiter({ quota: ['10/s', '1000/hour'], burst: 20, algorithm: 'gcra' })
const d: Decision = limiter.check('ip:203.0.113.7', 1)
const ok: boolean = d.allowed && d.retryAfterMs >= 0
const engine: Engine = Engine.fromToml('')
const v: Verdict = engine.checkRequest({ method: 'GET', path: '/', clientIp: '203.0.113.7', headers: { a: 'b' } })
if (needsSettle(v)) engine.settle(v, { status: 401, cost: null })
const status: number = v.status
const p: Promise<Verdict> = engine.checkRequestAsync({ method: 'GET', path: '/' })
engine.onEvent((e) => console.log(e.kind, e.rule, e.retryAfterMs))
engine.logSummaries((l: LogLine) => (l.level === 'warning' ? console.error : console.log)(l.line), 60_000)
const r = new RedisLimiter({ url: 'redis://127.0.0.1:6379/', quota: '5/min', failMode: 'local' })
const q: Promise<Decision> = r.checkAsync('k')
void ok, status, p, q
