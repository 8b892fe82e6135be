/**
 * Split virtqueues (virtio 1.2, 2.7), device side: the driver's descriptor table and
 * available ring are read, the used ring written, through the DMA controller only.
 *
 * Everything in guest memory is untrusted. Parsing a descriptor chain checks the head and
 * every `next` index against the table, bounds the chain (loops end there), refuses nested
 * or chained indirect tables, tables of bad length, readable descriptors after writable
 * ones, and totals past 2^32 - 1. Those, and ring memory the device cannot access, are
 * VirtqErrors: the device goes to NEEDS_RESET. Buffer addresses are checked when the data
 * moves (a DmaError the device turns into a failed request).
 */
import { VfioUserError, Errno } from '../../errors.js';
import { DmaController } from '../../server/dma.js';
import { guestRead, guestWrite, fromGuest, toGuest, sgViews, sliceSegments, type Segment } from '../guest.js';
import { Desc, NO_VECTOR, AVAIL_F_NO_INTERRUPT } from './constants.js';

/** A broken ring or descriptor chain: the device must be reset (code VFU_VIRTQ, errno EIO). */
export class VirtqError extends VfioUserError {
  constructor(message: string) {
    super('VFU_VIRTQ', message, Errno.EIO);
    this.name = 'VirtqError';
  }
}

/** largest indirect descriptor table accepted (entries) */
export const MAX_INDIRECT = 1024;
const U32_MAX = 0xffffffff;

/** One request: a descriptor chain split into its device-readable and device-writable parts. */
export class VirtioRequest {
  constructor(
    readonly dma: DmaController,
    /** head descriptor index (what goes back in the used ring) */
    readonly head: number,
    readonly readable: Segment[],
    readonly writable: Segment[],
    readonly readLen: number,
    readonly writeLen: number,
  ) {}

  /** `len` bytes of the readable part from `off` (bounded by readLen). */
  read(off: number, len: number): Promise<Uint8Array> {
    const n = Math.max(0, Math.min(len, this.readLen - off));
    return fromGuest(this.dma, sliceSegments(this.readable, off, n), n);
  }

  /** Writes data into the writable part at `off` (clipped to writeLen). */
  write(off: number, data: Uint8Array): Promise<void> {
    const n = Math.max(0, Math.min(data.length, this.writeLen - off));
    return toGuest(this.dma, sliceSegments(this.writable, off, n), data.subarray(0, n));
  }

  /** The segments covering [off, off+len) of the readable or writable part. */
  segments(writable: boolean, off: number, len: number): Segment[] {
    return sliceSegments(writable ? this.writable : this.readable, off, len);
  }

  /** Zero-copy views of [off, off+len) of one part, or undefined when not shared memory. */
  views(writable: boolean, off: number, len: number): Uint8Array[] | undefined {
    return sgViews(this.dma, this.segments(writable, off, len), writable);
  }
}

/** Queue registers and ring state (what migrates). */
export interface QueueState {
  size: number;
  msixVector: number;
  enabled: boolean;
  desc: number;
  driver: number;
  device: number;
  lastAvail: number;
  usedIdx: number;
}

export class Virtqueue implements QueueState {
  readonly index: number;
  readonly maxSize: number;
  size: number;
  msixVector = NO_VECTOR;
  enabled = false;
  /** descriptor table, driver (available) ring and device (used) ring IOVAs */
  desc = 0;
  driver = 0;
  device = 0;
  /** next available ring slot to consume (free-running 16-bit) */
  lastAvail = 0;
  /** used ring index (free-running 16-bit) */
  usedIdx = 0;
  /** used index at the last interrupt (event index suppression) */
  signalledUsed = 0;
  signalledValid = false;
  /** used entries not yet signalled */
  pendingUsed = false;
  /** a worker is consuming this queue; `kicked` asks it for another pass */
  active = false;
  kicked = false;
  /** when this queue last completed a request (performance.now(), ms; -Infinity: never) */
  lastWork = -Infinity;
  /** features that change the ring layout and rules */
  eventIdx = false;
  indirect = false;

  constructor(index: number, maxSize: number) {
    this.index = index;
    this.maxSize = maxSize;
    this.size = maxSize;
  }

