/**
 * Shadow doorbells and EventIdx (NVMe 1.3 Doorbell Buffer Config, admin opcode 0x7C).
 *
 * The host gives two pages of its memory: the shadow doorbell buffer, where it writes every SQ
 * tail and CQ head (same layout as the doorbell registers: SQ y at 8y, CQ y at 8y + 4), and the
 * EventIdx buffer, where the controller says when it wants an MMIO doorbell write. The host
 * writes the shadow, then rings the MMIO doorbell only when the EventIdx lies in [old, new)
 * (Linux's nvme_dbbuf_need_event, 16-bit arithmetic). Both buffers are guest memory: every
 * access goes through the DMA layer, and a buffer that leaves the DMA maps turns the shadows off.
 *
 * MMIO doorbell writes reach us as asynchronous (posted) messages, queued in the socket while
 * the controller polls the shadows: by the time a ring is read, its value may be laps old, and a
 * queue index alone cannot tell an old ring from a new one (a stale ring looks like a tail a few
 * entries ahead; trusting it executes old SQ entries again). A live host writes its shadow before
 * it rings, so a shadow read made after a ring arrived is at or past the ring's value: a ring on
 * a shadowed queue is only a kick to read the shadow, which is the single source of truth (as
 * QEMU's own nvme and OpenVMM do). A host that stops updating its shadows (against the spec)
 * stalls on that queue, and no stale entry runs; the admin queue, for which hosts (Linux, SPDK)
 * do not use shadows, keeps its MMIO doorbells.
 */
import type { DmaController } from '../../server/dma.js';
import { DmaError } from '../../server/dma.js';

/** Linux's nvme_dbbuf_need_event: does moving a doorbell from old to next cross eventIdx? */
export function needEvent(eventIdx: number, next: number, old: number): boolean {
  return ((next - eventIdx - 1) & 0xffff) < ((next - old) & 0xffff);
}

/** Per shadowed doorbell (one I/O SQ tail or CQ head): the last shadow value read and EventIdx published. */
export class DoorbellTracker {
  /** last value read from the shadow */
  shadow: number;
  /** last EventIdx published (-1: none yet) */
  eventIdx = -1;

  constructor(value: number) {
    this.shadow = value;
  }

  /** A shadow value read now; returns the new pointer, or -1 when nothing changed (or it is invalid). */
  fromShadow(s: number, size: number): number {
    if (s === this.shadow) return -1;
    this.shadow = s;
    return s < size ? s : -1;
  }
}

/** The two guest pages, each accessed per use through the DMA layer (never kept across turns). */
export class DoorbellBuffers {
  readonly dbs: number;
  readonly eis: number;
  /** 32-bit slots used: 2 per queue */
  readonly slots: number;
  private readonly dma: DmaController;

  constructor(dma: DmaController, dbs: number, eis: number, slots: number) {
    this.dma = dma;
    this.dbs = dbs;
    this.eis = eis;
    this.slots = slots;
  }

  /**
   * Checks a Doorbell Buffer Config: page-aligned, non-zero, not overlapping, and both inside
   * shared DMA maps (shadow readable, EventIdx writable). Returns a reason when refused.
   */
  static check(dma: DmaController, dbs: number, eis: number, slots: number, pageSize: number): string | undefined {
    if (!dbs || !eis || dbs % pageSize || eis % pageSize) return 'buffers must be non-zero and page aligned';
    if (dbs === eis) return 'the shadow and EventIdx buffers overlap';
    const b = new DoorbellBuffers(dma, dbs, eis, slots);
    try {
      b.shadowView();
      b.eventIdxView();
    } catch (e) {
      if (e instanceof DmaError) return e.message;
      throw e;
    }
    return undefined;
  }

  /** The shadow doorbells, valid until the next turn of the event loop (throws DmaError). */
  shadowView(): Uint32Array {
    return this.view(this.dbs, false);
  }

  /** The EventIdx slots, valid until the next turn of the event loop (throws DmaError). */
  eventIdxView(): Uint32Array {
    return this.view(this.eis, true);
  }

  private view(iova: number, write: boolean): Uint32Array {
    const v = this.dma.views(iova, this.slots * 4, write);
    if (v.length !== 1 || v[0]!.byteOffset % 4) throw new DmaError(`doorbell buffer at 0x${iova.toString(16)} is not one shared mapping`);
    return new Uint32Array(v[0]!.buffer, v[0]!.byteOffset, this.slots);
  }
}
