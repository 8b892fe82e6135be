/**
 * The server's view of client memory: the DMA map table, mappings of the client's files,
 * scatter-gather views, message fallback and dirty-page logging.
 *
 * - IOVAs are full 64-bit: the API takes a number (a safe integer) or a bigint. Map bounds are
 *   kept as doubles: every multiple of 4 KiB up to 2^64 is exact as a double, and a map that
 *   ends above 2^53 - 4 KiB must be 4 KiB aligned, so lookups stay plain number compares. An
 *   access above 2^53 (a bigint) is split into its page (exact) and the offset in it. One map
 *   is at most 2^53 bytes, so an offset inside a map is always an exact number.
 * - Unmapping follows Linux VFIO type1: a range removes every map inside it, covering none is
 *   not an error, and a range that would cut a map in two is refused (EINVAL).
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
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const MAX_SAFE_BIG = BigInt(MAX_SAFE);
const PAGE = 4096;
/** maps that end above this must be page aligned (so a page never straddles two maps up there) */
const HIGH = 2 ** 53 - PAGE;
const TOP = 2 ** 64;

/** An IOVA or length: a number (a safe integer) or a bigint (any u64). */
export type Iova = number | bigint;
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
  /** first byte (exact: a safe integer, or a multiple of 4 KiB up to 2^64) */
  readonly iova: number;
  readonly size: number;
  /** iova + size (exact, at most 2^64) */
  readonly end: number;
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
  read(iova: bigint, length: number): Promise<Uint8Array>;
  write(iova: bigint, data: Uint8Array): Promise<void>;
  /** most bytes in one DMA message */
  readonly maxTransfer: number;
}

interface DirtyLog {
  pageSize: number;
  ranges: { iova: number; length: number; bitmap: Uint8Array }[];
}

/** A piece of an access: `len` bytes at offset `off` of map `r`. */
interface Segment {
  r: DmaRegion;
  off: number;
  len: number;
}

const hex = (v: number | bigint): string => `0x${v.toString(16)}`;

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

