/**
 * The hot path: VFIO_USER_REGION_READ, VFIO_USER_REGION_WRITE, VFIO_USER_REGION_WRITE_MULTI.
 *
 * Region offsets are numbers (u64 on the wire; values above 2^53-1 are rejected with
 * VFU_BAD_OFFSET). Decoded `data` is a zero-copy subarray of the payload.
 *
 * REGION_WRITE_MULTI: u64 wr_cnt, then wr_cnt fixed 24-byte entries
 * (u64 offset, u32 region, u32 count, 8 data bytes of which the first `count` are used;
 * count <= 8).
 */
import { WRITE_MULTI_MAX_DATA } from '../constants.js';
import { ProtocolError } from '../errors.js';
import { REGION_ACCESS, WRITE_MULTI, WRITE_MULTI_ENTRY, WRITE_MULTI_REPLY } from '../layout.js';
import {
  type Init,
  checkBytes,
  checkSafeU64,
  checkU32,
  countOf,
  getU64Number,
  need,
  newPayload,
  setU64Number,
  viewOf,
} from '../wire.js';

export interface RegionReadRequest {
  offset: number;
  region: number;
  count: number;
}

export interface RegionReadReply {
  offset: number;
  region: number;
  count: number;
  data: Uint8Array;
}

export interface RegionWriteRequest {
  offset: number;
  region: number;
  count: number;
  data: Uint8Array;
}

export interface RegionWriteReply {
  offset: number;
  region: number;
  /** Number of bytes written. */
  count: number;
}

const F = REGION_ACCESS.fields;

function encodeAccess(offset: number, region: number, count: number, data: Uint8Array | undefined): Uint8Array {
  const { buf, dv } = newPayload(REGION_ACCESS.size + (data ? data.length : 0));
  setU64Number(dv, F.offset, checkSafeU64(offset, 'offset'));
  dv.setUint32(F.region, checkU32(region, 'region'), true);
  dv.setUint32(F.count, checkU32(count, 'count'), true);
  if (data) buf.set(data, F.data);
  return buf;
}

/** Reads the 16-byte access struct (hot path: byte reads, no DataView, one object). */
function decodeAccess(payload: Uint8Array, what: string): { offset: number; region: number; count: number } {
  need(payload, REGION_ACCESS.size, what);
  const hi = u32le(payload, F.offset + 4);
  if (hi > 0x1f_ffff) {
    const lo = u32le(payload, F.offset);
    throw new ProtocolError('VFU_BAD_OFFSET', `${what} offset 0x${((BigInt(hi) << 32n) | BigInt(lo)).toString(16)} exceeds 2^53-1`);
  }
  return { offset: hi * 0x1_0000_0000 + u32le(payload, F.offset), region: u32le(payload, F.region), count: u32le(payload, F.count) };
}

