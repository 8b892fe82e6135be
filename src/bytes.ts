/**
 * Byte reads for offsets the caller has checked: a missing byte is a RangeError (a bug in the
 * caller's check), never the silent 0 that `a[o] | ...` would make of `undefined`.
 */

export function byteAt(a: Uint8Array, o: number): number {
  const v = a[o];
  if (v === undefined) throw new RangeError(`byte offset ${o} is outside ${a.length} bytes`);
  return v;
}

/** Little-endian u16 at o. */
export function le16(a: Uint8Array, o: number): number {
  return byteAt(a, o) | (byteAt(a, o + 1) << 8);
}

/** Little-endian u32 at o. */
export function le32(a: Uint8Array, o: number): number {
  return (byteAt(a, o) | (byteAt(a, o + 1) << 8) | (byteAt(a, o + 2) << 16) | (byteAt(a, o + 3) << 24)) >>> 0;
}
