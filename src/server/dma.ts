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
 * - Each distinct file (device + inode, and read-only or not) is opened once and shared by
 *   every DMA map of that file. A map costs no mmap: the file is mapped on the first access, in
 *   windows inside 1 GiB slots of the file, each just large enough for what the maps use there
 *   (2 MiB at least), so a storm of maps of a huge sparse file costs neither address space nor
 *   time. Windows beyond a soft limit are unmapped at the next turn of the event loop; past a
 *   hard limit an access fails with ENOMEM. The mmaps are not counted as V8 external memory
 *   (see the native layer), so mapping them triggers no GC.
 * - When the last map using a file goes, the file stays open and mapped (up to MAX_IDLE_FILES
 *   such files) until unmap-all or disconnect: a guest IOMMU's map/unmap churn costs an fstat,
 *   fcntl and close per map, never an mmap.
 * - The table is sorted in chunks with a search index (two binary searches per lookup; adding or
 *   removing a map moves one chunk), linked in IOVA order: 65,535 maps come and go in any order
 *   in well under a second. The total size of the maps is limited (maxBytes, ENOSPC).
 * - Every access is checked against the table; nothing outside what the client mapped, with
 *   the permissions it gave, is ever touched.
 *
 * Files: this one is the controller (maps, accesses, pins); dma-table.ts the map table,
 * dma-files.ts the mmaps of client files, dma-dirty.ts dirty-page logging, dma-iova.ts exact
 * IOVA numbers, dma-messenger.ts DMA by message. The controller stays one file although it
 * passes 600 lines: every access form (views, synchronous and asynchronous copies,
 * scatter-gather, pins, the message fallback) resolves an IOVA through the same maps, file
 * windows and permissions, and map/unmap must see the pins and windows those accesses hold.
 */
import { WriteOrder } from './write-order.js';
import { native, PROT_READ, PROT_WRITE } from '../native/index.js';
import { Errno } from '../errors.js';
import { DmaError } from './dma-error.js';
import { MappedFile, Windows, WINDOW } from './dma-files.js';
import { RegionTable, type DmaRegion } from './dma-table.js';

import { DirtyLog } from './dma-dirty.js';
import { exactIova, hex, MAX_SAFE, MAX_SAFE_BIG, PAGE, HIGH, TOP, type Iova } from './dma-iova.js';

export { DmaError, WINDOW, exactIova, type DmaRegion, type Iova };

/** files kept mapped after their last DMA map goes, so map/unmap churn costs no mmap */
const MAX_IDLE_FILES = 8;

/** Sends DMA_READ/DMA_WRITE messages for regions without shared memory. */
export interface DmaMessenger {
  read(iova: bigint, length: number): Promise<Uint8Array>;
  write(iova: bigint, data: Uint8Array): Promise<void>;
  /** most bytes in one DMA message */
  readonly maxTransfer: number;
}

/** A piece of an access: `len` bytes at offset `off` of map `r`. */
interface Segment {
  r: DmaRegion;
  off: number;
  len: number;
}


/** The bigint of an exact IOVA number (for messages and error text). */
function big(v: number): bigint {
  return BigInt(v);
}

/** default limit on the address space all maps may cover: 16 TiB */
export const DEFAULT_MAX_DMA_BYTES = 2 ** 44;
const DEFAULT_MAX_BYTES = DEFAULT_MAX_DMA_BYTES;

export interface DmaOptions {
  /** most maps (default 65535) */
  maxMaps?: number;
  /**
   * refuse (EPERM) files that cannot be sealed against shrinking (default true); when false they
   * are accepted, never viewed directly, and copied with a SIGBUS-safe native copy
   */
  requireSealed?: boolean;
  /** most bytes all maps together may cover (default 16 TiB); ENOSPC past it */
  maxBytes?: number;
  /** limits on the mmaps of client memory held at once (soft: trimmed at the next turn; hard: ENOMEM) */
  windows?: { softCount?: number; softBytes?: number; hardCount?: number; hardBytes?: number };
}

