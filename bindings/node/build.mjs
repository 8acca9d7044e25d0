// `npm run build`: builds the addon with plain cargo for the host and writes the
// files `napi build` would write, with @napi-rs/cli's own generators (the
// committed index.js and index.d.ts are checked against them by the tests).
//
// Why not `napi build`: it always passes `--target <triple>`, which puts the
// build in target/<triple>/ and compiles the whole dependency tree a second time
// beside the workspace's host build: minutes on a 2-core CI machine, for the
// same code.
//
//   node build.mjs [--release | --profile NAME]
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { generateTypeDef, writeJsBinding } from '@napi-rs/cli'

const here = dirname(fileURLToPath(import.meta.url))
const pkg = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8'))
const args = process.argv.slice(2)
let profile = 'dev'
if (args[0] === '--release') profile = 'release'
else if (args[0] === '--profile' && args[1]) profile = args[1]
else if (args.length) throw new Error(`usage: node build.mjs [--release | --profile NAME], not ${args.join(' ')}`)

const meta = JSON.parse(execFileSync('cargo', ['metadata', '--no-deps', '--format-version', '1'], { cwd: here, encoding: 'utf8' }))
const crate = meta.packages.find((p) => p.manifest_path === join(here, 'Cargo.toml'))
const typeDefDir = join(meta.target_directory, 'napi-typedef', crate.name)
rmSync(typeDefDir, { recursive: true, force: true })
mkdirSync(typeDefDir, { recursive: true })

execFileSync('cargo', ['build', '-p', crate.name, '--profile', profile], {
  cwd: here,
  stdio: 'inherit',
  env: {
    ...process.env,
    // napi-derive writes each item's TypeScript into this folder while compiling;
    // napi-build reruns (so the crate recompiles) when these change.
    NAPI_TYPE_DEF_TMP_FOLDER: typeDefDir,
    [`NAPI_FORCE_BUILD_${crate.name.replace(/-/g, '_').toUpperCase()}`]: String(Date.now()),
  },
})

const lib = crate.targets.find((t) => t.kind.includes('cdylib')).name
const dir = profile === 'dev' ? 'debug' : profile
copyFileSync(join(meta.target_directory, dir, `lib${lib}.so`), join(here, `${pkg.napi.binaryName}.linux-x64-gnu.node`))

const { exports, dts } = await generateTypeDef({ typeDefDir, cwd: here, declareBindingTarget: (e) => e.length > 0 })
writeFileSync(join(here, 'index.d.ts'), dts)
await writeJsBinding({
  platform: true,
  idents: exports,
  jsBinding: 'index.js',
  binaryName: pkg.napi.binaryName,
  packageName: pkg.name,
  version: pkg.version,
  outputDir: here,
})
