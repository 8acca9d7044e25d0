// What a test of "freed when collected" runs: a child with --expose-gc makes,
// uses and drops values round after round (`iteration`, 200 per round, with
// `fg` the package and `i` the count), yielding to the event loop between
// rounds (Node-API finalizers run from it). Were the values not freed, the
// 1,600 of rounds 3-10 would grow the process by hundreds of MB (as they do
// when the loop never yields); it must grow by less than `limitMb`. Then
// `after` runs (`fg` in scope) and writes what the test expects.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

export function collected({ iteration, after, limitMb }) {
  const script = `
    const fg = require(${JSON.stringify(require.resolve('../floodgate.js'))})
    const tick = () => new Promise((r) => setImmediate(r))
    const rss = () => process.memoryUsage().rss / 1048576
    ;(async () => {
      let before
      for (let round = 0; round <= 10; round++) {
        for (let i = 0; i < 200; i++) { ${iteration} }
        global.gc(); await tick(); await tick(); global.gc()
        if (round === 2) before = rss()
      }
      const grown = rss() - before
      if (grown > ${limitMb}) { process.stdout.write('grew ' + grown.toFixed(0) + ' MB'); return }
      ${after}
    })()
  `
  return execFileSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' })
}
