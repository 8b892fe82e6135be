/**
 * Soak: mixed hostile sessions against a child `vfio-user serve nvme` for a given time,
 * sampling the server's open fds (/proc/PID/fd), RSS (VmRSS) and a well-behaved client's
 * round trip (REGION_READ of the NVMe CAP register) at intervals. Prints a table; fails
 * (exit 1) if the server dies, if its fds are above the baseline at the end (idle, after
 * every session ended), if RSS grows without bound (the highest sample of the second half
 * exceeds that of the first half by more than max(32 MiB, 25 %)), or if the normal client
 * cannot be served.
 *
 * Hostile sessions, picked at random by `--workers` concurrent loops (the server serves one
 * client at a time: the others are refused with EBUSY or wait, which is part of the mix):
 *   garbage     random bytes, with or without a VERSION first
 *   headers     valid VERSION, then headers with bad sizes, flags, commands, message ids
 *   truncated   a message cut short, then the client waits a little and vanishes
 *   fds         SCM_RIGHTS floods: 253 fds on messages that take none, fds with garbage
 *   dma         DMA map/unmap storms (shared and not, read-only, overlapping, out of range)
 *   regions     region and config reads/writes, in and out of bounds, write-multi
 *   irqs        interrupts enabled with eventfds, masked, triggered, disabled; bad fds
 *   vanish      a burst of requests not waited for, then the client hangs up
 *   slow        a client that trickles a VERSION byte by byte, or never reads its replies
 *   migration   device state transitions and MIG_DATA reads/writes, then a hang-up
 *
 * Usage: npm run soak -- [--time=S] [--interval=S] [--workers=N] [--scenarios=a,b,...] [--seed=N]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { native, PROT_READ } from '../src/native/index.js';
import { VfioUserClient, GuestMemory } from '../src/client/client.js';
import { closeFds } from '../src/transport/connection.js';
import * as P from '../src/protocol/index.js';

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => args.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? def;
const TIME_S = Number(opt('time', '60'));
const INTERVAL_S = Number(opt('interval', String(Math.min(60, Math.max(2, Math.round(TIME_S / 20))))));
const WORKERS = Number(opt('workers', '2'));
let seed = Number(opt('seed', String(Date.now() % 1e9))) >>> 0 || 1;

function rnd(): number {
  seed ^= seed << 13;
  seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  seed >>>= 0;
  return seed;
}
const int = (n: number): number => rnd() % n;
const chance = (p: number): boolean => rnd() / 2 ** 32 < p;
const pick = <T>(a: readonly T[]): T => a[int(a.length)]!;
const bytes = (n: number): Uint8Array => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
  return b;
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ raw peer helpers

function frame(command: number, payload: Uint8Array, h: Partial<P.Header> = {}): Uint8Array {
  const out = new Uint8Array(P.HEADER_SIZE + payload.length);
  P.encodeHeader(out, 0, { msgId: h.msgId ?? int(0x10000), command, size: h.size ?? out.length, flags: h.flags ?? 0, error: h.error ?? 0 });
  out.set(payload, P.HEADER_SIZE);
  return out;
}

const VERSION = frame(P.Command.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: { maxMsgFds: 16, maxDataXferSize: 1 << 20 } }), { msgId: 0 });
const rbuf = new Uint8Array(1 << 20);
const fdsOut = new Int32Array(1 + 253);

/** Reads and drops what is waiting (closing received fds); false at EOF or error. */
function drain(fd: number): boolean {
  for (;;) {
    let n: number;
    try {
      n = native.recvmsg(fd, rbuf, 0, rbuf.length, fdsOut);
    } catch {
      return false;
    }
    closeFds(Array.from(fdsOut.subarray(1, 1 + fdsOut[0]!)));
    fdsOut[0] = 0;
    if (n === 0) return false;
    if (n < 0) return true;
  }
}

/** Sends what fits now (drops the rest: a hostile client may cut a message anywhere). */
function send(fd: number, b: Uint8Array, fds: number[] | null = null): boolean {
  try {
    return native.sendmsg(fd, [b], fds && fds.length ? fds : null) >= 0;
  } catch {
    return false;
  }
}

async function raw(path: string, body: (fd: number) => Promise<void>): Promise<void> {
  let fd: number;
  try {
    fd = native.connect(path);
  } catch {
    return;
  }
  try {
    await body(fd);
  } finally {
    native.close(fd);
  }
}

async function client(path: string, body: (c: VfioUserClient) => Promise<void>, twinSocket = chance(0.5)): Promise<void> {
  let c: VfioUserClient;
  try {
    c = await VfioUserClient.connect(path, { timeout: 3000, twinSocket });
  } catch {
    return; // refused (busy) or cut: part of the mix
  }
  try {
    await body(c);
  } catch {
    // hostile requests fail: expected
  } finally {
    c.close();
  }
}

