/**
 * VFIO_USER_MIG_DATA_READ / VFIO_USER_MIG_DATA_WRITE: u32 argsz, u32 size, data[].
 *
 *   READ request:  argsz = largest reply accepted (>= 8), size = bytes wanted
 *   READ reply:    argsz = 8 + returned size, size = bytes returned (less than asked: end
 *                  of stream), data. libvfio-user sizes the reply for the requested size,
 *                  so bytes after `size` are tolerated and ignored.
 *   WRITE request: argsz (spec: largest reply; libvfio-user requires >= 8 + size, which is
 *                  what the encoder writes by default), size, data
 *   WRITE reply:   no payload
 */
import { ProtocolError } from '../errors.js';
import { MIG_DATA } from '../layout.js';
import { EMPTY, type Init, checkBytes, checkU32, countOf, need, newPayload, viewOf } from '../wire.js';

export interface MigDataReadRequest {
  argsz: number;
  size: number;
}

export interface MigDataReadReply {
  argsz: number;
  size: number;
  /** Zero-copy when decoded. */
  data: Uint8Array;
}

export interface MigDataWriteRequest {
  argsz: number;
  size: number;
  /** Zero-copy when decoded. */
  data: Uint8Array;
}

export type MigDataWriteReply = Record<string, never>;

const F = MIG_DATA.fields;

function encodeMig(argsz: number, size: number, data: Uint8Array | undefined): Uint8Array {
  const { buf, dv } = newPayload(MIG_DATA.size + (data ? data.length : 0));
  dv.setUint32(F.argsz, checkU32(argsz, 'argsz'), true);
  dv.setUint32(F.size, checkU32(size, 'size'), true);
  if (data) buf.set(data, F.data);
  return buf;
}

function decodeMig(payload: Uint8Array, what: string, withData: boolean): MigDataReadReply {
  need(payload, MIG_DATA.size, what);
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < MIG_DATA.size) throw new ProtocolError('VFU_BAD_ARGSZ', `${what}: argsz ${argsz} < ${MIG_DATA.size}`);
  const size = dv.getUint32(F.size, true);
  if (!withData) return { argsz, size, data: EMPTY };
  if (size > payload.length - MIG_DATA.size) {
    throw new ProtocolError('VFU_BAD_SIZE', `${what}: size ${size} exceeds the ${payload.length - MIG_DATA.size} data bytes`);
  }
  return { argsz, size, data: payload.subarray(F.data, F.data + size) };
}

export function encodeMigDataReadRequest(msg: Init<MigDataReadRequest, 'argsz'>): Uint8Array {
  const size = checkU32(msg.size, 'size');
  return encodeMig(msg.argsz ?? MIG_DATA.size + size, size, undefined);
}

export function decodeMigDataReadRequest(payload: Uint8Array): MigDataReadRequest {
  const { argsz, size } = decodeMig(payload, 'MIG_DATA_READ', false);
  return { argsz, size };
}

export function encodeMigDataReadReply(msg: Init<MigDataReadReply, 'argsz' | 'size'>): Uint8Array {
  return encodeMigWithData(msg, 'MIG_DATA_READ reply size');
}

/** argsz, size and the data: a MIG_DATA_READ reply, a MIG_DATA_WRITE request. */
function encodeMigWithData(msg: Init<MigDataWriteRequest, 'argsz' | 'size'>, what: string): Uint8Array {
  const data = checkBytes(msg.data, 'data');
  const size = countOf(msg.size, data, what);
  return encodeMig(msg.argsz ?? MIG_DATA.size + size, size, data);
}

export function decodeMigDataReadReply(payload: Uint8Array): MigDataReadReply {
  return decodeMig(payload, 'MIG_DATA_READ reply', true);
}

export function encodeMigDataWriteRequest(msg: Init<MigDataWriteRequest, 'argsz' | 'size'>): Uint8Array {
  return encodeMigWithData(msg, 'MIG_DATA_WRITE size');
}

export function decodeMigDataWriteRequest(payload: Uint8Array): MigDataWriteRequest {
  return decodeMig(payload, 'MIG_DATA_WRITE', true);
}

export function encodeMigDataWriteReply(_msg?: MigDataWriteReply): Uint8Array {
  return EMPTY;
}

export function decodeMigDataWriteReply(_payload: Uint8Array): MigDataWriteReply {
  return {};
}
