/**
 * virtio-blk from inside a Linux guest: our virtio-blk over vfio-user and QEMU's built-in
 * virtio-blk-pci as two disks of the same guest (1 vCPU, shared RAM), each over its own fresh
 * 64 MiB raw image in the same directory, with the same host cache mode (the page cache: our
 * server does buffered I/O and fdatasync on FLUSH; QEMU gets cache=writeback). fio (libaio,
 * O_DIRECT) in the guest runs every job on one disk then the other, twice: 4 KiB random and
 * 128 KiB sequential reads and writes at QD 1 and 32. Needs VFU_GUEST_RUN (see
 * test/interop/README.md). Under TCG the guest CPU weighs on both: compare the columns.
 *
 * Per I/O, for our disk: the server's CPU time (utime + stime from /proc, read when each job
 * starts and ends on the guest's console, so fio's 1 s ramp is counted too) divided by the
 * I/Os done over the job's whole time (IOPS x (runtime + ramp)).
 *
 * Usage: VFU_GUEST_RUN=... node dist/bench/virtio/guest.js [--seconds=4] [--doorbells=trap|mmap]
 */
import { mkdtempSync, rmSync, writeFileSync, truncateSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { serveChild } from '../../test/helpers.js';
import { guestRunner, guestScript, runGuest } from '../../test/interop/guest-run.js';

const SCRIPT = guestScript('virtio-blk-bench.sh');
const { values } = parseArgs({ options: { seconds: { type: 'string' }, doorbells: { type: 'string' } } });
/** our device's notifications: trap (default) or mmap (the polled notify page) */
const doorbells = values.doorbells ?? 'trap';
const seconds = Number(values.seconds ?? 4);
/** fio's --ramp_time in the guest script */
const RAMP = 1;

interface Result {
  iops: number;
  mbs: number;
  latUs: number;
  /** server CPU µs per I/O (ours only) */
  cpuUs?: number | undefined;
}

/** a process's CPU seconds (utime + stime) */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** fio's JSON per job and disk (averaged over the rounds), between the guest script's markers */
function parse(out: string, cpu: number[]): Map<string, Map<string, Result>> {
  const all = new Map<string, Map<string, Result[]>>();
  const re = /VBLKBENCH-BEGIN (\S+) (\S+) (\S+) (\S+)\r?\n([\s\S]*?)VBLKBENCH-END/g;
  let nth = -1;
  for (let r = re.exec(out); r; r = re.exec(out)) {
    nth++;
    const body = r[5]!;
    try {
      const j = JSON.parse(body.slice(body.indexOf('{'), body.lastIndexOf('}') + 1)) as { jobs: { read: Record<string, unknown>; write: Record<string, unknown> }[] };
      const side = r[2]!.includes('write') ? j.jobs[0]!.write : j.jobs[0]!.read;
      const key = `${r[2]} ${r[3]} QD${r[4]}`;
      const per = all.get(r[1]!) ?? new Map<string, Result[]>();
      all.set(r[1]!, per);
      const iops = side.iops as number;
      const ios = iops * (seconds + RAMP);
      per.set(key, [
        ...(per.get(key) ?? []),
        { iops, mbs: ((side.bw as number) * 1024) / 1e6, latUs: (side.clat_ns as { mean: number }).mean / 1000, cpuUs: cpu[nth] !== undefined && ios > 0 ? (cpu[nth]! * 1e6) / ios : undefined },
      ]);
    } catch {
      /* a job whose output was garbled: left out */
    }
  }
  const mean = (v: number[]): number | undefined => (v.length ? v.reduce((n, x) => n + x, 0) / v.length : undefined);
  const avg = (rs: Result[]): Result => ({
    iops: mean(rs.map((x) => x.iops))!,
    mbs: mean(rs.map((x) => x.mbs))!,
    latUs: mean(rs.map((x) => x.latUs))!,
    cpuUs: mean(rs.flatMap((x) => (x.cpuUs === undefined ? [] : [x.cpuUs]))),
  });
  return new Map([...all].map(([dev, per]) => [dev, new Map([...per].map(([k, rs]) => [k, avg(rs)]))]));
}

async function main(): Promise<void> {
  if (!guestRunner) {
    console.log('VFU_GUEST_RUN not set: no guest to measure in (see test/interop/README.md)');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vfu-virtio-guest-'));
  const srv = await serveChild('virtio-blk', [`--image=${join(dir, 'ours.img')}`, '--size=64M', '--serial=VFU-BENCH', '-q', `--doorbells=${doorbells}`]);
  const qemuImage = join(dir, 'qemu.img');
  writeFileSync(qemuImage, '');
  truncateSync(qemuImage, 64 << 20);
  // the server's CPU time over each job, in the order the jobs run (ours and QEMU's alike)
  const pid = srv.child.pid!;
  const cpu: number[] = [];
  let cpu0 = 0;
  const onLine = (l: string): void => {
    if (l.includes('VBLKBENCH-BEGIN')) cpu0 = cpuSeconds(pid);
    else if (l.includes('VBLKBENCH-END')) cpu.push(cpuSeconds(pid) - cpu0);
  };
  const g = await runGuest([srv.path], SCRIPT, ['-M', '-k', `vblk_rt=${seconds}`], 120 + 40 * seconds * 2, [
    '-drive', `file=${qemuImage},if=none,id=d0,format=raw,cache=writeback,aio=threads`,
    '-device', 'virtio-blk-pci,drive=d0,num-queues=1,serial=QEMU-BENCH',
  ], onLine);
  await srv.stop();
  rmSync(dir, { recursive: true, force: true });
  if (g.code !== 0) {
    console.log(`guest run failed (${g.code})\n${g.out.slice(-3000)}`);
    process.exitCode = 1;
    return;
  }
  const m = parse(g.out, cpu);
  const a = m.get('ours') ?? new Map<string, Result>();
  const b = m.get('qemu') ?? new Map<string, Result>();
  console.log(`guest fio, libaio O_DIRECT, ${seconds} s per job, each job alternately on both disks twice (mean), 1 vCPU TCG, page cache on the host; our notifications: ${doorbells}`);
  console.log(`${'job'.padEnd(20)} ${'ours (vfio-user)'.padStart(30)} ${'QEMU virtio-blk-pci'.padStart(30)}  ratio (IOPS)  our server CPU per I/O`);
  for (const [k, x] of a) {
    const y = b.get(k);
    const fmt = (r: Result | undefined): string => (r ? `${Math.round(r.iops)} IOPS ${r.mbs.toFixed(1)} MB/s ${Math.round(r.latUs)} us` : 'n/a').padStart(30);
    const cpuUs = x.cpuUs === undefined ? '-' : `${x.cpuUs.toFixed(1)} us`;
    console.log(`${k.padEnd(20)} ${fmt(x)} ${fmt(y)}  ${(y ? (x.iops / y.iops).toFixed(2) : '-').padStart(12)}  ${cpuUs.padStart(10)}`);
  }
  const qemuCpu = cpu.filter((_, i) => i % 2 === 1);
  if (qemuCpu.length) console.log(`our server's CPU while QEMU's disk ran (idle cost): ${(qemuCpu.reduce((n, x) => n + x, 0) / qemuCpu.length).toFixed(3)} s per ${seconds + RAMP} s job`);
}

await main();
