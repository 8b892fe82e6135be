/**
 * Client memory messages: VFIO_USER_DMA_MAP, VFIO_USER_DMA_UNMAP (client -> server) and
 * VFIO_USER_DMA_READ, VFIO_USER_DMA_WRITE (server -> client).
 *
 * DMA_READ replies and DMA_WRITE requests exist in two layouts:
 *   spec: u64 address, u64 count, data at 16 (length 16 + count)
 *   qemu: u64 address, u32 count, data at 12 (QEMU's VFIOUserDMARW). QEMU sizes these
 *         messages with sizeof(VFIOUserDMARW) = 32, i.e. the payload is ALSO 16 + count
 *         long, with 4 padding bytes after the data; and it rejects a DMA_WRITE request
 *         shorter than 16 + count. The qemu encoder therefore writes those 4 pad bytes.
 * Decoding rule ('auto', see decodeDmaTransfer): with c32 = u32 at 8 and hi = u32 at 12,
 *   1. length == 12 + c32                   -> qemu (unpadded 12-byte form)
 *   2. hi == 0 and length >= 16 + c32       -> spec
 *   3. length >= 12 + c32                   -> qemu (hi != 0: bytes 12..15 are data)
 *   4. otherwise                            -> VFU_BAD_COUNT
 * The one case the bytes cannot settle is QEMU's padded form whose first 4 data bytes
 * are zero: it reads as spec (rule 2). A peer known to be QEMU should be decoded with
 * layout 'qemu'.
 */
import { DmaUnmapFlags } from '../constants.js';
import { ProtocolError } from '../errors.js';
import { DMA_ACCESS, DMA_ACCESS_QEMU, DMA_MAP, DMA_UNMAP, DMA_UNMAP_BITMAP, DMA_WRITE_REPLY } from '../layout.js';
import {
  EMPTY,
  type Init,
  checkBytes,
  checkSafeU64,
  checkU32,
  checkU64,
  countOf,
  getU64Number,
  need,
  newPayload,
  setU64Number,
  viewOf,
} from '../wire.js';

// ---------------------------------------------------------------- DMA_MAP

export interface DmaMapRequest {
  /** Size of the request structure (32). */
  argsz: number;
  /** DmaMapFlags (READ, WRITE). */
  flags: number;
  /** Offset into the fd passed with the message (0 when none is passed). */
  offset: bigint;
  /** Base DMA (guest physical / IOVA) address. */
  address: bigint;
  size: bigint;
}

export type DmaMapReply = Record<string, never>;

export function encodeDmaMapRequest(msg: Init<DmaMapRequest, 'argsz'>): Uint8Array {
  const F = DMA_MAP.fields;
  const { buf, dv } = newPayload(DMA_MAP.size);
  dv.setUint32(F.argsz, checkU32(msg.argsz ?? DMA_MAP.size, 'argsz'), true);
  dv.setUint32(F.flags, checkU32(msg.flags, 'flags'), true);
  dv.setBigUint64(F.offset, checkU64(msg.offset, 'offset'), true);
  dv.setBigUint64(F.address, checkU64(msg.address, 'address'), true);
  dv.setBigUint64(F.size, checkU64(msg.size, 'size'), true);
  return buf;
}

export function decodeDmaMapRequest(payload: Uint8Array): DmaMapRequest {
  need(payload, DMA_MAP.size, 'DMA_MAP');
  const F = DMA_MAP.fields;
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < DMA_MAP.size || argsz > payload.length) {
    throw new ProtocolError('VFU_BAD_ARGSZ', `DMA_MAP argsz ${argsz} outside [${DMA_MAP.size}, ${payload.length}]`);
  }
  return {
    argsz,
    flags: dv.getUint32(F.flags, true),
    offset: dv.getBigUint64(F.offset, true),
    address: dv.getBigUint64(F.address, true),
    size: dv.getBigUint64(F.size, true),
  };
}

export function encodeDmaMapReply(_msg?: DmaMapReply): Uint8Array {
  return EMPTY;
}

export function decodeDmaMapReply(_payload: Uint8Array): DmaMapReply {
  return {};
}

// ---------------------------------------------------------------- DMA_UNMAP

