/**
 * virtio-blk benchmark (not a test): the test kit's virtio driver against `vfio-user serve
 * virtio-blk` in a child process, both pinned to CPU 0 (taskset), for each notification mode:
 *   trap   notify writes as posted REGION_WRITEs (the default; what QEMU sends)
 *   mmap   notify writes into the mmap-ed notify page, which the server polls (--doorbells=mmap)
 * 4 KiB random reads and writes at QD 1 and 32 on a 64 MiB image in the page cache; the modes
 * alternate within each round (same run, ratios comparable on a busy machine).
 * Per I/O: the server's CPU time (/proc/PID/stat), notify writes the driver sent (event index
 * suppresses the rest), interrupts it took, and the server's wake-ups (voluntary context
 * switches).
 *
 *   node dist/bench/virtio/run.js [--seconds=2] [--rounds=2] [--modes=trap,mmap] [--poll-us=N]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { VfioUserClient } from '../../src/client/client.js';
import { serveChild, type Served } from '../../test/helpers.js';
import { VirtioDriver, BlkDriver } from '../../src/testing/index.js';
import { pinnedSelf } from '../util.js';

const { values } = parseArgs({ options: { seconds: { type: 'string' }, rounds: { type: 'string' }, modes: { type: 'string' }, 'poll-us': { type: 'string' } } });
const seconds = Number(values.seconds ?? 2);
const rounds = Number(values.rounds ?? 2);
const modes = (values.modes ?? 'trap,mmap').split(',');
const BLOCK = 4096;
const SECTORS = (64 << 20) / 512;

function serverStats(pid: number): { cpu: number; wakeups: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  const st = readFileSync(`/proc/${pid}/status`, 'utf8').match(/voluntary_ctxt_switches:\s+(\d+)/);
  return { cpu: (Number(rest[11]) + Number(rest[12])) / 100, wakeups: st ? Number(st[1]) : 0 };
}

pinnedSelf('0');

interface Row {
  iops: number;
  cpuUs: number;
  notifies: number;
  irqs: number;
  wakeups: number;
}

async function job(srv: Served, d: VirtioDriver, write: boolean, qd: number): Promise<Row> {
  const blk = new BlkDriver(d);
  const bufs = Array.from({ length: qd }, () => d.alloc(BLOCK));
  const irqs0 = [...d.interrupts.values()].reduce((n, x) => n + x, 0);
  const notifies0 = d.notifies;
  const s0 = serverStats(srv.child.pid!);
  const end = performance.now() + seconds * 1000;
  let n = 0;
  let seed = 12345;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % (SECTORS / 8);
  await Promise.all(
    bufs.map(async (buf) => {
      while (performance.now() < end) {
        const r = write ? await blk.write(0, rnd() * 8, [{ iova: buf, len: BLOCK }]) : await blk.read(0, rnd() * 8, [{ iova: buf, len: BLOCK, write: true }]);
        if (r.status !== 0) throw new Error(`status ${r.status}`);
        n++;
      }
    }),
  );
  const s1 = serverStats(srv.child.pid!);
  const irqs = [...d.interrupts.values()].reduce((x, y) => x + y, 0) - irqs0;
  return { iops: n / seconds, cpuUs: ((s1.cpu - s0.cpu) * 1e6) / n, notifies: (d.notifies - notifies0) / n, irqs: irqs / n, wakeups: (s1.wakeups - s0.wakeups) / n };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-virtio-bench-'));
  const results = new Map<string, Row[]>();
  const servers: { mode: string; srv: Served; c: VfioUserClient; d: VirtioDriver }[] = [];
  try {
    for (const mode of modes) {
      const extra = mode === 'mmap' ? ['--doorbells=mmap', ...(values['poll-us'] ? [`--poll-us=${values['poll-us']}`] : [])] : [];
      const srv = await serveChild('virtio-blk', [`--image=${join(dir, `${mode}.img`)}`, '--size=64M', '-q', ...extra], { taskset: '0' });
      const c = await VfioUserClient.connect(srv.path);
      const d = await VirtioDriver.attach(c, { memSize: 8 << 20, mmapNotify: mode === 'mmap' });
      await d.init({ queues: 1 });
      servers.push({ mode, srv, c, d });
    }
    const jobs: [string, boolean, number][] = [['4K rand read QD1', false, 1], ['4K rand read QD32', false, 32], ['4K rand write QD1', true, 1], ['4K rand write QD32', true, 32]];
    for (let r = 0; r < rounds; r++) {
      for (const [name, write, qd] of jobs) {
        for (const s of servers) {
          const key = `${name}|${s.mode}`;
          results.set(key, [...(results.get(key) ?? []), await job(s.srv, s.d, write, qd).catch((e: Error) => { throw new Error(`${s.mode} ${name}: ${e.message}`); })]);
        }
      }
    }
    console.log(`virtio-blk, in-test driver, server and driver on CPU 0 (taskset), ${seconds} s per job, ${rounds} round(s) alternating modes, mean`);
    console.log(`${'job'.padEnd(20)} ${modes.map((m) => `${m}: IOPS  cpu/IO  notify/IO irq/IO wake/IO`.padStart(48)).join(' ')}  ratio ${modes.slice(1).map((m) => `${m}/${modes[0]}`).join(' ')}`);
    for (const [name] of jobs) {
      const mean = (m: string): Row => {
        const rs = results.get(`${name}|${m}`)!;
        const f = (k: keyof Row): number => rs.reduce((n, x) => n + x[k], 0) / rs.length;
        return { iops: f('iops'), cpuUs: f('cpuUs'), notifies: f('notifies'), irqs: f('irqs'), wakeups: f('wakeups') };
      };
      const rows = modes.map(mean);
      const cells = rows.map((x) => `${Math.round(x.iops)}  ${x.cpuUs.toFixed(1)}us  ${x.notifies.toFixed(2)}  ${x.irqs.toFixed(2)}  ${x.wakeups.toFixed(2)}`.padStart(48));
      console.log(`${name.padEnd(20)} ${cells.join(' ')}  ${rows.slice(1).map((x) => (x.iops / rows[0]!.iops).toFixed(2)).join(' ')}`);
    }
  } finally {
    for (const s of servers) {
      s.d.close();
      s.c.close();
      await s.srv.stop();
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
