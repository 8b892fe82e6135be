/**
 * VFIO_USER_DEVICE_GET_INFO (struct vfio_device_info without cap_offset) and
 * VFIO_USER_DEVICE_RESET (no payload either way).
 */
import { ProtocolError } from '../errors.js';
import { DEVICE_INFO } from '../layout.js';
import { EMPTY, type Init, checkU32, need, newPayload, viewOf } from '../wire.js';

export interface DeviceGetInfoRequest {
  /** Maximum reply size; must be at least 16. */
  argsz: number;
  /** The remaining fields must be zero in a request (not enforced). */
  flags: number;
  numRegions: number;
  numIrqs: number;
}

export interface DeviceGetInfoReply {
  /** Size of the full reply (16). */
  argsz: number;
  /** DeviceInfoFlags. */
  flags: number;
  numRegions: number;
  numIrqs: number;
}

function encodeInfo(msg: Init<DeviceGetInfoReply, 'argsz' | 'flags' | 'numRegions' | 'numIrqs'>): Uint8Array {
  const F = DEVICE_INFO.fields;
  const { buf, dv } = newPayload(DEVICE_INFO.size);
  dv.setUint32(F.argsz, checkU32(msg.argsz ?? DEVICE_INFO.size, 'argsz'), true);
  dv.setUint32(F.flags, checkU32(msg.flags ?? 0, 'flags'), true);
  dv.setUint32(F.num_regions, checkU32(msg.numRegions ?? 0, 'numRegions'), true);
  dv.setUint32(F.num_irqs, checkU32(msg.numIrqs ?? 0, 'numIrqs'), true);
  return buf;
}

function decodeInfo(payload: Uint8Array, what: string): DeviceGetInfoReply {
  need(payload, DEVICE_INFO.size, what);
  const F = DEVICE_INFO.fields;
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < DEVICE_INFO.size) throw new ProtocolError('VFU_BAD_ARGSZ', `${what}: argsz ${argsz} < ${DEVICE_INFO.size}`);
  return {
    argsz,
    flags: dv.getUint32(F.flags, true),
    numRegions: dv.getUint32(F.num_regions, true),
    numIrqs: dv.getUint32(F.num_irqs, true),
  };
}

export function encodeDeviceGetInfoRequest(msg: Init<DeviceGetInfoRequest, 'argsz' | 'flags' | 'numRegions' | 'numIrqs'>): Uint8Array {
  return encodeInfo(msg);
}

export function decodeDeviceGetInfoRequest(payload: Uint8Array): DeviceGetInfoRequest {
  return decodeInfo(payload, 'DEVICE_GET_INFO');
}

export function encodeDeviceGetInfoReply(msg: Init<DeviceGetInfoReply, 'argsz'>): Uint8Array {
  return encodeInfo(msg);
}

export function decodeDeviceGetInfoReply(payload: Uint8Array): DeviceGetInfoReply {
  return decodeInfo(payload, 'DEVICE_GET_INFO reply');
}

export type DeviceResetRequest = Record<string, never>;
export type DeviceResetReply = Record<string, never>;

export function encodeDeviceResetRequest(_msg?: DeviceResetRequest): Uint8Array {
  return EMPTY;
}

export function decodeDeviceResetRequest(_payload: Uint8Array): DeviceResetRequest {
  return {};
}

export function encodeDeviceResetReply(_msg?: DeviceResetReply): Uint8Array {
  return EMPTY;
}

export function decodeDeviceResetReply(_payload: Uint8Array): DeviceResetReply {
  return {};
}
