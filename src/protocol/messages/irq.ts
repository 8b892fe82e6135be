/**
 * VFIO_USER_DEVICE_GET_IRQ_INFO (struct vfio_irq_info) and VFIO_USER_DEVICE_SET_IRQS
 * (struct vfio_irq_set; no reply payload).
 *
 * SET_IRQS data: DATA_BOOL carries `count` bytes of booleans after the fixed part;
 * DATA_NONE carries nothing; DATA_EVENTFD carries nothing in-band: the eventfds travel as
 * SCM_RIGHTS ancillary data (count of them, or none to de-assign), which is the
 * transport's business; setIrqsExpectedFds() tells how many to expect.
 * argsz is the size of the request payload including data: 20 <= argsz <= payload length.
 */
import { SetIrqsFlags } from '../constants.js';
import { ProtocolError } from '../errors.js';
import { IRQ_INFO, IRQ_SET } from '../layout.js';
import { EMPTY, type Init, checkBytes, checkU32, need, newPayload, viewOf } from '../wire.js';

export interface IrqInfoRequest {
  /** Largest reply the client accepts (>= 16). */
  argsz: number;
  /** Must be zero in a request (not enforced), like count. */
  flags: number;
  /** PciIrq index. */
  index: number;
  count: number;
}

export interface IrqInfoReply {
  argsz: number;
  /** IrqInfoFlags. */
  flags: number;
  index: number;
  /** Number of interrupts of this type. */
  count: number;
}

function encodeIrqInfo(msg: Init<IrqInfoReply, 'argsz' | 'flags' | 'count'>): Uint8Array {
  const F = IRQ_INFO.fields;
  const { buf, dv } = newPayload(IRQ_INFO.size);
  dv.setUint32(F.argsz, checkU32(msg.argsz ?? IRQ_INFO.size, 'argsz'), true);
  dv.setUint32(F.flags, checkU32(msg.flags ?? 0, 'flags'), true);
  dv.setUint32(F.index, checkU32(msg.index, 'index'), true);
  dv.setUint32(F.count, checkU32(msg.count ?? 0, 'count'), true);
  return buf;
}

function decodeIrqInfo(payload: Uint8Array, what: string): IrqInfoReply {
  need(payload, IRQ_INFO.size, what);
  const F = IRQ_INFO.fields;
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < IRQ_INFO.size) throw new ProtocolError('VFU_BAD_ARGSZ', `${what}: argsz ${argsz} < ${IRQ_INFO.size}`);
  return { argsz, flags: dv.getUint32(F.flags, true), index: dv.getUint32(F.index, true), count: dv.getUint32(F.count, true) };
}

export function encodeIrqInfoRequest(msg: Init<IrqInfoRequest, 'argsz' | 'flags' | 'count'>): Uint8Array {
  return encodeIrqInfo(msg);
}

export function decodeIrqInfoRequest(payload: Uint8Array): IrqInfoRequest {
  return decodeIrqInfo(payload, 'GET_IRQ_INFO');
}

export function encodeIrqInfoReply(msg: Init<IrqInfoReply, 'argsz'>): Uint8Array {
  return encodeIrqInfo(msg);
}

export function decodeIrqInfoReply(payload: Uint8Array): IrqInfoReply {
  return decodeIrqInfo(payload, 'GET_IRQ_INFO reply');
}

export interface SetIrqsRequest {
  /** Size of the request payload including data (20 + data length). */
  argsz: number;
  /** SetIrqsFlags: exactly one DATA_* and one ACTION_* bit. */
  flags: number;
  /** PciIrq index. */
  index: number;
  /** First sub-index. */
  start: number;
  /** Number of sub-indexes (0 with DATA_NONE|ACTION_TRIGGER disables the index). */
  count: number;
  /** DATA_BOOL: `count` booleans (zero-copy when decoded); otherwise empty. */
  data: Uint8Array;
}

export type SetIrqsReply = Record<string, never>;

