/**
 * NVMe benchmark (not a test): the in-test NVMe driver against `vfio-user serve nvme` in a
 * child process, both pinned to CPU 0 (taskset), for each doorbell mechanism:
 *   trap/posted  trapped REGION_WRITE doorbells sent without waiting for a reply (QEMU's
 *                default when no region is mappable)
 *   trap/sync    trapped REGION_WRITE doorbells, each waiting for its reply (what QEMU does
 *                once any region is mappable: posted writes are turned off)
 *   mmap/poll    doorbells written to the mmap-ed page, which the server polls
 *   shadow       shadow doorbells + EventIdx (Doorbell Buffer Config) over trapped posted
 *                writes: the driver rings only when the EventIdx asks, the server polls the
 *                shadows while I/O flows and sleeps when it stops
 *   unshared     trapped posted doorbells, guest memory mapped without an fd: every access is
 *                a DMA_READ / DMA_WRITE message (QEMU without -M), sent on the twin socket
 *   unshared-1   the same on the main socket, as QEMU does (it does not offer twin-socket mode)
 * Workloads: 4 KiB random read / write, 128 KiB sequential read / write, at QD 1 and 32.
 * Per I/O: the server's CPU time (/proc/PID/stat), messages (doorbell writes sent plus
 * interrupts received by the driver), the server's DMA_READ / DMA_WRITE requests (answered by
 * the driver's client) and server wake-ups (voluntary context switches).
 *
 *   node dist/bench/nvme/run.js [--seconds=2] [--size=256M] [--modes=trap-posted,shadow,trap-sync,mmap,unshared,unshared-1]
 *        [--poll-us=N] [--idle=S] [--jobs=SUBSTRING,...] [--prof=DIR]
 *   --idle: the server's CPU time over S idle seconds per mode; --jobs: only jobs whose
 *   "name QDn" contains one of the substrings (e.g. --jobs="4K QD1"); --prof=DIR: the server
 *   runs with node --cpu-prof, profiles in DIR
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { VfioUserClient } from '../../src/client/client.js';
import { serveChild } from '../../test/helpers.js';
import { NvmeDriver } from '../../src/testing/index.js';

const { values } = parseArgs({
  options: { seconds: { type: 'string' }, size: { type: 'string' }, modes: { type: 'string' }, 'poll-us': { type: 'string' }, idle: { type: 'string' }, jobs: { type: 'string' }, prof: { type: 'string' } },
});
const idleSeconds = Number(values.idle ?? 0);
const seconds = Number(values.seconds ?? 2);
const sizeArg = values.size ?? '256M';
const modes = (values.modes ?? 'trap-posted,shadow,trap-sync,mmap,unshared').split(',');
const jobFilter = values.jobs?.split(',');

/** the server's CPU seconds and voluntary context switches (its wake-ups from sleep) */
function serverStats(pid: number): { cpu: number; wakeups: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  let wakeups = 0;
  const st = readFileSync(`/proc/${pid}/status`, 'utf8').match(/voluntary_ctxt_switches:\s+(\d+)/);
  if (st) wakeups = Number(st[1]);
  return { cpu: (Number(rest[11]) + Number(rest[12])) / 100, wakeups };
}

function messages(d: NvmeDriver): number {
  let irqs = 0;
  for (const n of d.interrupts.values()) irqs += n;
  return d.doorbellStats.rung + irqs;
}

// pin ourselves to CPU 0 too: re-exec under taskset once
if (!process.env.VFU_BENCH_PINNED) {
  const r = spawnSync('taskset', ['-c', '0', process.execPath, ...process.argv.slice(1)], { stdio: 'inherit', env: { ...process.env, VFU_BENCH_PINNED: '1' } });
  if (r.error) {
    process.stderr.write(`taskset unavailable (${r.error.message}); running unpinned\n`);
    process.env.VFU_BENCH_PINNED = '0';
  } else process.exit(r.status ?? 1);
}

interface Job {
  name: string;
  op: 'read' | 'write';
  bs: number;
  qd: number;
  random: boolean;
}

const ALL_JOBS: Job[] = [
  { name: 'seq write 128K', op: 'write', bs: 128 << 10, qd: 32, random: false },
  { name: 'seq write 128K', op: 'write', bs: 128 << 10, qd: 1, random: false },
  { name: 'seq read 128K', op: 'read', bs: 128 << 10, qd: 1, random: false },
  { name: 'seq read 128K', op: 'read', bs: 128 << 10, qd: 32, random: false },
  { name: 'rand read 4K', op: 'read', bs: 4096, qd: 1, random: true },
  { name: 'rand read 4K', op: 'read', bs: 4096, qd: 32, random: true },
  { name: 'rand write 4K', op: 'write', bs: 4096, qd: 1, random: true },
  { name: 'rand write 4K', op: 'write', bs: 4096, qd: 32, random: true },
];

