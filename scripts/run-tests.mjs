// Runs every compiled test file under dist/test, and the examples' tests (examples/*.test.js,
// plain JavaScript run from the source tree), with Node's test runner.
// Usage: node scripts/run-tests.mjs [filter-substring...]
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const files = [];
(function walk(dir) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.test.js')) files.push(p);
  }
})(new URL('../dist/test/', import.meta.url).pathname);
for (const name of readdirSync(new URL('../examples/', import.meta.url)).sort()) {
  if (name.endsWith('.test.js')) files.push(new URL(`../examples/${name}`, import.meta.url).pathname);
}
const filters = process.argv.slice(2);
const chosen = filters.length ? files.filter((f) => filters.some((s) => f.includes(s))) : files;
if (chosen.length === 0) {
  console.error('run-tests: no test files found');
  process.exit(1);
}
// --test-force-exit: a failed test that leaves a socket open must fail the run, not hang it;
// --test-timeout bounds every test (the slowest, QEMU interop, sets its own longer limit).
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-force-exit', '--test-timeout=180000', '--test-reporter=spec', ...chosen], {
  stdio: 'inherit',
});
process.exit(r.status ?? 1);