function isOneBit(v: number): boolean {
  return v !== 0 && (v & (v - 1)) === 0;
}

/** Throws VFU_BAD_FLAGS unless `flags` has exactly one DATA_* and one ACTION_* bit. */
export function checkSetIrqsFlags(flags: number): void {
  const known = SetIrqsFlags.DATA_TYPE_MASK | SetIrqsFlags.ACTION_TYPE_MASK;
  if ((flags & ~known) !== 0 || !isOneBit(flags & SetIrqsFlags.DATA_TYPE_MASK) || !isOneBit(flags & SetIrqsFlags.ACTION_TYPE_MASK)) {
    throw new ProtocolError('VFU_BAD_FLAGS', `SET_IRQS flags 0x${flags.toString(16)} need exactly one DATA_ and one ACTION_ bit`);
  }
}

/** Number of eventfds that accompany the request: `count` for DATA_EVENTFD (a sender may
 * also send none, which de-assigns), 0 otherwise. */
export function setIrqsExpectedFds(req: Pick<SetIrqsRequest, 'flags' | 'count'>): number {
  return (req.flags & SetIrqsFlags.DATA_EVENTFD) !== 0 ? req.count : 0;
}

export function encodeSetIrqsRequest(msg: Init<SetIrqsRequest, 'argsz' | 'data'>): Uint8Array {
  const flags = checkU32(msg.flags, 'flags');
  checkSetIrqsFlags(flags);
  const count = checkU32(msg.count, 'count');
  const data = checkBytes(msg.data ?? EMPTY, 'data');
  if ((flags & SetIrqsFlags.DATA_BOOL) !== 0) {
    if (data.length !== count) throw new ProtocolError('VFU_BAD_COUNT', `SET_IRQS DATA_BOOL needs ${count} bytes of data, got ${data.length}`);
  } else if (data.length !== 0) {
    throw new ProtocolError('VFU_BAD_COUNT', 'SET_IRQS carries data only with DATA_BOOL');
  }
  const F = IRQ_SET.fields;
  const { buf, dv } = newPayload(IRQ_SET.size + data.length);
  dv.setUint32(F.argsz, checkU32(msg.argsz ?? IRQ_SET.size + data.length, 'argsz'), true);
  dv.setUint32(F.flags, flags, true);
  dv.setUint32(F.index, checkU32(msg.index, 'index'), true);
  dv.setUint32(F.start, checkU32(msg.start, 'start'), true);
  dv.setUint32(F.count, count, true);
  buf.set(data, F.data);
  return buf;
}

export function decodeSetIrqsRequest(payload: Uint8Array): SetIrqsRequest {
  need(payload, IRQ_SET.size, 'SET_IRQS');
  const F = IRQ_SET.fields;
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < IRQ_SET.size || argsz > payload.length) {
    throw new ProtocolError('VFU_BAD_ARGSZ', `SET_IRQS argsz ${argsz} outside [${IRQ_SET.size}, ${payload.length}]`);
  }
  const flags = dv.getUint32(F.flags, true);
  checkSetIrqsFlags(flags);
  const count = dv.getUint32(F.count, true);
  let data = EMPTY;
  if ((flags & SetIrqsFlags.DATA_BOOL) !== 0) {
    if (count > payload.length - IRQ_SET.size) {
      throw new ProtocolError('VFU_BAD_COUNT', `SET_IRQS DATA_BOOL count ${count} exceeds the ${payload.length - IRQ_SET.size} data bytes`);
    }
    data = payload.subarray(F.data, F.data + count);
  }
  return { argsz, flags, index: dv.getUint32(F.index, true), start: dv.getUint32(F.start, true), count, data };
}

export function encodeSetIrqsReply(_msg?: SetIrqsReply): Uint8Array {
  return EMPTY;
}

export function decodeSetIrqsReply(_payload: Uint8Array): SetIrqsReply {
  return {};
}
