/**
 * VFIO_USER_DEVICE_GET_REGION_INFO: struct vfio_region_info, and in the reply an optional
 * capability chain (struct vfio_info_cap_header list, `next` offsets relative to the start
 * of the region info struct, as vfio does).
 *
 * argsz (spec "Message sizes"): the request's argsz is the largest reply the client accepts;
 * the reply's argsz is the size of the FULL reply (struct + caps). When that exceeds the
 * client's argsz the full payload is not included: the encoder then sends only the 32-byte
 * struct, with argsz = the needed size, no CAPS flag and cap_offset 0, and the client retries
 * with a larger argsz. (Linux keeps CAPS set in a short reply; QEMU's vfio-user client
 * rejects a reply whose CAPS flag comes with a cap_offset outside the data, so we do not.)
 * The decoder reports such a reply as `truncated` (any argsz larger than the payload) with
 * no caps.
 *
 * Capabilities are laid out back to back after the struct, each starting 8-byte aligned
 * (unknown capability data is zero-padded to a multiple of 8).
 */
import { RegionCapId, RegionInfoFlags } from '../constants.js';
import { ProtocolError } from '../errors.js';
import { CAP_HEADER, CAP_SPARSE_MMAP, CAP_TYPE, REGION_INFO, SPARSE_MMAP_AREA } from '../layout.js';
import { type Init, checkBytes, checkU16, checkU32, checkU64, need, newPayload, viewOf } from '../wire.js';

export interface RegionInfoRequest {
  /** Largest reply the client accepts (>= 32). */
  argsz: number;
  /** Must be zero in a request (not enforced), like capOffset, size and offset. */
  flags: number;
  index: number;
  capOffset: number;
  size: bigint;
  offset: bigint;
}

export interface SparseMmapArea {
  /** Offset of the mmap-able area within the region. */
  offset: bigint;
  size: bigint;
}

/** VFIO_REGION_INFO_CAP_SPARSE_MMAP (wire id 1). */
export interface SparseMmapCap {
  kind: 'sparse-mmap';
  version: number;
  areas: SparseMmapArea[];
}

/** VFIO_REGION_INFO_CAP_TYPE (wire id 2). */
export interface TypeCap {
  kind: 'type';
  version: number;
  type: number;
  subtype: number;
}

/** Any other capability id: its bytes after the 8-byte header, up to the next capability
 * (or the end of the reply for the last one). Zero-copy when decoded. */
export interface UnknownCap {
  kind: 'unknown';
  id: number;
  version: number;
  data: Uint8Array;
}

export type RegionCap = SparseMmapCap | TypeCap | UnknownCap;

export interface RegionInfoReply {
  /** Size of the full reply; larger than the payload when `truncated`. */
  argsz: number;
  /** RegionInfoFlags; the encoder sets/clears CAPS itself. */
  flags: number;
  index: number;
  /** Offset of the first capability (0 if none); computed by the encoder. */
  capOffset: number;
  size: bigint;
  offset: bigint;
  caps: RegionCap[];
  /** Decoder only: argsz exceeded the payload, the capabilities were not included. */
  truncated: boolean;
}

/** Encoder input: argsz, capOffset and truncated are computed; caps default to none. */
export type RegionInfoReplyInit = Init<RegionInfoReply, 'argsz' | 'capOffset' | 'caps' | 'truncated'>;

export function encodeRegionInfoRequest(msg: Init<RegionInfoRequest, 'argsz' | 'flags' | 'capOffset' | 'size' | 'offset'>): Uint8Array {
  const F = REGION_INFO.fields;
  const { buf, dv } = newPayload(REGION_INFO.size);
  dv.setUint32(F.argsz, checkU32(msg.argsz ?? REGION_INFO.size, 'argsz'), true);
  dv.setUint32(F.flags, checkU32(msg.flags ?? 0, 'flags'), true);
  dv.setUint32(F.index, checkU32(msg.index, 'index'), true);
  dv.setUint32(F.cap_offset, checkU32(msg.capOffset ?? 0, 'capOffset'), true);
  dv.setBigUint64(F.size, checkU64(msg.size ?? 0n, 'size'), true);
  dv.setBigUint64(F.offset, checkU64(msg.offset ?? 0n, 'offset'), true);
  return buf;
}

