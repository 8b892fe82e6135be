/**
 * Little helpers shared by the message codecs (internal; not re-exported).
 *
 * Decoders check lengths with `need`/`fits` BEFORE touching a DataView, so a DataView
 * RangeError can never escape; encoders validate their inputs with the check* functions so
 * that a bad value is a ProtocolError('VFU_BAD_VALUE') rather than a silent wrap-around.
 */
import { ProtocolError, type ProtocolErrorCode } from './errors.js';

export const EMPTY: Uint8Array = new Uint8Array(0);

const TWO_32 = 0x1_0000_0000;
const MAX_U64 = (1n << 64n) - 1n;

/** Makes a payload-relative DataView (the payload may be a subarray of a larger buffer). */
export function viewOf(p: Uint8Array): DataView {
  return new DataView(p.buffer, p.byteOffset, p.byteLength);
}

/** Throws VFU_SHORT_MESSAGE unless `p` has at least `n` bytes. */
export function need(p: Uint8Array, n: number, what: string): void {
  if (p.length < n) {
    throw new ProtocolError('VFU_SHORT_MESSAGE', `${what}: needs ${n} bytes, payload has ${p.length}`);
  }
}

/** Throws `code` unless the range [start, start + len) lies inside [0, limit). */
export function fits(start: number, len: number, limit: number, code: ProtocolErrorCode, what: string): void {
  if (!(start >= 0 && len >= 0 && start <= limit && len <= limit - start)) {
    throw new ProtocolError(code, `${what}: bytes ${start}..${start + len} exceed ${limit}`);
  }
}

/** Reads a little-endian u64 as a number; throws `code` above Number.MAX_SAFE_INTEGER. */
export function getU64Number(dv: DataView, off: number, code: ProtocolErrorCode, what: string): number {
  const lo = dv.getUint32(off, true);
  const hi = dv.getUint32(off + 4, true);
  if (hi > 0x1f_ffff) throw new ProtocolError(code, `${what} 0x${((BigInt(hi) << 32n) | BigInt(lo)).toString(16)} exceeds 2^53-1`);
  return hi * TWO_32 + lo;
}

export function setU64Number(dv: DataView, off: number, v: number): void {
  if (v < TWO_32) {
    // the common case, without the divisions
    dv.setUint32(off, v, true);
    dv.setUint32(off + 4, 0, true);
    return;
  }
  dv.setUint32(off, v % TWO_32, true);
  dv.setUint32(off + 4, Math.floor(v / TWO_32), true);
}

export function newPayload(size: number): { buf: Uint8Array; dv: DataView } {
  const buf = new Uint8Array(size);
  return { buf, dv: new DataView(buf.buffer, 0, size) };
}

function bad(what: string, v: unknown, range: string): never {
  const shown = typeof v === 'bigint' ? `${v}n` : String(v);
  throw new ProtocolError('VFU_BAD_VALUE', `${what} must be ${range}, got ${shown}`);
}

export function checkU16(v: number, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff) bad(what, v, 'an integer in [0, 0xffff]');
  return v;
}

export function checkU32(v: number, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff_ffff) bad(what, v, 'an integer in [0, 2^32-1]');
  return v;
}

/** A u64 held as a number (hot-path offsets and counts). */
export function checkSafeU64(v: number, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(what, v, 'a safe non-negative integer');
  return v;
}

export function checkU64(v: bigint, what: string): bigint {
  if (typeof v !== 'bigint' || v < 0n || v > MAX_U64) bad(what, v, 'a bigint in [0, 2^64-1]');
  return v;
}

export function checkBytes(v: Uint8Array, what: string): Uint8Array {
  if (!(v instanceof Uint8Array)) bad(what, typeof v, 'a Uint8Array');
  return v;
}

/** When a count accompanies data, they must agree; returns the count to write. */
export function countOf(count: number | undefined, data: Uint8Array, what: string): number {
  if (count !== undefined && count !== data.length) {
    throw new ProtocolError('VFU_BAD_COUNT', `${what}: count ${count} disagrees with ${data.length} data bytes`);
  }
  return data.length;
}

/** Encoder input type: `K` may be omitted (computed or defaulted by the encoder). */
export type Init<T, K extends keyof T> = Omit<T, K> & Partial<Pick<T, K>>;