const settle = <T>(ps: Promise<T>[]): Promise<unknown> => Promise.allSettled(ps);

// ------------------------------------------------------------------ scenarios

const SCENARIOS: Record<string, (path: string) => Promise<void>> = {
  garbage: (path) =>
    raw(path, async (fd) => {
      if (chance(0.5)) send(fd, VERSION);
      for (let i = 0, n = 1 + int(8); i < n; i++) {
        send(fd, bytes(1 + int(4096)));
        await sleep(int(3));
        drain(fd);
      }
    }),

  headers: (path) =>
    raw(path, async (fd) => {
      send(fd, VERSION);
      await sleep(1);
      drain(fd);
      for (let i = 0, n = 1 + int(32); i < n; i++) {
        const cmd = pick([...P.ALL_COMMANDS, 0, 99, 0xffff]);
        const payload = bytes(int(64));
        const size = pick([0, 1, 15, 16, 17, P.HEADER_SIZE + payload.length, 0xffffffff, 0x7fffffff, 1 << 24]);
        const flags = pick([0, 1, 2, 0x10, 0x20, 0x31, rnd()]);
        send(fd, frame(cmd, payload, { size: size >>> 0, flags: flags >>> 0, error: chance(0.2) ? rnd() : 0 }));
        if (!drain(fd)) return;
      }
      await sleep(int(5));
    }),

  truncated: (path) =>
    raw(path, async (fd) => {
      send(fd, VERSION);
      await sleep(1);
      drain(fd);
      const m = frame(P.Command.REGION_WRITE, bytes(16 + int(65536)));
      const dv = new DataView(m.buffer);
      dv.setUint32(P.HEADER_SIZE, 0, true); // region 0
      send(fd, m.subarray(0, int(m.length)));
      await sleep(int(200));
    }),

  fds: (path) =>
    raw(path, async (fd) => {
      const memfd = native.memfdCreate('soak-flood');
      native.ftruncate(memfd, 4096);
      try {
        if (chance(0.7)) send(fd, VERSION);
        await sleep(1);
        drain(fd);
        for (let i = 0, n = 1 + int(8); i < n; i++) {
          const fds = new Array<number>(1 + int(253)).fill(memfd);
          const cmd = pick([P.Command.DEVICE_GET_INFO, P.Command.REGION_READ, P.Command.DMA_MAP, P.Command.DEVICE_SET_IRQS, 99]);
          const msg = chance(0.2) ? bytes(1) : frame(cmd, bytes(int(48)));
          send(fd, msg, fds);
          await sleep(int(2));
          if (!drain(fd)) return;
        }
      } finally {
        native.close(memfd);
      }
    }),

  dma: (path) =>
    client(path, async (c) => {
      const mem = new GuestMemory(1 << 20, 'soak-guest');
      try {
        const ops: Promise<unknown>[] = [];
        const n = 1 + int(256);
        for (let i = 0; i < n; i++) {
          const iova = pick([i * 0x10000, i * 2 ** 30, int(1 << 20) * 4096, 2 ** 52 + i * 4096, 0]);
          ops.push(c.dmaMap(mem, iova, { offset: pick([0, 4096, 1 << 19]), size: pick([4096, 65536, 1 << 19]), prot: pick([PROT_READ, 3, 3]), shared: chance(0.7) }));
          if (chance(0.3)) ops.push(c.dmaUnmap(iova, pick([4096, 65536, 1 << 19])));
        }
        await settle(ops);
        if (chance(0.5)) await c.dmaUnmapAll();
      } finally {
        mem.free();
      }
    }),

  regions: (path) =>
    client(path, async (c) => {
      const ops: Promise<unknown>[] = [];
      for (let i = 0, n = 1 + int(200); i < n; i++) {
        const region = pick([0, 0, 0, 1, 2, 4, 5, 7, 8, 9, 12]);
        const offset = pick([0, 0x14, 0x1c, 0x1000, 0x1008, 0x2000, 0x3000, int(0x4000), 0x3ffc, 0x4000, 2 ** 40]);
        const len = pick([1, 2, 4, 8, 64, 4096, 8192]);
        if (chance(0.5)) ops.push(c.read(region, offset, len));
        else if (region === 0 && offset === 0x14) continue; // CC: leave the controller alone
        else ops.push(c.write(region, offset, bytes(len)));
        if (chance(0.05)) ops.push(c.writeMulti([{ region: 0, offset: 0x1008, data: bytes(4) }, { region, offset, data: bytes(8) }]));
        if (chance(0.05)) ops.push(c.readConfig(int(256), pick([1, 2, 4])));
      }
      await settle(ops);
    }),

  irqs: (path) =>
    client(path, async (c) => {
      const index = pick([0, 2, 2, 2, 4, 7]); // INTX, MSI-X, REQ, out of range
      const h = await c.enableIrqs(index, 1 + int(16));
      if (chance(0.5)) await c.maskIrq(index, 0, 1);
      if (chance(0.5)) await c.triggerIrq(index, 0, 1);
      if (chance(0.3)) {
        const memfd = native.memfdCreate('not-an-eventfd');
        try {
          await c.setIrqs(index, 0x20 | 0x4 /* DATA_EVENTFD | ACTION_TRIGGER */, 0, 1, undefined, [memfd]).catch(() => {});
        } finally {
          native.close(memfd);
        }
      }
      if (chance(0.5)) await c.disableIrqs(index);
      h.close();
    }),

  vanish: (path) =>
    client(path, async (c) => {
      for (let i = 0, n = 1 + int(500); i < n; i++) void c.read(0, 0, 8).catch(() => {});
      if (chance(0.5)) await sleep(int(3));
      // close() in the caller, with the requests still in flight
    }),

  slow: (path) =>
    raw(path, async (fd) => {
      if (chance(0.5)) {
        // trickle: one byte of VERSION at a time (the server's handshake timeout may cut it)
        for (let i = 0; i < Math.min(VERSION.length, 3 + int(20)); i++) {
          if (!send(fd, VERSION.subarray(i, i + 1))) return;
          await sleep(20 + int(60));
        }
        return;
      }
      // never read: requests until the socket is full, then hang on a while
      send(fd, VERSION);
      const read = frame(P.Command.REGION_READ, P.encodeRegionReadRequest({ offset: 0, region: 0, count: 4096 }));
      for (let i = 0; i < 20000; i++) if (!send(fd, read)) break;
      await sleep(200 + int(800));
    }),

  migration: (path) =>
    client(path, async (c) => {
      const ops = [
        () => c.setDeviceState(pick([1, 2, 3, 4, 6])),
        () => c.migDataRead(pick([0, 16, 65536, 1 << 20])),
        () => c.migDataWrite(bytes(int(4096))),
        () => c.getDeviceState(),
      ];
      for (let i = 0, n = 1 + int(12); i < n; i++) await pick(ops)().catch(() => {});
      if (chance(0.5)) await c.setDeviceState(2).catch(() => {});
    }),
};

