/**
 * VFIO_USER_DEVICE_GET_REGION_IO_FDS.
 *
 * Reply: 16-byte fixed part (argsz, flags, index, count) + `count` sub-region entries.
 * Entry size (stride): the spec's entries are 40 bytes (ioeventfd datamatch / ioregionfd
 * user_data at 32); libvfio-user sends 48-byte entries for ioeventfds (shadow fd index at
 * 28, shadow offset at 32, datamatch at 40). The decoder derives the stride from argsz,
 * as the spec says: stride = (argsz - 16) / count. (The spec's text writes "argsz - 32",
 * which contradicts its own 40-byte entries; 16 is the size of the fixed part.) The stride
 * must be a whole number >= 40. With a stride >= 48, ioeventfd entries are read in the
 * libvfio-user layout; otherwise in the spec layout. ioregionfd entries use the spec layout
 * at any stride.
 *
 * argsz larger than the payload means the client's argsz was too small: the reply then
 * carries only the fixed part (count = number of sub-regions, argsz = needed size), which
 * the decoder reports as `truncated` with no entries, and which the encoder produces when
 * given the request's argsz.
 */
import { IoFdType } from '../constants.js';
import { ProtocolError } from '../errors.js';
import { REGION_IO_FDS, SUB_REGION_IOEVENTFD, SUB_REGION_IOEVENTFD_48, SUB_REGION_IOREGIONFD } from '../layout.js';
import { type Init, checkBytes, checkU32, checkU64, need, newPayload, viewOf } from '../wire.js';

export interface RegionIoFdsRequest {
  /** Largest reply the client accepts (>= 16). */
  argsz: number;
  /** Must be zero (not enforced), like count. */
  flags: number;
  index: number;
  count: number;
}

interface SubRegionCommon {
  /** Offset of the sub-region within the region. */
  offset: bigint;
  size: bigint;
  /** Index into the fds that travel with the reply. */
  fdIndex: number;
  flags: number;
}

/** VFIO_USER_IO_FD_TYPE_IOEVENTFD, wire type 0 (flags: IoEventFdFlags). */
export interface IoEventFdSubRegion extends SubRegionCommon {
  kind: 'ioeventfd';
  datamatch: bigint;
}

/** libvfio-user's VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW, wire type 2 (48-byte entries only). */
export interface ShadowIoEventFdSubRegion extends SubRegionCommon {
  kind: 'ioeventfd-shadow';
  datamatch: bigint;
  shadowMemFdIndex: number;
  shadowOffset: bigint;
}

/** VFIO_USER_IO_FD_TYPE_IOREGIONFD, wire type 1 (flags: IoRegionFdFlags). */
export interface IoRegionFdSubRegion extends SubRegionCommon {
  kind: 'ioregionfd';
  userData: bigint;
}

/** Any other wire type: the entry's bytes from 28 to the end of the entry (zero-copy). */
export interface UnknownIoFdSubRegion extends SubRegionCommon {
  kind: 'unknown';
  type: number;
  rest: Uint8Array;
}

export type IoFdSubRegion = IoEventFdSubRegion | ShadowIoEventFdSubRegion | IoRegionFdSubRegion | UnknownIoFdSubRegion;

export interface RegionIoFdsReply {
  /** Size of the full reply; larger than the payload when `truncated`. */
  argsz: number;
  flags: number;
  index: number;
  /** Number of sub-regions (also when they are not included). */
  count: number;
  subRegions: IoFdSubRegion[];
  /** Entry stride: 40 (spec) or 48 (libvfio-user); 0 when there are no entries. */
  entrySize: number;
  /** Decoder only: argsz exceeded the payload, the entries were not included. */
  truncated: boolean;
}

/** Encoder input: argsz, count and truncated are computed; entrySize defaults to 40. */
export type RegionIoFdsReplyInit = Init<RegionIoFdsReply, 'argsz' | 'count' | 'entrySize' | 'truncated'>;

/** Offset of the common fields; identical in every entry layout. */
const C = SUB_REGION_IOEVENTFD.fields;
const COMMON_SIZE = C.padding;

