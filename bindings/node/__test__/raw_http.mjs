// One HTTP/1.1 request as an attacker sends it: raw bytes over a socket to
// 127.0.0.1 or a Unix socket (no client-side normalisation of the method,
// target or headers), `Connection: close`, then the whole answer as the bytes
// came.
import net from 'node:net'

/**
 * `at` is a port on 127.0.0.1, or the path of a Unix socket.
 * Resolves `{ status, headers, body, text }`: `headers` a Map of lower-case
 * names, `text` the whole answer (latin1). The request is written, not
 * half-closed: a client that half-closes first is one Node abandons before an
 * asynchronous check answers.
 */
export function raw(at, method, target, headers = [], body = '') {
  const unix = typeof at === 'string'
  const host = unix ? 'localhost' : `127.0.0.1:${at}`
  const lines = [`${method} ${target} HTTP/1.1`, `Host: ${host}`, 'Connection: close', `Content-Length: ${Buffer.byteLength(body)}`]
  for (const [n, v] of headers) lines.push(`${n}: ${v}`)
  return new Promise((resolve, reject) => {
    const where = unix ? { path: at } : { port: at, host: '127.0.0.1' }
    const s = net.connect(where, () => s.write(Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1'), Buffer.from(body)])))
    const chunks = []
    s.on('data', (c) => chunks.push(c))
    s.on('error', reject)
    s.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1')
      const at = text.indexOf('\r\n\r\n')
      const head = (at < 0 ? text : text.slice(0, at)).split('\r\n')
      const fields = head.slice(1).map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()])
      resolve({ status: Number(head[0].split(' ', 2)[1]), headers: new Map(fields), body: at < 0 ? '' : text.slice(at + 4), text })
    })
  })
}
