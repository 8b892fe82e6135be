/**
 * Guest RAM for tests: a memfd-backed {@link GuestMemory} that a client maps into the device
 * (DMA_MAP, shared by fd or served by DMA messages), with a bump allocator and views by IOVA.
 */
import { GuestMemory } from '../client/guest-memory.js';
import type { VfioUserClient } from '../client/client.js';

/** The page size guest RAM is laid out in. */
export const PAGE = 4096;
/** One unmapped page before and after the mapped part of guest RAM: a device access past either end of the map is refused. */
export const GUARD = PAGE;

/** How {@link GuestRam.map} lays out and maps guest RAM. */
export interface GuestRamOptions {
  /** size of the memory object, both guard pages included (default 16 MiB; a multiple of 4096) */
  size?: number | undefined;
  /** IOVA of the first mapped byte (default 0x1_0000_0000, above 4 GiB so 64-bit addressing is exercised) */
  iova?: number | undefined;
  /** pass the memfd to the server (default), or make the server use DMA_READ/DMA_WRITE messages */
  shared?: boolean | undefined;
  /** map this existing memory instead of a new one (for example on a migration destination) */
  mem?: GuestMemory | undefined;
}

/**
 * The RAM of a simulated guest, mapped into a device with DMA_MAP.
 *
 * The memory object has a guard page at each end that is not mapped, so a device that runs
 * past a buffer gets an error instead of silently reading neighbouring memory. Buffers are
 * carved from the mapped part with {@link GuestRam.alloc} (zeroed, page aligned by default)
 * and read or written through {@link GuestRam.at}, which is a live view: the device's DMA
 * writes show up in it (at once with shared memory, once the DMA_WRITE message is handled
 * otherwise).
 *
 * ```ts
 * const ram = await GuestRam.map(client, { size: 1 << 20 });
 * const buf = ram.alloc(4096);
 * ram.at(buf, 4).set([1, 2, 3, 4]);
 * // ... program the device with the IOVA `buf`, then read back what it wrote:
 * ram.at(buf, 4096);
 * await ram.unmap(); ram.free();
 * ```
 */
export class GuestRam {
  /** the memory object (its `bytes` cover the guard pages too) */
  readonly mem: GuestMemory;
  /** IOVA of the first mapped byte (memory offset {@link GUARD}) */
  readonly iova: number;
  /** bytes mapped into the device */
  readonly size: number;
  /** whether the server got the memfd (true) or serves DMA by message */
  readonly shared: boolean;
  private brk = GUARD;
  private client: VfioUserClient | undefined;

  private constructor(mem: GuestMemory, iova: number, shared: boolean) {
    this.mem = mem;
    this.iova = iova;
    this.size = mem.size - 2 * GUARD;
    this.shared = shared;
  }

  /** Creates guest RAM (or takes `opts.mem`) and maps all but its guard pages at `opts.iova`. */
  static async map(client: VfioUserClient, opts: GuestRamOptions = {}): Promise<GuestRam> {
    const own = !opts.mem;
    const mem = opts.mem ?? new GuestMemory(opts.size ?? 16 << 20);
    const ram = new GuestRam(mem, opts.iova ?? 0x1_0000_0000, opts.shared ?? true);
    try {
      await ram.mapInto(client);
    } catch (e) {
      if (own) mem.free();
      throw e;
    }
    return ram;
  }

  /** Maps the same RAM, same IOVA, through another client (a migration destination, a reconnect). */
  async mapInto(client: VfioUserClient): Promise<void> {
    await client.dmaMap(this.mem, this.iova, { offset: GUARD, size: this.size, shared: this.shared });
    this.client = client;
  }

  /** IOVA of a byte of the memory object, by its offset. */
  iovaOf(memOffset: number): number {
    return this.iova + memOffset - GUARD;
  }

  /** A live view of `len` bytes of guest RAM at an IOVA. */
  at(iova: number, len: number): Uint8Array {
    const off = iova - this.iova + GUARD;
    if (off < GUARD || len < 0 || off + len > this.mem.size - GUARD) throw new RangeError(`0x${iova.toString(16)} +${len} is outside guest RAM`);
    return this.mem.bytes.subarray(off, off + len);
  }

  /** A DataView of `len` bytes of guest RAM at an IOVA. */
  view(iova: number, len: number): DataView {
    const b = this.at(iova, len);
    return new DataView(b.buffer, b.byteOffset, len);
  }

  /** Allocates `len` zeroed bytes (page aligned unless `align` says otherwise); returns their IOVA. */
  alloc(len: number, align = PAGE): number {
    this.brk = Math.ceil(this.brk / align) * align;
    const off = this.brk;
    if (off + len > this.mem.size - GUARD) throw new RangeError('guest RAM exhausted');
    this.brk += len;
    this.mem.bytes.fill(0, off, off + len);
    return this.iovaOf(off);
  }

  /** Forgets every allocation (the memory is zeroed again as it is handed out). */
  reset(): void {
    this.brk = GUARD;
  }

  /** Removes the map from the device (the client it was last mapped through). */
  async unmap(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    await c?.dmaUnmap(this.iova, this.size);
  }

  /** Releases the memory object (the device must not use it anymore: unmap first, or close the client). */
  free(): void {
    this.mem.free();
  }
}
