/**
 * VFIO_USER_DEVICE_FEATURE (struct vfio_device_feature: u32 argsz, u32 flags, data[]).
 *
 * The generic codec handles the envelope; the feature-specific `data` layouts have their
 * own helpers below (they operate on the `data` bytes, not on the whole payload):
 *   MIGRATION          GET reply:            u64 flags (MigrationFlags)
 *   MIG_DEVICE_STATE   SET request, replies: u32 device_state, u32 data_fd
 *   DMA_LOGGING_START  SET request/reply:    u64 page_size, u32 num_ranges, u32 reserved,
 *   /DMA_LOGGING_STOP                         ranges {u64 iova, u64 length}[] (inline)
 *   DMA_LOGGING_REPORT GET request:          u64 iova, u64 length, u64 page_size;
 *                      GET reply:            the same + bitmap, u64[] little-endian,
 *                                            ceil(length / page_size / 64) * 8 bytes.
 *
 * argsz: in a request it is the largest reply the client accepts (>= 8); in a reply, the
 * reply's size (8 + data). Flags must name an operation; GET and SET are exclusive unless
 * PROBE is set; bits above PROBE are rejected (VFU_BAD_FLAGS).
 */
import { DeviceFeature, DeviceFeatureFlags } from '../constants.js';
import { ProtocolError } from '../errors.js';
import {
  DEVICE_FEATURE,
  DMA_LOGGING_CONTROL,
  DMA_LOGGING_RANGE,
  DMA_LOGGING_REPORT,
  FEATURE_MIG_STATE,
  FEATURE_MIGRATION,
} from '../layout.js';
import { EMPTY, type Init, checkBytes, checkU32, checkU64, need, newPayload, viewOf } from '../wire.js';

export interface DeviceFeatureRequest {
  argsz: number;
  /** Feature index (low 16 bits) | DeviceFeatureFlags.GET/SET/PROBE. */
  flags: number;
  /** Feature-specific bytes (zero-copy when decoded). */
  data: Uint8Array;
}

export type DeviceFeatureReply = DeviceFeatureRequest;

/** Throws VFU_BAD_FLAGS for unknown bits, no operation, or GET|SET without PROBE. */
export function checkDeviceFeatureFlags(flags: number): void {
  const { MASK, GET, SET, PROBE } = DeviceFeatureFlags;
  const hex = `0x${flags.toString(16)}`;
  if ((flags & ~(MASK | GET | SET | PROBE)) !== 0) throw new ProtocolError('VFU_BAD_FLAGS', `DEVICE_FEATURE flags ${hex} has unknown bits`);
  if ((flags & (GET | SET | PROBE)) === 0) throw new ProtocolError('VFU_BAD_FLAGS', `DEVICE_FEATURE flags ${hex} names no operation`);
  if ((flags & GET) !== 0 && (flags & SET) !== 0 && (flags & PROBE) === 0) {
    throw new ProtocolError('VFU_BAD_FLAGS', `DEVICE_FEATURE flags ${hex}: GET and SET are exclusive without PROBE`);
  }
}

/** The feature index (DeviceFeature) in a DEVICE_FEATURE flags word. */
export function featureIndex(flags: number): number {
  return flags & DeviceFeatureFlags.MASK;
}

/**
 * The argsz a request needs so that the whole reply fits: for GET of MIGRATION and
 * MIG_DEVICE_STATE 8 + 8, for GET of DMA_LOGGING_REPORT 8 + 24 + the bitmap size computed
 * from the request data; otherwise (SET, PROBE: the reply echoes the request) 8 + data.
 */
export function deviceFeatureReplySize(flags: number, data: Uint8Array): number {
  const echo = DEVICE_FEATURE.size + data.length;
  if ((flags & DeviceFeatureFlags.GET) === 0 || (flags & DeviceFeatureFlags.PROBE) !== 0) return echo;
  switch (featureIndex(flags)) {
    case DeviceFeature.MIGRATION:
      return Math.max(echo, DEVICE_FEATURE.size + FEATURE_MIGRATION.size);
    case DeviceFeature.MIG_DEVICE_STATE:
      return Math.max(echo, DEVICE_FEATURE.size + FEATURE_MIG_STATE.size);
    case DeviceFeature.DMA_LOGGING_REPORT:
      try {
        const r = decodeFeatureDmaLoggingReportRequest(data);
        return DEVICE_FEATURE.size + DMA_LOGGING_REPORT.size + dmaLoggingBitmapSize(r.length, r.pageSize);
      } catch (e) {
        if (e instanceof ProtocolError) return echo;
        throw e;
      }
    default:
      return echo;
  }
}