export interface DmaUnmapBitmap {
  /** page size of one bit */
  pgsize: bigint;
  /** bytes of bitmap */
  size: bigint;
  /** reply only: the bitmap (zero-copy when decoded) */
  data?: Uint8Array;
}

export interface DmaUnmapRequest {
  /** Request: maximum reply size (>= 24). Reply: size of the reply (24, or more with a bitmap). */
  argsz: number;
  /** DmaUnmapFlags; ALL unmaps everything (address and size 0). */
  flags: number;
  address: bigint;
  size: bigint;
  /** with GET_DIRTY_BITMAP: the bitmap wanted (request) or returned (reply) */
  bitmap?: DmaUnmapBitmap;
}

/** The server echoes the request's structure (plus the bitmap's data with GET_DIRTY_BITMAP). */
export type DmaUnmapReply = DmaUnmapRequest;

export function encodeDmaUnmapRequest(msg: Init<DmaUnmapRequest, 'argsz'>): Uint8Array {
  const F = DMA_UNMAP.fields;
  const B = DMA_UNMAP_BITMAP.fields;
  const flags = checkU32(msg.flags, 'flags');
  checkUnmapFlags(flags);
  const withBitmap = (flags & DmaUnmapFlags.GET_DIRTY_BITMAP) !== 0;
  if (withBitmap && !msg.bitmap) throw new ProtocolError('VFU_BAD_VALUE', 'DMA_UNMAP GET_DIRTY_BITMAP needs a bitmap');
  const data = withBitmap ? msg.bitmap!.data : undefined;
  const len = DMA_UNMAP.size + (withBitmap ? DMA_UNMAP_BITMAP.size + (data?.length ?? 0) : 0);
  const { buf, dv } = newPayload(len);
  dv.setUint32(F.argsz, checkU32(msg.argsz ?? len, 'argsz'), true);
  dv.setUint32(F.flags, flags, true);
  dv.setBigUint64(F.address, checkU64(msg.address, 'address'), true);
  dv.setBigUint64(F.size, checkU64(msg.size, 'size'), true);
  if (withBitmap) {
    const at = DMA_UNMAP.size;
    dv.setBigUint64(at + B.pgsize, checkU64(msg.bitmap!.pgsize, 'bitmap.pgsize'), true);
    dv.setBigUint64(at + B.size, checkU64(data ? BigInt(data.length) : msg.bitmap!.size, 'bitmap.size'), true);
    if (data) buf.set(data, at + B.data);
  }
  return buf;
}

function checkUnmapFlags(flags: number): void {
  const both = DmaUnmapFlags.ALL | DmaUnmapFlags.GET_DIRTY_BITMAP;
  if ((flags & both) === both) {
    throw new ProtocolError('VFU_BAD_FLAGS', 'DMA_UNMAP: ALL cannot be combined with GET_DIRTY_BITMAP');
  }
}

export function decodeDmaUnmapRequest(payload: Uint8Array): DmaUnmapRequest {
  need(payload, DMA_UNMAP.size, 'DMA_UNMAP');
  const F = DMA_UNMAP.fields;
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < DMA_UNMAP.size) {
    throw new ProtocolError('VFU_BAD_ARGSZ', `DMA_UNMAP argsz ${argsz} is smaller than the ${DMA_UNMAP.size}-byte reply`);
  }
  const flags = dv.getUint32(F.flags, true);
  checkUnmapFlags(flags);
  const out: DmaUnmapRequest = { argsz, flags, address: dv.getBigUint64(F.address, true), size: dv.getBigUint64(F.size, true) };
  if (flags & DmaUnmapFlags.GET_DIRTY_BITMAP) {
    need(payload, DMA_UNMAP.size + DMA_UNMAP_BITMAP.size, 'DMA_UNMAP with GET_DIRTY_BITMAP');
    const B = DMA_UNMAP_BITMAP.fields;
    const at = DMA_UNMAP.size;
    out.bitmap = { pgsize: dv.getBigUint64(at + B.pgsize, true), size: dv.getBigUint64(at + B.size, true) };
  }
  return out;
}

export function encodeDmaUnmapReply(msg: Init<DmaUnmapReply, 'argsz'>): Uint8Array {
  return encodeDmaUnmapRequest(msg);
}

