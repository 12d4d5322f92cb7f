// Summarises a run of the HTTP cache test suite (github.com/http-tests/cache-tests) against
// stormcache's reverse proxy, next to the suite's published results for other reverse
// proxies. Used by scripts/cache-tests.sh; runs on its own too:
//
//   node scripts/cache-tests-summary.mjs SUITE_DIR RESULTS.json [--markdown] [--checks]
//        [--baseline OLD.json]
//
// --baseline lists the tests whose result changed since an earlier run (such as
// docs/cache-tests-results.json, the run docs/cache-tests.md describes).
//
// Results are classified as the suite's own pages do (test-engine/lib/results.mjs, with
// dependencies honoured): a test whose dependency did not pass counts as a dependency
// failure, not as a pass or a fail.

import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const [suiteDir, resultsFile, ...flags] = process.argv.slice(2)
if (!suiteDir || !resultsFile) {
  console.error('usage: node cache-tests-summary.mjs SUITE_DIR RESULTS.json [--markdown] [--checks] [--baseline OLD.json]')
  process.exit(2)
}
const markdown = flags.includes('--markdown')
const baselineAt = flags.indexOf('--baseline')
const baselineFile = baselineAt >= 0 ? flags[baselineAt + 1] : undefined
const load = (rel) => import(pathToFileURL(path.resolve(suiteDir, rel)).href)

const suites = (await load('tests/index.mjs')).default
const { determineTestResult, resultTypes } = await load('test-engine/lib/results.mjs')
const published = (await load('results/index.mjs')).default

// The reverse proxies the comparison is about, then others shown for context.
const FOCUS = ['nginx', 'Varnish', 'httpd', 'Squid', 'ATS']
const others = published
  .filter((p) => p.type === 'rev-proxy' && !FOCUS.includes(p.name))
  .map((p) => p.name)
const impls = [{ name: 'stormcache', results: JSON.parse(fs.readFileSync(resultsFile, 'utf8')) }]
for (const name of [...FOCUS, ...others]) {
  const entry = published.find((p) => p.name === name)
  if (!entry) continue
  const file = path.resolve(suiteDir, 'results', entry.file)
  impls.push({
    name,
    version: entry.version,
    results: JSON.parse(fs.readFileSync(file, 'utf8'))
  })
}

// The tests the command-line client runs (it skips browser-only ones).
const tests = []
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only === true) continue
    tests.push({ ...test, suite: suite.id, kind: test.kind || 'required' })
  }
}

const KINDS = ['required', 'optimal', 'check']
const classify = (impl, id) => determineTestResult(suites, id, impl.results)
const passed = (r) => r === resultTypes.pass || r === resultTypes.yes
const label = new Map([
  [resultTypes.pass, 'pass'],
  [resultTypes.yes, 'yes'],
  [resultTypes.fail, 'fail'],
  [resultTypes.optional_fail, 'optimal-fail'],
  [resultTypes.no, 'no'],
  [resultTypes.dependency_fail, 'dependency'],
  [resultTypes.setup_fail, 'setup'],
  [resultTypes.harness_fail, 'harness'],
  [resultTypes.retry, 'retry'],
  [resultTypes.untested, 'untested']
])

// Counts per implementation and kind.
const counts = impls.map((impl) => {
  const byKind = {}
  for (const kind of KINDS) byKind[kind] = { total: 0, pass: 0, fail: 0, dependency: 0, other: 0 }
  for (const test of tests) {
    const c = byKind[test.kind]
    c.total++
    const r = classify(impl, test.id)
    if (passed(r)) c.pass++
    else if (r === resultTypes.dependency_fail) c.dependency++
    else if ([resultTypes.fail, resultTypes.optional_fail, resultTypes.no].includes(r)) c.fail++
    else c.other++
  }
  return { impl, byKind }
})