// ------------------------------------------------------------------ server, probe, sampling

interface Server {
  child: ChildProcess;
  path: string;
  stderr: () => string;
}

async function startServer(dir: string): Promise<Server> {
  const path = join(dir, 'soak.sock');
  const child = spawn(process.execPath, [CLI, 'serve', 'nvme', '--size=16M', `--socket-path=${path}`], { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err = (err + d).slice(-20000)));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (/"event":\s*"ready"/.test(line)) resolve();
    });
    child.on('exit', (code, sig) => reject(new Error(`server exited (${code ?? sig}) before ready: ${err}`)));
  });
  return { child, path, stderr: () => err };
}

function fdsOf(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

function rssMiB(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) / 1024 : NaN;
}

/** A normal client: connect (retrying while busy), 200 CAP reads; connect time and RTT percentiles. */
async function probe(path: string): Promise<{ connectMs: number; p50: number; p99: number }> {
  const t0 = performance.now();
  let c: VfioUserClient | undefined;
  let last: unknown;
  while (!c && performance.now() - t0 < 15000) {
    try {
      c = await VfioUserClient.connect(path, { timeout: 5000 });
    } catch (e) {
      last = e;
      await sleep(20);
    }
  }
  if (!c) throw new Error(`normal client not served within 15 s: ${(last as Error)?.message}`);
  const connectMs = performance.now() - t0;
  try {
    const rtts: number[] = [];
    for (let i = 0; i < 200; i++) {
      const s = performance.now();
      const cap = await c.read(0, 0, 8);
      rtts.push((performance.now() - s) * 1000);
      if (cap.length !== 8) throw new Error('short CAP read');
    }
    rtts.sort((a, b) => a - b);
    return { connectMs, p50: rtts[100]!, p99: rtts[198]! };
  } finally {
    c.close();
  }
}

interface Sample {
  t: number;
  sessions: number;
  fds: number;
  rss: number;
  connectMs: number;
  p50: number;
  p99: number;
}