/** argsz defaults to deviceFeatureReplySize(flags, data). */
export function encodeDeviceFeatureRequest(msg: Init<DeviceFeatureRequest, 'argsz' | 'data'>): Uint8Array {
  const flags = checkU32(msg.flags, 'flags');
  checkDeviceFeatureFlags(flags);
  const data = checkBytes(msg.data ?? EMPTY, 'data');
  const F = DEVICE_FEATURE.fields;
  const { buf, dv } = newPayload(DEVICE_FEATURE.size + data.length);
  dv.setUint32(F.argsz, checkU32(msg.argsz ?? deviceFeatureReplySize(flags, data), 'argsz'), true);
  dv.setUint32(F.flags, flags, true);
  buf.set(data, F.data);
  return buf;
}

function decodeFeature(payload: Uint8Array, what: string): DeviceFeatureRequest {
  need(payload, DEVICE_FEATURE.size, what);
  const F = DEVICE_FEATURE.fields;
  const dv = viewOf(payload);
  const argsz = dv.getUint32(F.argsz, true);
  if (argsz < DEVICE_FEATURE.size) throw new ProtocolError('VFU_BAD_ARGSZ', `${what}: argsz ${argsz} < ${DEVICE_FEATURE.size}`);
  const flags = dv.getUint32(F.flags, true);
  checkDeviceFeatureFlags(flags);
  return { argsz, flags, data: payload.subarray(F.data) };
}

export function decodeDeviceFeatureRequest(payload: Uint8Array): DeviceFeatureRequest {
  return decodeFeature(payload, 'DEVICE_FEATURE');
}

/** argsz defaults to 8 + data length (the reply's size). */
export function encodeDeviceFeatureReply(msg: Init<DeviceFeatureReply, 'argsz' | 'data'>): Uint8Array {
  const data = msg.data ?? EMPTY;
  return encodeDeviceFeatureRequest({ argsz: msg.argsz ?? DEVICE_FEATURE.size + data.length, flags: msg.flags, data });
}

export function decodeDeviceFeatureReply(payload: Uint8Array): DeviceFeatureReply {
  return decodeFeature(payload, 'DEVICE_FEATURE reply');
}

// ---------------------------------------------------------------- MIGRATION

export interface FeatureMigration {
  /** MigrationFlags. */
  flags: bigint;
}

export function encodeFeatureMigration(m: FeatureMigration): Uint8Array {
  const { buf, dv } = newPayload(FEATURE_MIGRATION.size);
  dv.setBigUint64(FEATURE_MIGRATION.fields.flags, checkU64(m.flags, 'migration flags'), true);
  return buf;
}

export function decodeFeatureMigration(data: Uint8Array): FeatureMigration {
  need(data, FEATURE_MIGRATION.size, 'MIGRATION feature');
  return { flags: viewOf(data).getBigUint64(FEATURE_MIGRATION.fields.flags, true) };
}

// ---------------------------------------------------------------- MIG_DEVICE_STATE

export interface FeatureMigDeviceState {
  /** DeviceState. */
  deviceState: number;
  /** Unused by vfio-user (MIG_DATA_READ/WRITE carry the data). */
  dataFd: number;
}

export function encodeFeatureMigDeviceState(s: Init<FeatureMigDeviceState, 'dataFd'>): Uint8Array {
  const F = FEATURE_MIG_STATE.fields;
  const { buf, dv } = newPayload(FEATURE_MIG_STATE.size);
  dv.setUint32(F.device_state, checkU32(s.deviceState, 'deviceState'), true);
  dv.setUint32(F.data_fd, checkU32(s.dataFd ?? 0, 'dataFd'), true);
  return buf;
}

export function decodeFeatureMigDeviceState(data: Uint8Array): FeatureMigDeviceState {
  need(data, FEATURE_MIG_STATE.size, 'MIG_DEVICE_STATE feature');
  const F = FEATURE_MIG_STATE.fields;
  const dv = viewOf(data);
  return { deviceState: dv.getUint32(F.device_state, true), dataFd: dv.getUint32(F.data_fd, true) };
}