export function encodeRegionIoFdsRequest(msg: Init<RegionIoFdsRequest, 'flags' | 'count'>): Uint8Array {
  const F = REGION_IO_FDS.fields;
  const { buf, dv } = newPayload(REGION_IO_FDS.size);
  dv.setUint32(F.argsz, checkU32(msg.argsz, 'argsz'), true);
  dv.setUint32(F.flags, checkU32(msg.flags ?? 0, 'flags'), true);
  dv.setUint32(F.index, checkU32(msg.index, 'index'), true);
  dv.setUint32(F.count, checkU32(msg.count ?? 0, 'count'), true);
  return buf;
}

function decodeFixed(payload: Uint8Array, what: string): { dv: DataView; argsz: number; flags: number; index: number; count: number } {
  need(payload, REGION_IO_FDS.size, what);
  const F = REGION_IO_FDS.fields;
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < REGION_IO_FDS.size) throw new ProtocolError('VFU_BAD_ARGSZ', `${what}: argsz ${argsz} < ${REGION_IO_FDS.size}`);
  return { dv, argsz, flags: dv.getUint32(F.flags, true), index: dv.getUint32(F.index, true), count: dv.getUint32(F.count, true) };
}

export function decodeRegionIoFdsRequest(payload: Uint8Array): RegionIoFdsRequest {
  const { argsz, flags, index, count } = decodeFixed(payload, 'GET_REGION_IO_FDS');
  return { argsz, flags, index, count };
}

function checkStride(stride: number): number {
  if (!Number.isInteger(stride) || stride < SUB_REGION_IOEVENTFD.size || stride > 0xffff) {
    throw new ProtocolError('VFU_BAD_VALUE', `sub-region entry size ${stride} must be an integer >= ${SUB_REGION_IOEVENTFD.size}`);
  }
  return stride;
}

/** Bytes a full reply needs (the reply's argsz). */
export function regionIoFdsReplySize(count: number, entrySize = SUB_REGION_IOEVENTFD.size): number {
  return REGION_IO_FDS.size + count * checkStride(entrySize);
}

/**
 * Encodes a reply. `clientArgsz` is the request's argsz: when the full reply does not fit,
 * only the fixed part is sent (see the top of this file).
 */
export function encodeRegionIoFdsReply(msg: RegionIoFdsReplyInit, clientArgsz?: number): Uint8Array {
  const subs = msg.subRegions;
  if (!Array.isArray(subs)) throw new ProtocolError('VFU_BAD_VALUE', 'subRegions must be an array');
  const stride = checkStride(msg.entrySize || SUB_REGION_IOEVENTFD.size);
  const needed = regionIoFdsReplySize(subs.length, stride);
  const truncated = clientArgsz !== undefined && needed > clientArgsz;
  const F = REGION_IO_FDS.fields;
  const { buf, dv } = newPayload(truncated ? REGION_IO_FDS.size : needed);
  dv.setUint32(F.argsz, checkU32(needed, 'argsz'), true);
  dv.setUint32(F.flags, checkU32(msg.flags, 'flags'), true);
  dv.setUint32(F.index, checkU32(msg.index, 'index'), true);
  dv.setUint32(F.count, subs.length, true);
  if (truncated) return buf;
  subs.forEach((s, i) => {
    const at = REGION_IO_FDS.size + i * stride;
    dv.setBigUint64(at + C.offset, checkU64(s.offset, 'sub-region offset'), true);
    dv.setBigUint64(at + C.size, checkU64(s.size, 'sub-region size'), true);
    dv.setUint32(at + C.fd_index, checkU32(s.fdIndex, 'fdIndex'), true);
    dv.setUint32(at + C.flags, checkU32(s.flags, 'sub-region flags'), true);
    switch (s.kind) {
      case 'ioeventfd': {
        const dm = stride >= SUB_REGION_IOEVENTFD_48.size ? SUB_REGION_IOEVENTFD_48.fields.datamatch : SUB_REGION_IOEVENTFD.fields.datamatch;
        dv.setUint32(at + C.type, IoFdType.IOEVENTFD, true);
        dv.setBigUint64(at + dm, checkU64(s.datamatch, 'datamatch'), true);
        break;
      }
      case 'ioeventfd-shadow': {
        if (stride < SUB_REGION_IOEVENTFD_48.size) {
          throw new ProtocolError('VFU_BAD_VALUE', `shadow ioeventfd entries need an entry size >= ${SUB_REGION_IOEVENTFD_48.size}`);
        }
        const L = SUB_REGION_IOEVENTFD_48.fields;
        dv.setUint32(at + C.type, IoFdType.IOEVENTFD_SHADOW, true);
        dv.setUint32(at + L.shadow_mem_fd_index, checkU32(s.shadowMemFdIndex, 'shadowMemFdIndex'), true);
        dv.setBigUint64(at + L.shadow_offset, checkU64(s.shadowOffset, 'shadowOffset'), true);
        dv.setBigUint64(at + L.datamatch, checkU64(s.datamatch, 'datamatch'), true);
        break;
      }
      case 'ioregionfd':
        dv.setUint32(at + C.type, IoFdType.IOREGIONFD, true);
        dv.setBigUint64(at + SUB_REGION_IOREGIONFD.fields.user_data, checkU64(s.userData, 'userData'), true);
        break;
      case 'unknown': {
        dv.setUint32(at + C.type, checkU32(s.type, 'sub-region type'), true);
        const rest = checkBytes(s.rest, 'rest');
        if (rest.length > stride - COMMON_SIZE) {
          throw new ProtocolError('VFU_BAD_VALUE', `sub-region rest (${rest.length} bytes) exceeds the ${stride}-byte entry`);
        }
        buf.set(rest, at + COMMON_SIZE);
        break;
      }
      default:
        throw new ProtocolError('VFU_BAD_VALUE', `unknown sub-region kind ${String((s as { kind: unknown }).kind)}`);
    }
  });
  return buf;
}