export function decodeRegionInfoRequest(payload: Uint8Array): RegionInfoRequest {
  return decodeRegionInfo(payload, 'GET_REGION_INFO');
}

/** The fixed part a request and a reply share; argsz is at least that part. */
function decodeRegionInfo(payload: Uint8Array, what: string): RegionInfoRequest {
  need(payload, REGION_INFO.size, what);
  const F = REGION_INFO.fields;
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < REGION_INFO.size) {
    throw new ProtocolError('VFU_BAD_ARGSZ', `${what} argsz ${argsz} is smaller than the ${REGION_INFO.size}-byte reply`);
  }
  return {
    argsz,
    flags: dv.getUint32(F.flags, true),
    index: dv.getUint32(F.index, true),
    capOffset: dv.getUint32(F.cap_offset, true),
    size: dv.getBigUint64(F.size, true),
    offset: dv.getBigUint64(F.offset, true),
  };
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

function capSize(c: RegionCap): number {
  switch (c.kind) {
    case 'sparse-mmap':
      if (!Array.isArray(c.areas)) throw new ProtocolError('VFU_BAD_VALUE', 'sparse mmap capability needs an areas array');
      return CAP_SPARSE_MMAP.size + c.areas.length * SPARSE_MMAP_AREA.size;
    case 'type':
      return CAP_TYPE.size;
    case 'unknown':
      return align8(CAP_HEADER.size + checkBytes(c.data, 'cap data').length);
    default:
      throw new ProtocolError('VFU_BAD_VALUE', `unknown region capability kind ${String((c as { kind: unknown }).kind)}`);
  }
}

/** Bytes a full reply with these capabilities needs (the reply's argsz). */
export function regionInfoReplySize(caps: readonly RegionCap[] = []): number {
  let n = REGION_INFO.size;
  for (const c of caps) n += capSize(c);
  return n;
}

/**
 * Encodes a reply. `clientArgsz` is the argsz of the request being answered: when the full
 * reply does not fit, only the struct is sent (see the top of this file).
 */
export function encodeRegionInfoReply(msg: RegionInfoReplyInit, clientArgsz?: number): Uint8Array {
  const caps = msg.caps ?? [];
  const needed = regionInfoReplySize(caps);
  const truncated = clientArgsz !== undefined && needed > clientArgsz;
  const F = REGION_INFO.fields;
  const { buf, dv } = newPayload(truncated ? REGION_INFO.size : needed);
  let flags = checkU32(msg.flags, 'flags') & ~RegionInfoFlags.CAPS;
  if (caps.length > 0 && !truncated) flags |= RegionInfoFlags.CAPS;
  dv.setUint32(F.argsz, checkU32(needed, 'argsz'), true);
  dv.setUint32(F.flags, flags >>> 0, true);
  dv.setUint32(F.index, checkU32(msg.index, 'index'), true);
  dv.setUint32(F.cap_offset, caps.length > 0 && !truncated ? REGION_INFO.size : 0, true);
  dv.setBigUint64(F.size, checkU64(msg.size, 'size'), true);
  dv.setBigUint64(F.offset, checkU64(msg.offset, 'offset'), true);
  if (truncated) return buf;

  const H = CAP_HEADER.fields;
  let off = REGION_INFO.size;
  caps.forEach((c, i) => {
    const size = capSize(c);
    const next = i + 1 < caps.length ? off + size : 0;
    dv.setUint16(off + H.version, checkU16(c.version, 'cap version'), true);
    dv.setUint32(off + H.next, next, true);
    switch (c.kind) {
      case 'sparse-mmap': {
        const S = CAP_SPARSE_MMAP.fields;
        const A = SPARSE_MMAP_AREA.fields;
        dv.setUint16(off + H.id, RegionCapId.SPARSE_MMAP, true);
        dv.setUint32(off + S.nr_areas, c.areas.length, true);
        c.areas.forEach((a, j) => {
          const at = off + S.areas + j * SPARSE_MMAP_AREA.size;
          dv.setBigUint64(at + A.offset, checkU64(a.offset, 'area offset'), true);
          dv.setBigUint64(at + A.size, checkU64(a.size, 'area size'), true);
        });
        break;
      }
      case 'type': {
        const T = CAP_TYPE.fields;
        dv.setUint16(off + H.id, RegionCapId.TYPE, true);
        dv.setUint32(off + T.type, checkU32(c.type, 'cap type'), true);
        dv.setUint32(off + T.subtype, checkU32(c.subtype, 'cap subtype'), true);
        break;
      }
      case 'unknown':
        dv.setUint16(off + H.id, checkU16(c.id, 'cap id'), true);
        buf.set(c.data, off + CAP_HEADER.size);
        break;
    }
    off += size;
  });
  return buf;
}

