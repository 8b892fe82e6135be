/**
 * NVM I/O commands: Read, Write, Write Zeroes, Flush, Dataset Management (deallocate). With
 * shared guest memory, reads and writes go straight between the image and the DMA views.
 */
import { IoOp, Status, DNR, SQE_SIZE } from './constants.js';
import { u64 } from './dataptr.js';
import { toGuest, fromGuest, sgViews } from '../guest.js';
import type { Namespace } from './namespace.js';
import { MDTS, type NvmeCore, type SubQueue, type Result } from './core.js';
import { dataSegments } from './queues.js';

export async function io(c: NvmeCore, sq: SubQueue, sqe: Uint8Array): Promise<Result> {
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
  const slba = BigInt(u64(sqe, 40));
  const nlb = (dv.getUint32(48, true) & 0xffff) + 1;
  const fua = (dv.getUint32(48, true) >>> 30) & 1;
  if (!ns.inRange(slba, nlb)) return { status: Status.LBA_OUT_OF_RANGE | DNR };
  const pos = Number(slba) * ns.lbaSize;
  const len = nlb * ns.lbaSize;
  if (opc === IoOp.WRITE_ZEROES) {
    ns.backend.zero(pos, len);
    if (!c.features.vwc || fua) ns.backend.flush();
    return { status: Status.SUCCESS };
  }
  if (len > 4096 * 2 ** MDTS) return { status: Status.INVALID_FIELD | DNR };
  const segs = await dataSegments(c, sq, sqe, len);
  if (opc === IoOp.READ) {
    const v = sgViews(c.dev.dma, segs, true);
    if (v) ns.backend.readv(v, pos);
    else {
      const buf = new Uint8Array(len);
      ns.backend.readv([buf], pos);
      await toGuest(c.dev.dma, segs, buf);
    }
    c.smart.readCommands++;
    c.smart.bytesRead += len;
  } else {
    const v = sgViews(c.dev.dma, segs, false);
    ns.backend.writev(v ?? [await fromGuest(c.dev.dma, segs, len)], pos);
    if (!c.features.vwc || fua) ns.backend.flush();
    c.smart.writeCommands++;
    c.smart.bytesWritten += len;
  }
  return { status: Status.SUCCESS };
}

async function dsm(c: NvmeCore, sq: SubQueue, sqe: Uint8Array, ns: Namespace, cdw10: number, cdw11: number): Promise<Result> {
  const nr = (cdw10 & 0xff) + 1;
  const data = await fromGuest(c.dev.dma, await dataSegments(c, sq, sqe, nr * 16), nr * 16);
  if (!(cdw11 & 0x4)) return { status: Status.SUCCESS }; // only hints (IDR/IDW): nothing to do
  const dv = new DataView(data.buffer);
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
