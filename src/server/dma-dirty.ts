/**
 * Dirty-page logging of DMA writes (DMA_LOGGING_START/REPORT): one bitmap per logged range,
 * at the logging page size.
 */
import { Errno } from '../errors.js';
import { DmaError } from './dma-error.js';
import { exactIova, hex, PAGE, HIGH, TOP, type Iova } from './dma-iova.js';

export class DirtyLog {
  readonly pageSize: number;
  readonly ranges: { iova: number; length: number; bitmap: Uint8Array }[];

  /** Checks the page size and ranges (full 64-bit, page aligned, not overlapping). */
  constructor(pageSize: number, ranges: { iova: Iova; length: Iova }[]) {
    if (!Number.isSafeInteger(pageSize) || pageSize < PAGE || pageSize > 2 ** 40 || (pageSize & (pageSize - 1)) !== 0) {
      throw new DmaError(`bad logging page size ${pageSize}`, Errno.EINVAL);
    }
    if (ranges.length === 0) throw new DmaError('DMA logging needs at least one range', Errno.EINVAL);
    const exact = ranges.map((r) => {
      const iova = exactIova(r.iova);
      const length = exactIova(r.length);
      if (!(length > 0) || iova % pageSize || length % pageSize || iova + length > TOP) {
        throw new DmaError(`bad logging range iova=${hex(r.iova)} length=${hex(r.length)}`, Errno.EINVAL);
      }
      if (length / pageSize > 2 ** 30) throw new DmaError('logging range too large', Errno.EINVAL);
      return { iova, length };
    });
    const sorted = exact.sort((a, b) => a.iova - b.iova);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i - 1]!.iova + sorted[i - 1]!.length > sorted[i]!.iova) throw new DmaError('logging ranges overlap', Errno.EINVAL);
    }
    this.pageSize = pageSize;
    this.ranges = sorted.map((r) => ({ iova: r.iova, length: r.length, bitmap: new Uint8Array(Math.ceil(r.length / pageSize / 8)) }));
  }

  /** Marks bytes [off, off+len) of map r dirty. Page arithmetic in 4 KiB units stays exact. */
  mark(r: { readonly iova: number; readonly end: number }, off: number, len: number): void {
    if (len <= 0) return;
    const unit = this.pageSize / PAGE;
    for (const l of this.ranges) {
      if (l.iova >= r.end || l.iova + l.length <= r.iova) continue;
      // 4 KiB pages of the access, relative to the logged range's start
      const base = (r.iova - l.iova) / PAGE; // exact: both are page multiples above 2^53
      const first = Math.max(0, Math.floor((base + Math.floor(off / PAGE)) / unit));
      const last = Math.min(l.length / this.pageSize - 1, Math.floor((base + Math.floor((off + len - 1) / PAGE)) / unit));
      for (let p = first; p <= last; p++) l.bitmap[p >> 3]! |= 1 << (p & 7);
    }
  }

  /**
   * DMA_LOGGING_REPORT: the dirty bitmap of [iova, iova+length) at pageSize (bit i = page i),
   * as u64 little-endian words, clearing what it reports. A report page is dirty when any
   * logged page it overlaps is dirty (a finer report page replicates its logged page's bit).
   */
  report(iova: Iova, length: Iova, pageSize: number): Uint8Array {
    const a = exactIova(iova);
    const n = exactIova(length);
    const ok = Number.isSafeInteger(pageSize) && pageSize > 0 && (pageSize & (pageSize - 1)) === 0 && n > 0 && !(a % pageSize) && !(n % pageSize);
    // above 2^53 only whole 4 KiB pages are exact
    if (!ok || a + n > TOP || (a + n > HIGH && pageSize < PAGE) || n / pageSize > 2 ** 33) {
      throw new DmaError(`bad report range iova=${hex(iova)} length=${hex(length)} page=${pageSize}`, Errno.EINVAL);
    }
    const pages = n / pageSize;
    const out = new Uint8Array(Math.ceil(pages / 64) * 8);
    const end = a + n;
    // the report must lie within logged ranges
    let covered = 0;
    for (const r of this.ranges) covered += Math.max(0, Math.min(end, r.iova + r.length) - Math.max(a, r.iova));
    if (covered !== n) throw new DmaError('report range is not within the logged ranges', Errno.EINVAL);
    for (const r of this.ranges) {
      const s = Math.max(a, r.iova);
      const e = Math.min(end, r.iova + r.length);
      if (s >= e) continue;
      for (let lp = Math.floor((s - r.iova) / this.pageSize); lp * this.pageSize + r.iova < e; lp++) {
        if (!(r.bitmap[lp >> 3]! & (1 << (lp & 7)))) continue;
        const ls = Math.max(s, r.iova + lp * this.pageSize);
        const le = Math.min(e, r.iova + (lp + 1) * this.pageSize);
        for (let rp = Math.floor((ls - a) / pageSize); rp * pageSize + a < le; rp++) out[rp >> 3]! |= 1 << (rp & 7);
        // the logged page is reported only if it lies wholly within the report
        if (r.iova + lp * this.pageSize >= a && r.iova + (lp + 1) * this.pageSize <= end) r.bitmap[lp >> 3]! &= ~(1 << (lp & 7));
      }
    }
    return out;
  }
}
