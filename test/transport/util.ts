/**
 * Helpers for the transport tests: a raw peer on the other end of a socketpair (no
 * Connection, byte- and fd-exact), memfds that can be told apart by their size, fd counts,
 * and a seeded PRNG for the fuzz tests.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { native, type NativePoller } from '../../src/native/index.js';
import { HEADER_SIZE, encodeHeader, type Header } from '../../src/protocol/header.js';
import { openFds, concat } from '../helpers.js';

export { openFds };
export { concat, Rng, waitFor } from '../helpers.js';

/** One turn of the event loop (the poll phase runs, so a Connection reads what is queued). */
export function tick(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/** Waits until the process's open fd count is back to `baseline` (fds close asynchronously at most one turn late). */
export async function fdsBackTo(baseline: number, what = 'fd count back to baseline', timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const n = openFds();
    if (n <= baseline) return;
    if (Date.now() > end) throw new Error(`${what}: ${n} open fds, baseline ${baseline}: ${fdList()}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** What the open fds are (for failure messages). */
export function fdList(): string {
  return readdirSync('/proc/self/fd')
    .map((f) => {
      try {
        return `${f}->${readlinkSync(`/proc/self/fd/${f}`)}`;
      } catch {
        return `${f}->?`;
      }
    })
    .join(' ');
}

/** A complete message: header (size computed) + payload. */
export function frame(h: Partial<Header> & { command: number }, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(out, 0, { msgId: h.msgId ?? 0, command: h.command, size: h.size ?? out.length, flags: h.flags ?? 0, error: h.error ?? 0 });
  out.set(payload, HEADER_SIZE);
  return out;
}


/** A memfd whose size (pages * 4096) identifies it after it crossed a socket. */
export function taggedFd(tag: number): number {
  const fd = native.memfdCreate(`tag-${tag}`);
  native.ftruncate(fd, tag * 4096);
  return fd;
}

export function tagOf(fd: number): number {
  return native.fstat(fd).size / 4096;
}

export interface RawMessage {
  header: Header;
  payload: Uint8Array;
  fds: number[];
}

/** The raw end of a socketpair: exact sendmsg calls, and message-framed reads. */
export class RawPeer {
  readonly fd: number;
  private poller: NativePoller | undefined;
  private waiters: (() => void)[] = [];
  private buf: Uint8Array = new Uint8Array(0);
  private pos = 0; // first unconsumed byte of buf
  private base = 0; // stream position of buf[0]
  /** fds received, each with the stream position of the last byte of its read */
  private fdRecs: { pos: number; fds: number[] }[] = [];
  private readonly fdsOut = new Int32Array(1 + 253);
  /** one receive buffer, reused (what a read gets is copied out): a fresh 256 KiB per recv()
   * made reading 65,536 small messages allocate 16 GiB, minutes on a loaded machine */
  private readonly chunk = new Uint8Array(262144);
  eof = false;
  closed = false;

  constructor(fd: number) {
    this.fd = fd;
  }

  /** One sendmsg; returns bytes sent (-1 on EAGAIN). */
  send(data: Uint8Array, fds: number[] | null = null): number {
    return native.sendmsg(this.fd, [data], fds && fds.length ? fds : null);
  }

  /** Sends all of data, waiting for room; fds go with the first byte. */
  async sendAll(data: Uint8Array, fds: number[] | null = null): Promise<void> {
    let off = 0;
    while (off < data.length) {
      const n = native.sendmsg(this.fd, [data.subarray(off)], off === 0 && fds && fds.length ? fds : null);
      if (n < 0) {
        await this.wait(native.POLL_WRITABLE);
        continue;
      }
      off += n;
    }
  }

  private wait(events: number): Promise<void> {
    if (!this.poller) {
      this.poller = native.createPoller(this.fd, () => {
        this.poller!.stop();
        const w = this.waiters;
        this.waiters = [];
        for (const f of w) f();
      });
    }
    return new Promise((resolve) => {
      this.waiters.push(resolve);
      this.poller!.start(events | native.POLL_DISCONNECT);
    });
  }

  /** Reads whatever is queued now (no waiting); returns bytes read. */
  drainNow(): number {
    let total = 0;
    for (;;) {
      const chunk = this.chunk;
      let n: number;
      try {
        n = native.recvmsg(this.fd, chunk, 0, chunk.length, this.fdsOut);
      } catch (e) {
        if ((e as { code?: string }).code !== 'ECONNRESET') throw e;
        n = 0; // the other end closed with data unread: as good as EOF for us
      }
      const got = Array.from(this.fdsOut.subarray(1, 1 + this.fdsOut[0]!));
      this.fdsOut[0] = 0;
      if (n < 0) return total;
      if (n === 0) {
        if (got.length) this.fdRecs.push({ pos: -1, fds: got });
        this.eof = true;
        return total;
      }
      total += n;
      this.base += this.pos;
      this.buf = concat(this.buf.subarray(this.pos), chunk.subarray(0, n));
      this.pos = 0;
      if (got.length) this.fdRecs.push({ pos: this.base + this.buf.length - 1, fds: got });
    }
  }

  /** Bytes received and not yet taken as messages. */
  get buffered(): number {
    return this.buf.length - this.pos;
  }

  /** Every fd received so far that no message took (the caller must close them). */
  takeStrayFds(): number[] {
    const f = this.fdRecs.flatMap((r) => r.fds);
    this.fdRecs = [];
    return f;
  }

  /** The next whole message (with the fds of reads that ended inside it), or undefined at EOF. */
  async recv(timeoutMs = 3000): Promise<RawMessage | undefined> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      this.drainNow();
      if (this.buffered >= HEADER_SIZE) {
        const dv = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos);
        const size = Math.max(HEADER_SIZE, dv.getUint32(4, true));
        if (this.buffered >= size) {
          const header: Header = {
            msgId: dv.getUint16(0, true),
            command: dv.getUint16(2, true),
            size,
            flags: dv.getUint32(8, true),
            error: dv.getUint32(12, true),
          };
          const payload = this.buf.slice(this.pos + HEADER_SIZE, this.pos + size);
          const end = this.base + this.pos + size;
          this.pos += size;
          const fds: number[] = [];
          this.fdRecs = this.fdRecs.filter((r) => {
            if (r.pos >= end) return true;
            fds.push(...r.fds);
            return false;
          });
          return { header, payload, fds };
        }
      }
      if (this.eof) return undefined;
      if (Date.now() > end) throw new Error('RawPeer.recv timed out');
      await Promise.race([this.wait(native.POLL_READABLE), new Promise((r) => setTimeout(r, 20))]);
    }
  }

  /** True when nothing at all is queued for us (and no EOF). */
  nothingQueued(): boolean {
    return this.drainNow() === 0 && this.buffered === 0 && !this.eof;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller?.close();
    this.poller = undefined;
    for (const f of this.waiters) f();
    this.waiters = [];
    native.close(this.fd);
    for (const fd of this.takeStrayFds()) native.close(fd);
  }
}

/** The seed for a fuzz run: VFU_FUZZ_SEED or a fresh one (printed on failure by the caller). */
export function fuzzSeed(): number {
  const env = process.env.VFU_FUZZ_SEED;
  return env !== undefined ? Number(env) >>> 0 : (Math.random() * 0x100000000) >>> 0;
}
