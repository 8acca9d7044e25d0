// The policy the engine and middleware tests share (also used by the Python tests).
import { readFileSync } from 'node:fs'

export const POLICY = readFileSync(new URL('../../../tests/policies/bindings.toml', import.meta.url), 'utf8')
