/**
 * Fuzz target: a live server's dispatch. An in-process VfioUserServer with an NVMe device
 * (memory namespace, migratable, MSI-X, DMA) serves one client per input over a socketpair;
 * the input (fuzz/frames.ts records) is what that client sends: optionally a valid VERSION
 * first, then messages with fuzzed payloads, sizes, flags and memfds, garbage and pauses.
 * Replies and server-to-client requests are read and dropped. After the client hangs up the
 * session must end (a hang is a finding), nothing may escape (uncaught errors are findings),
 * and the process must hold no more fds than before the input.
 * Input: u8 options (bit 0: skip the valid VERSION), then records.
 */
import { readdirSync } from 'node:fs';
import { native } from '../../src/native/index.js';
import { VfioUserServer } from '../../src/server/server.js';
import { NvmeDevice } from '../../src/devices/nvme/index.js';
import { closeFds } from '../../src/transport/connection.js';
import { Command, encodeRequest, encodeHeader, HEADER_SIZE } from '../../src/protocol/index.js';
import { Bytes, checkFds } from '../lib.js';
import { nextStep } from '../frames.js';

const MEMFD_SIZE = 1 << 16;

let setup: { server: VfioUserServer; dev: NvmeDevice; baseline: number; ended: number; bugs: string[]; onEnd?: (() => void) | undefined } | undefined;

function init(): NonNullable<typeof setup> {
  const dev = new NvmeDevice({ size: 1 << 20, ioQueues: 4, log: () => {} });
  const bugs: string[] = [];
  // a handler that fails with something other than a protocol/vfio-user error is a bug
  const log = (level: string, msg: string): void => {
    if (level === 'warn' && /failed: (?!.*(VfioUserError|ProtocolError|NvmeStatusError))/.test(msg) && /\n\s+at /.test(msg)) bugs.push(msg);
  };
  const server = new VfioUserServer(dev, { dmaTimeoutMs: 200, log });
  const s: NonNullable<typeof setup> = { server, dev, baseline: 0, ended: 0, bugs };
  server.on('disconnect', () => {
    s.ended++;
    s.onEnd?.();
  });
  server.on('error', (e) => bugs.push(`server error event: ${(e as Error).stack}`));
  return s;
}

function version(): Uint8Array {
  const payload = encodeRequest(Command.VERSION, {
    major: 0,
    minor: 0,
    capabilities: { maxMsgFds: 8, maxDataXferSize: 1 << 20, migration: { pgsize: 4096, maxBitmapSize: 1 << 20 }, writeMultiple: true },
  });
  const m = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(m, 0, { msgId: 0, command: Command.VERSION, size: m.length, flags: 0, error: 0 });
  m.set(payload, HEADER_SIZE);
  return m;
}

const rbuf = new Uint8Array(1 << 20);
const fdsOut = new Int32Array(1 + 253);

/** Reads and drops whatever the server sent (closing any fds). */
function drain(fd: number): void {
  for (;;) {
    let n: number;
    try {
      n = native.recvmsg(fd, rbuf, 0, rbuf.length, fdsOut);
    } catch {
      return;
    }
    closeFds(Array.from(fdsOut.subarray(1, 1 + fdsOut[0]!)));
    fdsOut[0] = 0;
    if (n <= 0) return;
  }
}

/** Sends all of bytes (draining replies while the socket is full); false if the server hung up. */
async function sendAll(fd: number, bytes: Uint8Array, fds: number[]): Promise<boolean> {
  let off = 0;
  let first = true;
  while (off < bytes.length) {
    let n: number;
    try {
      n = native.sendmsg(fd, [bytes.subarray(off)], first && fds.length ? fds : null);
    } catch {
      return false; // EPIPE: the server dropped us
    }
    if (n < 0) {
      drain(fd);
      await new Promise((r) => setImmediate(r));
      continue;
    }
    if (n > 0) first = false;
    off += n;
  }
  return true;
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

export async function fuzz(data: Buffer): Promise<void> {
  if (!setup) {
    setup = init();
    // warm up lazily allocated state with one empty session before taking the fd baseline
    await runSession(Buffer.from([1]));
    setup.baseline = readdirSync('/proc/self/fd').length;
  }
  await runSession(data);
  if (setup.bugs.length) throw new Error(`handler bug: ${setup.bugs.join('\n')}`);
  await checkFds(setup.baseline, 'a session');
}

async function runSession(data: Uint8Array): Promise<void> {
  const s = setup!;
  const b = new Bytes(data);
  const opts = b.u8();
  const [mine, theirs] = native.socketpair();
  const endedBefore = s.ended;
  s.server.serveFd(theirs);
  let msgId = 1;
  let alive = true;
  if (!(opts & 1)) alive = await sendAll(mine, version(), []);
  for (let step = nextStep(b, { msgId: () => msgId++ }); step && alive; step = nextStep(b, { msgId: () => msgId++ })) {
    if (step.kind === 'pause') {
      for (let i = 0; i <= step.turns; i++) await turn();
      drain(mine);
      continue;
    }
    const fds: number[] = [];
    for (let i = 0; i < step.fds; i++) {
      const m = native.memfdCreate('fuzz-dma');
      native.ftruncate(m, MEMFD_SIZE);
      fds.push(m);
    }
    try {
      if (step.bytes.length) alive = await sendAll(mine, step.bytes, fds);
    } finally {
      closeFds(fds);
    }
  }
  await turn();
  drain(mine);
  native.close(mine);
  // the session must end by itself once the client is gone (Jazzer's --timeout makes a hang a finding)
  if (s.ended === endedBefore) await new Promise<void>((r) => (s.onEnd = r));
  s.onEnd = undefined;
  // every case starts from a freshly reset device
  await s.dev.reset('lost-client');
}
