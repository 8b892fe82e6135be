/**
 * The server's view of client memory: the DMA map table, mappings of the client's files,
 * scatter-gather views, message fallback and dirty-page logging.
 *
 * - IOVAs are JS numbers: every map must end at or below 2^53 (EINVAL otherwise).
 * - Each distinct file (device + inode) is mapped once, in windows of WINDOW bytes, and the
 *   windows are shared by every DMA map of that file. When the last map using a file goes,
 *   its mapping is kept (up to MAX_IDLE_FILES such files) until unmap-all or disconnect. A
 *   guest IOMMU's map/unmap churn therefore costs an fstat, fcntl and close per map, never
 *   an mmap.
 * - The table is a sorted array searched by binary search: lookups stay O(log n) at the
 *   65,535 maps a guest IOMMU may create.
 * - Every access is checked against the table; nothing outside what the client mapped, with
 *   the permissions it gave, is ever touched.
 */
import { WriteOrder } from './write-order.js';
import { native, PROT_READ, PROT_WRITE } from '../native/index.js';
import { VfioUserError, Errno } from '../errors.js';

export const WINDOW = 1 << 30; // 1 GiB windows: an ArrayBuffer can hold at most 4 GiB - 1
const MAX_IOVA = Number.MAX_SAFE_INTEGER;
/** files kept mapped after their last DMA map goes, so map/unmap churn costs no mmap */
const MAX_IDLE_FILES = 8;

export class DmaError extends VfioUserError {
  constructor(message: string, errno: number = Errno.EFAULT) {
    super('VFU_DMA', message, errno);
    this.name = 'DmaError';
  }
}

interface Window {
  buf: ArrayBuffer;
  bytes: Uint8Array;
  fileOffset: number; // where bytes[0] is in the file
}

/** One client file (shared by every map made with it). */
class MappedFile {
  readonly key: string;
  readonly fd: number;
  readonly writable: boolean;
  refs = 0;
  readonly windows = new Map<number, Window>(); // window index -> mapping
  constructor(key: string, fd: number, writable: boolean) {
    this.key = key;
    this.fd = fd;
    this.writable = writable;
  }

  /** Makes sure [off, off+len) of the file is mapped; returns false when it cannot be. */
  ensure(off: number, len: number, fileSize: number): void {
    const first = Math.floor(off / WINDOW);
    const last = Math.floor((off + len - 1) / WINDOW);
    for (let w = first; w <= last; w++) {
      const start = w * WINDOW;
      const need = Math.min(WINDOW, off + len - start);
      const have = this.windows.get(w);
      if (have && have.bytes.length >= need) continue;
      const length = Math.min(WINDOW, roundUp(fileSize - start, native.PAGE_SIZE));
      const buf = native.mmap(this.fd, start, length, PROT_READ | (this.writable ? PROT_WRITE : 0));
      if (have) native.munmap(have.buf); // the file grew: replace the shorter window
      this.windows.set(w, { buf, bytes: new Uint8Array(buf), fileOffset: start });
    }
  }

  release(): void {
    for (const w of this.windows.values()) native.munmap(w.buf);
    this.windows.clear();
    try {
      native.close(this.fd);
    } catch {
      /* ignore */
    }
  }
}

export interface DmaRegion {
  readonly iova: number;
  readonly size: number;
  readonly prot: number; // PROT_READ | PROT_WRITE
  /** file and offset when the client shared memory; undefined for message-only maps */
  readonly file: MappedFile | undefined;
  readonly fileOffset: number;
  /** false when the file could not be sealed against shrinking (the client could make us fault) */
  readonly sealed: boolean;
  /** in-flight operations (pins); unmap waits for them */
  pins: number;
  unmapWaiters: (() => void)[];
}

/** Sends DMA_READ/DMA_WRITE messages for regions without shared memory. */
export interface DmaMessenger {
  read(iova: number, length: number): Promise<Uint8Array>;
  write(iova: number, data: Uint8Array): Promise<void>;
  /** most bytes in one DMA message */
  readonly maxTransfer: number;
}

interface DirtyLog {
  pageSize: number;
  ranges: { iova: number; length: number; bitmap: Uint8Array }[];
}

export class DmaController {
  private regions: DmaRegion[] = [];
  private readonly files = new Map<string, MappedFile>();
  /** mapped files no DMA map uses (least recently used first), kept for reuse */
  private readonly idle = new Set<MappedFile>();
  private messenger: DmaMessenger | undefined;
  /** message-based writes in flight, for ordering interrupts after them */
  readonly writeOrder = new WriteOrder();
  readonly maxMaps: number;
  private dirty: DirtyLog | undefined;
  /** called after every successful map/unmap with the change */
  onChange: ((what: 'map' | 'unmap', iova: number, size: number) => void) | undefined;

