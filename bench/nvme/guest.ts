/**
 * NVMe from inside a Linux guest, in one run: our vfio-user controller vs QEMU's built-in
 * emulated nvme, on the same raw image, the same guest setup, both through the host page cache
 * (ours: buffered pread/pwrite; QEMU: cache=writeback), for each setup asked: guest RAM shared
 * with the server by fd (-M) or not (every data transfer is then a DMA_READ/DMA_WRITE message),
 * with and without a vIOMMU (-I, intel-iommu strict: a DMA_MAP and a DMA_UNMAP per I/O);
 * ours and QEMU's alternate within each round. In the guest (test/interop/guest/nvme-bench.sh):
 * busybox dd O_DIRECT at queue depth 1, fio libaio O_DIRECT at queue depth 32, then (ours only)
 * 10 idle seconds, over which the server's CPU time is read from /proc/PID/stat.
 *
 * Per I/O breakdown of our server, from its `stats` control command sampled at the start and
 * the end of every job: CPU time, wake-ups (voluntary context switches), messages by kind
 * (doorbell REGION_WRITEs, DMA_MAP/UNMAP received; DMA_READ/WRITE sent and their mean round
 * trip, i.e. what QEMU takes to answer), interrupts raised. Needs VFU_GUEST_RUN (see
 * test/interop/README.md).
 *
 * Usage: VFU_GUEST_RUN=... node dist/bench/nvme/guest.js [--rounds=1] [--iommu=both|on|off]
 *          [--ram=both|shared|unshared] [--fio=on|off] [--fio-secs=4] [--cpus=1] [--poll-us=N]
 *          [--first=ours|qemu]   (which device goes first in round 1; the order alternates)
 *          [--also="--server-option ... NAME=value ..."]...   (extra server variants in the same
 *          run: options and environment variables of the server)
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { filledImage } from '../util.js';

const CLI = new URL('../../src/cli/main.js', import.meta.url).pathname;
const SCRIPT = new URL('../../../test/interop/guest/nvme-bench.sh', import.meta.url).pathname;
const TICK = 100; // clock ticks per second (USER_HZ)
const CMD = { DMA_MAP: 2, DMA_UNMAP: 3, REGION_WRITE: 10, DMA_READ: 11, DMA_WRITE: 12 };

const { values } = parseArgs({
  options: {
    rounds: { type: 'string' },
    iommu: { type: 'string' },
    ram: { type: 'string' },
    fio: { type: 'string' },
    'fio-secs': { type: 'string' },
    cpus: { type: 'string' },
    first: { type: 'string' },
    'poll-us': { type: 'string' },
    also: { type: 'string', multiple: true },
  },
});
/** extra server variants measured in the same run, e.g. --also=--shadow-doorbells=off */
const variants: string[][] = [[], ...(values.also ?? []).map((v) => v.split(' ').filter(Boolean))];
const rounds = Number(values.rounds ?? 1);
const iommus = values.iommu === 'on' ? [true] : values.iommu === 'off' ? [false] : [false, true];
const rams = values.ram === 'shared' ? [true] : values.ram === 'unshared' ? [false] : [true, false];
const cpus = values.cpus ?? '1';
/** 0: ours first in even rounds; 1: QEMU's first in even rounds */
const flip = values.first === 'qemu' ? 1 : 0;
const cmdline = [`vfu_fio=${values.fio === 'off' ? 0 : 1}`, `vfu_fio_secs=${Number(values['fio-secs'] ?? 4)}`];

/** server CPU seconds (utime + stime) */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[11]) + Number(rest[12])) / TICK;
}

/** the server's `stats` event (see src/cli/serve.ts) */
interface Stats {
  cpuUs: number;
  wakeups: number;
  conn?: { commandsIn: number[]; requestsOut: number[]; rttUs: number[]; postedOut: number[]; polls: number };
  device?: { commands: number; irqs: number; mmioDoorbells: number; pollWakeups: number; pollTurns: number };
}

/** one job's counters, per I/O */
interface Breakdown {
  ios: number;
  cpuUs: number;
  wakeups: number;
  doorbells: number;
  maps: number;
  dmaMsgs: number;
  dmaRttUs: number;
  irqs: number;
  msgs: number;
  pollWakeups: number;
}

