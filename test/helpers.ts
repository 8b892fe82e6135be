/**
 * Shared test helpers: the CLI, serving a built-in device in a child process, fd counts, CPU
 * time, a PRNG. Socket paths, device harnesses, drivers and register helpers are the public
 * test kit's (src/testing), re-exported here under the names the tests use.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { basename } from 'node:path';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../src/client/client.js';
import { migrate } from '../src/client/migrate.js';
import type { VfioUserServer, ServerOptions } from '../src/server/server.js';
import { spawnServer, listenDevice, waitUntil, type ServerProcess } from '../src/testing/index.js';
import { TestDevice } from './server/testdev.js';
import { byteAt } from '../src/bytes.js';
import { native } from '../src/native/index.js';

export { socketPath as sockPath, u32, u64, rd32 } from '../src/testing/index.js';

export const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

export type Served = ServerProcess;

/** Runs `vfio-user serve <device>` in a child process and waits until it is ready. */
export function serveChild(device: string, extra: string[] = [], opts: { taskset?: string; nodeArgs?: string[] } = {}): Promise<Served> {
  return spawnServer([...(opts.nodeArgs ?? []), CLI, 'serve', device, ...extra], { name: basename(device).replace(/\.[cm]?js$/, ''), ...(opts.taskset !== undefined && { wrapper: ['taskset', '-c', opts.taskset] }) });
}

/**
 * Sets an eventfd's counter to its maximum (2^64 - 2): a write of 1 then fails with EAGAIN, or
 * waits when the fd is blocking. The counter must be 0, or the fd non-blocking.
 */
export function fillEventfd(fd: number): void {
  if (!native.eventfdWrite(fd, 0xfffffffffffffffen)) throw new Error('fillEventfd: the counter was not 0');
}

/** b[i] ^= mask, for an index the test knows is inside b (a RangeError otherwise). */
export function flipBits(b: Uint8Array, i: number, mask: number): void {
  b[i] = byteAt(b, i) ^ mask;
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Rejects if p does not settle within ms (a hang is a failure, not a stuck test). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
}

/**
 * Waits until cond() holds (it may be async), checking every couple of milliseconds; throws
 * after timeoutMs: wait for the condition, never for a guessed time (the kit's waitUntil).
 */
export function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  return waitUntil(cond, { what, timeoutMs, intervalMs: 2 });
}

export interface ServerContext {
  server: VfioUserServer;
  dev: TestDevice;
  path: string;
  /** how many sessions have ended so far (the server's 'disconnect' events) */
  ended: () => number;
}

/** Serves a fresh TestDevice in this process (the kit's listenDevice) while fn runs, then closes both. */
export async function withServer<T>(fn: (ctx: ServerContext) => Promise<T>, opts: ServerOptions = {}): Promise<T> {
  const s = listenDevice(new TestDevice(), { server: opts, name: 'srv' });
  let ended = 0;
  s.server.on('disconnect', () => ended++);
  try {
    return await fn({ server: s.server, dev: s.device, path: s.path, ended: () => ended });
  } finally {
    await s.close();
  }
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

/** The fields of /proc/PID/stat after the command name: [state, ppid, ...]. */
function procStat(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** CPU time another process has used, in ms (from /proc/PID/stat, at clock-tick resolution). */
export function processCpuMs(pid: number): number {
  const f = procStat(pid);
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime, stime in USER_HZ (100)
}

/** A process's state letter (R running, S sleeping, T stopped, Z zombie...) from /proc/PID/stat. */
export function processState(pid: number): string {
  return procStat(pid)[0] ?? '';
}
