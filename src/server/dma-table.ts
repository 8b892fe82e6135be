/**
 * The DMA map table: the maps a client made, sorted by IOVA (see RegionTable).
 */
import type { MappedFile } from './dma-files.js';

export interface DmaRegion {
  /** first byte (exact: a safe integer, or a multiple of 4 KiB up to 2^64) */
  readonly iova: number;
  readonly size: number;
  /** iova + size (exact, at most 2^64) */
  readonly end: number;
  readonly prot: number; // PROT_READ | PROT_WRITE
  /** file and offset when the client shared memory; undefined for message-only maps @internal */
  readonly file: MappedFile | undefined;
  readonly fileOffset: number;
  /** false when the file could not be sealed against shrinking (the client could make us fault) */
  readonly sealed: boolean;
  /** in-flight operations (pins); unmap waits for them @internal */
  pins: number;
  /** @internal */
  unmapWaiters: (() => void)[];
  /** the maps just below and above (the table's order) @internal */
  prev: DmaRegion | undefined;
  /** @internal */
  next: DmaRegion | undefined;
}

/** most maps in one chunk of the table before it is split */
const CHUNK = 512;

/**
 * The map table: sorted by IOVA in chunks of at most 2 * CHUNK maps (with the first IOVA of
 * each chunk in a sorted array), and linked in order. A lookup is two binary searches; adding
 * or removing a map moves at most one chunk's entries, so 65,535 maps come and go in any
 * order in well under a second (one flat sorted array moved 64K entries per change).
 */
export class RegionTable {
  private chunks: DmaRegion[][] = [];
  private starts: number[] = [];
  first: DmaRegion | undefined;
  count = 0;
  private hit: DmaRegion | undefined;

  all(): DmaRegion[] {
    return this.chunks.flat();
  }

  clear(): DmaRegion[] {
    const all = this.all();
    this.chunks = [];
    this.starts = [];
    this.first = undefined;
    this.hit = undefined;
    this.count = 0;
    return all;
  }

  /** index of the last chunk starting at or before iova, -1 if none */
  private chunkAt(iova: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    let at = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid]! <= iova) {
        at = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return at;
  }

  /** the last map starting at or before iova */
  floor(iova: number): DmaRegion | undefined {
    const k = this.chunkAt(iova);
    if (k < 0) return undefined;
    const c = this.chunks[k]!;
    let lo = 0;
    let hi = c.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (c[mid]!.iova <= iova) lo = mid;
      else hi = mid - 1;
    }
    return c[lo];
  }

  /** the map containing iova (the last one found is tried first: devices work in one map at a time) */
  find(iova: number): DmaRegion | undefined {
    const h = this.hit;
    if (h !== undefined && iova >= h.iova && iova < h.end) return h;
    const r = this.floor(iova);
    if (r === undefined || !(iova < r.end)) return undefined;
    this.hit = r;
    return r;
  }

  /** the first map starting at or after iova */
  ceil(iova: number): DmaRegion | undefined {
    const r = this.floor(iova);
    if (r === undefined) return this.first;
    return r.iova === iova ? r : r.next;
  }

  private indexIn(c: DmaRegion[], iova: number): number {
    let lo = 0;
    let hi = c.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (c[mid]!.iova < iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  insert(r: DmaRegion): void {
    this.count++;
    if (this.chunks.length === 0) {
      this.chunks.push([r]);
      this.starts.push(r.iova);
      r.prev = r.next = undefined;
      this.first = r;
      return;
    }
    const k = Math.max(0, this.chunkAt(r.iova));
    const c = this.chunks[k]!;
    const i = this.indexIn(c, r.iova);
    const prev = i > 0 ? c[i - 1] : k > 0 ? this.chunks[k - 1]![this.chunks[k - 1]!.length - 1] : undefined;
    c.splice(i, 0, r);
    this.starts[k] = c[0]!.iova;
    const next = prev ? prev.next : this.first;
    r.prev = prev;
    r.next = next;
    if (prev) prev.next = r;
    else this.first = r;
    if (next) next.prev = r;
    if (c.length > 2 * CHUNK) {
      const tail = c.splice(CHUNK);
      this.chunks.splice(k + 1, 0, tail);
      this.starts.splice(k + 1, 0, tail[0]!.iova);
    }
  }

  remove(r: DmaRegion): void {
    const k = this.chunkAt(r.iova);
    const c = this.chunks[k]!;
    const i = this.indexIn(c, r.iova);
    if (c[i] !== r) throw new Error('DMA map table corrupt');
    c.splice(i, 1);
    if (c.length === 0) {
      this.chunks.splice(k, 1);
      this.starts.splice(k, 1);
    } else this.starts[k] = c[0]!.iova;
    if (r.prev) r.prev.next = r.next;
    else this.first = r.next;
    if (r.next) r.next.prev = r.prev;
    r.prev = r.next = undefined;
    if (this.hit === r) this.hit = undefined;
    this.count--;
  }
}
