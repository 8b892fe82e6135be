/**
 * Shared test helpers: temp socket paths, serving a device in a child process, fd counts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';
import { VfioUserServer } from '../src/server/server.js';
import { VfioUserClient } from '../src/client/client.js';
import { migrate } from '../src/client/migrate.js';
import type { PciDevice } from '../src/server/device.js';

export const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

let seq = 0;
let dir: string | undefined;
/** A fresh socket path in this process's temp dir (made on first use, removed at exit). */
export function sockPath(name = 'dev'): string {
  if (!dir) {
    const d = mkdtempSync(join(tmpdir(), 'vfu-test-'));
    dir = d;
    process.on('exit', () => rmSync(d, { recursive: true, force: true }));
  }
  return join(dir, `${name}-${process.pid}-${seq++}.sock`);
}

export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

export interface Served {
  child: ChildProcess;
  path: string;
  events: Record<string, unknown>[];
  /** resolves with the next event of that name */
  waitEvent(name: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  send(line: string): void;
  stop(): Promise<number | null>;
  stderr(): string;
}

/** Runs `vfio-user serve <device>` in a child process and waits until it is ready. */
export async function serveChild(device: string, extra: string[] = [], opts: { taskset?: string } = {}): Promise<Served> {
  const path = sockPath(device);
  const args = [CLI, 'serve', device, `--socket-path=${path}`, ...extra];
  const child = opts.taskset
    ? spawn('taskset', ['-c', opts.taskset, process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: Record<string, unknown>[] = [];
  const waiters: { name: string; resolve: (e: Record<string, unknown>) => void }[] = [];
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line);
    } catch {
      return;
    }
    const i = waiters.findIndex((w) => w.name === e.event);
    if (i >= 0) waiters.splice(i, 1)[0]!.resolve(e);
    else events.push(e);
  });
  const waitEvent = (name: string, timeoutMs = 10000): Promise<Record<string, unknown>> => {
    const i = events.findIndex((e) => e.event === name);
    if (i >= 0) return Promise.resolve(events.splice(i, 1)[0]!);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timeout waiting for ${name}; stderr: ${err}`)), timeoutMs);
      waiters.push({ name, resolve: (e) => (clearTimeout(t), resolve(e)) });
    });
  };
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await Promise.race([
    waitEvent('ready'),
    exited.then((code) => {
      throw new Error(`server exited with ${code}: ${err}`);
    }),
  ]);
  return {
    child,
    path,
    events,
    waitEvent,
    send: (line) => child.stdin!.write(line + '\n'),
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
    stderr: () => err,
  };
}

/**
 * Sets an eventfd's counter to its maximum (2^64 - 2): a write of 1 then fails with EAGAIN, or
 * waits when the fd is blocking. The counter must be 0, or the fd non-blocking.
 */
export function fillEventfd(fd: number): void {
  const max = Buffer.alloc(8);
  max.writeBigUInt64LE(0xfffffffffffffffen);
  writeSync(fd, max);
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Little-endian byte helpers for register accesses. */
export function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}
export function u64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}
export function rd32(b: Uint8Array): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Small, fast, seedable PRNG (mulberry32) for fuzz and round-trip tests. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** Uniform u32. */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }
  bool(): boolean {
    return (this.u32() & 1) === 1;
  }
  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** A device served in this process on a fresh socket; close() stops the server and frees the device. */
export function serveDevice<T extends PciDevice>(dev: T, name: string): { dev: T; server: VfioUserServer; path: string; close(): void } {
  const server = new VfioUserServer(dev);
  const path = sockPath(name);
  server.listen(path);
  return { dev, server, path, close: () => (server.close(), dev.destroy()) };
}

/** Migrating from one server to the other fails, and the source is back in RUNNING. */
export async function assertMigrationRefused(srcPath: string, dstPath: string): Promise<void> {
  const a = await VfioUserClient.connect(srcPath);
  const b = await VfioUserClient.connect(dstPath);
  try {
    await assert.rejects(migrate(a, b));
    assert.equal(await a.getDeviceState(), 2, 'source back to RUNNING');
  } finally {
    a.close();
    b.close();
  }
}

/**
 * CPU time this process has used, in ms (user + system): for "fast enough" assertions that
 * must hold on a machine busy with other work, where wall-clock time does not.
 */
export function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** CPU time another process has used, in ms (from /proc/PID/stat, at clock-tick resolution). */
export function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime, stime in USER_HZ (100)
}
