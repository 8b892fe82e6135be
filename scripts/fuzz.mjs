// Runs one coverage-guided fuzz target (fuzz/targets/<name>.ts) with Jazzer.js (libFuzzer).
// Usage: npm run fuzz -- <target|all> [--time=S] [--runs=N] [--save] [-- <libFuzzer flags>]
//        npm run fuzz -- --seed      (rewrites the seed corpora from the fixtures: fuzz/seed.ts)
//   --time=S   stop after S seconds (default 60; per target with "all")
//   --runs=N   stop after N executions
//   --save     keep new interesting inputs in fuzz/corpus/<target>/ (default: a temp dir)
//   --work=DIR keep them in DIR/<target>/ instead (campaigns; merge the best into the repo later)
// The repo corpus fuzz/corpus/<target>/ seeds every run. Findings (crash-*, timeout-*) go
// to fuzz/findings/<target>/; the exit status is non-zero when there is one. Only dist/src/
// is instrumented (coverage = edges of the library, not of the harness).
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const root = new URL('..', import.meta.url).pathname;
const require = createRequire(import.meta.url);
// sync: the target returns no promise (Jazzer's faster synchronous mode)
export const TARGETS = {
  codec: { sync: true },
  server: { sync: false },
  nvme: { sync: false },
  migration: { sync: false },
  client: { sync: false },
  virtio: { sync: false },
};

const args = process.argv.slice(2);
const dash = args.indexOf('--');
const extra = dash >= 0 ? args.slice(dash + 1) : [];
const own = dash >= 0 ? args.slice(0, dash) : args;
const opt = (name) => own.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const names = own.filter((a) => !a.startsWith('--'));
if (own.includes('--seed')) {
  // regenerate the seed corpora (fuzz/seed.ts)
  process.exit(spawnSync(process.execPath, [join(root, 'dist/fuzz/seed.js')], { stdio: 'inherit' }).status ?? 1);
}
if (names.length !== 1 || !(names[0] === 'all' || names[0] in TARGETS)) {
  console.error(`usage: npm run fuzz -- <${Object.keys(TARGETS).join('|')}|all> [--time=S] [--runs=N] [--save] [-- libFuzzer flags]`);
  process.exit(2);
}
const time = Number(opt('time') ?? 60);
const runs = opt('runs');
const save = own.includes('--save');
const workRoot = opt('work');

function prepare() {
  const r = spawnSyncNode([join(root, 'scripts/jazzer-prebuild.mjs')]);
  if (r !== 0) process.exit(1);
}

function spawnSyncNode(argv) {
  return spawnSync(process.execPath, argv, { stdio: 'inherit' }).status;
}

function runTarget(name) {
  const corpus = join(root, 'fuzz/corpus', name);
  mkdirSync(corpus, { recursive: true });
  const findings = join(root, 'fuzz/findings', name) + '/';
  mkdirSync(findings, { recursive: true });
  const work = save ? corpus : workRoot ? join(workRoot, name) : mkdtempSync(join(tmpdir(), `vfu-fuzz-${name}-`));
  mkdirSync(work, { recursive: true });
  const target = join(root, 'dist/fuzz/targets', `${name}.js`);
  if (!existsSync(target)) {
    console.error(`fuzz: ${target} missing (npm run fuzz compiles first)`);
    process.exit(1);
  }
  const jazzer = require.resolve('@jazzer.js/core/dist/cli.js');
  const argv = [
    jazzer, target, work, ...(save ? [] : [corpus]),
    '-i', '/dist/src/',
    '--timeout=10000',
    ...(TARGETS[name].sync ? ['--sync'] : []),
    '--',
    `-max_total_time=${time}`,
    ...(runs ? [`-runs=${runs}`] : []),
    `-artifact_prefix=${findings}`,
    '-max_len=8192',
    '-print_final_stats=1',
    ...extra,
  ];
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, argv, { stdio: ['ignore', 'inherit', 'pipe'] });
    let last = '';
    let tail = '';
    let partial = '';
    child.stderr.on('data', (d) => {
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop();
      for (const line of lines) {
        tail = (tail + line + '\n').slice(-20000);
        if (/^#\d+\s+(INITED|DONE|pulse)/.test(line)) last = line;
        // keep the log short: no NEW/REDUCE lines, no dictionary
        if (/^#\d+\s+(NEW|REDUCE)/.test(line) || /^"/.test(line) || /^#{6} /.test(line) || line === '') continue;
        process.stderr.write(line + '\n');
      }
    });
    // 'close', not 'exit': the final stats may still be in the pipe when the process exits
    child.on('close', (code, signal) => {
      if (partial) tail = (tail + partial + '\n').slice(-20000);
      if (!save && !workRoot) rmSync(work, { recursive: true, force: true });
      // libFuzzer's final stats; else the count on its last status line (#N DONE)
      const execs = /stat::number_of_executed_units:\s*(\d+)/.exec(tail)?.[1] ?? /^#(\d+)/.exec(last)?.[1] ?? '?';
      const cov = /cov: (\d+) ft: (\d+)/.exec(last);
      const secs = ((Date.now() - started) / 1000).toFixed(1);
      const ok = code === 0;
      console.log(`fuzz ${name}: ${ok ? 'ok' : `FAILED (exit ${code ?? signal})`}, ${execs} executions in ${secs} s, cov ${cov?.[1] ?? '?'} ft ${cov?.[2] ?? '?'}`);
      if (!ok) console.log(`fuzz ${name}: findings in ${findings}: ${readdirSync(findings).join(' ') || '(none written)'}`);
      resolve(ok);
    });
  });
}

prepare();
let failed = 0;
for (const name of names[0] === 'all' ? Object.keys(TARGETS) : names) if (!(await runTarget(name))) failed++;
process.exit(failed ? 1 : 0);