function u32le(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function dataOf(payload: Uint8Array, count: number, what: string): Uint8Array {
  // exactly count bytes follow: a count that disagrees with the data is an error either way
  if (count !== payload.length - REGION_ACCESS.size) {
    throw new ProtocolError('VFU_BAD_COUNT', `${what}: count ${count} but ${payload.length - REGION_ACCESS.size} data bytes follow`);
  }
  return payload.subarray(F.data, F.data + count);
}

/** An access with exactly `count` data bytes after it: a REGION_READ reply, a REGION_WRITE request. */
function encodeWithData(msg: Init<RegionWriteRequest, 'count'>, what: string): Uint8Array {
  const data = checkBytes(msg.data, 'data');
  return encodeAccess(msg.offset, msg.region, countOf(msg.count, data, what), data);
}

function decodeWithData(payload: Uint8Array, what: string): RegionWriteRequest {
  const { offset, region, count } = decodeAccess(payload, what);
  return { offset, region, count, data: dataOf(payload, count, what) };
}

export function encodeRegionReadRequest(msg: RegionReadRequest): Uint8Array {
  return encodeAccess(msg.offset, msg.region, msg.count, undefined);
}

export function decodeRegionReadRequest(payload: Uint8Array): RegionReadRequest {
  return decodeAccess(payload, 'REGION_READ');
}

export function encodeRegionReadReply(msg: Init<RegionReadReply, 'count'>): Uint8Array {
  return encodeWithData(msg, 'REGION_READ reply');
}

export function decodeRegionReadReply(payload: Uint8Array): RegionReadReply {
  return decodeWithData(payload, 'REGION_READ reply');
}

export function encodeRegionWriteRequest(msg: Init<RegionWriteRequest, 'count'>): Uint8Array {
  return encodeWithData(msg, 'REGION_WRITE');
}

export function decodeRegionWriteRequest(payload: Uint8Array): RegionWriteRequest {
  return decodeWithData(payload, 'REGION_WRITE');
}

export function encodeRegionWriteReply(msg: RegionWriteReply): Uint8Array {
  return encodeAccess(msg.offset, msg.region, msg.count, undefined);
}

export function decodeRegionWriteReply(payload: Uint8Array): RegionWriteReply {
  return decodeAccess(payload, 'REGION_WRITE reply');
}

// ---------------------------------------------------------------- REGION_WRITE_MULTI

export interface RegionWriteMultiEntry {
  offset: number;
  region: number;
  /** 0..8 bytes. */
  count: number;
  /** The first `count` bytes of the entry's 8-byte data field (zero-copy when decoded). */
  data: Uint8Array;
}

export interface RegionWriteMultiRequest {
  entries: RegionWriteMultiEntry[];
}

export interface RegionWriteMultiReply {
  /** Number of writes completed. */
  wrCnt: number;
}

export function encodeRegionWriteMultiRequest(msg: { entries: Init<RegionWriteMultiEntry, 'count'>[] }): Uint8Array {
  const entries = msg.entries;
  if (!Array.isArray(entries)) throw new ProtocolError('VFU_BAD_VALUE', 'entries must be an array');
  const E = WRITE_MULTI_ENTRY.fields;
  const { buf, dv } = newPayload(WRITE_MULTI.size + entries.length * WRITE_MULTI_ENTRY.size);
  setU64Number(dv, WRITE_MULTI.fields.wr_cnt, entries.length);
  entries.forEach((e, i) => {
    const data = checkBytes(e.data, 'data');
    const count = countOf(e.count, data, 'REGION_WRITE_MULTI entry');
    if (count > WRITE_MULTI_MAX_DATA) {
      throw new ProtocolError('VFU_BAD_COUNT', `REGION_WRITE_MULTI entry ${i}: count ${count} > ${WRITE_MULTI_MAX_DATA}`);
    }
    const at = WRITE_MULTI.fields.wrs + i * WRITE_MULTI_ENTRY.size;
    setU64Number(dv, at + E.offset, checkSafeU64(e.offset, 'offset'));
    dv.setUint32(at + E.region, checkU32(e.region, 'region'), true);
    dv.setUint32(at + E.count, count, true);
    buf.set(data, at + E.data);
  });
  return buf;
}

export function decodeRegionWriteMultiRequest(payload: Uint8Array): RegionWriteMultiRequest {
  need(payload, WRITE_MULTI.size, 'REGION_WRITE_MULTI');
  const dv = viewOf(payload);
  const n = getU64Number(dv, WRITE_MULTI.fields.wr_cnt, 'VFU_BAD_COUNT', 'REGION_WRITE_MULTI wr_cnt');
  if (n > (payload.length - WRITE_MULTI.size) / WRITE_MULTI_ENTRY.size) {
    throw new ProtocolError('VFU_BAD_COUNT', `REGION_WRITE_MULTI: ${n} entries do not fit in ${payload.length} bytes`);
  }
  const E = WRITE_MULTI_ENTRY.fields;
  const entries: RegionWriteMultiEntry[] = [];
  for (let i = 0; i < n; i++) {
    const at = WRITE_MULTI.fields.wrs + i * WRITE_MULTI_ENTRY.size;
    const count = dv.getUint32(at + E.count, true);
    if (count > WRITE_MULTI_MAX_DATA) {
      throw new ProtocolError('VFU_BAD_COUNT', `REGION_WRITE_MULTI entry ${i}: count ${count} > ${WRITE_MULTI_MAX_DATA}`);
    }
    entries.push({
      offset: getU64Number(dv, at + E.offset, 'VFU_BAD_OFFSET', `REGION_WRITE_MULTI entry ${i} offset`),
      region: dv.getUint32(at + E.region, true),
      count,
      data: payload.subarray(at + E.data, at + E.data + count),
    });
  }
  return { entries };
}

export function encodeRegionWriteMultiReply(msg: RegionWriteMultiReply): Uint8Array {
  const { buf, dv } = newPayload(WRITE_MULTI_REPLY.size);
  setU64Number(dv, WRITE_MULTI_REPLY.fields.wr_cnt, checkSafeU64(msg.wrCnt, 'wrCnt'));
  return buf;
}

export function decodeRegionWriteMultiReply(payload: Uint8Array): RegionWriteMultiReply {
  need(payload, WRITE_MULTI_REPLY.size, 'REGION_WRITE_MULTI reply');
  return { wrCnt: getU64Number(viewOf(payload), WRITE_MULTI_REPLY.fields.wr_cnt, 'VFU_BAD_COUNT', 'REGION_WRITE_MULTI reply wr_cnt') };
}

/**
 * Hot-path encoder: writes a REGION_READ reply payload (struct + data) at `at` of a buffer
 * the caller owns (the transport's scratch buffer), with no allocation. `dv` views `buf`.
 * Returns the payload length.
 */
export function encodeRegionReadReplyInto(buf: Uint8Array, dv: DataView, at: number, offset: number, region: number, data: Uint8Array): number {
  setU64Number(dv, at + F.offset, offset);
  dv.setUint32(at + F.region, region, true);
  const n = data.length;
  dv.setUint32(at + F.count, n, true);
  if (n <= 8) {
    // register-sized: a loop beats the set() builtin's call
    for (let i = 0; i < n; i++) buf[at + F.data + i] = data[i]!;
  } else buf.set(data, at + F.data);
  return REGION_ACCESS.size + n;
}

/** Hot-path encoder: a REGION_WRITE reply payload at `at` (see encodeRegionReadReplyInto). */
export function encodeRegionWriteReplyInto(dv: DataView, at: number, offset: number, region: number, count: number): number {
  setU64Number(dv, at + F.offset, offset);
  dv.setUint32(at + F.region, region, true);
  dv.setUint32(at + F.count, count, true);
  return REGION_ACCESS.size;
}