  /** refuse (EPERM) files that cannot be sealed against shrinking */
  requireSealed: boolean;

  constructor(opts: { maxMaps?: number; requireSealed?: boolean } = {}) {
    this.maxMaps = opts.maxMaps ?? 65535;
    this.requireSealed = opts.requireSealed ?? false;
  }

  get count(): number {
    return this.regions.length;
  }

  /** number of distinct client files that DMA maps use (for tests and stats) */
  get fileCount(): number {
    return this.files.size - this.idle.size;
  }

  setMessenger(m: DmaMessenger | undefined): void {
    this.messenger = m;
    if (!m) this.writeOrder.clear();
  }

  list(): readonly DmaRegion[] {
    return this.regions;
  }

  /**
   * Adds a map. Takes ownership of fd (closed on failure or when no longer needed).
   * Throws DmaError with EEXIST on overlap, EINVAL on bad ranges, ENOSPC past maxMaps.
   */
  map(iova: number, size: number, prot: number, fd: number | undefined, fileOffset: number): DmaRegion {
    let file: MappedFile | undefined;
    let sealed = true;
    try {
      if (!(size > 0) || !Number.isSafeInteger(iova) || !Number.isSafeInteger(size) || iova + size > MAX_IOVA) {
        throw new DmaError(`bad DMA range iova=0x${iova.toString(16)} size=0x${size.toString(16)}`, Errno.EINVAL);
      }
      if ((prot & ~(PROT_READ | PROT_WRITE)) !== 0 || prot === 0) throw new DmaError(`bad DMA protection ${prot}`, Errno.EINVAL);
      if (this.regions.length >= this.maxMaps) throw new DmaError(`more than ${this.maxMaps} DMA maps`, Errno.ENOSPC);
      const at = this.insertionPoint(iova);
      const prev = this.regions[at - 1];
      const next = this.regions[at];
      if ((prev && prev.iova + prev.size > iova) || (next && next.iova < iova + size)) {
        throw new DmaError(`DMA map [0x${iova.toString(16)}, +0x${size.toString(16)}) overlaps an existing map`, Errno.EEXIST);
      }
      if (fd !== undefined) {
        if (!Number.isSafeInteger(fileOffset) || fileOffset < 0 || fileOffset % native.PAGE_SIZE !== 0) {
          throw new DmaError(`bad DMA file offset ${fileOffset}`, Errno.EINVAL);
        }
        const st = native.fstat(fd);
        if (fileOffset + size > st.size) {
          // mapping past the end of the file would fault (SIGBUS) on access
          throw new DmaError(`DMA map extends past the end of its file (${st.size} bytes)`, Errno.EINVAL);
        }
        // a file that can shrink under our mapping would fault (SIGBUS) on access: seal it
        sealed = native.sealShrink(fd);
        if (!sealed && this.requireSealed) {
          throw new DmaError('DMA map of a file that cannot be sealed against shrinking (requireSealed)', Errno.EPERM);
        }
        const key = `${st.dev}:${st.ino}:${prot & PROT_WRITE ? 'w' : 'r'}`;
        file = this.files.get(key);
        if (file) {
          this.idle.delete(file);
          native.close(fd);
          fd = undefined;
        } else {
          file = new MappedFile(key, fd, (prot & PROT_WRITE) !== 0);
          fd = undefined;
          this.files.set(key, file);
        }
        try {
          file.ensure(fileOffset, size, st.size);
        } catch (e) {
          if (file.refs === 0) {
            this.files.delete(file.key);
            file.release();
          }
          file = undefined;
          const err = e as { errno?: number; message?: string };
          throw new DmaError(`cannot mmap DMA region: ${err.message}`, err.errno ?? Errno.EINVAL);
        }
      }
      const region: DmaRegion = { iova, size, prot, file, fileOffset: file ? fileOffset : 0, sealed, pins: 0, unmapWaiters: [] };
      if (file) file.refs++;
      this.regions.splice(at, 0, region);
      this.onChange?.('map', iova, size);
      return region;
    } catch (e) {
      if (fd !== undefined) native.close(fd);
      throw e;
    }
  }

  /** Removes the map that exactly matches [iova, iova+size). Waits for in-flight DMA on it. */
  async unmap(iova: number, size: number): Promise<DmaRegion> {
    const i = this.find(iova);
    const r = i >= 0 ? this.regions[i] : undefined;
    if (!r || r.iova !== iova || r.size !== size) {
      throw new DmaError(`no DMA map at [0x${iova.toString(16)}, +0x${size.toString(16)})`, Errno.ENOENT);
    }
    this.regions.splice(i, 1); // no new access can start on it
    if (r.pins > 0) await new Promise<void>((resolve) => r.unmapWaiters.push(resolve));
    this.dropFile(r);
    this.onChange?.('unmap', iova, size);
    return r;
  }

