/**
 * virtio-blk from inside a Linux guest, in one run: our virtio-blk over vfio-user vs QEMU's
 * built-in virtio-blk-pci, on the same raw image with the same host cache mode (the page
 * cache: our server does buffered I/O and fdatasync on FLUSH; QEMU gets cache=writeback),
 * the same guest (1 vCPU, shared RAM), and fio (libaio, O_DIRECT) in the guest: 4 KiB random
 * and 128 KiB sequential reads and writes at QD 1 and 32. Needs VFU_GUEST_RUN (see
 * test/interop/README.md). Under TCG the guest CPU weighs on both: compare the columns.
 *
 * Usage: VFU_GUEST_RUN=... node dist/bench/virtio/guest.js [--seconds=4]
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { serveChild } from '../../test/helpers.js';

const SCRIPT = new URL('../../../test/interop/guest/virtio-blk-bench.sh', import.meta.url).pathname;
const { values } = parseArgs({ options: { seconds: { type: 'string' } } });
const seconds = Number(values.seconds ?? 4);

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.stderr!.on('data', (d) => (out += d));
    p.on('exit', (code) => resolve({ code, out }));
  });
}

interface Result {
  iops: number;
  mbs: number;
  latUs: number;
}

/** fio's JSON per job, between the guest script's markers */
function parse(out: string): Map<string, Result> {
  const m = new Map<string, Result>();
  const re = /VBLKBENCH-BEGIN (\S+) (\S+) (\S+)\r?\n([\s\S]*?)VBLKBENCH-END/g;
  for (let r = re.exec(out); r; r = re.exec(out)) {
    const json = r[4]!.slice(r[4]!.indexOf('{'), r[4]!.lastIndexOf('}') + 1);
    try {
      const j = JSON.parse(json) as { jobs: { read: Record<string, unknown>; write: Record<string, unknown> }[] };
      const side = r[1]!.includes('write') ? j.jobs[0]!.write : j.jobs[0]!.read;
      const clat = side.clat_ns as { mean: number };
      m.set(`${r[1]} ${r[2]} QD${r[3]}`, { iops: side.iops as number, mbs: ((side.bw as number) * 1024) / 1e6, latUs: clat.mean / 1000 });
    } catch {
      /* a job whose output was garbled: left out */
    }
  }
  return m;
}

async function main(): Promise<void> {
  const runner = process.env.VFU_GUEST_RUN;
  if (!runner) {
    console.log('VFU_GUEST_RUN not set: no guest to measure in (see test/interop/README.md)');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vfu-virtio-guest-'));
  const image = join(dir, 'disk.img');
  const common = ['-M', '-k', `vblk_rt=${seconds}`, '-T', String(60 + 20 * seconds)];
  const srv = await serveChild('virtio-blk', [`--image=${image}`, '--size=64M', '-q']);
  const ours = await run(runner, ['-s', srv.path, '-t', SCRIPT, ...common]);
  await srv.stop();
  const qemu = await run(runner, ['-t', SCRIPT, ...common, '--', '-drive', `file=${image},if=none,id=d0,format=raw,cache=writeback,aio=threads`, '-device', 'virtio-blk-pci,drive=d0,num-queues=1']);
  rmSync(dir, { recursive: true, force: true });
  if (ours.code !== 0 || qemu.code !== 0) {
    console.log(`guest runs failed (ours ${ours.code}, qemu ${qemu.code})\n${ours.out.slice(-1500)}\n${qemu.out.slice(-1500)}`);
    process.exitCode = 1;
    return;
  }
  const a = parse(ours.out);
  const b = parse(qemu.out);
  console.log(`guest fio, libaio O_DIRECT, ${seconds} s per job, 1 vCPU TCG, page cache on the host`);
  console.log(`${'job'.padEnd(22)} ${'ours (vfio-user)'.padStart(26)} ${'QEMU virtio-blk-pci'.padStart(26)}  ratio`);
  for (const [k, x] of a) {
    const y = b.get(k);
    const fmt = (r: Result | undefined): string => (r ? `${Math.round(r.iops)} IOPS ${r.mbs.toFixed(1)} MB/s ${Math.round(r.latUs)} us` : 'n/a').padStart(26);
    console.log(`${k.padEnd(22)} ${fmt(x)} ${fmt(y)}  ${y ? (x.iops / y.iops).toFixed(2) : '-'}`);
  }
}

await main();