/** Walks a capability chain inside `payload[0, end)`; rejects loops and out-of-range links. */
function decodeCapChain(payload: Uint8Array, dv: DataView, first: number, end: number): RegionCap[] {
  const caps: RegionCap[] = [];
  const seen = new Set<number>();
  const H = CAP_HEADER.fields;
  let off = first;
  while (off !== 0) {
    if (off < REGION_INFO.size || off > end - CAP_HEADER.size) {
      throw new ProtocolError('VFU_BAD_OFFSET', `region capability at ${off} lies outside [${REGION_INFO.size}, ${end})`);
    }
    if (seen.has(off)) throw new ProtocolError('VFU_BAD_OFFSET', `region capability chain loops back to ${off}`);
    seen.add(off);
    const id = dv.getUint16(off + H.id, true);
    const version = dv.getUint16(off + H.version, true);
    const next = dv.getUint32(off + H.next, true);
    if (id === RegionCapId.SPARSE_MMAP) {
      const S = CAP_SPARSE_MMAP.fields;
      const A = SPARSE_MMAP_AREA.fields;
      if (off + CAP_SPARSE_MMAP.size > end) throw new ProtocolError('VFU_BAD_OFFSET', `sparse mmap capability at ${off} is cut short`);
      const nr = dv.getUint32(off + S.nr_areas, true);
      if (nr > (end - off - CAP_SPARSE_MMAP.size) / SPARSE_MMAP_AREA.size) {
        throw new ProtocolError('VFU_BAD_COUNT', `sparse mmap capability at ${off}: ${nr} areas do not fit`);
      }
      const areas: SparseMmapArea[] = [];
      for (let j = 0; j < nr; j++) {
        const at = off + S.areas + j * SPARSE_MMAP_AREA.size;
        areas.push({ offset: dv.getBigUint64(at + A.offset, true), size: dv.getBigUint64(at + A.size, true) });
      }
      caps.push({ kind: 'sparse-mmap', version, areas });
    } else if (id === RegionCapId.TYPE) {
      const T = CAP_TYPE.fields;
      if (off + CAP_TYPE.size > end) throw new ProtocolError('VFU_BAD_OFFSET', `type capability at ${off} is cut short`);
      caps.push({ kind: 'type', version, type: dv.getUint32(off + T.type, true), subtype: dv.getUint32(off + T.subtype, true) });
    } else {
      const stop = next > off && next <= end ? next : end;
      caps.push({ kind: 'unknown', id, version, data: payload.subarray(off + CAP_HEADER.size, stop) });
    }
    off = next;
  }
  return caps;
}

export function decodeRegionInfoReply(payload: Uint8Array): RegionInfoReply {
  const fixed = decodeRegionInfo(payload, 'GET_REGION_INFO reply');
  const { argsz, flags, capOffset } = fixed;
  const truncated = argsz > payload.length;
  const caps =
    !truncated && (flags & RegionInfoFlags.CAPS) !== 0 && capOffset !== 0 ? decodeCapChain(payload, viewOf(payload), capOffset, argsz) : [];
  return { ...fixed, caps, truncated };
}
