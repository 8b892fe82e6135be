/**
 * The mmaps of client files behind DMA maps. A map costs no mmap: a window is made on the
 * first access to a WINDOW-aligned slot of its file (see Windows), and files are shared by
 * every map made with them (see MappedFile).
 */
import { native, PROT_READ, PROT_WRITE } from '../native/index.js';
import { Errno } from '../errors.js';
import { DmaError } from './dma-error.js';

export const WINDOW = 1 << 30; // 1 GiB windows: an ArrayBuffer can hold at most 4 GiB - 1
const PAGE = 4096;
/** smallest window: a map of one page of a huge sparse file costs a 2 MiB mapping, not 1 GiB */
const MIN_WINDOW = 2 << 20;

/** One mmap of a piece of a client file, inside one WINDOW-aligned slot of the file. */
export interface Window {
  buf: ArrayBuffer;
  bytes: Uint8Array;
  fileOffset: number; // where bytes[0] is in the file
  end: number; // fileOffset + bytes.length
  file: MappedFile;
  slot: number;
}

/** One client file (shared by every map made with it). */
export class MappedFile {
  readonly key: string;
  readonly fd: number;
  readonly writable: boolean;
  refs = 0;
  /** pins on maps of this file: while > 0, none of its windows is unmapped */
  pins = 0;
  /** largest size seen (a sealed file can only grow) */
  size = 0;
  /** slot -> the window accesses use */
  readonly windows = new Map<number, Window>();
  /** windows replaced by larger ones, unmapped once nothing can hold views into them */
  retired: Window[] = [];
  /** slot -> the part of it [lo, hi) that maps use (it only grows while the file is mapped) */
  readonly need = new Map<number, { lo: number; hi: number }>();
  /** sealed against shrinking; if not, it is only ever copied with the SIGBUS-safe native copy */
  readonly sealed: boolean;
  constructor(key: string, fd: number, writable: boolean, sealed: boolean) {
    this.key = key;
    this.fd = fd;
    this.writable = writable;
    this.sealed = sealed;
  }

  /** Records that a map uses [off, off+len) of the file (no mmap: that happens on access). */
  use(off: number, len: number): void {
    for (let slot = Math.floor(off / WINDOW); slot * WINDOW < off + len; slot++) {
      const lo = Math.max(off, slot * WINDOW);
      const hi = Math.min(off + len, (slot + 1) * WINDOW);
      const n = this.need.get(slot);
      if (!n) this.need.set(slot, { lo, hi });
      else {
        n.lo = Math.min(n.lo, lo);
        n.hi = Math.max(n.hi, hi);
      }
    }
  }
}

/**
 * The mmaps of client files. Maps cost no mmap: a window is created on the first access to a
 * slot, just large enough for what maps use there (the smallest power-of-two block of at least
 * MIN_WINDOW that holds it), and replaced by a larger one when maps grow. Windows beyond the
 * soft limits are unmapped (oldest first) at the next turn of the event loop, when no view
 * handed out can still be in use, skipping files with pinned maps; past the hard limits an
 * access fails (ENOMEM) rather than exhausting address space or the kernel's map count.
 */
export class Windows {
  private readonly all = new Set<Window>(); // creation order
  private readonly withRetired = new Set<MappedFile>();
  private bytes = 0;
  private trimScheduled = false;
  /** windows created (for tests and stats) */
  created = 0;

  constructor(
    readonly softCount: number,
    readonly softBytes: number,
    readonly hardCount: number,
    readonly hardBytes: number,
  ) {}

  get count(): number {
    return this.all.size;
  }

  get mappedBytes(): number {
    return this.bytes;
  }

  /** The window of f holding file offset fo (creating it if needed); fo must be in a map's range. */
  get(f: MappedFile, fo: number): Window {
    const slot = Math.floor(fo / WINDOW);
    const w = f.windows.get(slot);
    if (w !== undefined && fo >= w.fileOffset && fo < w.end) return w;
    const n = f.need.get(slot);
    if (!n || fo < n.lo || fo >= n.hi) throw new DmaError(`file offset 0x${fo.toString(16)} is in no map`, Errno.EFAULT);
    let block = MIN_WINDOW;
    while (Math.floor(n.lo / block) !== Math.floor((n.hi - 1) / block)) block *= 2;
    const start = Math.floor(n.lo / block) * block;
    const length = Math.min(block, roundUp(f.size - start, PAGE));
    if (this.all.size >= this.hardCount || this.bytes + length > this.hardBytes) {
      this.scheduleTrim();
      throw new DmaError(`too many client memory windows mapped (${this.all.size}, ${this.bytes} bytes)`, Errno.ENOMEM);
    }
    let buf: ArrayBuffer;
    try {
      // a read-only map is mapped private and writable: a device storing through a view it
      // asked for reading (a bug) changes only its own copy of the page, never the client's
      // memory, and never faults (a PROT_READ mapping would kill the process with SIGSEGV)
      buf = native.mmap(f.fd, start, length, PROT_READ | PROT_WRITE, !f.writable);
    } catch (e) {
      const err = e as { errno?: number; message?: string };
      throw new DmaError(`cannot mmap client memory: ${err.message}`, err.errno ?? Errno.ENOMEM);
    }
    const nw: Window = { buf, bytes: new Uint8Array(buf), fileOffset: start, end: start + length, file: f, slot };
    if (w !== undefined) {
      f.retired.push(w); // views into it may be in use until the turn ends
      this.withRetired.add(f);
    }
    f.windows.set(slot, nw);
    this.all.add(nw);
    this.bytes += length;
    this.created++;
    if (w !== undefined || this.all.size > this.softCount || this.bytes > this.softBytes) this.scheduleTrim();
    return nw;
  }

  private unmap(w: Window): void {
    if (!this.all.delete(w)) return;
    this.bytes -= w.bytes.length;
    native.munmap(w.buf);
  }

  /** Unmaps every window of a file that no map uses any more. */
  releaseFile(f: MappedFile): void {
    for (const w of f.windows.values()) this.unmap(w);
    for (const w of f.retired) this.unmap(w);
    f.windows.clear();
    f.retired = [];
    this.withRetired.delete(f);
    try {
      native.close(f.fd);
    } catch {
      /* ignore */
    }
  }

  /** a file's last pin went: what waited for it can be trimmed now */
  unpinned(f: MappedFile): void {
    if (f.retired.length || this.all.size > this.softCount || this.bytes > this.softBytes) this.scheduleTrim();
  }

  scheduleTrim(): void {
    if (this.trimScheduled) return;
    this.trimScheduled = true;
    setImmediate(() => {
      this.trimScheduled = false;
      this.trim();
    });
  }

  /** At a turn boundary: unmap retired windows, then the oldest beyond the soft limits. */
  trim(): void {
    for (const f of this.withRetired) {
      if (f.pins > 0) continue; // trimmed again when its pins go
      for (const r of f.retired) this.unmap(r);
      f.retired = [];
      this.withRetired.delete(f);
    }
    if (this.all.size <= this.softCount && this.bytes <= this.softBytes) return;
    const targetCount = this.softCount >> 1;
    const targetBytes = this.softBytes / 2;
    for (const w of this.all) {
      if (this.all.size <= targetCount && this.bytes <= targetBytes) break;
      if (w.file.pins > 0) continue; // (an unpinned file has no retired windows left)
      w.file.windows.delete(w.slot);
      this.unmap(w);
    }
  }
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}
