// Shared helpers for the native addon tests and their child-process / worker fixtures.
import { readdirSync, readFileSync } from 'node:fs';
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { native, type NativePoller } from '../../src/native/index.js';

/** Number of open fds in this process. */
export function countFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** The `flags` field of /proc/self/fdinfo/N (octal open flags). */
export function fdFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) throw new Error(`no flags in fdinfo of ${fd}`);
  return parseInt(m[1]!, 8);
}

export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;

export function isCloexec(fd: number): boolean {
  return (fdFlags(fd) & O_CLOEXEC) !== 0;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export interface Received {
  data: Uint8Array;
  fds: number[];
}

/**
 * A promise-based stream over a non-blocking socket fd, driven by one NativePoller.
 * Messages are framed as a 4-byte little-endian length followed by the payload.
 */
export class Conn {
  private readonly poller: NativePoller;
  private waiters: Array<(err?: Error) => void> = [];
  private readonly fdsOut = new Int32Array(1 + native.SCM_MAX_FD);

  constructor(readonly fd: number) {
    this.poller = native.createPoller(fd, (status) => {
      const ws = this.waiters;
      this.waiters = [];
      this.poller.stop();
      const err = status < 0 ? new Error(`poll failed with status ${status}`) : undefined;
      for (const w of ws) w(err);
    });
  }

  private wait(events: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiters.push((e) => (e ? reject(e) : resolve()));
      this.poller.start(events);
    });
  }

  /** Reads exactly n bytes (n > 0); collects every fd that arrived with them. */
  async recvExact(n: number): Promise<Received> {
    const data = new Uint8Array(n);
    const fds: number[] = [];
    let got = 0;
    while (got < n) {
      const r = native.recvmsg(this.fd, data, got, n - got, this.fdsOut);
      for (let i = 0; i < this.fdsOut[0]!; i++) fds.push(this.fdsOut[1 + i]!);
      if (r === -1) {
        await this.wait(native.POLL_READABLE);
        continue;
      }
      if (r === 0) throw new Error(`EOF after ${got} of ${n} bytes`);
      got += r;
    }
    return { data, fds };
  }

  /** Sends all of data; the fds go with the first sendmsg that transfers any byte. */
  async sendAll(data: Uint8Array, fds: number[] | null = null): Promise<void> {
    let off = 0;
    while (off < data.length) {
      const r = native.sendmsg(this.fd, [data.subarray(off)], off === 0 ? fds : null);
      if (r === -1) {
        await this.wait(native.POLL_WRITABLE);
        continue;
      }
      off += r;
    }
  }

  async sendMsg(payload: Uint8Array, fds: number[] | null = null): Promise<void> {
    const frame = new Uint8Array(4 + payload.length);
    new DataView(frame.buffer).setUint32(0, payload.length, true);
    frame.set(payload, 4);
    await this.sendAll(frame, fds);
  }

  async recvMsg(): Promise<Received> {
    const h = await this.recvExact(4);
    const len = new DataView(h.data.buffer).getUint32(0, true);
    if (len === 0) return { data: new Uint8Array(0), fds: h.fds };
    const body = await this.recvExact(len);
    return { data: body.data, fds: [...h.fds, ...body.fds] };
  }

  sendJson(value: unknown, fds: number[] | null = null): Promise<void> {
    return this.sendMsg(enc.encode(JSON.stringify(value)), fds);
  }

  async recvJson<T = Record<string, unknown>>(): Promise<{ value: T; fds: number[] }> {
    const m = await this.recvMsg();
    return { value: JSON.parse(dec.decode(m.data)) as T, fds: m.fds };
  }

  /** Closes the poller (not the fd). */
  close(): void {
    this.poller.close();
  }
}

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Waits for a child to exit, collecting its output; kills it after timeoutMs. */
export function collect(child: ChildProcess, timeoutMs = 8000): Promise<ChildResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export const PEER = new URL('./fixtures/peer.js', import.meta.url).pathname;
export const WORKER = new URL('./fixtures/worker.js', import.meta.url);

/**
 * Spawns the peer fixture in a new Node process. When sockFd is given it becomes fd 3 of
 * the child (inherited, so not close-on-exec there).
 */
export function spawnPeer(mode: string, sockFd?: number, opts: { nodeArgs?: string[]; fdLimit?: number } = {}): ChildProcess {
  const stdio: StdioOptions = sockFd === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe', sockFd];
  const args = [...(opts.nodeArgs ?? []), PEER, mode];
  if (opts.fdLimit !== undefined) {
    // lower both soft and hard limits (Node raises the soft limit to the hard one at startup)
    return spawn('/bin/sh', ['-c', `ulimit -n ${opts.fdLimit} && exec "$0" "$@"`, process.execPath, ...args], { stdio });
  }
  return spawn(process.execPath, args, { stdio });
}

/** Parses the last JSON line a fixture printed. */
export function lastJson<T = Record<string, unknown>>(stdout: string): T {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as T;
}

export function text(s: string): Uint8Array {
  return enc.encode(s);
}

export function str(b: Uint8Array): string {
  return dec.decode(b);
}

/**
 * Resolves once a whole turn of the event loop has run since the call, poll phase included:
 * libuv hands a started watcher to epoll at the start of its poll phase, so after this a
 * started poller is registered, and a ready fd's callback would have run. (The first
 * setImmediate may still belong to the current turn, the second cannot.)
 */
export async function loopTurn(): Promise<void> {
  for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
}
