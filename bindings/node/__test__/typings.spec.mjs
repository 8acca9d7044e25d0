import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

const here = fileURLToPath(new URL('.', import.meta.url))

test('the typings compile (tsc --noEmit on a usage file)', () => {
  const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url))
  const out = execFileSync(process.execPath, [tsc, '-p', here + 'tsconfig.json'], { encoding: 'utf8' })
  assert.equal(out.trim(), '')
})