/** The bigint of an exact IOVA number (for messages and error text). */
function big(v: number): bigint {
  return BigInt(v);
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
   * Checks a range [iova, iova+size) of map bounds and returns it as exact numbers: size > 0,
   * end at most 2^64, and 4 KiB aligned when it ends above 2^53 - 4 KiB; a map (not an unmap
   * range) is at most 2^53 - 1 bytes. EINVAL otherwise.
   */
  static range(iova: Iova, size: Iova, what = 'DMA range', isMap = false): { iova: number; size: number; end: number } {
    const a = exactIova(iova);
    const n = exactIova(size);
    const end = a + n;
    // below HIGH everything is a safe integer; above, page multiples keep every sum exact
    const ok = n > 0 && (n <= MAX_SAFE || !isMap) && end <= TOP && (end <= HIGH || (a % PAGE === 0 && n % PAGE === 0));
    if (!ok) throw new DmaError(`bad ${what} iova=${hex(iova)} size=${hex(size)}`, Errno.EINVAL);
    return { iova: a, size: n, end };
  }

  /**
   * Adds a map. Takes ownership of fd (closed on failure or when no longer needed).
   * Throws DmaError with EEXIST on overlap, EINVAL on bad ranges, ENOSPC past maxMaps.
   */
  map(iova: Iova, size: Iova, prot: number, fd: number | undefined, fileOffset: Iova): DmaRegion {
    let file: MappedFile | undefined;
    let sealed = true;
    try {
      const rg = DmaController.range(iova, size, 'DMA map', true);
      if ((prot & ~(PROT_READ | PROT_WRITE)) !== 0 || prot === 0) throw new DmaError(`bad DMA protection ${prot}`, Errno.EINVAL);
      if (this.regions.length >= this.maxMaps) throw new DmaError(`more than ${this.maxMaps} DMA maps`, Errno.ENOSPC);
      const at = this.insertionPoint(rg.iova);
      const prev = this.regions[at - 1];
      const next = this.regions[at];
      if ((prev && prev.end > rg.iova) || (next && next.iova < rg.end)) {
        throw new DmaError(`DMA map [${hex(rg.iova)}, +${hex(rg.size)}) overlaps an existing map`, Errno.EEXIST);
      }
      let off = 0;
      if (fd !== undefined) {
        off = typeof fileOffset === 'bigint' ? (fileOffset <= MAX_SAFE_BIG ? Number(fileOffset) : -1) : fileOffset;
        if (!Number.isSafeInteger(off) || off < 0 || off % native.PAGE_SIZE !== 0) {
          throw new DmaError(`bad DMA file offset ${fileOffset}`, Errno.EINVAL);
        }
        const st = native.fstat(fd);
        if (off + rg.size > st.size) {
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
          file.ensure(off, rg.size, st.size);
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
      const region: DmaRegion = { iova: rg.iova, size: rg.size, end: rg.end, prot, file, fileOffset: off, sealed, pins: 0, unmapWaiters: [] };
      if (file) file.refs++;
      this.regions.splice(at, 0, region);
      this.onChange?.('map', rg.iova, rg.size);
      return region;
    } catch (e) {
      if (fd !== undefined) native.close(fd);
      throw e;
    }
  }

  /**
   * Removes every map inside [iova, iova+size), as Linux VFIO type1 does: a range covering
   * none is not an error (nothing is removed), one that would cut a map in two is refused
   * (EINVAL, nothing removed). Waits for in-flight DMA on the removed maps; returns them.
   */
  async unmap(iova: Iova, size: Iova): Promise<DmaRegion[]> {
    const rg = DmaController.range(iova, size, 'DMA unmap range');
    const first = this.insertionPoint(rg.iova);
    const before = this.regions[first - 1];
    if (before && before.end > rg.iova) {
      throw new DmaError(`DMA unmap [${hex(rg.iova)}, +${hex(rg.size)}) cuts the map at ${hex(before.iova)} in two`, Errno.EINVAL);
    }
    let last = first;
    while (last < this.regions.length && this.regions[last]!.iova < rg.end) last++;
    const tail = this.regions[last - 1];
    if (last > first && tail!.end > rg.end) {
      throw new DmaError(`DMA unmap [${hex(rg.iova)}, +${hex(rg.size)}) cuts the map at ${hex(tail!.iova)} in two`, Errno.EINVAL);
    }
    const gone = this.regions.splice(first, last - first); // no new access can start on them
    await this.retire(gone);
    return gone;
  }

  /** Removes the map that is exactly [iova, iova+size) (ENOENT when there is none). */
  async unmapExact(iova: Iova, size: Iova): Promise<DmaRegion> {
    const rg = DmaController.range(iova, size, 'DMA unmap range');
    const r = this.regionAt(rg.iova);
    if (!r || r.iova !== rg.iova || r.size !== rg.size) throw new DmaError(`no DMA map at [${hex(rg.iova)}, +${hex(rg.size)})`, Errno.ENOENT);
    await this.unmap(rg.iova, rg.size);
    return r;
  }

  /** Removes every map (client asked for unmap-all, or disconnected). */
  async unmapAll(): Promise<void> {
    const all = this.regions;
    this.regions = [];
    await this.retire(all);
    this.releaseIdle();
  }

  /** Waits until nothing uses the (already removed) maps, then drops their files. */
  private async retire(gone: DmaRegion[]): Promise<void> {
    const busy = gone.filter((r) => r.pins > 0);
    if (busy.length) await Promise.all(busy.map((r) => new Promise<void>((res) => r.unmapWaiters.push(res))));
    for (const r of gone) {
      this.dropFile(r);
      this.onChange?.('unmap', r.iova, r.size);
    }
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

  /** index of the first region starting at or after iova */
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

  /** index of the region containing iova (an exact number), or -1 */
  private find(iova: number): number {
    let lo = 0;
    let hi = this.regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = this.regions[mid]!;
      if (iova < r.iova) hi = mid - 1;
      else if (iova >= r.end) lo = mid + 1;
      else return mid;
    }
    return -1;
  }

  /**
   * Where an access address is: the index of its map and the offset in it, or index -1.
   * Throws EFAULT for what is not an address (negative, fractional, unsafe number, > u64).
   */
  private locate(iova: Iova): { i: number; off: number } {
    if (typeof iova === 'number' || iova <= MAX_SAFE_BIG) {
      const a = Number(iova);
      if (!Number.isSafeInteger(a) || a < 0) throw new DmaError(`bad DMA address ${hex(iova)}`, Errno.EFAULT);
      const i = this.find(a);
      return { i, off: i >= 0 ? a - this.regions[i]!.iova : 0 };
    }
    if (iova >= 1n << 64n) throw new DmaError(`bad DMA address ${hex(iova)}`, Errno.EFAULT);
    // above 2^53: maps there are page aligned, so the page decides and the offset in it is added
    const page = Number(iova & ~0xfffn);
    const i = this.find(page);
    return { i, off: i >= 0 ? page - this.regions[i]!.iova + Number(iova & 0xfffn) : 0 };
  }

  /** The region containing iova (undefined if none). */
  regionAt(iova: Iova): DmaRegion | undefined {
    const { i } = this.locate(iova);
    return i >= 0 ? this.regions[i] : undefined;
  }

  /**
   * Splits [iova, iova+length) over the maps; throws DmaError(EFAULT) if any byte is not
   * mapped with the needed permission.
   */
  private segments(iova: Iova, length: number, write: boolean): Segment[] {
    if (!Number.isSafeInteger(length) || length < 0) throw new DmaError(`bad DMA access length ${length}`, Errno.EFAULT);
    const out: Segment[] = [];
    if (length === 0) return out;
    let { i, off } = this.locate(iova);
    let left = length;
    for (;;) {
      const r = i >= 0 ? this.regions[i] : undefined;
      if (!r || off >= r.size) {
        throw new DmaError(`DMA access at ${hex(iova)}+${hex(length - left)} is outside the client's maps`, Errno.EFAULT);
      }
      if (!(r.prot & (write ? PROT_WRITE : PROT_READ))) {
        throw new DmaError(`DMA ${write ? 'write' : 'read'} at ${hex(iova)}+${hex(length - left)} not permitted by the map`, Errno.EFAULT);
      }
      const len = Math.min(left, r.size - off);
      out.push({ r, off, len });
      left -= len;
      if (left === 0) return out;
      const next = this.regions[i + 1];
      if (!next || next.iova !== r.end) {
        throw new DmaError(`DMA access at ${hex(iova)}+${hex(length - left)} is outside the client's maps`, Errno.EFAULT);
      }
      i++;
      off = 0;
    }
  }

  /**
   * Zero-copy scatter-gather views over the client's memory for [iova, iova+length).
   * Only for memory the client shared with an fd (EFAULT otherwise: use read/write).
   * Views are valid until the next turn of the event loop at most; for longer use, pin().
   * With write=true the pages are logged dirty.
   */
  views(iova: Iova, length: number, write = false): Uint8Array[] {
    // fast path: a number address, the range in one shared map and one window
    if (typeof iova === 'number' && length > 0) {
      const i = this.find(iova);
      if (i >= 0) {
        const r = this.regions[i]!;
        const f = r.file;
        const off = iova - r.iova;
        if (f && off + length <= r.size && r.prot & (write ? PROT_WRITE : PROT_READ) && Number.isSafeInteger(iova) && Number.isSafeInteger(length)) {
          const fo = r.fileOffset + off;
          const w = f.windows.get(Math.floor(fo / WINDOW))!;
          const start = fo - w.fileOffset;
          if (start + length <= w.bytes.length) {
            if (write && this.dirty) this.dirtySegment(r, off, length);
            return [w.bytes.subarray(start, start + length)];
          }
        }
      }
    }
    const segs = this.segments(iova, length, write);
    const out: Uint8Array[] = [];
    for (const s of segs) {
      const f = s.r.file;
      if (!f) throw new DmaError(`DMA map at ${hex(s.r.iova)} is not shared memory`, Errno.EFAULT);
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
    if (write && this.dirty) for (const s of segs) this.dirtySegment(s.r, s.off, s.len);
    return out;
  }

  /** True when every byte of the range is shared memory the server can view directly. */
  isShared(iova: Iova, length: number): boolean {
    try {
      return this.segments(iova, length, false).every((s) => s.r.file !== undefined);
    } catch {
      return false;
    }
  }

  /** Synchronous copy out of shared memory (EFAULT when not mapped or not shared). */
  readSync(iova: Iova, length: number, into?: Uint8Array): Uint8Array {
    const out = into ?? new Uint8Array(length);
    let pos = 0;
    for (const v of this.views(iova, length, false)) {
      out.set(v, pos);
      pos += v.length;
    }
    return out;
  }

  /** Synchronous copy into shared memory (EFAULT when not mapped or not shared). */
  writeSync(iova: Iova, data: Uint8Array): void {
    let pos = 0;
    for (const v of this.views(iova, data.length, true)) {
      v.set(data.subarray(pos, pos + v.length));
      pos += v.length;
    }
  }

  /** Pins the maps under a range so an unmap waits until release() is called. */
  pin(iova: Iova, length: number, write = false): { release(): void } {
    return this.pinRegions([...new Set(this.segments(iova, length, write).map((s) => s.r))]);
  }

  private pinRegions(regions: DmaRegion[]): { release(): void } {
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
  async read(iova: Iova, length: number): Promise<Uint8Array> {
    const segs = this.segments(iova, length, false);
    if (segs.every((s) => s.r.file)) return this.readSync(iova, length);
    const out = new Uint8Array(length);
    const pin = this.pinRegions([...new Set(segs.map((s) => s.r))]);
    try {
      let pos = 0;
      for (const s of segs) {
        if (s.r.file) {
          this.copySegment(s, out.subarray(pos, pos + s.len), false);
        } else {
          const m = this.requireMessenger();
          const base = big(s.r.iova) + big(s.off);
          for (let done = 0; done < s.len; ) {
            const n = Math.min(m.maxTransfer, s.len - done);
            const chunk = await m.read(base + big(done), n);
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
  async write(iova: Iova, data: Uint8Array): Promise<void> {
    const segs = this.segments(iova, data.length, true);
    if (segs.every((s) => s.r.file)) return this.writeSync(iova, data);
    const pin = this.pinRegions([...new Set(segs.map((s) => s.r))]);
    const ticket = this.writeOrder.begin();
    try {
      let pos = 0;
      for (const s of segs) {
        const part = data.subarray(pos, pos + s.len);
        if (s.r.file) {
          this.copySegment(s, part, true);
        } else {
          const m = this.requireMessenger();
          const base = big(s.r.iova) + big(s.off);
          for (let done = 0; done < s.len; ) {
            const n = Math.min(m.maxTransfer, s.len - done);
            await m.write(base + big(done), part.subarray(done, done + n));
            done += n;
          }
        }
        if (this.dirty) this.dirtySegment(s.r, s.off, s.len);
        pos += s.len;
      }
    } finally {
      pin.release();
      this.writeOrder.end(ticket);
    }
  }

  /** Copies between buf and a shared segment (write: buf into the client's memory). */
  private copySegment(s: Segment, buf: Uint8Array, write: boolean): void {
    const f = s.r.file!;
    let fo = s.r.fileOffset + s.off;
    let pos = 0;
    while (pos < s.len) {
      const w = f.windows.get(Math.floor(fo / WINDOW))!;
      const start = fo - w.fileOffset;
      const n = Math.min(s.len - pos, w.bytes.length - start);
      if (write) w.bytes.set(buf.subarray(pos, pos + n), start);
      else buf.set(w.bytes.subarray(start, start + n), pos);
      fo += n;
      pos += n;
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

  /**
   * DMA_LOGGING_START: track writes in the given ranges at pageSize granularity. Ranges are
   * full 64-bit (numbers or bigints), page aligned.
   */
  startLogging(pageSize: number, ranges: { iova: Iova; length: Iova }[]): void {
    if (this.dirty) throw new DmaError('DMA logging already started', Errno.EBUSY);
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
  markDirty(iova: Iova, length: number): void {
    if (!this.dirty || !(length > 0)) return;
    let segs: Segment[];
    try {
      segs = this.segments(iova, length, true);
    } catch (e) {
      if (e instanceof DmaError) return; // not writable memory: nothing there can have been written
      throw e;
    }
    for (const s of segs) this.dirtySegment(s.r, s.off, s.len);
  }

  /** Marks bytes [off, off+len) of map r dirty. Page arithmetic in 4 KiB units stays exact. */
  private dirtySegment(r: DmaRegion, off: number, len: number): void {
    const d = this.dirty;
    if (!d || len <= 0) return;
    const unit = d.pageSize / PAGE;
    for (const l of d.ranges) {
      if (l.iova >= r.end || l.iova + l.length <= r.iova) continue;
      // 4 KiB pages of the access, relative to the logged range's start
      const base = (r.iova - l.iova) / PAGE; // exact: both are page multiples above 2^53
      const first = Math.max(0, Math.floor((base + Math.floor(off / PAGE)) / unit));
      const last = Math.min(l.length / d.pageSize - 1, Math.floor((base + Math.floor((off + len - 1) / PAGE)) / unit));
      for (let p = first; p <= last; p++) l.bitmap[p >> 3]! |= 1 << (p & 7);
    }
  }

  /**
   * DMA_LOGGING_REPORT: the dirty bitmap of [iova, iova+length) at pageSize (bit i = page i),
   * as u64 little-endian words, clearing what it reports. A report page is dirty when any
   * logged page it overlaps is dirty (a finer report page replicates its logged page's bit).
   */
  report(iova: Iova, length: Iova, pageSize: number): Uint8Array {
    const d = this.dirty;
    if (!d) throw new DmaError('DMA logging is not started', Errno.EINVAL);
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
    for (const r of d.ranges) covered += Math.max(0, Math.min(end, r.iova + r.length) - Math.max(a, r.iova));
    if (covered !== n) throw new DmaError('report range is not within the logged ranges', Errno.EINVAL);
    for (const r of d.ranges) {
      const s = Math.max(a, r.iova);
      const e = Math.min(end, r.iova + r.length);
      if (s >= e) continue;
      for (let lp = Math.floor((s - r.iova) / d.pageSize); lp * d.pageSize + r.iova < e; lp++) {
        if (!(r.bitmap[lp >> 3]! & (1 << (lp & 7)))) continue;
        const ls = Math.max(s, r.iova + lp * d.pageSize);
        const le = Math.min(e, r.iova + (lp + 1) * d.pageSize);
        for (let rp = Math.floor((ls - a) / pageSize); rp * pageSize + a < le; rp++) out[rp >> 3]! |= 1 << (rp & 7);
        // the logged page is reported only if it lies wholly within the report
        if (r.iova + lp * d.pageSize >= a && r.iova + (lp + 1) * d.pageSize <= end) r.bitmap[lp >> 3]! &= ~(1 << (lp & 7));
      }
    }
    return out;
  }
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