export function decodeRegionIoFdsReply(payload: Uint8Array): RegionIoFdsReply {
  const { dv, argsz, flags, index, count } = decodeFixed(payload, 'GET_REGION_IO_FDS reply');
  const base = { argsz, flags, index, count };
  if (count === 0) return { ...base, subRegions: [], entrySize: 0, truncated: argsz > payload.length };
  if (argsz > payload.length) return { ...base, subRegions: [], entrySize: 0, truncated: true };
  const stride = (argsz - REGION_IO_FDS.size) / count;
  if (!Number.isInteger(stride) || stride < SUB_REGION_IOEVENTFD.size) {
    throw new ProtocolError(
      'VFU_BAD_ARGSZ',
      `GET_REGION_IO_FDS reply: argsz ${argsz} does not hold ${count} entries of at least ${SUB_REGION_IOEVENTFD.size} bytes`,
    );
  }
  // argsz <= payload.length, so every entry [at, at + stride) is inside the payload.
  const subRegions: IoFdSubRegion[] = [];
  for (let i = 0; i < count; i++) {
    const at = REGION_IO_FDS.size + i * stride;
    const common = {
      offset: dv.getBigUint64(at + C.offset, true),
      size: dv.getBigUint64(at + C.size, true),
      fdIndex: dv.getUint32(at + C.fd_index, true),
      flags: dv.getUint32(at + C.flags, true),
    };
    const type = dv.getUint32(at + C.type, true);
    if (type === IoFdType.IOEVENTFD) {
      const dm = stride >= SUB_REGION_IOEVENTFD_48.size ? SUB_REGION_IOEVENTFD_48.fields.datamatch : SUB_REGION_IOEVENTFD.fields.datamatch;
      subRegions.push({ kind: 'ioeventfd', ...common, datamatch: dv.getBigUint64(at + dm, true) });
    } else if (type === IoFdType.IOREGIONFD) {
      subRegions.push({ kind: 'ioregionfd', ...common, userData: dv.getBigUint64(at + SUB_REGION_IOREGIONFD.fields.user_data, true) });
    } else if (type === IoFdType.IOEVENTFD_SHADOW && stride >= SUB_REGION_IOEVENTFD_48.size) {
      const L = SUB_REGION_IOEVENTFD_48.fields;
      subRegions.push({
        kind: 'ioeventfd-shadow',
        ...common,
        datamatch: dv.getBigUint64(at + L.datamatch, true),
        shadowMemFdIndex: dv.getUint32(at + L.shadow_mem_fd_index, true),
        shadowOffset: dv.getBigUint64(at + L.shadow_offset, true),
      });
    } else {
      subRegions.push({ kind: 'unknown', ...common, type, rest: payload.subarray(at + COMMON_SIZE, at + stride) });
    }
  }
  return { ...base, subRegions, entrySize: stride, truncated: false };
}
