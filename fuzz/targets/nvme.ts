/**
 * Fuzz target: the NVMe command and data-pointer parsers.
 * Input byte 0, bit 0 clear: the data-pointer parsers alone (src/devices/nvme/dataptr.ts):
 *   u64 prp1, u64 prp2, u32 len, u8 page size shift, 16-byte SGL descriptor, then guest
 *   memory at IOVA 0 (reads outside it fail like an unmapped DMA access). A result must
 *   cover exactly len bytes.
 * Bit 0 set: commands through a real controller (memory namespace) whose guest memory is a
 *   DMA-mapped memfd: the controller is reset and enabled, then up to 8 fuzzed 64-byte
 *   commands go to the admin queue (bit 1 clear) or to an I/O queue pair created first
 *   (bit 1 set); the rest of the input fills the data area their pointers may use. Every
 *   command must complete (a missing completion is a hang finding); no error may escape.
 * Admin commands that take the rig's own queues away or complete only on an event (delete
 * SQ/CQ, asynchronous event request) are turned into Identify.
 */
import { native, PROT_READ, PROT_WRITE } from '../../src/native/index.js';
import { NvmeDevice, Reg, DOORBELL_BASE, CC, CSTS } from '../../src/devices/nvme/index.js';
import { prpSegments, sglSegments, type GuestReader } from '../../src/devices/nvme/dataptr.js';
import { DmaError } from '../../src/server/dma.js';
import { Bytes, onlyExpected } from '../lib.js';

const IOVA = 0x100000;
const MEM = 1 << 20;
const ASQ = 0;
const ACQ = 0x1000;
const IOSQ = 0x2000;
const IOCQ = 0x3000;
const DATA = 0x4000;
const QSIZE = 64;

const MASK53 = (1n << 53n) - 1n;

async function dataPointers(b: Bytes): Promise<void> {
  const prp1 = Number(b.u64() & MASK53);
  const prp2 = Number(b.u64() & MASK53);
  const len = b.u32() & 0x3fffff;
  const pageSize = 4096 << (b.u8() & 3);
  const first = new Uint8Array(16);
  first.set(b.take(16));
  const memory = b.rest();
  let reads = 0;
  const mem: GuestReader = {
    read(iova, n) {
      if (++reads > 10000) throw new Error(`more than 10000 guest reads for one data pointer`);
      if (iova + n > memory.length) throw new DmaError(`read [0x${iova.toString(16)}, +${n}) outside guest memory`);
      return reads & 1 ? memory.subarray(iova, iova + n) : Promise.resolve(memory.slice(iova, iova + n));
    },
  };
  for (const [what, run] of [
    ['prp', () => prpSegments(mem, prp1, prp2, len, pageSize)],
    ['sgl', () => sglSegments(mem, first, len)],
  ] as const) {
    reads = 0;
    try {
      const segs = await run();
      let total = 0;
      for (const s of segs) {
        if (!(s.len > 0) || !Number.isSafeInteger(s.len) || !(s.iova >= 0)) throw new Error(`${what}: bad segment ${JSON.stringify(s)}`);
        total += s.len;
      }
      if (total !== len) throw new Error(`${what}: segments cover ${total} bytes, asked for ${len}`);
    } catch (e) {
      onlyExpected(e, what);
    }
  }
}

let rig: { dev: NvmeDevice; mem: Uint8Array; dv: DataView } | undefined;

function bar0(off: number, v: number, bytes = 4): void {
  const d = new Uint8Array(bytes);
  const dv = new DataView(d.buffer);
  if (bytes === 8) dv.setBigUint64(0, BigInt(v), true);
  else dv.setUint32(0, v, true);
  void rig!.dev.regions.get(0)!.access!.write!(off, d);
}

function csts(): number {
  const r = rig!.dev.regions.get(0)!.access!.read!(Reg.CSTS, 4) as Uint8Array;
  return new DataView(r.buffer, r.byteOffset, 4).getUint32(0, true);
}

function setupRig(): NonNullable<typeof rig> {
  const dev = new NvmeDevice({ size: 1 << 20, ioQueues: 2, log: () => {} });
  const fd = native.memfdCreate('fuzz-guest');
  native.ftruncate(fd, MEM);
  const buf = native.mmap(fd, 0, MEM, PROT_READ | PROT_WRITE);
  dev.dma.map(IOVA, MEM, PROT_READ | PROT_WRITE, fd, 0);
  const mem = new Uint8Array(buf);
  return { dev, mem, dv: new DataView(buf) };
}

