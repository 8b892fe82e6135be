/**
 * CI run of a coverage-guided fuzz target (fuzz/targets, Jazzer.js): a few seconds from the
 * repo corpus. A finding fails the test with the runner's output (the input is in
 * fuzz/findings/<target>/). One test file per target (test/fuzz/<target>.test.ts), so each
 * has the runner's per-file time limit: most of a run is Jazzer.js instrumenting the library
 * at start-up, which takes tens of seconds on a busy machine.
 * Campaigns: `npm run fuzz -- <target> --time=S` (README, Tests; docs/fuzzing.md).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';

const SCRIPT = new URL('../../../scripts/fuzz.mjs', import.meta.url).pathname;
const SECONDS = Number(process.env.VFU_FUZZ_SECONDS ?? 3);

function run(target: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [SCRIPT, target, `--time=${SECONDS}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('exit', (code) => resolve({ code, out }));
  });
}

export function smoke(target: string): void {
  test(`fuzz target ${target}: ${SECONDS} s of Jazzer.js without a finding`, { timeout: 170_000 }, async () => {
    const { code, out } = await run(target);
    assert.equal(code, 0, out.slice(-6000));
    const m = new RegExp(`fuzz ${target}: ok, (\\d+) executions`).exec(out);
    assert.ok(m, `no summary line:\n${out.slice(-3000)}`);
    assert.ok(Number(m[1]) > 50, `only ${m[1]} executions`);
  });
}