  reset(): void {
    this.size = this.maxSize;
    this.msixVector = NO_VECTOR;
    this.enabled = false;
    this.desc = this.driver = this.device = 0;
    this.lastAvail = this.usedIdx = this.signalledUsed = 0;
    this.signalledValid = false;
    this.pendingUsed = false;
    this.kicked = false;
    this.lastWork = -Infinity;
  }

  state(): QueueState {
    const { size, msixVector, enabled, desc, driver, device, lastAvail, usedIdx } = this;
    return { size, msixVector, enabled, desc, driver, device, lastAvail, usedIdx };
  }

  // ------------------------------------------------------------ ring access

  private async ringRead16(dma: DmaController, iova: number, what: string): Promise<number> {
    let b: Uint8Array;
    try {
      b = await guestRead(dma, iova, 2);
    } catch (e) {
      throw new VirtqError(`queue ${this.index}: cannot read the ${what} at 0x${iova.toString(16)}: ${(e as Error).message}`);
    }
    return b[0]! | (b[1]! << 8);
  }

  private async ringWrite(dma: DmaController, iova: number, data: Uint8Array, what: string): Promise<void> {
    try {
      await guestWrite(dma, iova, data);
    } catch (e) {
      throw new VirtqError(`queue ${this.index}: cannot write the ${what} at 0x${iova.toString(16)}: ${(e as Error).message}`);
    }
  }

  /** The available ring's index (how far the driver has published). */
  async availIdx(dma: DmaController): Promise<number> {
    const idx = await this.ringRead16(dma, this.driver + 2, 'available index');
    if (((idx - this.lastAvail) & 0xffff) > this.size) {
      throw new VirtqError(`queue ${this.index}: available index ${idx} moved more than the queue size past ${this.lastAvail}`);
    }
    return idx;
  }

  /** Takes the next available head. */
  async nextHead(dma: DmaController): Promise<number> {
    const slot = this.lastAvail % this.size;
    const head = await this.ringRead16(dma, this.driver + 4 + 2 * slot, 'available ring');
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    return head;
  }

  /** Event index: tells the driver to notify once it publishes past what we consumed. */
  async publishAvailEvent(dma: DmaController): Promise<void> {
    if (!this.eventIdx) return;
    const b = Uint8Array.of(this.lastAvail & 0xff, this.lastAvail >> 8);
    await this.ringWrite(dma, this.device + 4 + 8 * this.size, b, 'available event');
    fullBarrier(); // before the caller looks at the available index again
  }

  /** Reads and checks the chain at `head`. */
  async chain(dma: DmaController, head: number): Promise<VirtioRequest> {
    if (head >= this.size) throw new VirtqError(`queue ${this.index}: head ${head} is past the queue size ${this.size}`);
    const readable: Segment[] = [];
    const writable: Segment[] = [];
    let rlen = 0;
    let wlen = 0;
    let table: DataView | undefined; // the indirect table being walked
    let entries = this.size;
    let idx = head;
    for (let count = 0; ; ) {
      if (++count > entries) throw new VirtqError(`queue ${this.index}: descriptor chain at ${head} is longer than ${entries} (a loop?)`);
      let addr: number;
      let len: number;
      let flags: number;
      let next: number;
      if (table) {
        const o = idx * Desc.SIZE;
        addr = u64(table, o);
        len = table.getUint32(o + 8, true);
        flags = table.getUint16(o + 12, true);
        next = table.getUint16(o + 14, true);
      } else {
        let d: Uint8Array;
        const at = this.desc + idx * Desc.SIZE;
        try {
          d = await guestRead(dma, at, Desc.SIZE);
        } catch (e) {
          throw new VirtqError(`queue ${this.index}: cannot read descriptor ${idx} at 0x${at.toString(16)}: ${(e as Error).message}`);
        }
        const dv = new DataView(d.buffer, d.byteOffset, Desc.SIZE);
        addr = u64(dv, 0);
        len = dv.getUint32(8, true);
        flags = dv.getUint16(12, true);
        next = dv.getUint16(14, true);
      }
      if (flags & Desc.F_INDIRECT) {
        if (!this.indirect) throw new VirtqError(`queue ${this.index}: indirect descriptor without RING_INDIRECT_DESC`);
        if (table) throw new VirtqError(`queue ${this.index}: indirect descriptor inside an indirect table`);
        if (flags & Desc.F_NEXT) throw new VirtqError(`queue ${this.index}: indirect descriptor with NEXT`);
        if (len === 0 || len % Desc.SIZE || len / Desc.SIZE > MAX_INDIRECT) {
          throw new VirtqError(`queue ${this.index}: indirect table of ${len} bytes`);
        }
        let bytes: Uint8Array;
        try {
          bytes = await guestRead(dma, addr, len);
        } catch (e) {
          throw new VirtqError(`queue ${this.index}: cannot read the indirect table at 0x${addr.toString(16)}: ${(e as Error).message}`);
        }
        table = new DataView(bytes.buffer, bytes.byteOffset, len);
        entries = len / Desc.SIZE;
        idx = 0;
        count = 0;
        continue;
      }
      if (flags & Desc.F_WRITE) {
        wlen += len;
        if (len) writable.push({ iova: addr, len });
      } else {
        if (writable.length || wlen) throw new VirtqError(`queue ${this.index}: device-readable descriptor after a device-writable one`);
        rlen += len;
        if (len) readable.push({ iova: addr, len });
      }
      if (rlen > U32_MAX || wlen > U32_MAX) throw new VirtqError(`queue ${this.index}: chain longer than 4 GiB`);
      if (!(flags & Desc.F_NEXT)) break;
      if (next >= entries) throw new VirtqError(`queue ${this.index}: next index ${next} past ${table ? 'the indirect table' : 'the queue'} (${entries})`);
      idx = next;
    }
    return new VirtioRequest(dma, head, readable, writable, rlen, wlen);
  }

