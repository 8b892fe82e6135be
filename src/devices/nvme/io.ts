/**
 * NVM I/O commands: Read, Write, Write Zeroes, Flush, Dataset Management (deallocate). With
 * shared guest memory, reads and writes go straight between the image and the DMA views.
 */
import { IoOp, Status, DNR, SQE_SIZE } from './constants.js';
import { u64, type Segment } from './dataptr.js';
import { toGuest, fromGuest, sgViews } from '../guest.js';
import type { Namespace } from './namespace.js';
import { MDTS, type NvmeCore, type SubQueue, type Result } from './core.js';
import { dataSegments } from './queues.js';

/**
 * One I/O command. Synchronous (no promise) when the data is in shared memory and the PRP
 * lists, if any, too: the common case runs start to end in the turn that found it.
 */
export function io(c: NvmeCore, sq: SubQueue, sqe: Uint8Array): Result | Promise<Result> {
  const dv = new DataView(sqe.buffer, sqe.byteOffset, SQE_SIZE);
  const opc = sqe[0]!;
  const nsid = dv.getUint32(4, true);
  if (opc === IoOp.FLUSH) {
    if (nsid === 0xffffffff) {
      for (const n of c.namespaces.values()) n.backend.flush();
      return { status: Status.SUCCESS };
    }
    const n = c.namespaces.get(nsid);
    if (!n) return { status: Status.INVALID_NAMESPACE | DNR };
    n.backend.flush();
    return { status: Status.SUCCESS };
  }
  if (opc !== IoOp.READ && opc !== IoOp.WRITE && opc !== IoOp.WRITE_ZEROES && opc !== IoOp.DSM) {
    return { status: Status.INVALID_OPCODE | DNR };
  }
  const ns = c.namespaces.get(nsid);
  if (!ns) return { status: Status.INVALID_NAMESPACE | DNR };
  if (opc === IoOp.DSM) return dsm(c, sq, sqe, ns, dv.getUint32(40, true), dv.getUint32(44, true));
  // a number: exact below 2^53, and anything above is past the namespace anyway
  const slba = u64(sqe, 40);
  const nlb = (dv.getUint32(48, true) & 0xffff) + 1;
  const fua = (dv.getUint32(48, true) >>> 30) & 1;
  if (!(slba + nlb <= ns.blocks)) return { status: Status.LBA_OUT_OF_RANGE | DNR };
  const pos = slba * ns.lbaSize;
  const len = nlb * ns.lbaSize;
  if (opc === IoOp.WRITE_ZEROES) {
    ns.backend.zero(pos, len);
    if (!c.features.vwc || fua) ns.backend.flush();
    return { status: Status.SUCCESS };
  }
  if (len > 4096 * 2 ** MDTS) return { status: Status.INVALID_FIELD | DNR };
  const segs = dataSegments(c, sq, sqe, len);
  const t: Transfer = { ns, pos, len, fua };
  if (segs instanceof Promise) return segs.then((s) => (opc === IoOp.READ ? read(c, t, s) : write(c, t, s)));
  return opc === IoOp.READ ? read(c, t, segs) : write(c, t, segs);
}

interface Transfer {
  ns: Namespace;
  /** byte offset in the namespace */
  pos: number;
  len: number;
  fua: number;
}

const SUCCESS: Result = Object.freeze({ status: Status.SUCCESS });

/**
 * Read: straight into the guest's pages when shared. Otherwise the data goes by DMA_WRITE
 * messages and the command completes at once, without waiting for their replies: the
 * completion's own DMA_WRITE follows them on the socket, the client (QEMU) applies its
 * requests in order, and the interrupt waits for every write started before it (WriteOrder).
 * So a read by message costs one round trip for data and completion together, not two. The
 * range was checked against the client's maps first (a fault is still a Data Transfer Error;
 * so is any part shared by fd, which waits as before); a client that fails a write it was sent
 * anyway gets a controller fatal status.
 */
function read(c: NvmeCore, t: Transfer, segs: Segment[]): Result | Promise<Result> {
  const dma = c.dev.dma;
  const v = sgViews(dma, segs, true);
  const buf = v ? undefined : new Uint8Array(t.len);
  t.ns.backend.readv(v ?? [buf!], t.pos);
  c.smart.readCommands++;
  c.smart.bytesRead += t.len;
  if (!buf) return SUCCESS;
  if (!segs.every((s) => dma.onlyByMessage(s.iova, s.len, true))) return toGuest(dma, segs, buf).then(() => SUCCESS);
  c.inflight++;
  void toGuest(dma, segs, buf)
    .catch((e: unknown) => c.fatal(`read data the guest was told is there could not be written: ${(e as Error).message}`))
    .finally(() => c.settled());
  return SUCCESS;
}

/** Write: straight from the guest's pages when shared, else gathered by DMA_READ messages. */
function write(c: NvmeCore, t: Transfer, segs: Segment[]): Result | Promise<Result> {
  const v = sgViews(c.dev.dma, segs, false);
  if (v) return written(c, t, v);
  return fromGuest(c.dev.dma, segs, t.len).then((data) => written(c, t, [data]));
}

function written(c: NvmeCore, t: Transfer, data: Uint8Array[]): Result {
  t.ns.backend.writev(data, t.pos);
  if (!c.features.vwc || t.fua) t.ns.backend.flush();
  c.smart.writeCommands++;
  c.smart.bytesWritten += t.len;
  return SUCCESS;
}

async function dsm(c: NvmeCore, sq: SubQueue, sqe: Uint8Array, ns: Namespace, cdw10: number, cdw11: number): Promise<Result> {
  const nr = (cdw10 & 0xff) + 1;
  const data = await fromGuest(c.dev.dma, await dataSegments(c, sq, sqe, nr * 16), nr * 16);
  if (!(cdw11 & 0x4)) return { status: Status.SUCCESS }; // only hints (IDR/IDW): nothing to do
  const dv = new DataView(data.buffer, data.byteOffset, data.length);
  const ranges: [number, number][] = [];
  for (let i = 0; i < nr; i++) {
    const len = dv.getUint32(i * 16 + 4, true);
    const slba = BigInt(u64(data, i * 16 + 8));
    if (!ns.inRange(slba, len)) return { status: Status.LBA_OUT_OF_RANGE | DNR };
    ranges.push([Number(slba) * ns.lbaSize, len * ns.lbaSize]);
  }
  // deallocated blocks read as zeroes (DLFEAT): the image gets zeroes
  for (const [pos, len] of ranges) if (len) ns.backend.zero(pos, len);
  if (!c.features.vwc) ns.backend.flush();
  return { status: Status.SUCCESS };
}