export class DmaController {
  private readonly regions = new RegionTable();
  private readonly files = new Map<string, MappedFile>();
  /** mapped files no DMA map uses (least recently used first), kept for reuse */
  private readonly idle = new Set<MappedFile>();
  private messenger: DmaMessenger | undefined;
  /** message-based writes in flight, for ordering interrupts after them @internal */
  readonly writeOrder = new WriteOrder();
  readonly maxMaps: number;
  private dirty: DirtyLog | undefined;
  /** called after every successful map/unmap with the change */
  onChange: ((what: 'map' | 'unmap', iova: number, size: number) => void) | undefined;
  /** the device model's own watchers of maps and unmaps (onChange is left to the user) */
  private readonly watchers = new Set<(what: 'map' | 'unmap') => void>();

  /** refuse (EPERM) files that cannot be sealed against shrinking */
  requireSealed: boolean;

  /** most bytes all maps together may cover (ENOSPC past it) */
  maxBytes: number;
  /** bytes the maps cover now */
  private mapped = 0;
  private readonly win: Windows;
  /** fstatInto's output for map() */
  private readonly stat = new Float64Array(5);

  constructor(opts: DmaOptions = {}) {
    this.maxMaps = opts.maxMaps ?? 65535;
    this.requireSealed = opts.requireSealed ?? true;
    this.maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
    const w = opts.windows ?? {};
    this.win = new Windows(w.softCount ?? 1024, w.softBytes ?? 2 ** 40, w.hardCount ?? 8192, w.hardBytes ?? 2 ** 44);
  }

  /** bytes all maps cover */
  get mappedBytes(): number {
    return this.mapped;
  }

  /** mmaps of client memory currently held: count, bytes, and how many were ever created */
  get windowStats(): { count: number; bytes: number; created: number } {
    return { count: this.win.count, bytes: this.win.mappedBytes, created: this.win.created };
  }

  get count(): number {
    return this.regions.count;
  }

  /** number of distinct client files that DMA maps use (for tests and stats) */
  get fileCount(): number {
    return this.files.size - this.idle.size;
  }

  /** the server's DMA_READ/DMA_WRITE sender for the client being served (none between clients) @internal */
  setMessenger(m: DmaMessenger | undefined): void {
    this.messenger = m;
    if (!m) this.writeOrder.clear();
  }

