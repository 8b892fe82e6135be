/**
 * NVMe from inside a Linux guest, in one run: our vfio-user controller vs QEMU's built-in
 * emulated nvme, on the same raw image, the same guest (RAM shared, -M, for both), both
 * through the host page cache (ours: buffered pread/pwrite; QEMU: cache=writeback), with and
 * without a vIOMMU (-I), alternating ours and QEMU's for each round. In the guest
 * (test/interop/guest/nvme-bench.sh): busybox dd O_DIRECT at queue depth 1, fio libaio
 * O_DIRECT at queue depth 32, then 10 idle seconds, over which the server's CPU time is read
 * from /proc/PID/stat. Needs VFU_GUEST_RUN (see test/interop/README.md).
 *
 * Usage: VFU_GUEST_RUN=... node dist/bench/nvme/guest.js [--rounds=1] [--iommu=both|on|off] [--poll-us=N]
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const CLI = new URL('../../src/cli/main.js', import.meta.url).pathname;
const SCRIPT = new URL('../../../test/interop/guest/nvme-bench.sh', import.meta.url).pathname;
const TICK = 100; // clock ticks per second (USER_HZ)

const { values } = parseArgs({
  options: { rounds: { type: 'string' }, iommu: { type: 'string' }, 'poll-us': { type: 'string' }, also: { type: 'string', multiple: true } },
});
/** extra server variants measured in the same run, e.g. --also=--shadow-doorbells=off */
const variants: string[][] = [[], ...(values.also ?? []).map((v) => v.split(' ').filter(Boolean))];
const rounds = Number(values.rounds ?? 1);
const iommus = values.iommu === 'on' ? [true] : values.iommu === 'off' ? [false] : [false, true];

/** server CPU seconds (utime + stime) */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / TICK;
}

interface Run {
  code: number | null;
  out: string;
  dd: Map<string, number>;
  fio: Map<string, { iops: number; kbs: number }>;
  idleCpu?: number;
  cpu?: number;
}

function runGuest(runner: string, args: string[], serverPid?: number): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(runner, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const r: Run = { code: null, out: '', dd: new Map(), fio: new Map() };
    const cpu0 = serverPid ? cpuSeconds(serverPid) : 0;
    let idle0 = 0;
    p.stderr!.on('data', (d) => (r.out += d));
    createInterface({ input: p.stdout! }).on('line', (line) => {
      r.out += line + '\n';
      let m = line.match(/NVMEBENCH: (.+) ([0-9.]+) s/);
      if (m) r.dd.set(m[1]!, Number(m[2]));
      m = line.match(/NVMEFIO: (.+ QD\d+) (.*)/);
      if (m) {
        const f = m[2]!.split(';');
        // terse v3: read bw KiB/s at 6, IOPS at 7; write bw at 47, IOPS at 48
        const rd = Number(f[7]) > 0;
        r.fio.set(m[1]!, { iops: Number(rd ? f[7] : f[48]), kbs: Number(rd ? f[6] : f[47]) });
      }
      if (serverPid && line.includes('NVMEIDLE: start')) idle0 = cpuSeconds(serverPid);
      if (serverPid && line.includes('NVMEIDLE: end')) r.idleCpu = cpuSeconds(serverPid) - idle0;
    });
    p.on('exit', (code) => {
      r.code = code;
      if (serverPid) r.cpu = cpuSeconds(serverPid) - cpu0;
      resolve(r);
    });
  });
}

async function ours(runner: string, image: string, dir: string, iommu: boolean, variant: string[]): Promise<Run> {
  const sock = join(dir, 'nvme.sock');
  const extra = [...(values['poll-us'] ? [`--poll-us=${values['poll-us']}`] : []), ...variant];
  const srv = spawn(process.execPath, [CLI, 'serve', 'nvme', `--socket-path=${sock}`, `--image=${image}`, '-q', ...extra], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => {
    createInterface({ input: srv.stdout! }).on('line', (l) => {
      if (l.includes('"ready"')) resolve();
    });
  });
  const r = await runGuest(runner, ['-M', '-T', '600', ...(iommu ? ['-I'] : []), '-s', sock, '-t', SCRIPT], srv.pid);
  srv.kill('SIGTERM');
  await new Promise((res) => srv.on('exit', res));
  return r;
}