/**
 * Waits until the controller has posted n entries to completion queue `cqid` since it was
 * created. Counted from the controller's CQ tail, not from guest memory: a fuzzed command
 * may legitimately DMA its data over the queues themselves.
 */
async function completions(cqid: number, n: number, what: string): Promise<void> {
  const end = Date.now() + 3000;
  const cqs = (rig!.dev as unknown as { c: { cqs: ({ tail: number } | undefined)[] } }).c.cqs;
  for (;;) {
    const done = cqs[cqid]?.tail ?? 0;
    if (done >= n) return;
    if (Date.now() > end) throw new Error(`hang: ${done}/${n} ${what} completions after 3 s`);
    await new Promise((r) => setImmediate(r));
  }
}

function sqe(at: number, opcode: number, cid: number, cdw10: number, cdw11: number, prp1 = 0): void {
  const dv = rig!.dv;
  for (let i = 0; i < 64; i += 4) dv.setUint32(at + i, 0, true);
  dv.setUint32(at, opcode | (cid << 16), true);
  dv.setBigUint64(at + 24, BigInt(prp1), true);
  dv.setUint32(at + 40, cdw10, true);
  dv.setUint32(at + 44, cdw11, true);
}

async function commands(b: Bytes, mode: number): Promise<void> {
  rig ??= setupRig();
  const { mem, dv } = rig;
  // reset and enable with a fresh admin queue pair
  bar0(Reg.CC, 0);
  if (csts() & CSTS.RDY) throw new Error('controller still ready after CC.EN = 0');
  mem.fill(0, 0, DATA);
  bar0(Reg.AQA, ((QSIZE - 1) << 16) | (QSIZE - 1));
  bar0(Reg.ASQ, IOVA + ASQ, 8);
  bar0(Reg.ACQ, IOVA + ACQ, 8);
  bar0(Reg.CC, CC.EN | (6 << CC.IOSQES_SHIFT) | (4 << CC.IOCQES_SHIFT));
  if (!(csts() & CSTS.RDY)) throw new Error(`controller not ready after enable (CSTS 0x${csts().toString(16)})`);
  const io = (mode & 2) !== 0;
  let adminTail = 0;
  if (io) {
    sqe(ASQ, 0x05, 1, ((QSIZE - 1) << 16) | 1, 1, IOVA + IOCQ); // create I/O CQ 1, physically contiguous
    sqe(ASQ + 64, 0x01, 2, ((QSIZE - 1) << 16) | 1, (1 << 16) | 1, IOVA + IOSQ); // create I/O SQ 1 on CQ 1
    adminTail = 2;
    bar0(DOORBELL_BASE, adminTail);
    await completions(0, 2, 'queue creation');
    for (let i = 0; i < 2; i++) if (dv.getUint16(ACQ + i * 16 + 14, true) >> 1) throw new Error(`creating the I/O queues failed: status 0x${(dv.getUint16(ACQ + i * 16 + 14, true) >> 1).toString(16)}`);
  }
  const n = 1 + (b.u8() % 8);
  const base = io ? IOSQ : ASQ + adminTail * 64;
  let count = 0;
  for (; count < n && b.left > 0; count++) {
    const cmd = new Uint8Array(64);
    cmd.set(b.take(64));
    if (!io && (cmd[0] === 0x00 || cmd[0] === 0x04 || cmd[0] === 0x0c)) cmd[0] = 0x06;
    mem.set(cmd, base + count * 64);
  }
  if (count === 0) return;
  const data = b.rest();
  mem.set(data.subarray(0, MEM - DATA), DATA);
  if (io) bar0(DOORBELL_BASE + 8, count);
  else bar0(DOORBELL_BASE, adminTail + count);
  await completions(io ? 1 : 0, (io ? 0 : adminTail) + count, io ? 'I/O' : 'admin');
}

export async function fuzz(data: Buffer): Promise<void> {
  const b = new Bytes(data);
  const mode = b.u8();
  if (mode & 1) await commands(b, mode);
  else await dataPointers(b);
}