// Tests stormcache does not pass (required and optimal) that a focus proxy passes.
const ours = impls[0]
const focus = impls.filter((i) => FOCUS.includes(i.name))
const behind = []
for (const test of tests) {
  if (test.kind === 'check') continue
  const r = classify(ours, test.id)
  if (passed(r)) continue
  const passing = focus.filter((i) => passed(classify(i, test.id))).map((i) => i.name)
  if (passing.length === 0) continue
  const raw = ours.results[test.id]
  const detail = Array.isArray(raw) ? raw[1] : raw === undefined ? 'not run' : ''
  behind.push({ test, result: label.get(r), detail, passing })
}
// Checks (informational, no right answer) where stormcache answers differently from most.
const checks = []
for (const test of tests) {
  if (test.kind !== 'check') continue
  const r = label.get(classify(ours, test.id))
  const yes = focus.filter((i) => classify(i, test.id) === resultTypes.yes).map((i) => i.name)
  checks.push({ test, result: r, yes })
}

const pad = (s, n) => String(s).padEnd(n)
if (markdown) {
  console.log('| implementation | required pass | optimal pass | check yes | required fail | optimal fail | dependency fail | other |')
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const { impl, byKind } of counts) {
    const dep = KINDS.reduce((n, k) => n + byKind[k].dependency, 0)
    const other = KINDS.reduce((n, k) => n + byKind[k].other, 0)
    const name = impl.version ? `${impl.name} ${impl.version}` : `**${impl.name}**`
    console.log(`| ${name} | ${byKind.required.pass}/${byKind.required.total} | ${byKind.optimal.pass}/${byKind.optimal.total} | ${byKind.check.pass}/${byKind.check.total} | ${byKind.required.fail} | ${byKind.optimal.fail} | ${dep} | ${other} |`)
  }
  console.log('')
  console.log(`Tests stormcache does not pass that at least one of ${FOCUS.join(', ')} passes (${behind.length}):`)
  console.log('')
  console.log('| test | kind | our result | passed by | detail |')
  console.log('| --- | --- | --- | --- | --- |')
  for (const b of behind) {
    const detail = b.detail.replace(/\|/g, '\\|').replace(/\s+/g, ' ')
    console.log(`| \`${b.test.id}\` | ${b.test.kind} | ${b.result} | ${b.passing.join(', ')} | ${detail} |`)
  }
} else {
  console.log('Pass counts (dependencies honoured, as on cache-tests.fyi):')
  console.log(`${pad('', 28)}${pad('required', 12)}${pad('optimal', 12)}${pad('check yes', 12)}${pad('dep-fail', 10)}other`)
  for (const { impl, byKind } of counts) {
    const dep = KINDS.reduce((n, k) => n + byKind[k].dependency, 0)
    const other = KINDS.reduce((n, k) => n + byKind[k].other, 0)
    console.log(`${pad(impl.name, 28)}${pad(`${byKind.required.pass}/${byKind.required.total}`, 12)}${pad(`${byKind.optimal.pass}/${byKind.optimal.total}`, 12)}${pad(`${byKind.check.pass}/${byKind.check.total}`, 12)}${pad(dep, 10)}${other}`)
  }
  console.log('')
  console.log(`Not passed by stormcache, passed by at least one of ${FOCUS.join(', ')}: ${behind.length}`)
  for (const b of behind) {
    console.log(`  ${pad(b.test.id, 52)} ${pad(b.test.kind, 9)} ${pad(b.result, 13)} [${b.passing.join(' ')}] ${b.detail}`)
  }
  if (flags.includes('--checks')) {
    console.log('')
    console.log('Checks (informational): our answer, and which focus proxies answer yes')
    for (const c of checks) console.log(`  ${pad(c.test.id, 52)} ${pad(c.result, 11)} [${c.yes.join(' ')}]`)
  }
}

if (baselineFile) {
  const before = { name: 'baseline', results: JSON.parse(fs.readFileSync(baselineFile, 'utf8')) }
  const changed = []
  for (const test of tests) {
    const was = label.get(classify(before, test.id))
    const now = label.get(classify(ours, test.id))
    if (was !== now) changed.push({ test, was, now })
  }
  const gained = (k) => {
    const count = (impl) => tests.filter((t) => t.kind === k && passed(classify(impl, t.id))).length
    const d = count(ours) - count(before)
    return `${k} ${d >= 0 ? '+' : ''}${d}`
  }
  console.log('')
  console.log(`Changed since ${baselineFile}: ${changed.length} tests (${KINDS.map(gained).join(', ')})`)
  for (const c of changed) {
    console.log(`  ${pad(c.test.id, 52)} ${pad(c.test.kind, 9)} ${pad(c.was, 13)} -> ${c.now}`)
  }
}
