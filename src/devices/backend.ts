/**
 * Block storage backends shared by the disk devices (NVMe namespaces, virtio-blk): a raw
 * image file (created with a given size when missing, opened otherwise) or memory.
 *
 * All I/O is synchronous and positional (preadv/pwritev on the fd), straight between the
 * file and the guest's memory views: no intermediate copy. Writes reach the file (the page
 * cache, which outlives the server process) before the request completes; flush() makes them
 * durable with fdatasync.
 */
import * as fs from 'node:fs';

export interface Backend {
  readonly size: number;
  readonly description: string;
  readv(views: Uint8Array[], pos: number): void;
  writev(views: Uint8Array[], pos: number): void;
  /** zero [pos, pos+len) */
  zero(pos: number, len: number): void;
  flush(): void;
  close(): void;
}

const ZERO_CHUNK = 1 << 20;
let zeroes: Uint8Array | undefined;
/**
 * After a vectored read or write that moved only `done` bytes: calls `rest` for each view not
 * wholly moved, with the first byte still to move and the view's offset in the transfer.
 */
function finishShort(views: Uint8Array[], done: number, rest: (v: Uint8Array, start: number, off: number) => void): void {
  let off = 0;
  for (const v of views) {
    if (done < off + v.length) rest(v, Math.max(0, done - off), off);
    off += v.length;
  }
}

function zeroBuffer(): Uint8Array {
  return (zeroes ??= new Uint8Array(ZERO_CHUNK));
}

/** Parses sizes like 64M, 1G, 4096, 512K. */
export function parseSize(s: string): number {
  const m = /^(\d+)([kmgt]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size '${s}' (e.g. 64M, 1G)`);
  const mult = { '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const n = Number(m[1]) * mult;
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`bad size '${s}'`);
  return n;
}

export class FileBackend implements Backend {
  readonly path: string;
  readonly fd: number;
  readonly size: number;
  private closed = false;

  readonly readOnly: boolean;

  /**
   * Opens the image, or creates it with `size` bytes when it does not exist. Read-only opens
   * the file O_RDONLY (it must exist, and is never grown).
   */
  constructor(path: string, size?: number, opts: { readOnly?: boolean } = {}) {
    this.path = path;
    this.readOnly = opts.readOnly ?? false;
    let fd: number;
    try {
      fd = fs.openSync(path, this.readOnly ? 'r' : 'r+');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || this.readOnly) throw e;
      if (size === undefined) throw new Error(`image ${path} does not exist (give a size to create it)`);
      fd = fs.openSync(path, 'w+');
      fs.ftruncateSync(fd, size);
    }
    this.fd = fd;
    const st = fs.fstatSync(fd);
    if (size !== undefined && st.size < size && !this.readOnly) {
      // an existing smaller image grows to the requested size (never shrinks)
      fs.ftruncateSync(fd, size);
    }
    this.size = fs.fstatSync(fd).size;
  }

  get description(): string {
    return `file ${this.path}`;
  }

  readv(views: Uint8Array[], pos: number): void {
    const got = fs.readvSync(this.fd, views, pos);
    // short read: only at the end of the file (cannot happen in range) — finish piecewise
    finishShort(views, got, (v, start, off) => {
      const n = fs.readSync(this.fd, v, start, v.length - start, pos + off + start);
      if (n < v.length - start) v.fill(0, start + n);
    });
  }

  writev(views: Uint8Array[], pos: number): void {
    const done = fs.writevSync(this.fd, views, pos);
    // partial write: write the rest piece by piece
    finishShort(views, done, (v, start, off) => {
      let p = start;
      while (p < v.length) p += fs.writeSync(this.fd, v, p, v.length - p, pos + off + p);
    });
  }

  zero(pos: number, len: number): void {
    const z = zeroBuffer();
    for (let done = 0; done < len; ) {
      const n = Math.min(z.length, len - done);
      this.writev([z.subarray(0, n)], pos + done);
      done += n;
    }
  }

  flush(): void {
    fs.fdatasyncSync(this.fd);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.readOnly) fs.fdatasyncSync(this.fd);
    } finally {
      fs.closeSync(this.fd);
    }
  }
}

export class MemoryBackend implements Backend {
  readonly bytes: Uint8Array;
  constructor(size: number) {
    this.bytes = new Uint8Array(size);
  }
  get size(): number {
    return this.bytes.length;
  }
  get description(): string {
    return `memory ${this.bytes.length} bytes`;
  }
  readv(views: Uint8Array[], pos: number): void {
    for (const v of views) {
      v.set(this.bytes.subarray(pos, pos + v.length));
      pos += v.length;
    }
  }
  writev(views: Uint8Array[], pos: number): void {
    for (const v of views) {
      this.bytes.set(v, pos);
      pos += v.length;
    }
  }
  zero(pos: number, len: number): void {
    this.bytes.fill(0, pos, pos + len);
  }
  flush(): void {}
  close(): void {}
}