  /** Puts a finished chain in the used ring (the element, then the index). */
  async pushUsed(dma: DmaController, head: number, written: number): Promise<void> {
    const slot = this.usedIdx % this.size;
    const elem = new Uint8Array(8);
    const dv = new DataView(elem.buffer);
    dv.setUint32(0, head, true);
    dv.setUint32(4, written >>> 0, true);
    await this.ringWrite(dma, this.device + 4 + 8 * slot, elem, 'used ring');
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    // a single 16-bit store when the index is in shared memory, after the element
    const at = this.device + 2;
    let views: Uint8Array[] | undefined;
    try {
      views = dma.views(at, 2, true);
    } catch {
      views = undefined;
    }
    const v = views?.[0];
    if (views && views.length === 1 && v && v.byteOffset % 2 === 0) {
      Atomics.store(new Uint16Array(v.buffer, v.byteOffset, 1), 0, this.usedIdx);
    } else {
      await this.ringWrite(dma, at, Uint8Array.of(this.usedIdx & 0xff, this.usedIdx >> 8), 'used index');
    }
    this.pendingUsed = true;
  }

  /** Whether the driver wants an interrupt for the used entries added since the last one. */
  async shouldInterrupt(dma: DmaController): Promise<boolean> {
    fullBarrier(); // the used index we wrote before the driver's used event (or flags) we read
    if (this.eventIdx) {
      const event = await this.ringRead16(dma, this.driver + 4 + 2 * this.size, 'used event');
      const old = this.signalledUsed;
      const valid = this.signalledValid;
      this.signalledUsed = this.usedIdx;
      this.signalledValid = true;
      return !valid || needEvent(event, this.usedIdx, old);
    }
    const flags = await this.ringRead16(dma, this.driver, 'available flags');
    return !(flags & AVAIL_F_NO_INTERRUPT);
  }
}

const FENCE = new Int32Array(1);

/**
 * A full memory barrier (a locked read-modify-write): orders our store to a ring field before
 * our next load from the ring, as virtio_mb() does in a driver. Without it, x86 may let the
 * load pass the store, and both sides miss each other (we go idle after publishing the
 * available event while the driver, having read the old one, does not notify).
 */
export function fullBarrier(): void {
  Atomics.add(FENCE, 0, 0);
}

/** vring_need_event: has new_idx moved past event since old? (all 16-bit, wrapping) */
export function needEvent(event: number, newIdx: number, old: number): boolean {
  return ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);
}

function u64(dv: DataView, off: number): number {
  return dv.getUint32(off, true) + dv.getUint32(off + 4, true) * 2 ** 32;
}