/** Decodes a reply; with GET_DIRTY_BITMAP the bitmap's `size` bytes of data must follow. */
export function decodeDmaUnmapReply(payload: Uint8Array): DmaUnmapReply {
  const out = decodeDmaUnmapRequest(payload);
  if (out.bitmap) {
    const at = DMA_UNMAP.size + DMA_UNMAP_BITMAP.fields.data;
    const n = out.bitmap.size;
    if (n > BigInt(payload.length - at)) {
      throw new ProtocolError('VFU_BAD_COUNT', `DMA_UNMAP reply: bitmap of ${n} bytes exceeds the ${payload.length - at} bytes sent`);
    }
    out.bitmap.data = payload.subarray(at, at + Number(n));
  }
  return out;
}

// ---------------------------------------------------------------- DMA_READ / DMA_WRITE

/** Which fixed part a DMA_READ reply / DMA_WRITE request uses (see the top of this file). */
export type DmaLayout = 'spec' | 'qemu';

export interface DmaReadRequest {
  address: bigint;
  count: number;
}

export interface DmaReadReply {
  address: bigint;
  count: number;
  /** Zero-copy view into the decoded payload. */
  data: Uint8Array;
  /** Layout the bytes used (decoders always set it; encoders default to 'spec'). */
  layout: DmaLayout;
}

export interface DmaWriteRequest {
  address: bigint;
  count: number;
  /** Zero-copy view into the decoded payload. */
  data: Uint8Array;
  layout: DmaLayout;
}

/** The spec's reply is u64 address + u32 count; QEMU replies with no payload at all, in
 * which case both members are absent. */
export interface DmaWriteReply {
  address?: bigint;
  count?: number;
}

export function encodeDmaReadRequest(msg: DmaReadRequest): Uint8Array {
  const F = DMA_ACCESS.fields;
  const { buf, dv } = newPayload(DMA_ACCESS.size);
  dv.setBigUint64(F.address, checkU64(msg.address, 'address'), true);
  setU64Number(dv, F.count, checkSafeU64(msg.count, 'count'));
  return buf;
}

export function decodeDmaReadRequest(payload: Uint8Array): DmaReadRequest {
  need(payload, DMA_ACCESS.size, 'DMA_READ');
  const F = DMA_ACCESS.fields;
  const dv = viewOf(payload);
  return { address: dv.getBigUint64(F.address, true), count: getU64Number(dv, F.count, 'VFU_BAD_COUNT', 'DMA_READ count') };
}

function encodeDmaTransfer(address: bigint, data: Uint8Array, count: number | undefined, layout: DmaLayout | undefined, what: string): Uint8Array {
  checkBytes(data, 'data');
  const n = countOf(count, data, what);
  if (layout === 'qemu') {
    const F = DMA_ACCESS_QEMU.fields;
    // QEMU's message is sizeof(VFIOUserDMARW) + count: 4 zero bytes trail the data.
    const { buf, dv } = newPayload(DMA_ACCESS.size + n);
    dv.setBigUint64(F.address, checkU64(address, 'address'), true);
    dv.setUint32(F.count, checkU32(n, 'count'), true);
    buf.set(data, F.data);
    return buf;
  }
  if (layout !== undefined && layout !== 'spec') throw new ProtocolError('VFU_BAD_VALUE', `unknown DMA layout ${String(layout)}`);
  const F = DMA_ACCESS.fields;
  const { buf, dv } = newPayload(DMA_ACCESS.size + n);
  dv.setBigUint64(F.address, checkU64(address, 'address'), true);
  setU64Number(dv, F.count, n);
  buf.set(data, F.data);
  return buf;
}

/**
 * Decodes a DMA_READ reply or DMA_WRITE request in either layout. `layout` 'auto' applies
 * the rule at the top of this file; 'spec'/'qemu' force one. If `expectedCount` is given
 * the count must equal it (VFU_BAD_COUNT otherwise).
 */
