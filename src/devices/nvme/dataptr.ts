/**
 * NVMe data pointers: PRP entries and lists, and SGLs (data block, segment and last segment
 * descriptors), turned into a list of guest memory segments, with the checks the spec asks
 * for (PRP offsets, descriptor types, SGL lengths). Guest memory is read through GuestMemory,
 * which never touches anything outside the client's DMA maps (a DmaError becomes a Data
 * Transfer Error in the caller).
 */
import { NvmeStatusError, Sgl, Status, DNR } from './constants.js';

import type { Segment } from '../guest.js';

export type { Segment };

/** Reads guest memory (the controller's DMA access, sync when shared, by message otherwise). */
export interface GuestReader {
  read(iova: number, len: number): Uint8Array | Promise<Uint8Array>;
}

const MAX_SGL_DESCRIPTORS = 4096;

/** u64 little-endian as a JS number (exact below 2^53; larger values fail the DMA map checks anyway) */
export function u64(b: Uint8Array, off: number): number {
  const dv = new DataView(b.buffer, b.byteOffset + off, 8);
  return dv.getUint32(0, true) + dv.getUint32(4, true) * 2 ** 32;
}

function bad(status: number, why: string): never {
  throw new NvmeStatusError(status | DNR, why);
}

function push(segs: Segment[], iova: number, len: number): void {
  const last = segs[segs.length - 1];
  if (last && last.iova + last.len === iova) last.len += len;
  else segs.push({ iova, len });
}

/**
 * PRP1/PRP2 (with PRP lists) for a transfer of len bytes with memory page size pageSize.
 * Synchronous while the lists are in shared memory (or there are none): a promise only when a
 * list has to be read by message.
 */
export function prpSegments(mem: GuestReader, prp1: number, prp2: number, len: number, pageSize: number): Segment[] | Promise<Segment[]> {
  const segs: Segment[] = [];
  if (len === 0) return segs;
  if (prp1 % 4) bad(Status.INVALID_PRP_OFFSET, 'PRP1 is not dword aligned');
  const first = Math.min(len, pageSize - (prp1 % pageSize));
  push(segs, prp1, first);
  const rem = len - first;
  if (rem === 0) return segs;
  if (rem <= pageSize) {
    if (prp2 % pageSize) bad(Status.INVALID_PRP_OFFSET, 'PRP2 has a page offset');
    push(segs, prp2, rem);
    return segs;
  }
  if (prp2 % 8) bad(Status.INVALID_PRP_OFFSET, 'PRP list pointer is not qword aligned');
  return prpList(mem, segs, { list: prp2, rem }, pageSize);
}

/** Walks PRP list pages from `at` until `at.rem` bytes are covered. */
function prpList(mem: GuestReader, segs: Segment[], at: { list: number; rem: number }, pageSize: number): Segment[] | Promise<Segment[]> {
  while (at.rem > 0) {
    const room = (pageSize - (at.list % pageSize)) / 8; // entries left in this list page
    const need = Math.ceil(at.rem / pageSize);
    const n = need <= room ? need : room; // when more are needed, the last entry chains
    const entries = mem.read(at.list, n * 8);
    if (!(entries instanceof Uint8Array)) {
      return entries.then((e) => {
        prpEntries(segs, at, e, n, need <= room, pageSize);
        return prpList(mem, segs, at, pageSize);
      });
    }
    prpEntries(segs, at, entries, n, need <= room, pageSize);
  }
  return segs;
}

/** One list page's n entries: data pages, and the chain pointer unless `last`. */
function prpEntries(segs: Segment[], at: { list: number; rem: number }, entries: Uint8Array, n: number, last: boolean, pageSize: number): void {
  const data = last ? n : n - 1;
  for (let i = 0; i < data; i++) {
    const e = u64(entries, i * 8);
    if (e % pageSize) bad(Status.INVALID_PRP_OFFSET, `PRP entry 0x${e.toString(16)} has a page offset`);
    const l = Math.min(pageSize, at.rem);
    push(segs, e, l);
    at.rem -= l;
  }
  if (at.rem > 0) {
    at.list = u64(entries, (n - 1) * 8);
    if (at.list % pageSize) bad(Status.INVALID_PRP_OFFSET, 'chained PRP list pointer has a page offset');
  }
}

/**
 * The SGL starting with the 16-byte descriptor `first` (from the command), for a transfer of
 * len bytes: data blocks are collected until len bytes are covered.
 */
export async function sglSegments(mem: GuestReader, first: Uint8Array, len: number): Promise<Segment[]> {
  const segs: Segment[] = [];
  let total = 0;
  let count = 0;
  const take = (d: Uint8Array, off: number): void => {
    const addr = u64(d, off);
    const dlen = new DataView(d.buffer, d.byteOffset + off + 8, 4).getUint32(0, true);
    if (d[off + 15]! & 0x0f) bad(Status.SGL_DESCRIPTOR_TYPE_INVALID, 'unsupported SGL descriptor sub type');
    if (total < len && dlen > 0) push(segs, addr, Math.min(dlen, len - total));
    total += dlen;
  };
  let desc = first;
  let off = 0;
  for (;;) {
    if (++count > MAX_SGL_DESCRIPTORS) bad(Status.INVALID_NUM_SGL_DESCRIPTORS, 'too many SGL descriptors');
    const type = desc[off + 15]! >> 4;
    if (type === Sgl.DATA_BLOCK) {
      take(desc, off);
      break; // a lone data block in the command, or the end of a list (handled below)
    }
    if (type !== Sgl.SEGMENT && type !== Sgl.LAST_SEGMENT) bad(Status.SGL_DESCRIPTOR_TYPE_INVALID, `SGL descriptor type ${type}`);
    if (desc[off + 15]! & 0x0f) bad(Status.SGL_DESCRIPTOR_TYPE_INVALID, 'unsupported SGL segment sub type');
    const addr = u64(desc, off);
    const slen = new DataView(desc.buffer, desc.byteOffset + off + 8, 4).getUint32(0, true);
    if (slen === 0 || slen % 16) bad(Status.INVALID_SGL_SEG_DESCRIPTOR, `SGL segment length ${slen}`);
    if (slen / 16 + count > MAX_SGL_DESCRIPTORS) bad(Status.INVALID_NUM_SGL_DESCRIPTORS, 'too many SGL descriptors');
    const list = await mem.read(addr, slen);
    const n = slen / 16;
    let next = -1;
    for (let i = 0; i < n; i++) {
      const t = list[i * 16 + 15]! >> 4;
      if (t === Sgl.DATA_BLOCK) {
        take(list, i * 16);
        count++;
      } else if ((t === Sgl.SEGMENT || t === Sgl.LAST_SEGMENT) && i === n - 1 && type === Sgl.SEGMENT) {
        next = i * 16; // only the last descriptor of a (non-last) segment may chain
      } else if (t === Sgl.SEGMENT || t === Sgl.LAST_SEGMENT) {
        bad(Status.INVALID_SGL_SEG_DESCRIPTOR, 'SGL segment descriptor in the wrong place');
      } else {
        bad(Status.SGL_DESCRIPTOR_TYPE_INVALID, `SGL descriptor type ${t}`);
      }
    }
    if (next < 0) break;
    desc = list;
    off = next;
  }
  if (total < len) bad(Status.DATA_SGL_LENGTH_INVALID, `SGL describes ${total} bytes, command needs ${len}`);
  return segs;
}
