/**
 * Several devices in one process, one worker thread each (issue 15): aggregate depth-16
 * REGION_READ throughput of N = 1, 2, 4 GPIO devices served by one process, each timed by its
 * own vfu-bench client (all clients at once); the process's RSS with N devices and its CPU
 * time while idle. Nothing is pinned (N devices need the cores); runs alternate N = 1, 2, 4
 * `rounds` times, so the figures of one run compare.
 *
 * Usage: node dist/bench/threads.js [N requests per client] [rounds] [--counts=1,2,4]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { buildTools, resultField } from './util.js';
import { DeviceThreads } from '../src/server/threads.js';

const MODULE = new URL('./gpio-module.js', import.meta.url);

function statCpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

function rssMiB(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) / 1024 : NaN;
}

async function serveN(n: number, dir: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [new URL(import.meta.url).pathname, `--serve=${n}`, `--dir=${dir}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (l) => l === 'ready' && resolve());
    child.once('exit', (c) => reject(new Error(`server exited ${c}`)));
  });
  return child;
}

function runBench(tools: string, path: string, n: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn(`${tools}/vfu-bench`, ['-r', '2', '-o', '0', '-c', '1', '-d', '16', '-n', String(n), path], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.once('exit', (code) => (code === 0 ? resolve(resultField(out, 'req_per_sec')) : reject(new Error(`vfu-bench ${code}`))));
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
  const n = Number(args[0] ?? 200000);
  const rounds = Number(args[1] ?? 3);
  const counts = (process.argv.find((a) => a.startsWith('--counts='))?.slice(9) ?? '1,2,4').split(',').map(Number);
  const tools = buildTools();
  const res = new Map<number, { rps: number[]; rss: number; idleCpuMs: number }>();
  for (let r = 0; r < rounds; r++) {
    for (const c of counts) {
      const dir = mkdtempSync(join(tmpdir(), 'vfu-threads-'));
      const child = await serveN(c, dir);
      const pid = child.pid!;
      await new Promise((s) => setTimeout(s, 300));
      const cpu0 = statCpuMs(pid);
      await new Promise((s) => setTimeout(s, 2000));
      const idleCpuMs = statCpuMs(pid) - cpu0;
      const rss = rssMiB(pid);
      const rps = await Promise.all(Array.from({ length: c }, (_, i) => runBench(tools, join(dir, `dev${i}.sock`), n)));
      child.kill('SIGTERM');
      await new Promise((s) => child.once('exit', s));
      rmSync(dir, { recursive: true, force: true });
      const total = rps.reduce((a, b) => a + b, 0);
      const e = res.get(c) ?? { rps: [], rss, idleCpuMs };
      e.rps.push(total);
      e.rss = Math.max(e.rss, rss);
      e.idleCpuMs = Math.max(e.idleCpuMs, idleCpuMs);
      res.set(c, e);
      console.log(`round ${r + 1} N=${c}: ${Math.round(total)} req/s total (${rps.map((x) => Math.round(x)).join(' + ')}), RSS ${rss.toFixed(1)} MiB, idle CPU ${idleCpuMs} ms in 2 s`);
    }
  }
  const one = res.get(counts[0]!)!;
  const base = one.rps.reduce((a, b) => a + b, 0) / one.rps.length;
  console.log('\n| devices (threads) | aggregate depth-16 req/s (mean) | vs 1 | RSS MiB | idle CPU ms / 2 s |');
  console.log('|---|---|---|---|---|');
  for (const [c, e] of res) {
    const mean = e.rps.reduce((a, b) => a + b, 0) / e.rps.length;
    console.log(`| ${c} | ${Math.round(mean).toLocaleString('en-US')} | ${(mean / base).toFixed(2)} | ${e.rss.toFixed(1)} | ${e.idleCpuMs} |`);
  }
}

const serveArg = process.argv.find((a) => a.startsWith('--serve='));
if (serveArg) {
  const count = Number(serveArg.slice(8));
  const dir = process.argv.find((a) => a.startsWith('--dir='))!.slice(6);
  const host = new DeviceThreads();
  for (let i = 0; i < count; i++) await host.add({ name: `dev${i}`, module: MODULE, socketPath: join(dir, `dev${i}.sock`) });
  process.once('SIGTERM', () => void host.close().then(() => process.exit(0)));
  console.log('ready');
} else if (process.argv[1] === new URL(import.meta.url).pathname) {
  await main();
}