export function decodeDmaTransfer(
  payload: Uint8Array,
  what: string,
  expectedCount?: number,
  layout: DmaLayout | 'auto' = 'auto',
): { address: bigint; count: number; data: Uint8Array; layout: DmaLayout } {
  need(payload, DMA_ACCESS_QEMU.size, what);
  const dv = viewOf(payload);
  const len = payload.length;
  const c32 = dv.getUint32(DMA_ACCESS_QEMU.fields.count, true);
  let chosen: DmaLayout;
  if (layout === 'auto') {
    const hi = len >= DMA_ACCESS.size ? dv.getUint32(DMA_ACCESS.fields.count + 4, true) : -1;
    if (len === DMA_ACCESS_QEMU.size + c32) chosen = 'qemu';
    else if (hi === 0 && len - DMA_ACCESS.size >= c32) chosen = 'spec';
    else if (len - DMA_ACCESS_QEMU.size >= c32) chosen = 'qemu';
    else throw new ProtocolError('VFU_BAD_COUNT', `${what}: count ${c32} exceeds the ${len}-byte payload`);
  } else if (layout === 'spec' || layout === 'qemu') {
    chosen = layout;
  } else {
    throw new ProtocolError('VFU_BAD_VALUE', `unknown DMA layout ${String(layout)}`);
  }
  let count: number;
  let start: number;
  if (chosen === 'spec') {
    need(payload, DMA_ACCESS.size, what);
    count = getU64Number(dv, DMA_ACCESS.fields.count, 'VFU_BAD_COUNT', `${what} count`);
    start = DMA_ACCESS.fields.data;
  } else {
    count = c32;
    start = DMA_ACCESS_QEMU.fields.data;
  }
  if (count > len - start) throw new ProtocolError('VFU_BAD_COUNT', `${what}: count ${count} exceeds the ${len}-byte payload`);
  if (expectedCount !== undefined && count !== expectedCount) {
    throw new ProtocolError('VFU_BAD_COUNT', `${what}: count ${count}, expected ${expectedCount}`);
  }
  return { address: dv.getBigUint64(DMA_ACCESS.fields.address, true), count, data: payload.subarray(start, start + count), layout: chosen };
}

export function encodeDmaReadReply(msg: Init<DmaReadReply, 'count' | 'layout'>): Uint8Array {
  return encodeDmaTransfer(msg.address, msg.data, msg.count, msg.layout, 'DMA_READ reply');
}

/** See decodeDmaTransfer for `expectedCount` and `layout`. */
export function decodeDmaReadReply(payload: Uint8Array, expectedCount?: number, layout: DmaLayout | 'auto' = 'auto'): DmaReadReply {
  return decodeDmaTransfer(payload, 'DMA_READ reply', expectedCount, layout);
}

export function encodeDmaWriteRequest(msg: Init<DmaWriteRequest, 'count' | 'layout'>): Uint8Array {
  return encodeDmaTransfer(msg.address, msg.data, msg.count, msg.layout, 'DMA_WRITE');
}

export function decodeDmaWriteRequest(payload: Uint8Array, layout: DmaLayout | 'auto' = 'auto'): DmaWriteRequest {
  return decodeDmaTransfer(payload, 'DMA_WRITE', undefined, layout);
}

/** Writes the spec's 12-byte reply, or an empty payload when both members are absent. */
export function encodeDmaWriteReply(msg: DmaWriteReply): Uint8Array {
  if (msg.address === undefined && msg.count === undefined) return EMPTY;
  const F = DMA_WRITE_REPLY.fields;
  const { buf, dv } = newPayload(DMA_WRITE_REPLY.size);
  dv.setBigUint64(F.address, checkU64(msg.address ?? 0n, 'address'), true);
  dv.setUint32(F.count, checkU32(msg.count ?? 0, 'count'), true);
  return buf;
}

/** Accepts the spec's 12 bytes, libvfio-user's 16 (u64 count; the high half is ignored)
 * and QEMU's empty reply. */
export function decodeDmaWriteReply(payload: Uint8Array): DmaWriteReply {
  if (payload.length === 0) return {};
  need(payload, DMA_WRITE_REPLY.size, 'DMA_WRITE reply');
  const F = DMA_WRITE_REPLY.fields;
  const dv = viewOf(payload);
  return { address: dv.getBigUint64(F.address, true), count: dv.getUint32(F.count, true) };
}
