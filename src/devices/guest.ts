/**
 * Scatter-gather access to guest memory for devices, over `dev.dma`: directly (zero-copy
 * views, synchronous copies) when the client shared the memory, else with DMA messages.
 * Every access is checked against the client's maps by the DMA controller (DmaError).
 */
import { DmaError, type DmaController } from '../server/dma.js';

/** A piece of guest memory. */
export interface Segment {
  iova: number;
  len: number;
}

/** Reads guest memory: synchronously when shared, else by DMA_READ messages. */
export function guestRead(dma: DmaController, iova: number, len: number): Uint8Array | Promise<Uint8Array> {
  try {
    return dma.readSync(iova, len);
  } catch (e) {
    if (!(e instanceof DmaError)) throw e;
    return dma.read(iova, len);
  }
}

/** Writes guest memory: synchronously when shared, else by DMA_WRITE messages. */
export function guestWrite(dma: DmaController, iova: number, data: Uint8Array): void | Promise<void> {
  try {
    dma.writeSync(iova, data);
  } catch (e) {
    if (!(e instanceof DmaError)) throw e;
    return dma.write(iova, data);
  }
}

/** Scatters data over the segments (stops when data runs out). */
export async function toGuest(dma: DmaController, segs: readonly Segment[], data: Uint8Array): Promise<void> {
  let p = 0;
  for (const s of segs) {
    if (p >= data.length) break;
    await guestWrite(dma, s.iova, data.subarray(p, p + s.len));
    p += s.len;
  }
}

/** Gathers `len` bytes from the segments. */
export async function fromGuest(dma: DmaController, segs: readonly Segment[], len: number): Promise<Uint8Array> {
  const out = new Uint8Array(len);
  let p = 0;
  for (const s of segs) {
    if (p >= len) break;
    const n = Math.min(s.len, len - p);
    out.set(await guestRead(dma, s.iova, n), p);
    p += n;
  }
  return out;
}

/** Zero-copy views of every segment, or undefined when some are not shared memory (or not mapped). */
export function sgViews(dma: DmaController, segs: readonly Segment[], write: boolean): Uint8Array[] | undefined {
  const out: Uint8Array[] = [];
  try {
    for (const s of segs) for (const v of dma.views(s.iova, s.len, write)) out.push(v);
  } catch (e) {
    if (!(e instanceof DmaError)) throw e;
    return undefined; // the caller's message path reports real faults
  }
  return out;
}

/** The sub-list of segments covering [off, off+len) of their concatenation. */
export function sliceSegments(segs: readonly Segment[], off: number, len: number): Segment[] {
  const out: Segment[] = [];
  const end = off + len;
  let pos = 0;
  for (const s of segs) {
    if (pos >= end) break;
    const a = Math.max(off, pos);
    const b = Math.min(end, pos + s.len);
    if (a < b) out.push({ iova: s.iova + (a - pos), len: b - a });
    pos += s.len;
  }
  return out;
}