// ---------------------------------------------------------------- DMA_LOGGING_START / STOP

export interface DmaLoggingRange {
  iova: bigint;
  length: bigint;
}

export interface FeatureDmaLoggingControl {
  pageSize: bigint;
  /** Empty: log every write. */
  ranges: DmaLoggingRange[];
}

export function encodeFeatureDmaLoggingControl(c: FeatureDmaLoggingControl): Uint8Array {
  if (!Array.isArray(c.ranges)) throw new ProtocolError('VFU_BAD_VALUE', 'ranges must be an array');
  const F = DMA_LOGGING_CONTROL.fields;
  const R = DMA_LOGGING_RANGE.fields;
  const { buf, dv } = newPayload(DMA_LOGGING_CONTROL.size + c.ranges.length * DMA_LOGGING_RANGE.size);
  dv.setBigUint64(F.page_size, checkU64(c.pageSize, 'pageSize'), true);
  dv.setUint32(F.num_ranges, checkU32(c.ranges.length, 'num_ranges'), true);
  c.ranges.forEach((r, i) => {
    const at = F.ranges + i * DMA_LOGGING_RANGE.size;
    dv.setBigUint64(at + R.iova, checkU64(r.iova, 'iova'), true);
    dv.setBigUint64(at + R.length, checkU64(r.length, 'length'), true);
  });
  return buf;
}

export function decodeFeatureDmaLoggingControl(data: Uint8Array): FeatureDmaLoggingControl {
  need(data, DMA_LOGGING_CONTROL.size, 'DMA_LOGGING control');
  const F = DMA_LOGGING_CONTROL.fields;
  const R = DMA_LOGGING_RANGE.fields;
  const dv = viewOf(data);
  const n = dv.getUint32(F.num_ranges, true);
  if (n > (data.length - DMA_LOGGING_CONTROL.size) / DMA_LOGGING_RANGE.size) {
    throw new ProtocolError('VFU_BAD_COUNT', `DMA_LOGGING control: ${n} ranges do not fit in ${data.length} bytes`);
  }
  const ranges: DmaLoggingRange[] = [];
  for (let i = 0; i < n; i++) {
    const at = F.ranges + i * DMA_LOGGING_RANGE.size;
    ranges.push({ iova: dv.getBigUint64(at + R.iova, true), length: dv.getBigUint64(at + R.length, true) });
  }
  return { pageSize: dv.getBigUint64(F.page_size, true), ranges };
}

// ---------------------------------------------------------------- DMA_LOGGING_REPORT

export interface FeatureDmaLoggingReportRequest {
  iova: bigint;
  length: bigint;
  /** Power of two. */
  pageSize: bigint;
}

export interface FeatureDmaLoggingReportReply extends FeatureDmaLoggingReportRequest {
  /** Little-endian u64 words, bit n = page n from iova (zero-copy when decoded). */
  bitmap: Uint8Array;
}

function bitmapBytes(length: bigint, pageSize: bigint): bigint {
  if (pageSize <= 0n || (pageSize & (pageSize - 1n)) !== 0n) {
    throw new ProtocolError('VFU_BAD_VALUE', `DMA_LOGGING_REPORT page_size ${pageSize} is not a power of two`);
  }
  const pages = (length + pageSize - 1n) / pageSize;
  return ((pages + 63n) / 64n) * 8n;
}

/** Size in bytes of the bitmap a DMA_LOGGING_REPORT reply carries: ceil(length/page_size/64)*8. */
export function dmaLoggingBitmapSize(length: bigint, pageSize: bigint): number {
  const n = bitmapBytes(checkU64(length, 'length'), checkU64(pageSize, 'pageSize'));
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProtocolError('VFU_BAD_SIZE', `dirty bitmap of ${n} bytes is too large`);
  return Number(n);
}

function encodeReportHead(r: FeatureDmaLoggingReportRequest, extra: number): { buf: Uint8Array; dv: DataView } {
  const F = DMA_LOGGING_REPORT.fields;
  const out = newPayload(DMA_LOGGING_REPORT.size + extra);
  out.dv.setBigUint64(F.iova, checkU64(r.iova, 'iova'), true);
  out.dv.setBigUint64(F.length, checkU64(r.length, 'length'), true);
  out.dv.setBigUint64(F.page_size, checkU64(r.pageSize, 'pageSize'), true);
  return out;
}