async function main(): Promise<void> {
  const names = opt('scenarios', Object.keys(SCENARIOS).join(',')).split(',');
  for (const n of names) if (!SCENARIOS[n]) throw new Error(`unknown scenario ${n} (${Object.keys(SCENARIOS).join(', ')})`);
  const dir = mkdtempSync(join(tmpdir(), 'vfu-soak-'));
  const server = await startServer(dir);
  const pid = server.child.pid!;
  let died: string | undefined;
  server.child.on('exit', (code, sig) => (died = `server died (${code ?? sig}): ${server.stderr().slice(-4000)}`));
  const counts: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  let sessions = 0;
  let paused = false;
  let active = 0;
  let stop = false;
  const worker = async (): Promise<void> => {
    while (!stop && !died) {
      if (paused) {
        await sleep(5);
        continue;
      }
      const name = pick(names);
      active++;
      try {
        await SCENARIOS[name]!(server.path);
      } catch {
        // a hostile session's failure is expected
      } finally {
        active--;
      }
      counts[name]!++;
      sessions++;
    }
  };
  const quiet = async (): Promise<void> => {
    paused = true;
    const end = Date.now() + 20000;
    while (active > 0 && Date.now() < end) await sleep(5);
    // let the server finish tearing the last session down
    await sleep(300);
  };
  const samples: Sample[] = [];
  const sample = async (t: number): Promise<Sample> => {
    await quiet();
    const fds = fdsOf(pid);
    const rss = rssMiB(pid);
    const p = await probe(server.path);
    paused = false;
    const s = { t, sessions, fds, rss, ...p };
    samples.push(s);
    console.log(
      `${String(Math.round(t)).padStart(6)} ${String(sessions).padStart(9)} ${String(fds).padStart(5)} ${rss.toFixed(1).padStart(8)} ${p.connectMs.toFixed(1).padStart(10)} ${p.p50.toFixed(0).padStart(8)} ${p.p99.toFixed(0).padStart(8)}`,
    );
    return s;
  };
  const failures: string[] = [];
  console.log(`soak: ${TIME_S} s, sample every ${INTERVAL_S} s, ${WORKERS} workers, scenarios ${names.join(',')}, seed ${seed}, server pid ${pid} (vfio-user serve nvme --size=16M)`);
  console.log(`${'t(s)'.padStart(6)} ${'sessions'.padStart(9)} ${'fds'.padStart(5)} ${'RSS(MiB)'.padStart(8)} ${'connect(ms)'.padStart(10)} ${'p50(us)'.padStart(8)} ${'p99(us)'.padStart(8)}`);
  const start = Date.now();
  try {
    await sample(0);
    const workers = Array.from({ length: WORKERS }, worker);
    while (!died && (Date.now() - start) / 1000 < TIME_S) {
      await sleep(Math.min(INTERVAL_S * 1000, Math.max(0, TIME_S * 1000 - (Date.now() - start))));
      if (died) break;
      try {
        await sample((Date.now() - start) / 1000);
      } catch (e) {
        failures.push((e as Error).message);
        break;
      }
    }
    stop = true;
    await Promise.all(workers);
  } finally {
    stop = true;
  }
  if (died) failures.push(died);
  if (!died && samples.length >= 2) {
    // baseline: the first sample taken after hostile load (lazy allocations done)
    const base = samples[1]!.fds;
    const last = samples[samples.length - 1]!;
    const maxFds = Math.max(...samples.map((s) => s.fds));
    if (last.fds > base) failures.push(`fds grew: ${base} after the first interval, ${last.fds} at the end (max ${maxFds})`);
    const half = Math.ceil(samples.length / 2);
    const first = Math.max(...samples.slice(1, Math.max(2, half)).map((s) => s.rss));
    const second = Math.max(...samples.slice(half).map((s) => s.rss));
    const slack = Math.max(32, first * 0.25);
    console.log(`fds: baseline ${base}, end ${last.fds}, max ${maxFds}; RSS max first half ${first.toFixed(1)} MiB, second half ${second.toFixed(1)} MiB (allowed +${slack.toFixed(1)})`);
    if (second > first + slack) failures.push(`RSS grows: ${first.toFixed(1)} MiB max in the first half, ${second.toFixed(1)} MiB in the second`);
    const p50s = samples.map((s) => s.p50).sort((a, b) => a - b);
    console.log(`normal client RTT p50 over samples: min ${p50s[0]!.toFixed(0)} us, median ${p50s[p50s.length >> 1]!.toFixed(0)} us, max ${p50s[p50s.length - 1]!.toFixed(0)} us`);
  }
  console.log(`sessions by scenario: ${Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ')} (total ${sessions} in ${((Date.now() - start) / 1000).toFixed(0)} s)`);
  if (server.child.exitCode === null) server.child.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
  if (failures.length) {
    console.log(`soak FAILED:\n  ${failures.join('\n  ')}`);
    process.exit(1);
  }
  console.log('soak ok: server alive, fds flat, RSS bounded');
  process.exit(0);
}

await main();
