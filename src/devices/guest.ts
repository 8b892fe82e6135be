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

/**
 * Reads guest memory: synchronously when shared, else by DMA_READ messages. (Memory that is
 * not shared is told apart without an exception: this is the hot path of DMA by message.)
 */
export function guestRead(dma: DmaController, iova: number, len: number): Uint8Array | Promise<Uint8Array> {
  const v = dma.tryView(iova, len, false);
  if (v) return v.slice();
  if (!dma.isShared(iova, len)) return dma.read(iova, len);
  try {
    return dma.readSync(iova, len);
  } catch (e) {
    if (!(e instanceof DmaError)) throw e;
    return dma.read(iova, len);
  }
}

/** Writes guest memory: synchronously when shared, else by DMA_WRITE messages. */
export function guestWrite(dma: DmaController, iova: number, data: Uint8Array): void | Promise<void> {
  const v = dma.tryView(iova, data.length, true);
  if (v) {
    v.set(data);
    return;
  }
  if (!dma.isShared(iova, data.length)) return dma.write(iova, data);
  try {
    dma.writeSync(iova, data);
  } catch (e) {
    if (!(e instanceof DmaError)) throw e;
    return dma.write(iova, data);
  }
}

/**
 * Scatters data over the segments (stops when data runs out). Segments that need DMA_WRITE
 * messages are all sent at once (the client answers them in order): one round trip for the
 * whole transfer, not one per segment.
 */
export function toGuest(dma: DmaController, segs: readonly Segment[], data: Uint8Array): Promise<void> {
  let writes: Promise<void>[] | undefined;
  let p = 0;
  try {
    for (const s of segs) {
      if (p >= data.length) break;
      const w = guestWrite(dma, s.iova, data.subarray(p, p + s.len));
      if (w) (writes ??= []).push(w);
      p += s.len;
    }
  } catch (e) {
    return settleThenFail(writes, e);
  }
  return writes ? allDone(writes) : Promise.resolve();
}

/**
 * Gathers `len` bytes from the segments. DMA_READs for all segments are sent at once (within
 * the messenger's window): one round trip for the transfer, not one per segment. The bytes
 * may be a view into a larger buffer (use byteOffset).
 */
export function fromGuest(dma: DmaController, segs: readonly Segment[], len: number): Promise<Uint8Array> {
  if (segs.length > 0 && segs[0]!.len >= len && len > 0) {
    // one piece: what the read returns, without gathering it into a copy (may be a view: mind byteOffset)
    try {
      const r = guestRead(dma, segs[0]!.iova, len);
      return r instanceof Uint8Array ? Promise.resolve(r) : r;
    } catch (e) {
      return Promise.reject(e);
    }
  }
  const out = new Uint8Array(len);
  let reads: Promise<void>[] | undefined;
  let p = 0;
  try {
    for (const s of segs) {
      if (p >= len) break;
      const n = Math.min(s.len, len - p);
      const at = p;
      const r = guestRead(dma, s.iova, n);
      if (r instanceof Uint8Array) out.set(r, at);
      else (reads ??= []).push(r.then((d) => out.set(d, at)));
      p += n;
    }
  } catch (e) {
    return settleThenFail(reads, e);
  }
  return reads ? allDone(reads).then(() => out) : Promise.resolve(out);
}

/** Waits for every transfer (none is left running), then fails with the first error. */
async function allDone(ps: Promise<void>[]): Promise<void> {
  const rs = await Promise.allSettled(ps);
  for (const r of rs) if (r.status === 'rejected') throw r.reason;
}

/** A synchronous failure after some transfers started: they finish first, then it fails. */
async function settleThenFail(ps: Promise<void>[] | undefined, e: unknown): Promise<never> {
  if (ps) await Promise.allSettled(ps);
  throw e;
}

/** Zero-copy views of every segment, or undefined when some are not shared memory (or not mapped). */
export function sgViews(dma: DmaController, segs: readonly Segment[], write: boolean): Uint8Array[] | undefined {
  const out: Uint8Array[] = [];
  try {
    for (const s of segs) {
      const v = dma.tryView(s.iova, s.len, write);
      if (v) {
        out.push(v);
        continue;
      }
      if (!dma.isShared(s.iova, s.len)) return undefined; // DMA by message (no exception on that path)
      for (const w of dma.views(s.iova, s.len, write)) out.push(w);
    }
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