  /** Removes every map (client asked for unmap-all, or disconnected). */
  async unmapAll(): Promise<void> {
    const all = this.regions;
    this.regions = [];
    await Promise.all(all.filter((r) => r.pins > 0).map((r) => new Promise<void>((res) => r.unmapWaiters.push(res))));
    for (const r of all) {
      this.dropFile(r);
      this.onChange?.('unmap', r.iova, r.size);
    }
    this.releaseIdle();
  }

  private dropFile(r: DmaRegion): void {
    const f = r.file;
    if (!f) return;
    if (--f.refs === 0) {
      // keep the mapping for a while: a guest IOMMU maps and unmaps the same file all the time
      this.idle.add(f);
      if (this.idle.size > MAX_IDLE_FILES) {
        const oldest = this.idle.values().next().value!;
        this.idle.delete(oldest);
        this.files.delete(oldest.key);
        oldest.release();
      }
    }
  }

  /** Unmaps the files no DMA map uses any more (their mappings were kept for reuse). */
  releaseIdle(): void {
    for (const f of this.idle) {
      this.files.delete(f.key);
      f.release();
    }
    this.idle.clear();
  }

  /** client files kept mapped with no DMA map using them */
  get idleFileCount(): number {
    return this.idle.size;
  }

  private insertionPoint(iova: number): number {
    let lo = 0;
    let hi = this.regions.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.regions[mid]!.iova < iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** index of the region containing iova, or -1 */
  private find(iova: number): number {
    let lo = 0;
    let hi = this.regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = this.regions[mid]!;
      if (iova < r.iova) hi = mid - 1;
      else if (iova >= r.iova + r.size) lo = mid + 1;
      else return mid;
    }
    return -1;
  }

  /** The region containing iova (undefined if none). */
  regionAt(iova: number): DmaRegion | undefined {
    const i = this.find(iova);
    return i >= 0 ? this.regions[i] : undefined;
  }

  /**
   * Splits [iova, iova+length) over the maps; throws DmaError(EFAULT) if any byte is not
   * mapped with the needed permission.
   */
  private segments(iova: number, length: number, write: boolean): { r: DmaRegion; off: number; len: number }[] {
    if (!Number.isSafeInteger(iova) || !Number.isSafeInteger(length) || length < 0 || iova < 0 || iova + length > MAX_IOVA) {
      throw new DmaError(`bad DMA access iova=${iova} length=${length}`, Errno.EFAULT);
    }
    const out: { r: DmaRegion; off: number; len: number }[] = [];
    if (length === 0) return out;
    let i = this.find(iova);
    let cur = iova;
    const end = iova + length;
    while (cur < end) {
      const r = i >= 0 ? this.regions[i] : undefined;
      if (!r || cur < r.iova || cur >= r.iova + r.size) {
        throw new DmaError(`DMA access at 0x${cur.toString(16)} is outside the client's maps`, Errno.EFAULT);
      }
      if (!(r.prot & (write ? PROT_WRITE : PROT_READ))) {
        throw new DmaError(`DMA ${write ? 'write' : 'read'} at 0x${cur.toString(16)} not permitted by the map`, Errno.EFAULT);
      }
      const len = Math.min(end, r.iova + r.size) - cur;
      out.push({ r, off: cur - r.iova, len });
      cur += len;
      i++;
    }
    return out;
  }

  /**
   * Zero-copy scatter-gather views over the client's memory for [iova, iova+length).
   * Only for memory the client shared with an fd (EFAULT otherwise: use read/write).
   * Views are valid until the next turn of the event loop at most; for longer use, pin().
   * With write=true the pages are logged dirty.
   */
  views(iova: number, length: number, write = false): Uint8Array[] {
    // fast path: the range lies in one shared map and one window
    const i = length > 0 ? this.find(iova) : -1;
    if (i >= 0) {
      const r = this.regions[i]!;
      const f = r.file;
      if (f && iova + length <= r.iova + r.size && r.prot & (write ? PROT_WRITE : PROT_READ) && Number.isSafeInteger(length)) {
        const fo = r.fileOffset + (iova - r.iova);
        const w = f.windows.get(Math.floor(fo / WINDOW))!;
        const start = fo - w.fileOffset;
        if (start + length <= w.bytes.length) {
          if (write && this.dirty) this.markDirty(iova, length);
          return [w.bytes.subarray(start, start + length)];
        }
      }
    }
    const segs = this.segments(iova, length, write);
    const out: Uint8Array[] = [];
    for (const s of segs) {
      const f = s.r.file;
      if (!f) throw new DmaError(`DMA map at 0x${s.r.iova.toString(16)} is not shared memory`, Errno.EFAULT);
      let fo = s.r.fileOffset + s.off;
      let left = s.len;
      while (left > 0) {
        const w = f.windows.get(Math.floor(fo / WINDOW))!;
        const start = fo - w.fileOffset;
        const n = Math.min(left, w.bytes.length - start);
        out.push(w.bytes.subarray(start, start + n));
        fo += n;
        left -= n;
      }
    }
    if (write && this.dirty) this.markDirty(iova, length);
    return out;
  }