  /** every map, in IOVA order (a copy) */
  list(): readonly DmaRegion[] {
    return this.regions.all();
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
      if (this.regions.count >= this.maxMaps) throw new DmaError(`more than ${this.maxMaps} DMA maps`, Errno.ENOSPC);
      if (this.mapped + rg.size > this.maxBytes) {
        throw new DmaError(`DMA maps would cover more than ${this.maxBytes} bytes (limit maxBytes)`, Errno.ENOSPC);
      }
      const prev = this.regions.floor(rg.iova);
      const next = prev ? prev.next : this.regions.first;
      if ((prev && prev.end > rg.iova) || (next && next.iova < rg.end)) {
        throw new DmaError(`DMA map [${hex(rg.iova)}, +${hex(rg.size)}) overlaps an existing map`, Errno.EEXIST);
      }
      let off = 0;
      if (fd !== undefined) {
        off = typeof fileOffset === 'bigint' ? (fileOffset <= MAX_SAFE_BIG ? Number(fileOffset) : -1) : fileOffset;
        if (!Number.isSafeInteger(off) || off < 0 || off % native.PAGE_SIZE !== 0) {
          throw new DmaError(`bad DMA file offset ${fileOffset}`, Errno.EINVAL);
        }
        const st = this.stat;
        native.fstatInto(fd, st);
        const fileSize = st[0]!;
        if (off + rg.size > fileSize) {
          // mapping past the end of the file would fault (SIGBUS) on access
          throw new DmaError(`DMA map extends past the end of its file (${fileSize} bytes)`, Errno.EINVAL);
        }
        // the file's identity: device and inode (in 32-bit halves)
        const key = `${st[1]}:${st[2]}:${st[3]}:${st[4]}:${prot & PROT_WRITE ? 'w' : 'r'}`;
        file = this.files.get(key);
        // a file that can shrink under our mapping would fault (SIGBUS) on access: seal it. Seals
        // belong to the inode and are never removed: a file we sealed before needs no fcntl.
        sealed = file?.sealed === true || native.sealShrink(fd);
        if (!sealed && this.requireSealed) {
          throw new DmaError('DMA map of a file that cannot be sealed against shrinking (requireSealed)', Errno.EPERM);
        }
        if (file) {
          native.close(fd);
          fd = undefined;
        } else {
          // no mmap until the device touches it, but find out now whether it can be mapped
          try {
            native.munmap(native.mmap(fd, off, PAGE, PROT_READ | PROT_WRITE, (prot & PROT_WRITE) === 0));
          } catch (e) {
            const err = e as { errno?: number; message?: string };
            throw new DmaError(`cannot mmap DMA region: ${err.message}`, err.errno ?? Errno.EINVAL);
          }
          file = new MappedFile(key, fd, (prot & PROT_WRITE) !== 0, sealed);
          fd = undefined;
          this.files.set(key, file);
        }
        this.idle.delete(file);
        file.size = Math.max(file.size, fileSize);
        file.use(off, rg.size);
      }
      const region: DmaRegion = { iova: rg.iova, size: rg.size, end: rg.end, prot, file, fileOffset: off, sealed, pins: 0, unmapWaiters: [], prev: undefined, next: undefined };
      if (file) file.refs++;
      this.mapped += rg.size;
      this.regions.insert(region);
      this.onChange?.('map', rg.iova, rg.size);
      for (const w of this.watchers) w('map');
      return region;
    } catch (e) {
      if (fd !== undefined) native.close(fd);
      throw e;
    }
  }

  /**
   * Calls fn after every successful map and unmap (for device models; `onChange` is the
   * user's). fn must not map or unmap, and should only note the event (e.g. schedule work).
   * Returns the function that stops it.
   */
  watch(fn: (what: 'map' | 'unmap') => void): () => void {
    this.watchers.add(fn);
    return () => this.watchers.delete(fn);
  }

  /**
   * Removes every map inside [iova, iova+size), as Linux VFIO type1 does: a range covering
   * none is not an error (nothing is removed), one that would cut a map in two is refused
   * (EINVAL, nothing removed). Waits for in-flight DMA on the removed maps; returns them.
   */
  async unmap(iova: Iova, size: Iova): Promise<DmaRegion[]> {
    const gone = this.unmapNow(iova, size);
    if (gone.pending) await gone.pending;
    return gone.regions;
  }

  /**
   * unmap() without a promise when it can finish at once: the maps inside [iova, iova+size)
   * are removed now (no new access can start on them) and, when none of them is pinned,
   * retired now too (pending undefined); else pending settles when the pins are released and
   * they are retired. Throws as unmap() does, removing nothing. @internal
   */
  unmapNow(iova: Iova, size: Iova): { regions: DmaRegion[]; pending: Promise<void> | undefined } {
    const rg = DmaController.range(iova, size, 'DMA unmap range');
    const before = this.regions.floor(rg.iova);
    if (before && before.iova < rg.iova && before.end > rg.iova) {
      throw new DmaError(`DMA unmap [${hex(rg.iova)}, +${hex(rg.size)}) cuts the map at ${hex(before.iova)} in two`, Errno.EINVAL);
    }
    const gone: DmaRegion[] = [];
    for (let r = this.regions.ceil(rg.iova); r && r.iova < rg.end; r = r.next) gone.push(r);
    const tail = gone[gone.length - 1];
    if (tail && tail.end > rg.end) {
      throw new DmaError(`DMA unmap [${hex(rg.iova)}, +${hex(rg.size)}) cuts the map at ${hex(tail.iova)} in two`, Errno.EINVAL);
    }
    // no new access can start on them (clearing all at once copies the table: not for one)
    if (gone.length > 1 && gone.length === this.regions.count) this.regions.clear();
    else for (const r of gone) this.regions.remove(r);
    return { regions: gone, pending: this.retire(gone) };
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
    const all = this.regions.clear();
    await this.retire(all);
    this.releaseIdle();
  }

  /**
   * Drops the files of the (already removed) maps once nothing uses them: now when none is
   * pinned (undefined), else when the pins are released (the promise).
   */
  private retire(gone: DmaRegion[]): Promise<void> | undefined {
    const busy = gone.filter((r) => r.pins > 0);
    if (busy.length === 0) {
      this.retireNow(gone);
      return undefined;
    }
    return Promise.all(busy.map((r) => new Promise<void>((res) => r.unmapWaiters.push(res)))).then(() => this.retireNow(gone));
  }

  private retireNow(gone: DmaRegion[]): void {
    for (const r of gone) {
      this.mapped -= r.size;
      this.dropFile(r);
      this.onChange?.('unmap', r.iova, r.size);
      for (const w of this.watchers) w('unmap');
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
        this.win.releaseFile(oldest);
      }
    }
  }

  /** Unmaps the files no DMA map uses any more (their mappings were kept for reuse). */
  releaseIdle(): void {
    for (const f of this.idle) {
      this.files.delete(f.key);
      this.win.releaseFile(f);
    }
    this.idle.clear();
  }

  /** client files kept mapped with no DMA map using them */
  get idleFileCount(): number {
    return this.idle.size;
  }

  /**
   * Where an access address is: its map and the offset in it (r undefined when unmapped).
   * Throws EFAULT for what is not an address (negative, fractional, unsafe number, > u64).
   */
  private locate(iova: Iova): { r: DmaRegion | undefined; off: number } {
    if (typeof iova === 'number' || iova <= MAX_SAFE_BIG) {
      const a = Number(iova);
      if (!Number.isSafeInteger(a) || a < 0) throw new DmaError(`bad DMA address ${hex(iova)}`, Errno.EFAULT);
      const r = this.regions.find(a);
      return { r, off: r ? a - r.iova : 0 };
    }
    if (iova >= 1n << 64n) throw new DmaError(`bad DMA address ${hex(iova)}`, Errno.EFAULT);
    // above 2^53: maps there are page aligned, so the page decides and the offset in it is added
    const page = Number(iova & ~0xfffn);
    const r = this.regions.find(page);
    return { r, off: r ? page - r.iova + Number(iova & 0xfffn) : 0 };
  }

  /** The region containing iova (undefined if none). */
  regionAt(iova: Iova): DmaRegion | undefined {
    return this.locate(iova).r;
  }

  /**
   * Splits [iova, iova+length) over the maps; throws DmaError(EFAULT) if any byte is not
   * mapped with the needed permission.
   */
  private segments(iova: Iova, length: number, write: boolean): Segment[] {
    if (!Number.isSafeInteger(length) || length < 0) throw new DmaError(`bad DMA access length ${length}`, Errno.EFAULT);
    const out: Segment[] = [];
    if (length === 0) return out;
    let { r, off } = this.locate(iova);
    let left = length;
    for (;;) {
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
      const next: DmaRegion | undefined = r.next;
      r = next && next.iova === r.end ? next : undefined; // contiguous maps only
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
    const v = this.fastView(iova, length, write);
    if (v !== undefined) return [v];
    const segs = this.segments(iova, length, write);
    const out: Uint8Array[] = [];
    for (const s of segs) {
      const f = s.r.file;
      if (!f) throw new DmaError(`DMA map at ${hex(s.r.iova)} is not shared memory`, Errno.EFAULT);
      if (!f.sealed) {
        // the client could truncate it under a view and a touch would kill us (SIGBUS)
        throw new DmaError(`DMA map at ${hex(s.r.iova)} is an unsealed file: no direct views (use read/write or readSync/writeSync)`, Errno.EFAULT);
      }
      let fo = s.r.fileOffset + s.off;
      let left = s.len;
      while (left > 0) {
        const w = this.win.get(f, fo);
        const start = fo - w.fileOffset;
        const n = Math.min(left, w.bytes.length - start);
        out.push(w.bytes.subarray(start, start + n));
        fo += n;
        left -= n;
      }
    }
    if (write && this.dirty) for (const s of segs) this.dirty.mark(s.r, s.off, s.len);
    return out;
  }

  /**
   * A zero-copy view of [iova, iova+length) when it is the common case — a number address, the
   * range in one sealed shared map and one window — else undefined (never throws; use views(),
   * readSync() or read() for the rest). Valid as views() are; with write=true the pages are
   * logged dirty.
   */
  tryView(iova: Iova, length: number, write = false): Uint8Array | undefined {
    return this.fastView(iova, length, write);
  }

  /** The common case, quickly: a number address, the range in one sealed map and one window. */
  private fastView(iova: Iova, length: number, write: boolean): Uint8Array | undefined {
    if (typeof iova !== 'number' || !(length > 0)) return undefined;
    const r = this.regions.find(iova);
    if (r === undefined) return undefined;
    const f = r.file;
    const off = iova - r.iova;
    if (f && f.sealed && off + length <= r.size && r.prot & (write ? PROT_WRITE : PROT_READ) && Number.isSafeInteger(iova) && Number.isSafeInteger(length)) {
      const fo = r.fileOffset + off;
      const w = f.windows.get(Math.floor(fo / WINDOW));
      if (w !== undefined && fo >= w.fileOffset && fo + length <= w.end) {
        if (write && this.dirty) this.dirty.mark(r, off, length);
        return w.bytes.subarray(fo - w.fileOffset, fo - w.fileOffset + length);
      }
    }
    return undefined;
  }

  /**
   * True when every byte of the range is mapped with the permission and none of it is shared by
   * fd: an access can only go by DMA message (and nothing but the client can fail it). Never throws.
   */
  onlyByMessage(iova: Iova, length: number, write = false): boolean {
    try {
      return this.segments(iova, length, write).every((s) => !s.r.file);
    } catch {
      return false;
    }
  }

  /** True when every byte of the range is shared memory the server can view directly. */
  isShared(iova: Iova, length: number): boolean {
    try {
      return this.segments(iova, length, false).every((s) => s.r.file !== undefined && s.r.file.sealed);
    } catch {
      return false;
    }
  }

  /**
   * Synchronous copy out of shared memory (EFAULT when not mapped or not shared, or when the
   * client truncated an unsealed file under it).
   */
  readSync(iova: Iova, length: number, into?: Uint8Array): Uint8Array {
    const out = into ?? new Uint8Array(length);
    const v = this.fastView(iova, length, false);
    if (v !== undefined) {
      out.set(v);
      return out;
    }
    const segs = this.sharedSegments(iova, length, false);
    let pos = 0;
    for (const s of segs) {
      this.copySegment(s, out.subarray(pos, pos + s.len), false);
      pos += s.len;
    }
    return out;
  }

  /** Synchronous copy into shared memory (EFAULT as readSync). */
  writeSync(iova: Iova, data: Uint8Array): void {
    const v = this.fastView(iova, data.length, true);
    if (v !== undefined) {
      v.set(data);
      return;
    }
    const segs = this.sharedSegments(iova, data.length, true);
    let pos = 0;
    for (const s of segs) {
      this.copySegment(s, data.subarray(pos, pos + s.len), true);
      pos += s.len;
    }
    if (this.dirty) for (const s of segs) this.dirty.mark(s.r, s.off, s.len);
  }

  /** segments() of memory shared with an fd (EFAULT before anything is copied otherwise) */
  private sharedSegments(iova: Iova, length: number, write: boolean): Segment[] {
    const segs = this.segments(iova, length, write);
    for (const s of segs) if (!s.r.file) throw new DmaError(`DMA map at ${hex(s.r.iova)} is not shared memory`, Errno.EFAULT);
    return segs;
  }

  /** Pins the maps under a range so an unmap waits until release() is called. */
  pin(iova: Iova, length: number, write = false): { release(): void } {
    return this.pinRegions([...new Set(this.segments(iova, length, write).map((s) => s.r))]);
  }

  private pinRegions(regions: DmaRegion[]): { release(): void } {
    for (const r of regions) {
      r.pins++;
      if (r.file) r.file.pins++;
    }
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        for (const r of regions) {
          if (r.file && --r.file.pins === 0) this.win.unpinned(r.file);
          if (--r.pins === 0) {
            const w = r.unmapWaiters;
            r.unmapWaiters = [];
            for (const f of w) f();
          }
        }
      },
    };
  }

  /**
   * Reads client memory: directly when shared, else with DMA_READ messages. The common case
   * by message — one map, one message (an NVMe command, a PRP list, a 4 KiB page) — takes
   * the reply's bytes as they are: no copy, no gathering, no promise but the message's.
   */
  read(iova: Iova, length: number): Promise<Uint8Array> {
    let segs: Segment[];
    try {
      segs = this.segments(iova, length, false);
    } catch (e) {
      return Promise.reject(e);
    }
    const m = this.messenger;
    if (segs.length === 1 && m !== undefined && !segs[0]!.r.file && length <= m.maxTransfer) return this.readOne(m, segs[0]!);
    return this.readSegments(iova, length, segs);
  }

  /** One DMA_READ for a segment of a map without an fd. */
  private readOne(m: DmaMessenger, s: Segment): Promise<Uint8Array> {
    const pin = this.pinRegions([s.r]);
    let p: Promise<Uint8Array>;
    try {
      p = m.read(big(s.r.iova) + big(s.off), s.len);
    } catch (e) {
      pin.release();
      return Promise.reject(e);
    }
    return p.then(
      (chunk) => {
        pin.release();
        if (chunk.length !== s.len) throw new DmaError(`client returned ${chunk.length} bytes for a ${s.len}-byte DMA read`, Errno.EIO);
        return chunk;
      },
      (e: unknown) => {
        pin.release();
        throw e;
      },
    );
  }

  private async readSegments(iova: Iova, length: number, segs: Segment[]): Promise<Uint8Array> {
    if (segs.every((s) => s.r.file)) return this.readSync(iova, length);
    const out = new Uint8Array(length);
    const pin = this.pinRegions([...new Set(segs.map((s) => s.r))]);
    // every chunk's DMA_READ is sent at once (the messenger bounds what is in flight): one
    // round trip for the whole range, not one per chunk
    const reads: Promise<void>[] = [];
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
            const at = pos + done;
            reads.push(
              m.read(base + big(done), n).then((chunk) => {
                if (chunk.length !== n) throw new DmaError(`client returned ${chunk.length} bytes for a ${n}-byte DMA read`, Errno.EIO);
                out.set(chunk, at);
              }),
            );
            done += n;
          }
        }
        pos += s.len;
      }
    } finally {
      await settled(reads, pin);
    }
    return out;
  }

  /**
   * Writes client memory: directly when shared, else with DMA_WRITE messages. Interrupts
   * raised meanwhile wait for the replies (writeOrder). One message to one map (a
   * completion, a 4 KiB page) goes without gathering: one promise, the message's.
   */
  write(iova: Iova, data: Uint8Array): Promise<void> {
    let segs: Segment[];
    try {
      segs = this.segments(iova, data.length, true);
    } catch (e) {
      return Promise.reject(e);
    }
    const m = this.messenger;
    if (segs.length === 1 && m !== undefined && !segs[0]!.r.file && data.length <= m.maxTransfer) return this.writeOne(m, segs[0]!, data);
    return this.writeSegments(iova, data, segs);
  }

  /** One DMA_WRITE of a segment of a map without an fd. */
  private writeOne(m: DmaMessenger, s: Segment, data: Uint8Array): Promise<void> {
    const pin = this.pinRegions([s.r]);
    const ticket = this.writeOrder.begin();
    let p: Promise<void>;
    try {
      p = m.write(big(s.r.iova) + big(s.off), data);
    } catch (e) {
      p = Promise.reject(e);
    }
    this.dirty?.mark(s.r, s.off, s.len);
    const done = (): void => {
      pin.release();
      this.writeOrder.end(ticket);
    };
    return p.then(done, (e: unknown) => {
      done();
      throw e;
    });
  }

  private async writeSegments(iova: Iova, data: Uint8Array, segs: Segment[]): Promise<void> {
    if (segs.every((s) => s.r.file)) return this.writeSync(iova, data);
    const pin = this.pinRegions([...new Set(segs.map((s) => s.r))]);
    const ticket = this.writeOrder.begin();
    // every chunk's DMA_WRITE is sent at once (the client answers in order): one round trip
    const writes: Promise<void>[] = [];
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
            writes.push(m.write(base + big(done), part.subarray(done, done + n)));
            done += n;
          }
        }
        this.dirty?.mark(s.r, s.off, s.len);
        pos += s.len;
      }
    } finally {
      try {
        await settled(writes, pin);
      } finally {
        this.writeOrder.end(ticket);
      }
    }
  }

  /** Copies between buf and a shared segment (write: buf into the client's memory). */
  private copySegment(s: Segment, buf: Uint8Array, write: boolean): void {
    const f = s.r.file!;
    let fo = s.r.fileOffset + s.off;
    let pos = 0;
    while (pos < s.len) {
      const w = this.win.get(f, fo);
      const start = fo - w.fileOffset;
      const n = Math.min(s.len - pos, w.bytes.length - start);
      if (f.sealed) {
        if (write) w.bytes.set(buf.subarray(pos, pos + n), start);
        else buf.set(w.bytes.subarray(start, start + n), pos);
      } else if (!(write ? native.copyToMapping(w.buf, start, buf.subarray(pos, pos + n)) : native.copyFromMapping(w.buf, start, buf.subarray(pos, pos + n)))) {
        // SIGBUS caught in the native copy: the client truncated the file under its map
        throw new DmaError(`client memory at ${hex(s.r.iova)}+${hex(s.off + pos)} is gone (its file was truncated)`, Errno.EFAULT);
      }
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
    this.dirty = new DirtyLog(pageSize, ranges);
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
    for (const s of segs) this.dirty.mark(s.r, s.off, s.len);
  }

  /**
   * DMA_LOGGING_REPORT: the dirty bitmap of [iova, iova+length) at pageSize (bit i = page i),
   * as u64 little-endian words, clearing what it reports.
   */
  report(iova: Iova, length: Iova, pageSize: number): Uint8Array {
    if (!this.dirty) throw new DmaError('DMA logging is not started', Errno.EINVAL);
    return this.dirty.report(iova, length, pageSize);
  }
}

/**
 * Waits until every transfer has finished (none is left running when the caller fails), then
 * releases the pin and throws the first failure, if any.
 */
async function settled(ps: Promise<void>[], pin: { release(): void }): Promise<void> {
  const rs = ps.length ? await Promise.allSettled(ps) : [];
  pin.release();
  for (const r of rs) if (r.status === 'rejected') throw r.reason;
}
