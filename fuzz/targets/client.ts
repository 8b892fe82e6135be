/**
 * Fuzz target: the client library's reply handling. A VfioUserClient connects over a
 * socketpair to a fake server whose every message comes from the input (fuzz/frames.ts
 * records): kind 0 answers the oldest pending request (its command and id, with fuzzed
 * payload, size, flags, error and memfds), kind 1 is a request of the server's own (DMA_READ,
 * DMA_WRITE, anything), raw bytes and pauses. The client negotiates, then runs a fixed script
 * of calls; each may fail only with a VfioUserError/ProtocolError. When the input runs out the
 * fake server hangs up. Nothing may escape (uncaught errors are findings), and after the
 * client is closed the process must hold no more fds than before.
 * Input: u8 options (bit 0: ask for twin-socket mode; bits 1-4: the first call of the
 * script; bits 5-7: how many calls, 0 meaning all of them), then records.
 */
import { readdirSync } from 'node:fs';
import { native } from '../../src/native/index.js';
import { VfioUserClient } from '../../src/client/client.js';
import { closeFds } from '../../src/transport/connection.js';
import { HEADER_SIZE } from '../../src/protocol/index.js';
import { Bytes, checkFds, onlyExpected } from '../lib.js';
import { nextStep } from '../frames.js';

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
const rbuf = new Uint8Array(1 << 21);
const fdsOut = new Int32Array(1 + 253);
let baseline: number | undefined;

class FakeServer {
  private buf = new Uint8Array(0);
  readonly pending: { command: number; msgId: number }[] = [];
  closed = false;
  constructor(readonly fd: number) {}

  /** Reads what the client sent; queues its requests. */
  read(): void {
    for (;;) {
      let n: number;
      try {
        n = native.recvmsg(this.fd, rbuf, 0, rbuf.length, fdsOut);
      } catch {
        return;
      }
      closeFds(Array.from(fdsOut.subarray(1, 1 + fdsOut[0]!)));
      fdsOut[0] = 0;
      if (n <= 0) return;
      const all = new Uint8Array(this.buf.length + n);
      all.set(this.buf);
      all.set(rbuf.subarray(0, n), this.buf.length);
      let p = 0;
      while (all.length - p >= HEADER_SIZE) {
        const dv = new DataView(all.buffer, p);
        const size = dv.getUint32(4, true);
        if (size < HEADER_SIZE || all.length - p < size) break;
        if ((dv.getUint32(8, true) & 0xf) === 0) this.pending.push({ msgId: dv.getUint16(0, true), command: dv.getUint16(2, true) });
        p += size;
      }
      this.buf = all.slice(p);
    }
  }

  send(bytes: Uint8Array, nfds: number): boolean {
    const fds: number[] = [];
    for (let i = 0; i < nfds; i++) {
      const m = native.memfdCreate('fuzz-reply');
      native.ftruncate(m, 1 << 16);
      fds.push(m);
    }
    try {
      let off = 0;
      while (off < bytes.length) {
        const n = native.sendmsg(this.fd, [bytes.subarray(off)], off === 0 && fds.length ? fds : null);
        if (n < 0) return true; // the client is not reading: drop the rest (a truncated frame)
        off += n;
      }
      return true;
    } catch {
      return false;
    } finally {
      closeFds(fds);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native.close(this.fd);
  }
}

async function serve(srv: FakeServer, b: Bytes, done: () => boolean): Promise<void> {
  let msgId = 0x8000;
  while (!srv.closed) {
    // wait (a few turns) for the client's next request before answering
    for (let i = 0; i < 4 && srv.pending.length === 0 && !done(); i++) {
      await turn();
      srv.read();
    }
    if (done() && srv.pending.length === 0) break;
    const step = nextStep(b, { msgId: () => msgId++, reply: () => srv.pending.shift() });
    if (!step) break;
    if (step.kind === 'pause') {
      for (let i = 0; i <= step.turns; i++) await turn();
      continue;
    }
    if (step.bytes.length && !srv.send(step.bytes, step.fds)) break;
  }
  srv.close();
}

async function script(c: VfioUserClient, opts: number): Promise<void> {
  const calls: [string, () => Promise<unknown>][] = [
    ['deviceInfo', () => c.deviceInfo()],
    ['regionInfo', async () => {
      const r = await c.regionInfoRaw(0);
      if (r.fd !== undefined) native.close(r.fd);
    }],
    ['regions', () => c.regions()],
    ['irqInfo', () => c.irqInfo(0)],
    ['read', () => c.read(0, 0, 64)],
    ['write', () => c.write(0, 0, new Uint8Array(8))],
    ['writeMulti', () => c.writeMulti([{ region: 0, offset: 0, data: new Uint8Array(4) }, { region: 1, offset: 8, data: new Uint8Array(8) }])],
    ['regionIoFds', async () => closeFds((await c.regionIoFds(0)).fds)],
    ['config', () => c.config()],
    ['migrationFlags', () => c.migrationFlags()],
    ['getDeviceState', () => c.getDeviceState()],
    ['setDeviceState', () => c.setDeviceState(1)],
    ['migDataRead', () => c.migDataRead(4096)],
    ['migDataWrite', () => c.migDataWrite(new Uint8Array(16))],
    ['dmaLoggingReport', () => c.dmaLoggingReport(0, 1 << 20, 4096)],
    ['reset', () => c.reset()],
  ];
  const first = (opts >> 1) & 15;
  const count = opts >> 5 || calls.length;
  for (const [what, call] of calls.slice(first, first + count)) {
    try {
      await call();
    } catch (e) {
      onlyExpected(e, what);
    }
  }
}

export async function fuzz(data: Buffer): Promise<void> {
  if (baseline === undefined) {
    await run(Buffer.from([0]));
    baseline = readdirSync('/proc/self/fd').length;
  }
  await run(data);
  await checkFds(baseline, 'a client session');
}

async function run(data: Uint8Array): Promise<void> {
  const b = new Bytes(data);
  const opts = b.u8();
  const [mine, theirs] = native.socketpair();
  const srv = new FakeServer(theirs);
  let finished = false;
  const server = serve(srv, b, () => finished);
  let c: VfioUserClient | undefined;
  try {
    c = await VfioUserClient.connect({ fd: mine }, { timeout: 200, twinSocket: (opts & 1) === 1 });
  } catch (e) {
    onlyExpected(e, 'connect');
  }
  try {
    if (c) await script(c, opts);
  } finally {
    c?.close();
    finished = true;
    await server;
  }
}
