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
 * MMIO doorbell writes reach us as asynchronous messages, so a ring can arrive after we already
 * read a newer value from the shadow. A DoorbellTracker tells the two cases apart: a rung value
 * the shadow has already moved through since the previous ring is stale (a kick), anything else
 * is the host's word (a host that stopped updating its shadows still makes progress).
 */
import type { DmaController } from '../../server/dma.js';
import { DmaError } from '../../server/dma.js';

/** Linux's nvme_dbbuf_need_event: does moving a doorbell from old to next cross eventIdx? */
export function needEvent(eventIdx: number, next: number, old: number): boolean {
  return ((next - eventIdx - 1) & 0xffff) < ((next - old) & 0xffff);
}

/** Per doorbell (one SQ tail or one CQ head): what the shadow and the MMIO rings told us. */
export class DoorbellTracker {
  /** last value read from the shadow */
  shadow: number;
  /** last value rung through the MMIO doorbell (or the value when the shadow was attached) */
  rung: number;
  /** how far the queue pointer moved through shadow reads since `rung` */
  adv = 0;
  /** last EventIdx published (-1: none yet) */
  eventIdx = -1;
  /** the pointer when the controller last moved the EventIdx while polling (-1: not polling) */
  lapAt = -1;

  constructor(value: number) {
    this.shadow = value;
    this.rung = value;
  }

  /** A shadow value read now; returns the new pointer, or -1 when nothing changed. */
  fromShadow(s: number, cur: number, size: number): number {
    if (s === this.shadow) return -1;
    this.shadow = s;
    if (s >= size) return -1; // invalid value: ignored
    this.adv += (s - cur + size) % size;
    return s;
  }

  /**
   * A value rung through the MMIO doorbell; returns the new pointer, or -1 when the ring is
   * only a kick. `shadowMoved`: the shadow changed at the read made for this ring. `room`: how
   * far the pointer may legitimately move from `cur` (free SQ slots; unconsumed CQ entries).
   *
   * The host writes its shadow, then rings, in order. So a ring whose value the shadow went
   * through since the previous ring is stale (a kick); a ring with any other value is one the
   * shadow never showed: the host is not (or no longer) updating it, and its ring is its word.
   * After a whole lap of the shadow without a ring the age of a ring cannot be told; the
   * controller makes that rare (EventIdx asks for a ring every half lap while polling) and
   * treats such a ring as a kick.
   */
  fromMmio(v: number, cur: number, size: number, shadowMoved: boolean, room: number): number {
    if (this.adv < size) {
      if ((v - this.rung + size) % size <= (cur - this.rung + size) % size) {
        // stale, or no news: later rings carry values at or past v
        this.rung = v;
        this.adv = (cur - v + size) % size;
        return -1;
      }
      if ((v - cur + size) % size <= room) {
        this.rung = v;
        this.adv = 0;
        return v;
      }
    }
    if (shadowMoved && this.adv >= size) {
      // a live shadow is at or past v: later rings carry values in [v, cur]
      this.rung = v;
      this.adv = (cur - v + size) % size;
    } else {
      this.rung = cur;
      this.adv = 0;
    }
    return -1;
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
