/**
 * IOVAs and lengths as exact numbers (see dma.ts): a safe integer, or a multiple of 4 KiB up
 * to 2^64.
 */
export const MAX_SAFE = Number.MAX_SAFE_INTEGER;
export const MAX_SAFE_BIG = BigInt(MAX_SAFE);
export const PAGE = 4096;
/** maps that end above this must be page aligned (so a page never straddles two maps up there) */
export const HIGH = 2 ** 53 - PAGE;
export const TOP = 2 ** 64;

/** An IOVA or length: a number (a safe integer) or a bigint (any u64). */
export type Iova = number | bigint;

export const hex = (v: number | bigint): string => `0x${v.toString(16)}`;

/**
 * A map bound or length given as a number or bigint, as an exact number: a safe integer, or
 * a multiple of 4 KiB up to 2^64. NaN when it is neither.
 */
export function exactIova(v: Iova): number {
  if (typeof v === 'bigint') {
    if (v < 0n || v > 1n << 64n) return NaN;
    if (v <= MAX_SAFE_BIG) return Number(v);
    return v % BigInt(PAGE) === 0n ? Number(v) : NaN;
  }
  if (!Number.isInteger(v) || v < 0 || v > TOP) return NaN;
  return v <= MAX_SAFE || v % PAGE === 0 ? v : NaN;
}