const JOBS = ALL_JOBS.filter((j) => !jobFilter || jobFilter.some((f) => `${j.name} QD${j.qd}`.includes(f)));

interface Result {
  iops: number;
  mbs: number;
  latUs: number;
  ops: number;
}

async function runJob(d: NvmeDriver, job: Job, blocks: number): Promise<Result> {
  const nlb = job.bs / d.lbaSize;
  const slots = Math.floor(blocks / nlb);
  let next = 0;
  let ops = 0;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  let x = 12345;
  const workers = Array.from({ length: job.qd }, async () => {
    const buf = d.alloc(job.bs);
    const pages = Array.from({ length: job.bs / 4096 }, (_, i) => buf + i * 4096);
    const dptr = d.prps(pages, job.bs);
    d.at(buf, job.bs).fill(0xa5);
    while (performance.now() < end) {
      let slot: number;
      if (job.random) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        slot = (x >>> 0) % slots;
      } else slot = next++ % slots;
      const c = await d.rw(job.op, 1, slot * nlb, nlb, dptr);
      if (c.status) throw new Error(`I/O failed: 0x${c.status.toString(16)}`);
      ops++;
    }
  });
  await Promise.all(workers);
  const dt = (performance.now() - t0) / 1000;
  return { iops: ops / dt, mbs: (ops * job.bs) / dt / 1e6, latUs: (dt / ops) * job.qd * 1e6, ops };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-bench-'));
  const rows: string[][] = [];
  const idle: string[] = [];
  try {
    for (const mode of modes) {
      const image = join(dir, `${mode}.img`);
      const extra = [...(mode.startsWith('mmap') ? ['--doorbells=mmap'] : []), ...(values['poll-us'] ? [`--poll-us=${values['poll-us']}`] : [])];
      const srv = await serveChild('nvme', [`--image=${image}`, `--size=${sizeArg}`, '--quiet', ...extra], {
        taskset: '0',
        nodeArgs: values.prof ? ['--cpu-prof', `--cpu-prof-dir=${values.prof}`] : [],
      });
      const pid = srv.child.pid!;
      let dmaMsgs = 0;
      const client = await VfioUserClient.connect(srv.path, { twinSocket: mode !== 'unshared-1', beforeDma: () => void dmaMsgs++ });
      const d = await NvmeDriver.attach(client, { memSize: 64 << 20, posted: mode !== 'trap-sync', mmapDoorbells: mode.startsWith('mmap'), shared: !mode.startsWith('unshared') });
      await d.init({ queues: 1, depth: 64, shadow: mode === 'shadow' || mode === 'mmap-shadow' });
      const blocks = d.nsBlocks;
      for (const job of JOBS) {
        const s0 = serverStats(pid);
        const m0 = messages(d);
        const dma0 = dmaMsgs;
        const r = await runJob(d, job, blocks);
        const s1 = serverStats(pid);
        const per = (x: number): string => (x / r.ops).toFixed(2);
        rows.push([mode, job.name, String(job.qd), r.iops.toFixed(0), r.mbs.toFixed(1), r.latUs.toFixed(1), ((s1.cpu - s0.cpu) / r.ops * 1e6).toFixed(1), per(messages(d) - m0), per(dmaMsgs - dma0), per(s1.wakeups - s0.wakeups)]);
        process.stderr.write(`${rows[rows.length - 1]!.join('\t')}\n`);
      }
      if (idleSeconds > 0) {
        const s0 = serverStats(pid);
        await new Promise((res) => setTimeout(res, idleSeconds * 1000));
        const s1 = serverStats(pid);
        idle.push(`${mode}: ${((s1.cpu - s0.cpu) * 1000).toFixed(0)} ms CPU, ${s1.wakeups - s0.wakeups} wake-ups over ${idleSeconds} idle s`);
      }
      d.close();
      client.close();
      await srv.stop();
      d.mem.free();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const head = ['doorbells', 'workload', 'QD', 'IOPS', 'MB/s', 'lat us', 'srv us/IO', 'msgs/IO', 'DMA/IO', 'wakeups/IO'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string => r.map((c, i) => (i >= 2 ? c.padStart(w[i]!) : c.padEnd(w[i]!))).join('  ');
  console.log(`\nNVMe over vfio-user, server and driver pinned to CPU 0, ${seconds} s per job, image ${sizeArg}`);
  console.log(line(head));
  console.log(w.map((n) => '-'.repeat(n)).join('  '));
  for (const r of rows) console.log(line(r));
  for (const l of idle) console.log(l);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