function breakdown(a: Stats, b: Stats, ios: number): Breakdown | undefined {
  if (!a.conn || !b.conn || !ios) return undefined;
  const d = (f: (s: Stats) => number): number => f(b) - f(a);
  const inn = (c: number) => d((s) => s.conn!.commandsIn[c]!);
  const out = (c: number) => d((s) => s.conn!.requestsOut[c]!);
  const dmaMsgs = out(CMD.DMA_READ) + out(CMD.DMA_WRITE);
  const rtt = d((s) => s.conn!.rttUs[CMD.DMA_READ]! + s.conn!.rttUs[CMD.DMA_WRITE]!);
  const irqs = d((s) => s.device?.irqs ?? 0);
  const allIn = d((s) => s.conn!.commandsIn.reduce((x, y) => x + y, 0));
  const allOut = d((s) => s.conn!.requestsOut.reduce((x, y) => x + y, 0) + s.conn!.postedOut.reduce((x, y) => x + y, 0));
  return {
    ios,
    cpuUs: d((s) => s.cpuUs) / ios,
    wakeups: d((s) => s.wakeups) / ios,
    doorbells: inn(CMD.REGION_WRITE) / ios,
    maps: (inn(CMD.DMA_MAP) + inn(CMD.DMA_UNMAP)) / ios,
    dmaMsgs: dmaMsgs / ios,
    dmaRttUs: dmaMsgs ? rtt / dmaMsgs : 0,
    irqs: irqs / ios,
    msgs: (allIn + allOut + irqs) / ios,
    pollWakeups: d((s) => s.device?.pollWakeups ?? 0) / ios,
  };
}

interface Run {
  code: number | null;
  out: string;
  dd: Map<string, number>;
  fio: Map<string, { iops: number; kbs: number; ios: number }>;
  /** per job: our server's counters at its start and at its end */
  stats: Map<string, Stats[]>;
  idleCpu?: number;
  cpu?: number;
}

function runGuest(runner: string, args: string[], server?: { pid: number; ask: (label: string) => void }): Promise<Run> {
  return new Promise((resolve) => {
    const p = spawn(runner, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const r: Run = { code: null, out: '', dd: new Map(), fio: new Map(), stats: new Map() };
    const cpu0 = server ? cpuSeconds(server.pid) : 0;
    let idle0 = 0;
    p.stderr.on('data', (d) => (r.out += d));
    createInterface({ input: p.stdout }).on('line', (line) => {
      r.out += line + '\n';
      let m = line.match(/NVMEPHASE: (.+)/);
      if (m) server?.ask(m[1]!.trim());
      m = line.match(/NVMEBENCH: (.+) ([0-9.]+) s/);
      if (m) {
        r.dd.set(m[1]!, Number(m[2]));
        server?.ask(m[1]!);
      }
      m = line.match(/NVMEFIO: (.+ QD\d+) (.*)/);
      if (m) {
        server?.ask(m[1]!);
        const f = m[2]!.split(';');
        // terse v3 (0-based): read total KiB 5, bw KiB/s 6, IOPS 7; write total KiB 46, bw 47, IOPS 48
        const rd = Number(f[7]) > 0;
        const bs = m[1]!.includes('128K') ? 128 : 4;
        r.fio.set(m[1]!, { iops: Number(rd ? f[7] : f[48]), kbs: Number(rd ? f[6] : f[47]), ios: Number(rd ? f[5] : f[46]) / bs });
      }
      if (server && line.includes('NVMEIDLE: start')) idle0 = cpuSeconds(server.pid);
      if (server && line.includes('NVMEIDLE: end')) r.idleCpu = cpuSeconds(server.pid) - idle0;
    });
    p.on('exit', (code) => {
      r.code = code;
      if (server) r.cpu = cpuSeconds(server.pid) - cpu0;
      resolve(r);
    });
  });
}

function guestArgs(shared: boolean, iommu: boolean, idle: boolean): string[] {
  return [...(shared ? ['-M'] : []), '-T', '900', '-c', cpus, ...(iommu ? ['-I'] : []), '-k', [...cmdline, `vfu_idle=${idle ? 1 : 0}`].join(' ')];
}

async function ours(runner: string, image: string, dir: string, shared: boolean, iommu: boolean, variant: string[]): Promise<Run> {
  const sock = join(dir, 'nvme.sock');
  // a variant's NAME=value words are environment variables of the server, the rest its options
  const env = { ...process.env, ...Object.fromEntries(variant.filter((w) => /^[A-Z_][A-Z0-9_]*=/.test(w)).map((w) => [w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1)])) };
  const extra = [...(values['poll-us'] ? [`--poll-us=${values['poll-us']}`] : []), ...variant.filter((w) => !/^[A-Z_][A-Z0-9_]*=/.test(w))];
  const srv = spawn(process.execPath, [CLI, 'serve', 'nvme', `--socket-path=${sock}`, `--image=${image}`, '-q', ...extra], { stdio: ['pipe', 'pipe', 'inherit'], env });
  const asked: string[] = [];
  const got = new Map<string, Stats[]>();
  await new Promise<void>((resolve) => {
    createInterface({ input: srv.stdout }).on('line', (l) => {
      if (l.includes('"ready"')) resolve();
      if (!l.includes('"stats"')) return;
      const label = asked.shift();
      if (label === undefined) return;
      const list = got.get(label) ?? [];
      list.push(JSON.parse(l) as Stats);
      got.set(label, list);
    });
  });
  const ask = (label: string): void => {
    asked.push(label);
    srv.stdin.write('stats\n');
  };
  const r = await runGuest(runner, [...guestArgs(shared, iommu, true), '-s', sock, '-t', SCRIPT], { pid: srv.pid!, ask });
  srv.kill('SIGTERM');
  await new Promise((res) => srv.on('exit', res));
  r.stats = got;
  return r;
}

