/**
 * NVMe from inside a Linux guest (issue #5), in one run: our vfio-user controller vs QEMU's
 * built-in emulated nvme, on the same raw image, with busybox dd (O_DIRECT, QD 1) in the
 * guest. Needs VFU_GUEST_RUN (see test/interop/README.md), which must also pass arguments
 * after `--` to QEMU. Under TCG the guest CPU is the bottleneck: compare the two columns, not
 * the absolute figures.
 *
 * Usage: VFU_GUEST_RUN=... node dist/bench/nvme/guest.js
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const CLI = new URL('../../src/cli/main.js', import.meta.url).pathname;
const SCRIPT = new URL('../../../test/interop/guest/nvme-bench.sh', import.meta.url).pathname;

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.stderr!.on('data', (d) => (out += d));
    p.on('exit', (code) => resolve({ code, out }));
  });
}

function parse(out: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of out.split('\n')) {
    const r = line.match(/NVMEBENCH: (.+) ([0-9.]+) s/);
    if (r) m.set(r[1]!, Number(r[2]));
  }
  return m;
}

async function main(): Promise<void> {
  const runner = process.env.VFU_GUEST_RUN;
  if (!runner) {
    console.log('VFU_GUEST_RUN not set: no guest to measure in (see test/interop/README.md)');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-guest-'));
  const image = join(dir, 'disk.img');
  writeFileSync(image, '');
  const sock = join(dir, 'nvme.sock');
  const srv = spawn(process.execPath, [CLI, 'serve', 'nvme', `--socket-path=${sock}`, `--image=${image}`, '--size=64M', '-q'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  await new Promise<void>((resolve) => {
    createInterface({ input: srv.stdout! }).on('line', (l) => {
      if (l.includes('"ready"')) resolve();
    });
  });
  const ours = await run(runner, ['-M', '-s', sock, '-t', SCRIPT]);
  srv.kill('SIGTERM');
  await new Promise((r) => srv.on('exit', r));
  const qemu = await run(runner, ['-t', SCRIPT, '--', '-drive', `file=${image},if=none,id=d0,format=raw,cache=none`, '-device', 'nvme,drive=d0,serial=qemu0']);
  rmSync(dir, { recursive: true, force: true });
  if (ours.code !== 0 || qemu.code !== 0) {
    console.log(`guest runs failed (ours ${ours.code}, qemu ${qemu.code})\n${ours.out.slice(-1500)}\n${qemu.out.slice(-1500)}`);
    process.exitCode = 1;
    return;
  }
  const a = parse(ours.out);
  const b = parse(qemu.out);
  const sizes: Record<string, [number, number]> = {
    'write 4K x4096 direct': [4096, 4096],
    'read 4K x4096 direct': [4096, 4096],
    'write 128K x256 direct': [131072, 256],
    'read 128K x256 direct': [131072, 256],
  };
  console.log('guest dd, O_DIRECT, QD 1, TCG             ours (vfio-user)     QEMU built-in nvme');
  for (const [label, [bs, n]] of Object.entries(sizes)) {
    const fmt = (s: number | undefined): string => {
      if (!s) return 'n/a'.padStart(20);
      return bs === 4096 ? `${Math.round(n / s)} IOPS`.padStart(20) : `${((bs * n) / s / 1e6).toFixed(0)} MB/s`.padStart(20);
    };
    console.log(`${label.padEnd(40)} ${fmt(a.get(label))} ${fmt(b.get(label))}`);
  }
}

await main();
