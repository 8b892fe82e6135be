/**
 * DMA_MAP + DMA_UNMAP round trips (issue 11): what QEMU's vfio-user client costs a guest with a
 * vIOMMU (strict), one synchronous DMA_MAP and one DMA_UNMAP per 4 KiB page of every I/O,
 * against our server and libvfio-user's gpio-pci-idio-16 sample (which registers DMA with
 * callbacks that do nothing), in one run. The neutral C client bench/dmamap-client.c (built
 * here with cc into a temp dir) maps one page at a varying IOVA with the same sealed memfd
 * each time (a fresh fd number per message), then unmaps it; or without an fd (guest RAM
 * not shared); or 32 maps then 32 unmaps (a 128 KiB I/O). Servers on CPU 0; the client on
 * CPU 0 too (same CPU) or on CPU 1 (across CPUs). Every configuration runs on each server in
 * turn, `rounds` times, so all see the same machine; the table shows the means over rounds.
 * Besides the client's round trips: the server's CPU time per message and how often it was
 * scheduled in per message (all its threads, from /proc/PID/task/T/schedstat; a spin that
 * catches the next message costs CPU but no wake-up; on one CPU the server yields to the
 * client after every reply, so about 1 there).
 *
 * Usage: VFU_LIBVFIO_USER_SAMPLES=.../build/samples node dist/bench/dmamap.js [N] [rounds]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runTool, resultField, startComparedServers } from './util.js';

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;
const CLIENT_SRC = new URL('../../bench/dmamap-client.c', import.meta.url).pathname;

/** The server's CPU time (ns) and times it was scheduled in, all its threads (/proc schedstat). */
function sched(pid: number): { ns: number; runs: number } {
  let ns = 0;
  let runs = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    const [cpu, , slices] = readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
    ns += cpu!;
    runs += slices!;
  }
  return { ns, runs };
}

async function main(): Promise<void> {
  const samples = process.env.VFU_LIBVFIO_USER_SAMPLES;
  if (!samples) throw new Error('VFU_LIBVFIO_USER_SAMPLES is not set (libvfio-user build/samples)');
  const n = Number(process.argv[2] ?? 20000);
  const rounds = Number(process.argv[3] ?? 3);
  const dir = mkdtempSync(join(tmpdir(), 'vfu-dmamap-'));
  const client = join(dir, 'dmamap-client');
  execFileSync('cc', ['-O2', '-Wall', '-o', client, CLIENT_SRC], { stdio: 'inherit' });
  const servers = await startComparedServers(CLI, 'nvme', samples, dir, true);
  try {
    const configs = [
      { cpu: '0', label: 'same CPU' },
      { cpu: '1', label: 'across CPUs' },
    ];
    const modes = [
      { label: 'map+unmap, fd', args: [] as string[] },
      { label: 'map+unmap, no fd', args: ['-F'] },
      { label: 'burst 32, fd', args: ['-b'] },
      { label: 'burst 32, no fd', args: ['-b', '-F'] },
    ];
    const fields = [
      { f: 'map_mean_us', label: 'DMA_MAP mean µs' },
      { f: 'unmap_mean_us', label: 'DMA_UNMAP mean µs' },
      { f: 'mean_us', label: 'per message mean µs' },
      { f: 'p50_us', label: 'per message p50 µs' },
      { f: 'cpu', label: 'server CPU µs per message' },
      { f: 'runs', label: 'server scheduled in, per message' },
    ];
    const acc = new Map<string, number[]>();
    for (let r = 0; r < rounds; r++) {
      for (const c of configs) {
        for (const m of modes) {
          const line: string[] = [];
          for (const s of servers) {
            const iters = m.args.includes('-b') ? Math.ceil(n / 32) : n;
            const before = sched(s.child.pid!);
            const out = runTool(['taskset', '-c', c.cpu, client, '-n', String(c.cpu === '0' ? iters : Math.ceil(iters / 4)), ...m.args, s.path]);
            const after = sched(s.child.pid!);
            const msgs = resultField(out, 'messages');
            const got: Record<string, number> = { cpu: (after.ns - before.ns) / 1000 / msgs, runs: (after.runs - before.runs) / msgs };
            for (const { f } of fields) {
              const key = `${c.label}|${m.label}|${f}|${s.name}`;
              acc.set(key, [...(acc.get(key) ?? []), got[f] ?? resultField(out, f)]);
            }
            line.push(`${s.name} ${resultField(out, 'mean_us')}/${resultField(out, 'p50_us')}`);
          }
          console.log(`round ${r + 1} ${c.label} ${m.label} (mean/p50 µs per message): ${line.join(', ')}`);
        }
      }
    }
    const mean = (k: string): number => {
      const a = acc.get(k)!;
      return a.reduce((x, y) => x + y, 0) / a.length;
    };
    console.log(`\n| placement | variant | measure | ${servers.map((s) => s.name).join(' | ')} | ${servers.slice(0, -1).map((s) => `${s.name} / libvfio-user`).join(' | ')} |`);
    console.log(`|---|---|---|${servers.map(() => '---|').join('')}${servers.slice(0, -1).map(() => '---|').join('')}`);
    for (const c of configs) {
      for (const m of modes) {
        for (const { f, label } of fields) {
          const v = servers.map((s) => mean(`${c.label}|${m.label}|${f}|${s.name}`));
          const ref = v[v.length - 1]!;
          console.log(`| ${c.label} | ${m.label} | ${label} | ${v.map((x) => x.toFixed(2)).join(' | ')} | ${v.slice(0, -1).map((x) => (x / ref).toFixed(2)).join(' | ')} |`);
        }
      }
    }
  } finally {
    for (const s of servers) s.child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