function decodeReportHead(data: Uint8Array, what: string): FeatureDmaLoggingReportRequest {
  need(data, DMA_LOGGING_REPORT.size, what);
  const F = DMA_LOGGING_REPORT.fields;
  const dv = viewOf(data);
  const r = { iova: dv.getBigUint64(F.iova, true), length: dv.getBigUint64(F.length, true), pageSize: dv.getBigUint64(F.page_size, true) };
  bitmapBytes(r.length, r.pageSize); // validates page_size
  return r;
}

export function encodeFeatureDmaLoggingReportRequest(r: FeatureDmaLoggingReportRequest): Uint8Array {
  bitmapBytes(checkU64(r.length, 'length'), checkU64(r.pageSize, 'pageSize'));
  return encodeReportHead(r, 0).buf;
}

export function decodeFeatureDmaLoggingReportRequest(data: Uint8Array): FeatureDmaLoggingReportRequest {
  return decodeReportHead(data, 'DMA_LOGGING_REPORT');
}

export function encodeFeatureDmaLoggingReportReply(r: FeatureDmaLoggingReportReply): Uint8Array {
  const size = dmaLoggingBitmapSize(r.length, r.pageSize);
  const bitmap = checkBytes(r.bitmap, 'bitmap');
  if (bitmap.length !== size) throw new ProtocolError('VFU_BAD_SIZE', `DMA_LOGGING_REPORT bitmap must be ${size} bytes, got ${bitmap.length}`);
  const { buf } = encodeReportHead(r, size);
  buf.set(bitmap, DMA_LOGGING_REPORT.fields.bitmap);
  return buf;
}

export function decodeFeatureDmaLoggingReportReply(data: Uint8Array): FeatureDmaLoggingReportReply {
  const head = decodeReportHead(data, 'DMA_LOGGING_REPORT reply');
  const size = bitmapBytes(head.length, head.pageSize);
  const start = DMA_LOGGING_REPORT.fields.bitmap;
  if (size > BigInt(data.length - start)) {
    throw new ProtocolError('VFU_BAD_SIZE', `DMA_LOGGING_REPORT reply: bitmap needs ${size} bytes, have ${data.length - start}`);
  }
  return { ...head, bitmap: data.subarray(start, start + Number(size)) };
}

// ---------------------------------------------------------------- typed view

export type FeatureData =
  | { feature: typeof DeviceFeature.MIGRATION; value: FeatureMigration }
  | { feature: typeof DeviceFeature.MIG_DEVICE_STATE; value: FeatureMigDeviceState }
  | { feature: typeof DeviceFeature.DMA_LOGGING_START | typeof DeviceFeature.DMA_LOGGING_STOP; value: FeatureDmaLoggingControl }
  | { feature: typeof DeviceFeature.DMA_LOGGING_REPORT; value: FeatureDmaLoggingReportRequest | FeatureDmaLoggingReportReply };

/**
 * Decodes the `data` of a DEVICE_FEATURE request or reply according to its feature index
 * and direction. Returns undefined when there is no data (probes, GET requests of
 * MIGRATION/MIG_DEVICE_STATE, STOP without ranges) or the feature is not one vfio-user
 * defines.
 */
export function decodeFeatureData(msg: Pick<DeviceFeatureRequest, 'flags' | 'data'>, direction: 'request' | 'reply'): FeatureData | undefined {
  if (msg.data.length === 0) return undefined;
  const feature = featureIndex(msg.flags);
  switch (feature) {
    case DeviceFeature.MIGRATION:
      return { feature, value: decodeFeatureMigration(msg.data) };
    case DeviceFeature.MIG_DEVICE_STATE:
      return { feature, value: decodeFeatureMigDeviceState(msg.data) };
    case DeviceFeature.DMA_LOGGING_START:
    case DeviceFeature.DMA_LOGGING_STOP:
      return { feature, value: decodeFeatureDmaLoggingControl(msg.data) };
    case DeviceFeature.DMA_LOGGING_REPORT:
      return {
        feature,
        value: direction === 'reply' ? decodeFeatureDmaLoggingReportReply(msg.data) : decodeFeatureDmaLoggingReportRequest(msg.data),
      };
    default:
      return undefined;
  }
}