function qemu(runner: string, image: string, iommu: boolean): Promise<Run> {
  return runGuest(runner, ['-M', '-T', '600', ...(iommu ? ['-I'] : []), '-t', SCRIPT, '--', '-drive', `file=${image},if=none,id=d0,format=raw,cache=writeback`, '-device', 'nvme,drive=d0,serial=qemu0']);
}

const ROWS: { label: string; kind: 'dd' | 'fio'; key: string; bs: number; n?: number }[] = [
  { label: '4K read QD1 (dd)', kind: 'dd', key: 'read 4K x2048 direct', bs: 4096, n: 2048 },
  { label: '4K write QD1 (dd)', kind: 'dd', key: 'write 4K x2048 direct', bs: 4096, n: 2048 },
  { label: '128K read QD1 (dd)', kind: 'dd', key: 'read 128K x256 direct', bs: 131072, n: 256 },
  { label: '128K write QD1 (dd)', kind: 'dd', key: 'write 128K x256 direct', bs: 131072, n: 256 },
  { label: '4K randread QD32 (fio)', kind: 'fio', key: 'randread 4K QD32', bs: 4096 },
  { label: '4K randwrite QD32 (fio)', kind: 'fio', key: 'randwrite 4K QD32', bs: 4096 },
  { label: '128K read QD32 (fio)', kind: 'fio', key: 'read 128K QD32', bs: 131072 },
  { label: '128K write QD32 (fio)', kind: 'fio', key: 'write 128K QD32', bs: 131072 },
];

/** IOPS for 4K rows, MB/s for 128K rows */
function figure(r: Run, row: (typeof ROWS)[number]): number | undefined {
  if (row.kind === 'dd') {
    const s = r.dd.get(row.key);
    if (!s) return undefined;
    return row.bs === 4096 ? row.n! / s : (row.bs * row.n!) / s / 1e6;
  }
  const f = r.fio.get(row.key);
  if (!f || !f.iops) return undefined;
  return row.bs === 4096 ? f.iops : (f.kbs * 1024) / 1e6;
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
  const { truncateSync } = await import('node:fs');
  truncateSync(image, 256 << 20);
  try {
    for (const iommu of iommus) {
      const vs: Run[][] = variants.map(() => []);
      const b: Run[] = [];
      for (let i = 0; i < rounds; i++) {
        // alternate which goes first
        if (i % 2 === 1) b.push(await qemu(runner, image, iommu));
        for (let k = 0; k < variants.length; k++) vs[k]!.push(await ours(runner, image, dir, iommu, variants[k]!));
        if (i % 2 === 0) b.push(await qemu(runner, image, iommu));
      }
      const a = vs[0]!;
      for (const r of [...vs.flat(), ...b]) {
        if (r.code !== 0) console.log(`a guest run failed (${r.code}):\n${r.out.slice(-2000)}`);
      }
      console.log(`\n${iommu ? 'with a vIOMMU (intel-iommu, strict)' : 'no vIOMMU'}; QEMU TCG, 1 vCPU, same 256 MiB image, both through the host page cache (ours buffered, QEMU cache=writeback); ${rounds} round(s), alternating; best of the rounds`);
      const others = variants.slice(1).map((v) => v.join(' '));
      console.log(`${'workload'.padEnd(26)}${'ours'.padStart(14)}${'QEMU nvme'.padStart(14)}${'ratio'.padStart(8)}${others.map((o) => `  ours ${o}`).join('')}`);
      for (const row of ROWS) {
        const best = (rs: Run[]): number | undefined => {
          const v = rs.map((r) => figure(r, row)).filter((x): x is number => x !== undefined);
          return v.length ? Math.max(...v) : undefined;
        };
        const x = best(a);
        const y = best(b);
        const unit = row.bs === 4096 ? ' IOPS' : ' MB/s';
        const fmt = (v: number | undefined): string => (v === undefined ? 'n/a' : `${v.toFixed(0)}${unit}`).padStart(14);
        const more = vs.slice(1).map((rs) => fmt(best(rs)));
        console.log(`${row.label.padEnd(26)}${fmt(x)}${fmt(y)}${(x && y ? (x / y).toFixed(2) : '-').padStart(8)}${more.join('')}`);
      }
      const idle = a.map((r) => r.idleCpu).filter((v): v is number => v !== undefined);
      const cpu = a.map((r) => r.cpu).filter((v): v is number => v !== undefined);
      console.log(`server CPU over the guest's 10 idle seconds: ${idle.map((v) => v.toFixed(2)).join(', ')} s; whole guest run: ${cpu.map((v) => v.toFixed(1)).join(', ')} s`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