function qemu(runner: string, image: string, shared: boolean, iommu: boolean): Promise<Run> {
  return runGuest(runner, [...guestArgs(shared, iommu, false), '-t', SCRIPT, '--', '-drive', `file=${image},if=none,id=d0,format=raw,cache=writeback`, '-device', 'nvme,drive=d0,serial=qemu0']);
}

const ROWS: { label: string; kind: 'dd' | 'fio'; key: string; bs: number; n?: number }[] = [
  { label: '4K read QD1 (dd)', kind: 'dd', key: 'read 4K x2048 direct', bs: 4096, n: 2048 },
  { label: '4K write QD1 (dd)', kind: 'dd', key: 'write 4K x2048 direct', bs: 4096, n: 2048 },
  { label: '128K read QD1 (dd)', kind: 'dd', key: 'read 128K x1024 direct', bs: 131072, n: 1024 },
  { label: '128K write QD1 (dd)', kind: 'dd', key: 'write 128K x1024 direct', bs: 131072, n: 1024 },
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

function ios(r: Run, row: (typeof ROWS)[number]): number {
  return row.kind === 'dd' ? row.n! : (r.fio.get(row.key)?.ios ?? 0);
}

function mean(v: number[]): number | undefined {
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : undefined;
}

function report(label: string, vs: Run[][], b: Run[]): void {
  const a = vs[0]!;
  for (const r of [...vs.flat(), ...b]) {
    if (r.code !== 0) console.log(`a guest run failed (${r.code}):\n${r.out.slice(-2000)}`);
  }
  console.log(`\n${label}; QEMU TCG, ${cpus} vCPU, same 256 MiB image, both through the host page cache (ours buffered, QEMU cache=writeback); ${rounds} round(s), alternating; mean of the rounds (min-max)`);
  const others = variants.slice(1).map((v) => v.join(' '));
  console.log(`${'workload'.padEnd(26)}${'ours'.padStart(22)}${'QEMU nvme'.padStart(22)}${'ratio'.padStart(8)}${others.map((o) => `${`ours ${o}`.padStart(22)}${'ratio'.padStart(8)}`).join('')}`);
  for (const row of ROWS) {
    const unit = row.bs === 4096 ? ' IOPS' : ' MB/s';
    const vals = (rs: Run[]): number[] => rs.map((r) => figure(r, row)).filter((x): x is number => x !== undefined);
    const fmt = (rs: Run[]): string => {
      const v = vals(rs);
      if (!v.length) return 'n/a'.padStart(22);
      const range = v.length > 1 ? ` (${Math.min(...v).toFixed(0)}-${Math.max(...v).toFixed(0)})` : '';
      return `${mean(v)!.toFixed(0)}${unit}${range}`.padStart(22);
    };
    const y = mean(vals(b));
    const ratio = (rs: Run[]): string => {
      const v = mean(vals(rs));
      return (v && y ? (v / y).toFixed(2) : '-').padStart(8);
    };
    console.log(`${row.label.padEnd(26)}${fmt(a)}${fmt(b)}${ratio(a)}${vs.slice(1).map((rs) => fmt(rs) + ratio(rs)).join('')}`);
  }
  const idle = a.map((r) => r.idleCpu).filter((v): v is number => v !== undefined);
  const cpu = a.map((r) => r.cpu).filter((v): v is number => v !== undefined);
  console.log(`server CPU over the guest's 10 idle seconds: ${idle.map((v) => v.toFixed(2)).join(', ')} s; whole guest run: ${cpu.map((v) => v.toFixed(1)).join(', ')} s`);
  // our server, per I/O (mean of the rounds), for each variant
  const cols = ['srv µs', 'wake-ups', 'msgs', 'doorbells', 'map+unmap', 'DMA rd/wr', 'DMA RTT µs', 'irqs', 'poll wakes'];
  vs.forEach((runs, k) => perIo(k ? `ours ${others[k - 1]!}, per I/O:` : 'ours, per I/O:', runs, cols));
}

function perIo(title: string, runs: Run[], cols: string[]): void {
  const idle = runs.map((r) => r.idleCpu).filter((v): v is number => v !== undefined);
  console.log(`${title} (server CPU over the guest's 10 idle seconds: ${idle.map((v) => v.toFixed(2)).join(', ')} s)`);
  console.log(`${''.padEnd(15)}${'workload'.padEnd(26)}${cols.map((c) => c.padStart(11)).join('')}`);
  for (const row of ROWS) {
    const bds = runs
      .map((r) => {
        const s = r.stats.get(row.key);
        return s && s.length >= 2 ? breakdown(s[0]!, s[1]!, ios(r, row)) : undefined;
      })
      .filter((x): x is Breakdown => x !== undefined);
    if (!bds.length) continue;
    const m = (f: (b: Breakdown) => number, digits = 2): string => mean(bds.map(f))!.toFixed(digits).padStart(11);
    console.log(
      `               ${row.label.padEnd(26)}${m((b) => b.cpuUs, 1)}${m((b) => b.wakeups)}${m((b) => b.msgs)}${m((b) => b.doorbells)}${m((b) => b.maps)}${m((b) => b.dmaMsgs)}${m((b) => b.dmaRttUs, 1)}${m((b) => b.irqs)}${m((b) => b.pollWakeups)}`,
    );
  }
}

async function main(): Promise<void> {
  const runner = process.env.VFU_GUEST_RUN;
  if (!runner) {
    console.log('VFU_GUEST_RUN not set: no guest to measure in (see test/interop/README.md)');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-guest-'));
  const image = join(dir, 'disk.img');
  filledImage(image, 256 << 20); // no holes: neither device pays block allocation the other does not
  const t0 = Date.now();
  try {
    for (const iommu of iommus) {
      for (const shared of rams) {
        const vs: Run[][] = variants.map(() => []);
        const b: Run[] = [];
        for (let i = 0; i < rounds; i++) {
          // alternate which goes first
          const qemuFirst = (i + flip) % 2 === 1;
          if (qemuFirst) b.push(await qemu(runner, image, shared, iommu));
          for (let k = 0; k < variants.length; k++) vs[k]!.push(await ours(runner, image, dir, shared, iommu, variants[k]!));
          if (!qemuFirst) b.push(await qemu(runner, image, shared, iommu));
        }
        report(`${shared ? 'guest RAM shared (-M)' : 'guest RAM not shared (DMA by message)'}, ${iommu ? 'vIOMMU (intel-iommu, strict)' : 'no vIOMMU'}`, vs, b);
        console.log(`(${((Date.now() - t0) / 1000).toFixed(0)} s so far)`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
