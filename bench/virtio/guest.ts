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
 * With --doorbells=both, two servers of ours (trapped notify writes, and the mmap-ed notify
 * page with its sleeping poller) are two more disks of the same guest beside QEMU's: each job
 * runs on the three in turn, so one run gives both ratios. --only=4k runs the 4 KiB jobs only.
 * With --unshared the guest RAM is not shared (every DMA of ours is a message; the notify page
 * is device memory and is mapped all the same).
 *
 * --cpu-prof-dir=DIR: our servers run under node --cpu-prof and leave their profiles in DIR.
 * --vs-env=K=V[,K=V...]: a second disk of ours (trapped notify) whose server runs with these
 * environment variables (e.g. VFU_SPIN_US=0, VFU_FAST_PATH=0), in the same rounds.
 *
 * Usage: VFU_GUEST_RUN=... node dist/bench/virtio/guest.js [--seconds=4] [--doorbells=trap|mmap|both] [--only=4k] [--unshared] [--cpu-prof-dir=DIR]
 */
import { mkdtempSync, rmSync, writeFileSync, truncateSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CLI } from '../../test/helpers.js';
import { spawnServer } from '../../src/testing/index.js';
import { guestRunner, guestScript, runGuest } from '../../test/interop/guest-run.js';

const SCRIPT = guestScript('virtio-blk-bench.sh');
const { values } = parseArgs({ options: { seconds: { type: 'string' }, doorbells: { type: 'string' }, only: { type: 'string' }, unshared: { type: 'boolean' }, 'cpu-prof-dir': { type: 'string' }, 'vs-env': { type: 'string' } } });
/** our device's notifications: trap (default), mmap (the polled notify page), or both (two disks of ours) */
const doorbells = values.doorbells ?? 'trap';
if (!['trap', 'mmap', 'both'].includes(doorbells)) throw new Error(`--doorbells=${doorbells}: trap, mmap or both`);
if (values.only !== undefined && values.only !== '4k') throw new Error(`--only=${values.only}: only 4k`);
if (doorbells === 'both' && values['vs-env']) throw new Error('--vs-env takes the place of --doorbells=both');
const vsEnv = values['vs-env'] ? Object.fromEntries(values['vs-env'].split(',').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)])) : undefined;
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
  // our disks: the guest names them by serial, 'ours' (VFU-BENCH) and 'ours2' (VFU-BENCH2)
  const variants: { label: string; mode: string; env?: Record<string, string> }[] = doorbells === 'both'
    ? [{ label: 'notify trap', mode: 'trap' }, { label: 'notify mmap', mode: 'mmap' }]
    : [{ label: `notify ${doorbells}`, mode: doorbells }, ...(vsEnv ? [{ label: values['vs-env']!, mode: doorbells, env: vsEnv }] : [])];
  const nodeArgs = values['cpu-prof-dir'] ? ['--cpu-prof', `--cpu-prof-dir=${values['cpu-prof-dir']}`] : [];
  const servers = await Promise.all(variants.map((v, i) => spawnServer([...nodeArgs, CLI, 'serve', 'virtio-blk',
    `--image=${join(dir, `ours${i}.img`)}`, '--size=64M', `--serial=${i ? 'VFU-BENCH2' : 'VFU-BENCH'}`, '-q', `--doorbells=${v.mode}`,
  ], { name: 'virtio-blk', ...(v.env && { env: v.env }) })));
  const qemuImage = join(dir, 'qemu.img');
  writeFileSync(qemuImage, '');
  truncateSync(qemuImage, 64 << 20);
  // each server's CPU time over each job, in the order the jobs run (while QEMU's disk runs: the idle cost)
  const cpu: number[] = [];
  let cpu0: number[] = [];
  let serverOf = 0;
  const onLine = (l: string): void => {
    const begin = /VBLKBENCH-BEGIN (\S+)/.exec(l);
    if (begin) {
      cpu0 = servers.map((x) => cpuSeconds(x.child.pid!));
      serverOf = begin[1] === 'ours2' ? 1 : 0;
    } else if (l.includes('VBLKBENCH-END')) cpu.push(cpuSeconds(servers[serverOf]!.child.pid!) - cpu0[serverOf]!);
  };
  const rounds = values.only ? 4 : 8;
  const g = await runGuest(servers.map((x) => x.path), SCRIPT, [
    ...(values.unshared ? [] : ['-M']), '-k', `vblk_rt=${seconds}${values.only ? ` vblk_only=${values.only}` : ''}`,
  ], 120 + 10 * rounds * (servers.length + 1) * (seconds + RAMP + 2), [
    '-drive', `file=${qemuImage},if=none,id=d0,format=raw,cache=writeback,aio=threads`,
    '-device', 'virtio-blk-pci,drive=d0,num-queues=1,serial=QEMU-BENCH',
  ], onLine);
  await Promise.all(servers.map((x) => x.stop()));
  rmSync(dir, { recursive: true, force: true });
  if (g.code !== 0) {
    console.log(`guest run failed (${g.code})\n${g.out.slice(-3000)}`);
    process.exitCode = 1;
    return;
  }
  const m = parse(g.out, cpu);
  const b = m.get('qemu') ?? new Map<string, Result>();
  const ours = variants.map((v, i) => ({ label: v.label, r: m.get(i ? 'ours2' : 'ours') ?? new Map<string, Result>() }));
  console.log(`guest fio, libaio O_DIRECT, ${seconds} s per job, each job on every disk in turn, twice (mean), 1 vCPU TCG, ${values.unshared ? 'unshared' : 'shared'} guest RAM, page cache on the host`);
  const fmt = (r: Result | undefined): string => (r ? `${Math.round(r.iops)} IOPS ${r.mbs.toFixed(1)} MB/s ${Math.round(r.latUs)} us` : 'n/a').padStart(30);
  console.log(`${'job'.padEnd(20)} ${ours.map((o) => `ours, ${o.label}`.padStart(30)).join(' ')} ${'QEMU virtio-blk-pci'.padStart(30)}  ${ours.map((o) => `ratio ${ours.indexOf(o) + 1}`.padStart(10)).join(' ')}  ${ours.map((o) => `CPU/IO ${ours.indexOf(o) + 1}`.padStart(12)).join(' ')}`);
  for (const k of b.keys()) {
    const y = b.get(k);
    const xs = ours.map((o) => o.r.get(k));
    const ratio = (x: Result | undefined): string => (x && y ? (x.iops / y.iops).toFixed(2) : '-').padStart(10);
    const cpuUs = (x: Result | undefined): string => (x?.cpuUs === undefined ? '-' : `${x.cpuUs.toFixed(1)} us`).padStart(12);
    console.log(`${k.padEnd(20)} ${xs.map(fmt).join(' ')} ${fmt(y)}  ${xs.map(ratio).join(' ')}  ${xs.map(cpuUs).join(' ')}`);
  }
  const per = servers.length + 1;
  const qemuCpu = cpu.filter((_, i) => i % per === per - 1);
  if (qemuCpu.length) console.log(`our first server's CPU while QEMU's disk ran (idle cost): ${(qemuCpu.reduce((n, x) => n + x, 0) / qemuCpu.length).toFixed(3)} s per ${seconds + RAMP} s job`);
}

await main();