  /** True when every byte of the range is shared memory the server can view directly. */
  isShared(iova: number, length: number): boolean {
    try {
      return this.segments(iova, length, false).every((s) => s.r.file !== undefined);
    } catch {
      return false;
    }
  }

  /** Synchronous copy out of shared memory (EFAULT when not mapped or not shared). */
  readSync(iova: number, length: number, into?: Uint8Array): Uint8Array {
    const out = into ?? new Uint8Array(length);
    let pos = 0;
    for (const v of this.views(iova, length, false)) {
      out.set(v, pos);
      pos += v.length;
    }
    return out;
  }

  /** Synchronous copy into shared memory (EFAULT when not mapped or not shared). */
  writeSync(iova: number, data: Uint8Array): void {
    let pos = 0;
    for (const v of this.views(iova, data.length, true)) {
      v.set(data.subarray(pos, pos + v.length));
      pos += v.length;
    }
  }

  /** Pins the maps under a range so an unmap waits until release() is called. */
  pin(iova: number, length: number, write = false): { release(): void } {
    const regions = [...new Set(this.segments(iova, length, write).map((s) => s.r))];
    for (const r of regions) r.pins++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        for (const r of regions) {
          if (--r.pins === 0) {
            const w = r.unmapWaiters;
            r.unmapWaiters = [];
            for (const f of w) f();
          }
        }
      },
    };
  }

  /** Reads client memory: directly when shared, else with DMA_READ messages. */
  async read(iova: number, length: number): Promise<Uint8Array> {
    const segs = this.segments(iova, length, false);
    if (segs.every((s) => s.r.file)) return this.readSync(iova, length);
    const out = new Uint8Array(length);
    const pin = this.pin(iova, length, false);
    try {
      let pos = 0;
      for (const s of segs) {
        const a = s.r.iova + s.off;
        if (s.r.file) {
          out.set(this.readSync(a, s.len), pos);
        } else {
          const m = this.requireMessenger();
          for (let done = 0; done < s.len; ) {
            const n = Math.min(m.maxTransfer, s.len - done);
            const chunk = await m.read(a + done, n);
            if (chunk.length !== n) throw new DmaError(`client returned ${chunk.length} bytes for a ${n}-byte DMA read`, Errno.EIO);
            out.set(chunk, pos + done);
            done += n;
          }
        }
        pos += s.len;
      }
    } finally {
      pin.release();
    }
    return out;
  }

  /** Writes client memory: directly when shared, else with DMA_WRITE messages. */
  async write(iova: number, data: Uint8Array): Promise<void> {
    const segs = this.segments(iova, data.length, true);
    if (segs.every((s) => s.r.file)) return this.writeSync(iova, data);
    const pin = this.pin(iova, data.length, true);
    const ticket = this.writeOrder.begin();
    try {
      let pos = 0;
      for (const s of segs) {
        const a = s.r.iova + s.off;
        const part = data.subarray(pos, pos + s.len);
        if (s.r.file) {
          this.writeSync(a, part);
        } else {
          const m = this.requireMessenger();
          for (let done = 0; done < s.len; ) {
            const n = Math.min(m.maxTransfer, s.len - done);
            await m.write(a + done, part.subarray(done, done + n));
            done += n;
          }
          if (this.dirty) this.markDirty(a, s.len);
        }
        pos += s.len;
      }
    } finally {
      pin.release();
      this.writeOrder.end(ticket);
    }
  }

  private requireMessenger(): DmaMessenger {
    if (!this.messenger) throw new DmaError('no client connected for DMA messages', Errno.ENOTCONN);
    return this.messenger;
  }

  // ------------------------------------------------------------ dirty logging

  get loggingActive(): boolean {
    return this.dirty !== undefined;
  }

  get loggingPageSize(): number {
    return this.dirty?.pageSize ?? 0;
  }

  /** DMA_LOGGING_START: track writes in the given ranges at pageSize granularity. */
  startLogging(pageSize: number, ranges: { iova: number; length: number }[]): void {
    if (this.dirty) throw new DmaError('DMA logging already started', Errno.EBUSY);
    if (!(pageSize > 0) || (pageSize & (pageSize - 1)) !== 0 || pageSize < 4096) {
      throw new DmaError(`bad logging page size ${pageSize}`, Errno.EINVAL);
    }
    if (ranges.length === 0) throw new DmaError('DMA logging needs at least one range', Errno.EINVAL);
    const sorted = [...ranges].sort((a, b) => a.iova - b.iova);
    for (let i = 0; i < sorted.length; i++) {
      const r = sorted[i]!;
      if (!(r.length > 0) || r.iova % pageSize || r.length % pageSize || r.iova + r.length > MAX_IOVA) {
        throw new DmaError(`bad logging range iova=0x${r.iova.toString(16)} length=0x${r.length.toString(16)}`, Errno.EINVAL);
      }
      if (i > 0 && sorted[i - 1]!.iova + sorted[i - 1]!.length > r.iova) throw new DmaError('logging ranges overlap', Errno.EINVAL);
      if (r.length / pageSize > 1 << 30) throw new DmaError('logging range too large', Errno.EINVAL);
    }
    this.dirty = {
      pageSize,
      ranges: sorted.map((r) => ({ iova: r.iova, length: r.length, bitmap: new Uint8Array(Math.ceil(r.length / pageSize / 8)) })),
    };
  }

  stopLogging(): void {
    if (!this.dirty) throw new DmaError('DMA logging is not started', Errno.EINVAL);
    this.dirty = undefined;
  }

  /** Marks [iova, iova+length) dirty (device code calls this for writes it made through views it kept). */
  markDirty(iova: number, length: number): void {
    const d = this.dirty;
    if (!d || length <= 0) return;
    const end = iova + length;
    for (const r of d.ranges) {
      const s = Math.max(iova, r.iova);
      const e = Math.min(end, r.iova + r.length);
      if (s >= e) continue;
      const first = Math.floor((s - r.iova) / d.pageSize);
      const last = Math.floor((e - 1 - r.iova) / d.pageSize);
      for (let p = first; p <= last; p++) r.bitmap[p >> 3]! |= 1 << (p & 7);
    }
  }

  /**
   * DMA_LOGGING_REPORT: the dirty bitmap of [iova, iova+length) at pageSize (bit i = page i),
   * as u64 little-endian words, clearing what it reports. A report page is dirty when any
   * logged page it overlaps is dirty (a finer report page replicates its logged page's bit).
   */
  report(iova: number, length: number, pageSize: number): Uint8Array {
    const d = this.dirty;
    if (!d) throw new DmaError('DMA logging is not started', Errno.EINVAL);
    if (!(pageSize > 0) || (pageSize & (pageSize - 1)) !== 0 || iova % pageSize || length % pageSize || length <= 0) {
      throw new DmaError(`bad report range iova=0x${iova.toString(16)} length=0x${length.toString(16)} page=${pageSize}`, Errno.EINVAL);
    }
    const pages = length / pageSize;
    const out = new Uint8Array(Math.ceil(pages / 64) * 8);
    const end = iova + length;
    // the report must lie within logged ranges
    let covered = 0;
    for (const r of d.ranges) covered += Math.max(0, Math.min(end, r.iova + r.length) - Math.max(iova, r.iova));
    if (covered !== length) throw new DmaError('report range is not within the logged ranges', Errno.EINVAL);
    for (const r of d.ranges) {
      const s = Math.max(iova, r.iova);
      const e = Math.min(end, r.iova + r.length);
      if (s >= e) continue;
      for (let lp = Math.floor((s - r.iova) / d.pageSize); lp * d.pageSize + r.iova < e; lp++) {
        if (!(r.bitmap[lp >> 3]! & (1 << (lp & 7)))) continue;
        const ls = Math.max(s, r.iova + lp * d.pageSize);
        const le = Math.min(e, r.iova + (lp + 1) * d.pageSize);
        for (let rp = Math.floor((ls - iova) / pageSize); rp * pageSize + iova < le; rp++) out[rp >> 3]! |= 1 << (rp & 7);
        // the logged page is reported only if it lies wholly within the report
        if (r.iova + lp * d.pageSize >= iova && r.iova + (lp + 1) * d.pageSize <= end) r.bitmap[lp >> 3]! &= ~(1 << (lp & 7));
      }
    }
    return out;
  }
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
