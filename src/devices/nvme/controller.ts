/**
 * An NVMe 1.4 controller (PCI class 01:08:02) served over vfio-user.
 *
 * BAR0 (64-bit, 16 KiB):
 *   0x0000  controller registers (CAP, VS, INTMS/INTMC, CC, CSTS, AQA, ASQ, ACQ)
 *   0x1000  doorbells, CAP.DSTRD = 0: SQ y tail at 0x1000 + 8y, CQ y head at 0x1000 + 8y + 4
 *   0x2000  MSI-X table (one vector per queue), 0x3000 PBA
 * Capabilities: power management, MSI-X, PCI Express (with FLR). INTx is the fallback
 * when MSI-X is off (level: asserted while an interrupt-enabled CQ has unacknowledged
 * entries and INTMS bit 0 is clear).
 *
 * Doorbells are trapped REGION_WRITEs by default. With `doorbells: 'mmap'` the doorbell page
 * is a shared sparse mmap area the client writes directly, which the controller polls (busy
 * while there is work, backing off when idle). QEMU turns off posted writes for a device
 * with any mappable region, so each remaining trapped write then costs a round trip.
 *
 * Commands are fetched and executed in order per SQ, one at a time; with shared guest memory
 * they run synchronously (zero-copy: preadv/pwritev between the image and DMA views). Guest
 * memory is only ever accessed through dev.dma; a DMA fault becomes a Data Transfer Error.
 *
 * Migration: the device runs only in RUNNING and PRE_COPY; save() quiesces (waits for
 * in-flight commands), and the state is registers, queues, features and namespace identity.
 * The image itself is shared by source and destination.
 */
import { PciDevice } from '../../server/device.js';
import { IrqIndex } from '../../server/irq.js';
import { DmaError } from '../../server/dma.js';
import { MigState } from '../../server/migration.js';
import { encodeState, decodeState } from '../../server/state.js';
import * as Check from './state-check.js';
import {
  Reg, DOORBELL_BASE, CC, CSTS, AdminOp, IoOp, Status, DNR, Feature, LogPage, Identify,
  SQE_SIZE, CQE_SIZE, NvmeStatusError,
} from './constants.js';
import { prpSegments, sglSegments, u64, type Segment } from './dataptr.js';
import { Namespace, FileBackend, MemoryBackend, type Backend } from './namespace.js';
import { guestRead, toGuest, fromGuest, sgViews } from '../guest.js';
import * as Id from './identify.js';
import { DoorbellBuffers, DoorbellTracker } from './shadow.js';
import { Poller } from './poller.js';

export const NVME_VENDOR = 0x4e58; // "NX"
export const NVME_DEVICE = 0x0002;

export interface NvmeOptions {
  /** raw image file; created with `size` bytes when missing */
  image?: string;
  /** bytes (required for memory namespaces and new images) */
  size?: number;
  lbaSize?: 512 | 4096;
  serial?: string;
  /** number of I/O queue pairs offered (default 16) */
  ioQueues?: number;
  /** doorbell mechanism (default 'trap') */
  doorbells?: 'trap' | 'mmap';
  /** offer Doorbell Buffer Config (shadow doorbells, default true) */
  shadowDoorbells?: boolean;
  /** keep polling the shadow doorbells (and the mmap page) this long after the last I/O (microseconds, default 50) */
  pollUs?: number;
  /** log function for unexpected errors */
  log?: (msg: string) => void;
}

const BAR0_SIZE = 0x4000;
const MSIX_TABLE = 0x2000;
const MSIX_PBA = 0x3000;
const MQES = 1023; // 1024 entries per queue
const MDTS = 8; // 1 MiB transfers (4 KiB << 8)
const TEMPERATURE = 310; // Kelvin

interface SubQueue {
  id: number;
  base: number;
  size: number;
  head: number;
  tail: number;
  cqid: number;
  prio: number;
  /** a worker is fetching from this queue */
  active: boolean;
  /** shadow doorbell state (Doorbell Buffer Config) */
  db?: DoorbellTracker;
}

interface CompQueue {
  id: number;
  base: number;
  size: number;
  head: number;
  tail: number;
  phase: number;
  iv: number;
  ien: boolean;
  /** completions reserved by commands being executed */
  reserved: number;
  /** completions that did not fit (only asynchronous ones: AERs) */
  backlog: { sqid: number; cid: number; status: number; dw0: number }[];
  irqPending: boolean;
  /** entries posted since its last interrupt (interrupt coalescing) */
  coalesced: number;
  /** shadow doorbell state (Doorbell Buffer Config) */
  db?: DoorbellTracker;
}

interface Result {
  status: number;
  dw0?: number;
}

/** the Set/Get Features values (their checked form is the migration state's) */
type Features = Check.FeatureValues;

export class NvmeDevice extends PciDevice {
  readonly namespaces = new Map<number, Namespace>();
  readonly maxIoQueues: number;
  readonly serial: string;
  readonly doorbellMode: 'trap' | 'mmap';
  readonly shadowDoorbells: boolean;
  private readonly log: (msg: string) => void;
  private readonly bar0: ReturnType<PciDevice['addRegion']>;

  // registers
  private cc = 0;
  private csts = 0;
  private aqa = 0;
  private asq = 0;
  private acq = 0;
  private intms = 0;
  private pageSize = 4096;

  private sqs: (SubQueue | undefined)[] = [];
  private cqs: (CompQueue | undefined)[] = [];
  private features: Features = defaultFeatures(16);
  private aers: number[] = [];
  private events: { type: number; info: number; log: number }[] = [];
  private maskedEventTypes = 0;
  private errors: Id.ErrorLogEntry[] = [];
  private errorCount = 0;
  private smart = { bytesRead: 0, bytesWritten: 0, readCommands: 0, writeCommands: 0 };
  private readonly started = Date.now();
  /** Doorbell Buffer Config: shadow doorbells and EventIdx in guest memory */
  private dbbuf: DoorbellBuffers | undefined;
  /** bumped by every controller reset: work started before it is dropped */
  private generation = 0;
  /** false while migration has the device stopped */
  private running = true;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  /** the Aggregation Time of interrupt coalescing, while entries wait for it */
  private coalesceTimer: NodeJS.Timeout | undefined;
  /** polls the shadow doorbells (and the mmap doorbell page) while I/O flows */
  private readonly poller: Poller;
  private mmapDoorbells: Uint32Array | undefined;
  private lastDoorbells: Uint32Array | undefined;

  constructor(o: NvmeOptions) {
    const ioQueues = o.ioQueues ?? 16;
    if (!Number.isInteger(ioQueues) || ioQueues < 1 || ioQueues > 64) throw new Error('ioQueues must be 1..64');
    super({
      name: 'nvme',
      vendorId: NVME_VENDOR,
      deviceId: NVME_DEVICE,
      subsystemVendorId: NVME_VENDOR,
      subsystemId: 0x0001,
      classCode: 0x010802,
      revision: 1,
      size: 4096,
      interruptPin: 1,
      irqs: { intx: 1, msix: ioQueues + 1 },
    });
    this.maxIoQueues = ioQueues;
    this.doorbellMode = o.doorbells ?? 'trap';
    this.shadowDoorbells = o.shadowDoorbells ?? true;
    this.log = o.log ?? ((m) => process.stderr.write(`nvme: ${m}\n`));
    let backend: Backend;
    if (o.image) backend = new FileBackend(o.image, o.size);
    else {
      if (!o.size) throw new Error('a memory namespace needs a size');
      backend = new MemoryBackend(o.size);
    }
    const identity = o.serial ?? o.image ?? 'memory';
    this.serial = o.serial ?? serialFrom(identity);
    this.namespaces.set(1, new Namespace(1, backend, { lbaSize: o.lbaSize, identity: this.serial }));
    this.features = defaultFeatures(ioQueues);
    this.poller = new Poller({
      step: () => this.scanDoorbells(),
      arm: () => this.armEventIdx(),
      spinUs: o.pollUs ?? 50,
      // the doorbell page is written without any notification: never fully asleep
      idleMs: this.doorbellMode === 'mmap' ? 1 : 0,
    });

    const access = {
      read: (off: number, len: number) => this.readBar(off, len),
      write: (off: number, data: Uint8Array) => this.writeBar(off, data),
    };
    this.bar0 =
      this.doorbellMode === 'mmap'
        ? this.addRegion(0, { size: BAR0_SIZE, bar: { kind: 'mem64' }, shared: true, mmapAreas: [{ offset: DOORBELL_BASE, size: 0x1000 }], access })
        : this.addRegion(0, { size: BAR0_SIZE, bar: { kind: 'mem64' }, access });
    this.config.addPowerManagement();
    this.addMsix({ vectors: ioQueues + 1, tableBar: 0, tableOffset: MSIX_TABLE, pbaBar: 0, pbaOffset: MSIX_PBA });
    this.config.addPciExpress({ flr: true, maxPayload: 256 });
    this.onReset = () => this.powerOnReset();
    this.migration = {
      save: () => this.saveState(),
      load: (data) => this.loadState(data),
      onStateChange: (_from, to) => this.setRunning(to === MigState.RUNNING || to === MigState.PRE_COPY),
    };
  }

  /** the namespace backends' descriptions (for logs) */
  describe(): string {
    return [...this.namespaces.values()].map((n) => `ns${n.nsid}: ${n.backend.description}, ${n.blocks} x ${n.lbaSize} B`).join('; ');
  }

  override destroy(): void {
    this.poller.stop();
    clearTimeout(this.coalesceTimer);
    for (const ns of this.namespaces.values()) ns.backend.close();
    super.destroy();
  }

  // ------------------------------------------------------------ registers

  private cap(): [number, number] {
    // lo: MQES, CQR, TO = 20 (10 s); hi: DSTRD 0, CSS NVM (bit 37), MPSMIN 0, MPSMAX 4 (64 KiB)
    const lo = (MQES | (1 << 16) | (20 << 24)) >>> 0;
    const hi = (1 << (37 - 32)) | (4 << (52 - 32));
    return [lo, hi];
  }

  private reg32(off: number): number {
    switch (off) {
      case Reg.CAP: return this.cap()[0];
      case Reg.CAP + 4: return this.cap()[1];
      case Reg.VS: return 0x00010400;
      case Reg.INTMS:
      case Reg.INTMC: return this.intms;
      case Reg.CC: return this.cc;
      case Reg.CSTS: return this.csts;
      case Reg.AQA: return this.aqa;
      case Reg.ASQ: return this.asq % 2 ** 32;
      case Reg.ASQ + 4: return Math.floor(this.asq / 2 ** 32);
      case Reg.ACQ: return this.acq % 2 ** 32;
      case Reg.ACQ + 4: return Math.floor(this.acq / 2 ** 32);
      default: return 0;
    }
  }

  private readBar(off: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    for (let i = 0; i < len; i++) {
      const a = off + i;
      if (a >= DOORBELL_BASE) {
        out[i] = this.bar0.memory ? this.bar0.memory[a]! : 0;
        continue;
      }
      out[i] = (this.reg32(a & ~3) >>> ((a & 3) * 8)) & 0xff;
    }
    return out;
  }

  private writeBar(off: number, data: Uint8Array): void {
    // split into dwords; unwritten bytes keep their current value
    let i = 0;
    while (i < data.length) {
      const a = off + i;
      const dw = a & ~3;
      let merged = dw >= DOORBELL_BASE ? 0 : this.reg32(dw);
      let only = 0;
      for (; i < data.length && ((off + i) & ~3) === dw; i++) {
        const sh = ((off + i) & 3) * 8;
        merged = ((merged & ~(0xff << sh)) | (data[i]! << sh)) >>> 0;
        only = (only | (data[i]! << sh)) >>> 0;
      }
      if (dw >= DOORBELL_BASE) this.doorbell(dw, merged);
      else this.writeReg(dw, merged, only);
    }
  }

  private writeReg(off: number, v: number, only: number): void {
    switch (off) {
      case Reg.INTMS:
        if (!this.msixEnabled()) this.intms = (this.intms | only) >>> 0;
        this.updateIntx();
        break;
      case Reg.INTMC:
        if (!this.msixEnabled()) this.intms = (this.intms & ~only) >>> 0;
        this.updateIntx();
        break;
      case Reg.CC:
        this.writeCc(v);
        break;
      case Reg.AQA:
        this.aqa = v & 0x0fff0fff;
        break;
      case Reg.ASQ:
        this.asq = Math.floor(this.asq / 2 ** 32) * 2 ** 32 + ((v & ~0xfff) >>> 0);
        break;
      case Reg.ASQ + 4:
        this.asq = v * 2 ** 32 + (this.asq % 2 ** 32);
        break;
      case Reg.ACQ:
        this.acq = Math.floor(this.acq / 2 ** 32) * 2 ** 32 + ((v & ~0xfff) >>> 0);
        break;
      case Reg.ACQ + 4:
        this.acq = v * 2 ** 32 + (this.acq % 2 ** 32);
        break;
      default:
        break; // read-only or reserved
    }
  }

  private writeCc(v: number): void {
    const old = this.cc;
    this.cc = v;
    if (!(old & CC.EN) && v & CC.EN) this.enable();
    else if (old & CC.EN && !(v & CC.EN)) this.controllerReset();
    const shn = (v >> CC.SHN_SHIFT) & 3;
    const oldShn = (old >> CC.SHN_SHIFT) & 3;
    if (shn && !oldShn) {
      // normal or abrupt shutdown: make everything durable, then report complete
      this.csts = (this.csts & ~(3 << CSTS.SHST_SHIFT)) | (CSTS.SHST_OCCURRING << CSTS.SHST_SHIFT);
      for (const ns of this.namespaces.values()) {
        try {
          ns.backend.flush();
        } catch (e) {
          this.log(`flush at shutdown failed: ${(e as Error).message}`);
        }
      }
      this.csts = (this.csts & ~(3 << CSTS.SHST_SHIFT)) | (CSTS.SHST_COMPLETE << CSTS.SHST_SHIFT);
    }
  }

  private enable(): void {
    const mps = (this.cc >> CC.MPS_SHIFT) & 0xf;
    const css = (this.cc >> CC.CSS_SHIFT) & 7;
    const asqs = (this.aqa & 0xfff) + 1;
    const acqs = ((this.aqa >> 16) & 0xfff) + 1;
    this.pageSize = 4096 * 2 ** mps;
    if (mps > 4 || css !== 0 || asqs < 2 || acqs < 2 || this.asq % this.pageSize || this.acq % this.pageSize) {
      this.csts |= CSTS.CFS;
      this.log(`enable refused: CC=0x${this.cc.toString(16)} AQA=0x${this.aqa.toString(16)}`);
      return;
    }
    this.sqs = [{ id: 0, base: this.asq, size: asqs, head: 0, tail: 0, cqid: 0, prio: 0, active: false }];
    this.cqs = [newCq(0, this.acq, acqs, 0, true)];
    this.csts = CSTS.RDY; // SHST back to normal
    this.startPolling();
  }

  /** poller statistics (wake-ups from sleep, polling turns) */
  get pollStats(): { wakeups: number; turns: number; polling: boolean; pending: boolean } {
    const p = this.poller;
    return { wakeups: p.wakeups, turns: p.turns, polling: p.polling, pending: p.pending };
  }

  /** CC.EN 1 -> 0: every queue is deleted, outstanding commands are dropped, features return to defaults. */
  private controllerReset(): void {
    this.generation++;
    this.sqs = [];
    this.cqs = [];
    this.aers = [];
    this.events = [];
    this.maskedEventTypes = 0;
    this.dbbuf = undefined;
    this.features = defaultFeatures(this.maxIoQueues);
    this.intms = 0;
    this.csts &= ~(CSTS.RDY | CSTS.CFS);
    this.poller.stop();
    clearTimeout(this.coalesceTimer);
    this.coalesceTimer = undefined;
    this.updateIntx();
  }

  /** PCI-level reset (DEVICE_RESET, FLR): all registers to their power-on values. */
  private powerOnReset(): void {
    this.controllerReset();
    this.cc = 0;
    this.csts = 0;
    this.aqa = 0;
    this.asq = 0;
    this.acq = 0;
    this.pageSize = 4096;
    if (this.bar0.memory) this.bar0.memory.fill(0);
  }

  private msixEnabled(): boolean {
    return this.config.msix()?.enabled ?? false;
  }

  // ------------------------------------------------------------ doorbells

  private doorbell(off: number, value: number): void {
    if (!(this.csts & CSTS.RDY)) return;
    const idx = (off - DOORBELL_BASE) >> 2;
    const qid = idx >> 1;
    if (idx & 1) {
      const cq = this.cqs[qid];
      if (!cq || value >= cq.size) return; // invalid doorbell: ignored
      if (cq.db) {
        // with shadows, a ring may be older than what the shadow already told us
        const shadow = this.readShadow(idx);
        const moved = shadow !== undefined && this.cqHeadFromShadow(cq, shadow);
        const h = cq.db?.fromMmio(value, cq.head, cq.size, moved, (cq.tail - cq.head + cq.size) % cq.size) ?? -1;
        if (h >= 0) cq.head = h;
      } else cq.head = value;
      this.cqHeadMoved(cq);
    } else {
      const sq = this.sqs[qid];
      if (!sq || value >= sq.size) return;
      if (sq.db) {
        const shadow = this.readShadow(idx);
        const moved = shadow !== undefined && this.sqTailFromShadow(sq, shadow);
        const t = sq.db?.fromMmio(value, sq.tail, sq.size, moved, (sq.head - 1 - sq.tail + 2 * sq.size) % sq.size) ?? -1;
        if (t >= 0) sq.tail = t;
      } else sq.tail = value;
      if (this.running) void this.runSq(sq);
    }
    if (this.dbbuf) this.poller.kick();
  }

  private cqHeadMoved(cq: CompQueue): void {
    while (cq.backlog.length && !this.cqFull(cq, 0)) {
      const b = cq.backlog.shift()!;
      this.writeCqe(cq, b.sqid, b.cid, b.status, b.dw0);
    }
    this.updateIntx();
    if (!this.running) return;
    // SQs that stopped because this CQ was full
    for (const sq of this.sqs) if (sq && sq.cqid === cq.id && sq.head !== sq.tail) void this.runSq(sq);
    this.flushIrqs();
  }

  /** (re)starts the poller at enable: asleep until a doorbell, or on a slow timer in mmap mode */
  private startPolling(): void {
    const mem = this.bar0.memory;
    if (mem) {
      this.mmapDoorbells = new Uint32Array(mem.buffer, mem.byteOffset + DOORBELL_BASE, 2 * (this.maxIoQueues + 1));
      this.mmapDoorbells.fill(0);
      this.lastDoorbells = new Uint32Array(this.mmapDoorbells.length);
    }
    this.poller.start();
    if (mem) this.poller.kick();
  }

  /** One poll: the mmap doorbell page, then the shadow doorbells. True when something moved. */
  private scanDoorbells(): boolean {
    if (!(this.csts & CSTS.RDY) || !this.running) return false;
    let moved = false;
    const dbs = this.mmapDoorbells;
    const last = this.lastDoorbells;
    if (dbs && last) {
      for (let i = 0; i < dbs.length; i++) {
        const v = dbs[i]!;
        if (v !== last[i]) {
          last[i] = v;
          moved = true;
          this.doorbell(DOORBELL_BASE + 4 * i, v);
        }
      }
    }
    if (this.dbbuf) moved = this.scanShadows() || moved;
    return moved;
  }

  /** Applies every shadow doorbell that changed; while polling, tells the host not to ring. */
  private scanShadows(): boolean {
    const b = this.dbbuf;
    if (!b) return false;
    let db: Uint32Array;
    try {
      db = b.shadowView();
    } catch (e) {
      this.shadowFault(e);
      return false;
    }
    let moved = false;
    // CQ heads first: they free room for the SQs
    for (const cq of this.cqs) {
      if (cq?.db && this.cqHeadFromShadow(cq, Atomics.load(db, 2 * cq.id + 1))) {
        moved = true;
        this.cqHeadMoved(cq);
        if (this.poller.polling && !this.lapEventIdx(b, 2 * cq.id + 1, cq.db, cq.head, cq.size)) return false;
      }
    }
    for (const sq of this.sqs) {
      if (!sq?.db || !this.sqTailFromShadow(sq, Atomics.load(db, 2 * sq.id))) continue;
      moved = true;
      if (this.poller.polling && !this.lapEventIdx(b, 2 * sq.id, sq.db, sq.tail, sq.size)) return false;
      if (this.running) void this.runSq(sq);
    }
    return moved;
  }

  /**
   * While polling the host need not ring, except about once per half lap of its queue: an
   * EventIdx a quarter lap ahead, moved on every half lap. That keeps the age of any ring in
   * flight within a lap, which DoorbellTracker.fromMmio needs. False when the buffer is gone.
   */
  private lapEventIdx(b: DoorbellBuffers, slot: number, t: DoorbellTracker, ptr: number, size: number): boolean {
    if (t.lapAt >= 0 && (ptr - t.lapAt + size) % size < size >> 1) return true;
    t.lapAt = ptr;
    try {
      this.publishEventIdx(b.eventIdxView(), slot, t, (ptr + (size >> 2)) % size);
    } catch (e) {
      this.shadowFault(e);
      return false;
    }
    return true;
  }

  private sqTailFromShadow(sq: SubQueue, s: number): boolean {
    const t = sq.db!.fromShadow(s, sq.tail, sq.size);
    if (t < 0) return false;
    sq.tail = t;
    return true;
  }

  private cqHeadFromShadow(cq: CompQueue, s: number): boolean {
    const h = cq.db!.fromShadow(s, cq.head, cq.size);
    if (h < 0) return false;
    cq.head = h;
    return true;
  }

  private publishEventIdx(ei: Uint32Array, slot: number, t: DoorbellTracker, v: number): void {
    if (t.eventIdx === v) return;
    t.eventIdx = v;
    Atomics.store(ei, slot, v);
  }

  /** One shadow doorbell slot (undefined, and the controller fails, when the buffer is gone). */
  private readShadow(slot: number): number | undefined {
    try {
      return Atomics.load(this.dbbuf!.shadowView(), slot);
    } catch (e) {
      this.shadowFault(e);
      return undefined;
    }
  }

  /**
   * Before the poller sleeps: EventIdx values that make the host ring on its next SQ entry
   * (and on a CQ head move when an SQ waits for room or INTx needs the head), then the
   * shadows again: an entry written before the host could see the new EventIdx is found here.
   */
  private armEventIdx(): boolean {
    const b = this.dbbuf;
    if (!b || !(this.csts & CSTS.RDY) || !this.running) return false;
    let ei: Uint32Array;
    try {
      ei = b.eventIdxView();
    } catch (e) {
      this.shadowFault(e);
      return false;
    }
    const intx = !this.msixEnabled();
    for (const cq of this.cqs) {
      if (!cq?.db) continue;
      const waiting = intx || cq.backlog.length > 0 || this.cqFull(cq, 0);
      this.publishEventIdx(ei, 2 * cq.id + 1, cq.db, waiting ? cq.head : (cq.head + cq.size - 1) % cq.size);
    }
    for (const sq of this.sqs) if (sq?.db) this.publishEventIdx(ei, 2 * sq.id, sq.db, sq.tail);
    for (const q of [...this.sqs, ...this.cqs]) if (q?.db) q.db.lapAt = -1;
    // Atomics.store then Atomics.load: the host's store-fence-load pairs with ours
    return this.scanShadows();
  }

  /** The doorbell buffers left the DMA maps: a controller fatal status (the host resets). */
  private shadowFault(e: unknown): void {
    if (!(e instanceof DmaError)) throw e;
    this.dbbuf = undefined;
    for (const q of this.sqs) if (q) q.db = undefined;
    for (const q of this.cqs) if (q) q.db = undefined;
    this.poller.stop();
    this.fatal(`shadow doorbells: ${e.message}`);
  }

  /** Doorbell Buffer Config (0x7C): PRP1 the shadow doorbells, PRP2 the EventIdx buffer. */
  private doorbellBufferConfig(sqe: Uint8Array): Result {
    const dbs = u64(sqe, 24);
    const eis = u64(sqe, 32);
    const slots = 2 * (this.maxIoQueues + 1);
    const why = DoorbellBuffers.check(this.dma, dbs, eis, slots, this.pageSize);
    if (why) {
      this.log(`Doorbell Buffer Config refused: ${why}`);
      return { status: (why.includes('aligned') || why.includes('overlap') ? Status.INVALID_FIELD : Status.DATA_TRANSFER_ERROR) | DNR };
    }
    const b = new DoorbellBuffers(this.dma, dbs, eis, slots);
    this.dbbuf = b;
    // existing queues start from their current values, and the host rings for the next entry
    const db = b.shadowView();
    const ei = b.eventIdxView();
    for (const sq of this.sqs) if (sq) this.attachShadow(sq, 2 * sq.id, sq.tail, db, ei);
    for (const cq of this.cqs) if (cq) this.attachShadow(cq, 2 * cq.id + 1, cq.head, db, ei);
    return { status: Status.SUCCESS };
  }

  private attachShadow(q: SubQueue | CompQueue, slot: number, value: number, db: Uint32Array, ei: Uint32Array): void {
    Atomics.store(db, slot, value);
    Atomics.store(ei, slot, value);
    q.db = new DoorbellTracker(value);
    q.db.eventIdx = value;
  }

  /** a queue created while shadows are on: its slots start at 0 */
  private shadowNewQueue(q: SubQueue | CompQueue, slot: number): void {
    if (!this.dbbuf) return;
    try {
      this.attachShadow(q, slot, 0, this.dbbuf.shadowView(), this.dbbuf.eventIdxView());
    } catch (e) {
      this.shadowFault(e);
    }
  }

  // ------------------------------------------------------------ queues and completions

  private cqFull(cq: CompQueue, extra: number): boolean {
    const used = (cq.tail - cq.head + cq.size) % cq.size;
    return used + cq.reserved + extra >= cq.size - 1;
  }

  /** Fetches and executes the commands of one SQ, in order, until it is empty or its CQ is full. */
  private async runSq(sq: SubQueue): Promise<void> {
    if (sq.active) return;
    sq.active = true;
    const gen = this.generation;
    this.inflight++;
    let n = 0;
    try {
      while (this.running && gen === this.generation && this.sqs[sq.id] === sq && sq.head !== sq.tail) {
        const cq = this.cqs[sq.cqid];
        if (!cq) break;
        if (cq.db && this.cqFull(cq, 0)) {
          // the host may have consumed entries without ringing: look at its shadow head
          const s = this.readShadow(2 * cq.id + 1);
          if (s !== undefined && this.cqHeadFromShadow(cq, s)) this.cqHeadMoved(cq);
        }
        if (cq.backlog.length || this.cqFull(cq, 0)) break; // resumed by the CQ head doorbell
        let sqe: Uint8Array;
        try {
          sqe = await this.guestRead(sq.base + sq.head * SQE_SIZE, SQE_SIZE);
        } catch (e) {
          this.fatal(`cannot fetch SQ ${sq.id} entry ${sq.head}: ${(e as Error).message}`);
          break;
        }
        sq.head = (sq.head + 1) % sq.size;
        cq.reserved++;
        let res: Result | undefined;
        try {
          res = await this.execute(sq, sqe);
        } finally {
          cq.reserved--;
        }
        if (gen !== this.generation || this.sqs[sq.id] !== sq) break;
        if (res) this.post(cq, sq.id, sqe, res);
        if (++n % 32 === 0) this.flushIrqs();
      }
    } finally {
      sq.active = false;
      this.flushIrqs();
      if (--this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private post(cq: CompQueue, sqid: number, sqe: Uint8Array, res: Result): void {
    const cid = sqe[2]! | (sqe[3]! << 8);
    if (res.status !== Status.SUCCESS) {
      this.errorCount++;
      const lba = sqid !== 0 ? BigInt(u64(sqe, 40)) : 0n;
      this.errors.push({ count: this.errorCount, sqid, cid, status: res.status, lba, nsid: new DataView(sqe.buffer, sqe.byteOffset).getUint32(4, true) });
      if (this.errors.length > 64) this.errors.shift();
    }
    if (this.cqFull(cq, 0) || cq.backlog.length) cq.backlog.push({ sqid, cid, status: res.status, dw0: res.dw0 ?? 0 });
    else this.writeCqe(cq, sqid, cid, res.status, res.dw0 ?? 0);
  }

  private writeCqe(cq: CompQueue, sqid: number, cid: number, status: number, dw0: number): void {
    const sqhd = this.sqs[sqid]?.head ?? 0;
    const addr = cq.base + cq.tail * CQE_SIZE;
    const dw3 = (cid | (cq.phase << 16) | (status << 17)) >>> 0;
    try {
      const v = this.dma.views(addr, CQE_SIZE, true);
      if (v.length === 1 && v[0]!.byteOffset % 4 === 0) {
        // the dword with the phase tag goes last, as a single store
        const w = new Int32Array(v[0]!.buffer, v[0]!.byteOffset, 4);
        w[0] = dw0;
        w[1] = 0;
        w[2] = sqhd | (sqid << 16);
        Atomics.store(w, 3, dw3 | 0);
      } else {
        this.dma.writeSync(addr, cqeBytes(dw0, sqhd, sqid, dw3));
      }
    } catch (e) {
      if (!(e instanceof DmaError)) throw e;
      // not shared memory: DMA_WRITE message (in order on the socket)
      const gen = this.generation;
      this.inflight++;
      void this.dma.write(addr, cqeBytes(dw0, sqhd, sqid, dw3)).then(
        () => {
          if (gen === this.generation) this.flushIrqs();
        },
        (err: Error) => this.fatal(`cannot post to CQ ${cq.id}: ${err.message}`),
      ).finally(() => {
        if (--this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
      });
    }
    cq.tail++;
    if (cq.tail === cq.size) {
      cq.tail = 0;
      cq.phase ^= 1;
    }
    cq.irqPending = true;
    cq.coalesced++;
  }

  /** Raises the interrupts of the CQs that got entries (one per CQ per batch). */
  private flushIrqs(timeUp = false): void {
    if (!this.running) return;
    const msix = this.msixEnabled();
    // Interrupt Coalescing (feature 08h): an I/O vector without Coalescing Disable waits for
    // THR + 1 entries or TIME x 100 us, whichever comes first (TIME 0: no waiting)
    const ic = this.features.intCoalescing;
    const thr = (ic & 0xff) + 1;
    const time = (ic >> 8) & 0xff;
    let intx = false;
    let waiting = false;
    for (const cq of this.cqs) {
      if (!cq || !cq.irqPending) continue;
      if (cq.ien && msix && time && !timeUp && cq.id !== 0 && !this.features.ivConfig[cq.iv] && cq.coalesced < thr) {
        waiting = true;
        continue;
      }
      cq.irqPending = false;
      cq.coalesced = 0;
      if (!cq.ien) continue;
      if (msix) this.trigger(IrqIndex.MSIX, cq.iv);
      else intx = true;
    }
    if (intx) this.updateIntx();
    if (waiting && !this.coalesceTimer) {
      this.coalesceTimer = setTimeout(() => {
        this.coalesceTimer = undefined;
        this.flushIrqs(true);
      }, Math.max(1, time / 10));
    }
  }

  /** INTx level: high while an interrupt-enabled CQ has entries the host has not consumed. */
  private updateIntx(): void {
    if (!this.running) return;
    let level = false;
    if (!this.msixEnabled() && !(this.intms & 1)) {
      for (const cq of this.cqs) if (cq && cq.ien && cq.head !== cq.tail) level = true;
    }
    this.setIrqLevel(level);
  }

  private fatal(msg: string): void {
    this.log(`controller fatal status: ${msg}`);
    this.csts |= CSTS.CFS;
    this.generation++;
  }

  /** Guest memory read: directly when shared, else by DMA_READ messages. */
  private guestRead(iova: number, len: number): Uint8Array | Promise<Uint8Array> {
    return guestRead(this.dma, iova, len);
  }

  private toGuest(segs: Segment[], data: Uint8Array): Promise<void> {
    return toGuest(this.dma, segs, data);
  }

  private fromGuest(segs: Segment[], len: number): Promise<Uint8Array> {
    return fromGuest(this.dma, segs, len);
  }

  /** zero-copy views of every segment, or undefined when some are not shared memory */
  private views(segs: Segment[], write: boolean): Uint8Array[] | undefined {
    return sgViews(this.dma, segs, write);
  }

  private async dataSegments(sq: SubQueue, sqe: Uint8Array, len: number): Promise<Segment[]> {
    const psdt = sqe[1]! >> 6;
    const mem = { read: (iova: number, n: number) => this.guestRead(iova, n) };
    if (psdt === 0) return prpSegments(mem, u64(sqe, 24), u64(sqe, 32), len, this.pageSize);
    if (sq.id === 0 || psdt === 3) throw new NvmeStatusError(Status.INVALID_FIELD | DNR, 'SGLs are for I/O commands');
    return sglSegments(mem, sqe.subarray(24, 40), len);
  }

  // ------------------------------------------------------------ command execution

  private async execute(sq: SubQueue, sqe: Uint8Array): Promise<Result | undefined> {
    try {
      if (sqe[1]! & 0x03) return { status: Status.INVALID_FIELD | DNR }; // fused operations unsupported
      return sq.id === 0 ? await this.admin(sq, sqe) : await this.io(sq, sqe);
    } catch (e) {
      if (e instanceof NvmeStatusError) return { status: e.status };
      if (e instanceof DmaError) return { status: Status.DATA_TRANSFER_ERROR };
      this.log(`internal error in opcode 0x${sqe[0]!.toString(16)}: ${(e as Error).stack ?? String(e)}`);
      return { status: Status.INTERNAL_ERROR };
    }
  }

  private async admin(sq: SubQueue, sqe: Uint8Array): Promise<Result | undefined> {
    const dv = new DataView(sqe.buffer, sqe.byteOffset, SQE_SIZE);
    const cdw10 = dv.getUint32(40, true);
    const cdw11 = dv.getUint32(44, true);
    const nsid = dv.getUint32(4, true);
    switch (sqe[0]) {
      case AdminOp.IDENTIFY:
        return this.identify(sq, sqe, nsid, cdw10);
      case AdminOp.GET_LOG_PAGE:
        return this.getLogPage(sq, sqe, cdw10, dv.getUint32(48, true), dv.getUint32(52, true), cdw11);
      case AdminOp.SET_FEATURES:
        return this.setFeatures(cdw10, cdw11);
      case AdminOp.GET_FEATURES:
        return this.getFeatures(cdw10, cdw11);
      case AdminOp.CREATE_CQ:
        return this.createCq(u64(sqe, 24), cdw10, cdw11);
      case AdminOp.CREATE_SQ:
        return this.createSq(u64(sqe, 24), cdw10, cdw11);
      case AdminOp.DELETE_SQ:
        return this.deleteSq(cdw10 & 0xffff);
      case AdminOp.DELETE_CQ:
        return this.deleteCq(cdw10 & 0xffff);
      case AdminOp.ABORT:
        return { status: Status.SUCCESS, dw0: 1 }; // commands complete at once: nothing to abort
      case AdminOp.ASYNC_EVENT: {
        if (this.aers.length >= 4) return { status: Status.AER_LIMIT_EXCEEDED | DNR };
        this.aers.push(dv.getUint16(2, true));
        queueMicrotask(() => this.deliverEvents());
        return undefined; // completes when an event happens
      }
      case AdminOp.KEEP_ALIVE:
        return { status: Status.SUCCESS };
      case AdminOp.DOORBELL_BUFFER_CONFIG:
        return this.shadowDoorbells ? this.doorbellBufferConfig(sqe) : { status: Status.INVALID_OPCODE | DNR };
      default:
        return { status: Status.INVALID_OPCODE | DNR };
    }
  }

  private async identify(sq: SubQueue, sqe: Uint8Array, nsid: number, cdw10: number): Promise<Result> {
    const cns = cdw10 & 0xff;
    let data: Uint8Array;
    switch (cns) {
      case Identify.CONTROLLER:
        data = Id.identifyController({
          vendorId: NVME_VENDOR,
          subsystemVendorId: NVME_VENDOR,
          serial: this.serial,
          model: 'vfio-user NVMe (Node.js)',
          firmware: '0.1.0',
          cntlid: 1,
          mdts: MDTS,
          maxQueueEntries: MQES + 1,
          namespaces: Math.max(0, ...this.namespaces.keys()),
          subnqn: `nqn.2024-01.io.github.vfio-user:nvme:${this.serial}`,
          oacs: this.shadowDoorbells ? 1 << 8 : 0, // Doorbell Buffer Config
        });
        break;
      case Identify.NAMESPACE: {
        const ns = this.namespaces.get(nsid);
        if (!ns) {
          if (nsid === 0 || nsid === 0xffffffff) return { status: Status.INVALID_NAMESPACE | DNR };
          data = new Uint8Array(4096); // an inactive namespace: zeroes
        } else data = Id.identifyNamespace(ns);
        break;
      }
      case Identify.ACTIVE_NS_LIST:
        if (nsid >= 0xfffffffe) return { status: Status.INVALID_NAMESPACE | DNR };
        data = Id.activeNamespaceList([...this.namespaces.keys()], nsid);
        break;
      case Identify.NS_DESCRIPTORS: {
        const ns = this.namespaces.get(nsid);
        if (!ns) return { status: Status.INVALID_NAMESPACE | DNR };
        data = Id.namespaceDescriptors(ns);
        break;
      }
      default:
        return { status: Status.INVALID_FIELD | DNR };
    }
    await this.toGuest(await this.dataSegments(sq, sqe, 4096), data);
    return { status: Status.SUCCESS };
  }

  private async getLogPage(sq: SubQueue, sqe: Uint8Array, cdw10: number, lpol: number, lpou: number, cdw11: number): Promise<Result> {
    const lid = cdw10 & 0xff;
    const rae = (cdw10 >> 15) & 1;
    const numd = (((cdw10 >>> 16) | ((cdw11 & 0xffff) << 16)) >>> 0) + 1; // unsigned: NUMDU can set bit 31
    const len = numd * 4;
    const offset = lpol + lpou * 2 ** 32;
    if (offset % 4) return { status: Status.INVALID_FIELD | DNR };
    // a guest-chosen length: never larger than a transfer may be (MDTS)
    if (len > 4096 * 2 ** MDTS) return { status: Status.INVALID_FIELD | DNR };
    let page: Uint8Array;
    switch (lid) {
      case LogPage.ERROR:
        page = Id.errorLog(this.errors);
        if (!rae) this.maskedEventTypes &= ~1;
        break;
      case LogPage.SMART: {
        page = Id.smartLog({
          criticalWarning: this.criticalWarning(),
          temperature: TEMPERATURE,
          ...this.smart,
          powerCycles: 1,
          powerOnSeconds: (Date.now() - this.started) / 1000,
          unsafeShutdowns: 0,
          errors: this.errorCount,
        });
        if (!rae) this.maskedEventTypes &= ~2;
        break;
      }
      case LogPage.FIRMWARE_SLOT:
        page = Id.firmwareSlotLog('0.1.0');
        break;
      default:
        return { status: Status.INVALID_LOG_PAGE | DNR };
    }
    if (offset > page.length) return { status: Status.INVALID_FIELD | DNR };
    const out = new Uint8Array(len);
    out.set(page.subarray(offset, offset + len));
    await this.toGuest(await this.dataSegments(sq, sqe, len), out);
    queueMicrotask(() => this.deliverEvents());
    return { status: Status.SUCCESS };
  }

  private criticalWarning(): number {
    const f = this.features;
    return TEMPERATURE >= f.tempOver || TEMPERATURE <= f.tempUnder ? 0x02 : 0;
  }

  private setFeatures(cdw10: number, cdw11: number): Result {
    const fid = cdw10 & 0xff;
    if (cdw10 & (1 << 31)) return { status: Status.FEATURE_NOT_SAVEABLE | DNR };
    const f = this.features;
    switch (fid) {
      case Feature.ARBITRATION:
        f.arbitration = cdw11;
        return { status: Status.SUCCESS };
      case Feature.POWER_MANAGEMENT:
        if ((cdw11 & 0x1f) !== 0) return { status: Status.INVALID_FIELD | DNR }; // power state 0 only
        f.powerManagement = cdw11 & 0xff;
        return { status: Status.SUCCESS };
      case Feature.TEMPERATURE_THRESHOLD: {
        const sel = (cdw11 >> 16) & 0xf;
        const thsel = (cdw11 >> 20) & 3;
        if (sel !== 0 && sel !== 1 || thsel > 1) return { status: Status.INVALID_FIELD | DNR };
        if (sel === 0) {
          const before = this.criticalWarning();
          if (thsel === 0) f.tempOver = cdw11 & 0xffff;
          else f.tempUnder = cdw11 & 0xffff;
          if (!before && this.criticalWarning()) this.asyncEvent(1, 0x01, LogPage.SMART); // SMART: temperature threshold
        }
        return { status: Status.SUCCESS };
      }
      case Feature.ERROR_RECOVERY:
        f.errorRecovery = cdw11 & 0x1ffff;
        return { status: Status.SUCCESS };
      case Feature.VOLATILE_WRITE_CACHE: {
        const was = f.vwc;
        f.vwc = (cdw11 & 1) === 1;
        if (was && !f.vwc) for (const ns of this.namespaces.values()) ns.backend.flush();
        return { status: Status.SUCCESS };
      }
      case Feature.NUMBER_OF_QUEUES: {
        const nsqr = cdw11 & 0xffff;
        const ncqr = cdw11 >>> 16;
        if (nsqr === 0xffff || ncqr === 0xffff) return { status: Status.INVALID_FIELD | DNR };
        if (f.queuesSet && this.sqs.length > 1) return { status: Status.COMMAND_SEQUENCE_ERROR | DNR };
        f.nsqa = Math.min(nsqr, this.maxIoQueues - 1);
        f.ncqa = Math.min(ncqr, this.maxIoQueues - 1);
        f.queuesSet = true;
        return { status: Status.SUCCESS, dw0: (f.nsqa | (f.ncqa << 16)) >>> 0 };
      }
      case Feature.INTERRUPT_COALESCING:
        f.intCoalescing = cdw11 & 0xffff;
        return { status: Status.SUCCESS };
      case Feature.INTERRUPT_VECTOR_CONFIG: {
        const iv = cdw11 & 0xffff;
        if (iv > this.maxIoQueues) return { status: Status.INVALID_FIELD | DNR };
        f.ivConfig[iv] = (cdw11 >> 16) & 1;
        return { status: Status.SUCCESS };
      }
      case Feature.WRITE_ATOMICITY:
        f.writeAtomicity = cdw11 & 1;
        return { status: Status.SUCCESS };
      case Feature.ASYNC_EVENT_CONFIG:
        f.asyncEventConfig = cdw11 & 0x1ff;
        return { status: Status.SUCCESS };
      default:
        return { status: Status.INVALID_FIELD | DNR };
    }
  }

  private getFeatures(cdw10: number, cdw11: number): Result {
    const fid = cdw10 & 0xff;
    const sel = (cdw10 >> 8) & 7;
    const f = sel === 1 ? defaultFeatures(this.maxIoQueues) : this.features;
    if (sel === 3) {
      // supported capabilities: every feature here is changeable, none saveable
      return Object.values(Feature).includes(fid as never) ? { status: Status.SUCCESS, dw0: 0x4 } : { status: Status.INVALID_FIELD | DNR };
    }
    if (sel > 3) return { status: Status.INVALID_FIELD | DNR };
    switch (fid) {
      case Feature.ARBITRATION: return { status: Status.SUCCESS, dw0: f.arbitration };
      case Feature.POWER_MANAGEMENT: return { status: Status.SUCCESS, dw0: f.powerManagement };
      case Feature.TEMPERATURE_THRESHOLD: {
        const thsel = (cdw11 >> 20) & 3;
        const tsel = (cdw11 >> 16) & 0xf;
        if (tsel > 1 || thsel > 1) return { status: Status.INVALID_FIELD | DNR };
        const v = tsel === 1 ? (thsel === 0 ? 0xffff : 0) : thsel === 0 ? f.tempOver : f.tempUnder;
        return { status: Status.SUCCESS, dw0: v };
      }
      case Feature.ERROR_RECOVERY: return { status: Status.SUCCESS, dw0: f.errorRecovery };
      case Feature.VOLATILE_WRITE_CACHE: return { status: Status.SUCCESS, dw0: f.vwc ? 1 : 0 };
      case Feature.NUMBER_OF_QUEUES: return { status: Status.SUCCESS, dw0: (f.nsqa | (f.ncqa << 16)) >>> 0 };
      case Feature.INTERRUPT_COALESCING: return { status: Status.SUCCESS, dw0: f.intCoalescing };
      case Feature.INTERRUPT_VECTOR_CONFIG: {
        const iv = cdw11 & 0xffff;
        if (iv > this.maxIoQueues) return { status: Status.INVALID_FIELD | DNR };
        return { status: Status.SUCCESS, dw0: iv | ((f.ivConfig[iv] ?? 0) << 16) };
      }
      case Feature.WRITE_ATOMICITY: return { status: Status.SUCCESS, dw0: f.writeAtomicity };
      case Feature.ASYNC_EVENT_CONFIG: return { status: Status.SUCCESS, dw0: f.asyncEventConfig };
      default: return { status: Status.INVALID_FIELD | DNR };
    }
  }

  private createCq(base: number, cdw10: number, cdw11: number): Result {
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    const pc = cdw11 & 1;
    const ien = (cdw11 & 2) !== 0;
    const iv = cdw11 >>> 16;
    if (qid === 0 || qid > this.maxIoQueues || this.cqs[qid]) return { status: Status.INVALID_QID | DNR };
    if (size < 2 || size > MQES + 1) return { status: Status.INVALID_QUEUE_SIZE | DNR };
    if (!pc) return { status: Status.INVALID_FIELD | DNR }; // CAP.CQR: physically contiguous only
    if (base % this.pageSize) return { status: Status.INVALID_PRP_OFFSET | DNR };
    if (iv > this.maxIoQueues || (!this.msixEnabled() && iv !== 0 && ien)) return { status: Status.INVALID_INTERRUPT_VECTOR | DNR };
    if (((this.cc >> CC.IOCQES_SHIFT) & 0xf) !== 4) return { status: Status.INVALID_FIELD | DNR };
    const cq = newCq(qid, base, size, iv, ien);
    this.cqs[qid] = cq;
    this.shadowNewQueue(cq, 2 * qid + 1);
    return { status: Status.SUCCESS };
  }

  private createSq(base: number, cdw10: number, cdw11: number): Result {
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    const pc = cdw11 & 1;
    const cqid = cdw11 >>> 16;
    if (qid === 0 || qid > this.maxIoQueues || this.sqs[qid]) return { status: Status.INVALID_QID | DNR };
    if (cqid === 0 || !this.cqs[cqid]) return { status: Status.CQ_INVALID | DNR };
    if (size < 2 || size > MQES + 1) return { status: Status.INVALID_QUEUE_SIZE | DNR };
    if (!pc) return { status: Status.INVALID_FIELD | DNR };
    if (base % this.pageSize) return { status: Status.INVALID_PRP_OFFSET | DNR };
    if (((this.cc >> CC.IOSQES_SHIFT) & 0xf) !== 6) return { status: Status.INVALID_FIELD | DNR };
    const sq: SubQueue = { id: qid, base, size, head: 0, tail: 0, cqid, prio: (cdw11 >> 1) & 3, active: false };
    this.sqs[qid] = sq;
    this.shadowNewQueue(sq, 2 * qid);
    return { status: Status.SUCCESS };
  }

  private deleteSq(qid: number): Result {
    if (qid === 0 || !this.sqs[qid]) return { status: Status.INVALID_QID | DNR };
    this.sqs[qid] = undefined; // a command being executed on it completes nowhere
    return { status: Status.SUCCESS };
  }

  private deleteCq(qid: number): Result {
    if (qid === 0 || !this.cqs[qid]) return { status: Status.INVALID_QID | DNR };
    if (this.sqs.some((s) => s && s.cqid === qid)) return { status: Status.INVALID_QUEUE_DELETION | DNR };
    this.cqs[qid] = undefined;
    this.updateIntx();
    return { status: Status.SUCCESS };
  }

  // ------------------------------------------------------------ asynchronous events

  private asyncEvent(type: number, info: number, log: number): void {
    // SMART/health events are reported only when enabled in Async Event Configuration
    if (type === 1 && !(this.features.asyncEventConfig & 0x02)) return;
    this.events.push({ type, info, log });
    this.deliverEvents();
  }

  private deliverEvents(): void {
    const acq = this.cqs[0];
    if (!acq || !this.running) return;
    while (this.aers.length) {
      const i = this.events.findIndex((e) => !(this.maskedEventTypes & (1 << e.type)));
      if (i < 0) break;
      const e = this.events.splice(i, 1)[0]!;
      this.maskedEventTypes |= 1 << e.type; // until the host reads the log page
      const cid = this.aers.shift()!;
      const sqe = new Uint8Array(SQE_SIZE);
      sqe[2] = cid & 0xff;
      sqe[3] = cid >> 8;
      this.post(acq, 0, sqe, { status: Status.SUCCESS, dw0: e.type | (e.info << 8) | (e.log << 16) });
    }
    this.flushIrqs();
  }

  // ------------------------------------------------------------ I/O commands

  private async io(sq: SubQueue, sqe: Uint8Array): Promise<Result> {
    const dv = new DataView(sqe.buffer, sqe.byteOffset, SQE_SIZE);
    const opc = sqe[0]!;
    const nsid = dv.getUint32(4, true);
    if (opc === IoOp.FLUSH) {
      if (nsid === 0xffffffff) {
        for (const n of this.namespaces.values()) n.backend.flush();
        return { status: Status.SUCCESS };
      }
      const n = this.namespaces.get(nsid);
      if (!n) return { status: Status.INVALID_NAMESPACE | DNR };
      n.backend.flush();
      return { status: Status.SUCCESS };
    }
    if (opc !== IoOp.READ && opc !== IoOp.WRITE && opc !== IoOp.WRITE_ZEROES && opc !== IoOp.DSM) {
      return { status: Status.INVALID_OPCODE | DNR };
    }
    const ns = this.namespaces.get(nsid);
    if (!ns) return { status: Status.INVALID_NAMESPACE | DNR };
    if (opc === IoOp.DSM) return this.dsm(sq, sqe, ns, dv.getUint32(40, true), dv.getUint32(44, true));
    const slba = BigInt(u64(sqe, 40));
    const nlb = (dv.getUint32(48, true) & 0xffff) + 1;
    const fua = (dv.getUint32(48, true) >>> 30) & 1;
    if (!ns.inRange(slba, nlb)) return { status: Status.LBA_OUT_OF_RANGE | DNR };
    const pos = Number(slba) * ns.lbaSize;
    const len = nlb * ns.lbaSize;
    if (opc === IoOp.WRITE_ZEROES) {
      ns.backend.zero(pos, len);
      if (!this.features.vwc || fua) ns.backend.flush();
      return { status: Status.SUCCESS };
    }
    if (len > 4096 * 2 ** MDTS) return { status: Status.INVALID_FIELD | DNR };
    const segs = await this.dataSegments(sq, sqe, len);
    if (opc === IoOp.READ) {
      const v = this.views(segs, true);
      if (v) ns.backend.readv(v, pos);
      else {
        const buf = new Uint8Array(len);
        ns.backend.readv([buf], pos);
        await this.toGuest(segs, buf);
      }
      this.smart.readCommands++;
      this.smart.bytesRead += len;
    } else {
      const v = this.views(segs, false);
      ns.backend.writev(v ?? [await this.fromGuest(segs, len)], pos);
      if (!this.features.vwc || fua) ns.backend.flush();
      this.smart.writeCommands++;
      this.smart.bytesWritten += len;
    }
    return { status: Status.SUCCESS };
  }

  private async dsm(sq: SubQueue, sqe: Uint8Array, ns: Namespace, cdw10: number, cdw11: number): Promise<Result> {
    const nr = (cdw10 & 0xff) + 1;
    const data = await this.fromGuest(await this.dataSegments(sq, sqe, nr * 16), nr * 16);
    if (!(cdw11 & 0x4)) return { status: Status.SUCCESS }; // only hints (IDR/IDW): nothing to do
    const dv = new DataView(data.buffer);
    const ranges: [number, number][] = [];
    for (let i = 0; i < nr; i++) {
      const len = dv.getUint32(i * 16 + 4, true);
      const slba = BigInt(u64(data, i * 16 + 8));
      if (!ns.inRange(slba, len)) return { status: Status.LBA_OUT_OF_RANGE | DNR };
      ranges.push([Number(slba) * ns.lbaSize, len * ns.lbaSize]);
    }
    // deallocated blocks read as zeroes (DLFEAT): the image gets zeroes
    for (const [pos, len] of ranges) if (len) ns.backend.zero(pos, len);
    if (!this.features.vwc) ns.backend.flush();
    return { status: Status.SUCCESS };
  }

  // ------------------------------------------------------------ migration

  /**
   * Shadow doorbells after a migration (optional field: older sources have none). The queues
   * carry the values applied so far; the next scan applies whatever the host wrote since.
   */
  private restoreShadows(b: { dbs: number; eis: number } | undefined): void {
    this.dbbuf = undefined;
    if (!b) return;
    this.dbbuf = new DoorbellBuffers(this.dma, b.dbs, b.eis, 2 * (this.maxIoQueues + 1));
    for (const q of this.sqs) if (q) q.db = new DoorbellTracker(q.tail);
    for (const q of this.cqs) if (q) q.db = new DoorbellTracker(q.head);
  }

  private setRunning(on: boolean): void {
    if (on === this.running) return;
    this.running = on;
    if (!on) return;
    // catch up with doorbells written while stopped, and interrupts held back
    for (const sq of this.sqs) if (sq && sq.head !== sq.tail) void this.runSq(sq);
    for (const cq of this.cqs) if (cq && cq.head !== cq.tail && cq.ien) cq.irqPending = true;
    this.flushIrqs();
    this.updateIntx();
    this.deliverEvents();
    if (this.dbbuf) this.poller.kick(); // shadows written while stopped
  }

  /** Stops fetching and waits until nothing is in flight. */
  async quiesce(): Promise<void> {
    this.running = false;
    if (this.inflight > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
  }

  private async saveState(): Promise<Uint8Array> {
    await this.quiesce();
    const ns = [...this.namespaces.values()].map((n) => ({ nsid: n.nsid, blocks: n.blocks, lbaSize: n.lbaSize, nguid: hex(n.nguid) }));
    return encodeState('nvme', 1, {
      cc: this.cc,
      csts: this.csts,
      aqa: this.aqa,
      asq: this.asq,
      acq: this.acq,
      intms: this.intms,
      sqs: JSON.stringify(this.sqs.map((q) => q && { id: q.id, base: q.base, size: q.size, head: q.head, tail: q.tail, cqid: q.cqid, prio: q.prio })),
      cqs: JSON.stringify(this.cqs.map((q) => q && { id: q.id, base: q.base, size: q.size, head: q.head, tail: q.tail, phase: q.phase, iv: q.iv, ien: q.ien, backlog: q.backlog })),
      features: JSON.stringify(this.features),
      aers: JSON.stringify(this.aers),
      events: JSON.stringify(this.events),
      maskedEventTypes: this.maskedEventTypes,
      errorCount: this.errorCount,
      smart: JSON.stringify(this.smart),
      namespaces: JSON.stringify(ns),
      doorbells: this.bar0.memory ? hex(this.bar0.memory.subarray(DOORBELL_BASE, DOORBELL_BASE + 0x1000)) : '',
      dbbuf: this.dbbuf ? JSON.stringify({ dbs: this.dbbuf.dbs, eis: this.dbbuf.eis }) : '',
    });
  }

  private loadState(data: Uint8Array): void {
    const s = decodeState<Record<string, unknown>>(data, 'nvme', 1, {
      cc: 'number', csts: 'number', aqa: 'number', asq: 'number', acq: 'number', intms: 'number',
      sqs: 'string', cqs: 'string', features: 'string', aers: 'string', events: 'string',
      maskedEventTypes: 'number', errorCount: 'number', smart: 'string', namespaces: 'string', doorbells: 'string',
    });
    const { json, uint, u32 } = Check;
    // validate everything before applying anything
    const nsList = json(s.namespaces, 'namespaces');
    if (!Array.isArray(nsList)) Check.bad('namespaces must be an array');
    if (nsList.length !== this.namespaces.size) Check.bad('namespace count differs');
    for (const n of nsList as { nsid?: unknown; blocks?: unknown; lbaSize?: unknown; nguid?: unknown }[]) {
      const mine = typeof n?.nsid === 'number' ? this.namespaces.get(n.nsid) : undefined;
      if (!mine || mine.blocks !== n.blocks || mine.lbaSize !== n.lbaSize || hex(mine.nguid) !== n.nguid) Check.bad(`namespace ${String(n?.nsid)} differs on this side`);
    }
    const queues = (text: unknown, what: string): (Record<string, unknown> | null)[] => {
      const v = json(text, what);
      if (!Array.isArray(v) || v.length > this.maxIoQueues + 1) Check.bad(`${what} must be an array of at most ${this.maxIoQueues + 1}`);
      return v.map((q, i) => (q === null ? null : typeof q === 'object' && !Array.isArray(q) ? (q as Record<string, unknown>) : Check.bad(`${what}[${i}]`)));
    };
    const sqs = queues(s.sqs, 'sqs').map((q, i) => {
      if (!q) return undefined;
      if (q.id !== i) Check.bad(`SQ ${i} has id ${String(q.id)}`);
      const size = uint(q.size, MQES + 1, `SQ ${i} size`);
      if (size < 2) Check.bad(`SQ ${i} size ${size}`);
      return { id: i, base: uint(q.base, Number.MAX_SAFE_INTEGER, `SQ ${i} base`), size, head: uint(q.head, size - 1, `SQ ${i} head`), tail: uint(q.tail, size - 1, `SQ ${i} tail`), cqid: uint(q.cqid, this.maxIoQueues, `SQ ${i} cqid`), prio: uint(q.prio, 3, `SQ ${i} prio`), active: false };
    });
    const cqs = queues(s.cqs, 'cqs').map((q, i) => {
      if (!q) return undefined;
      if (q.id !== i) Check.bad(`CQ ${i} has id ${String(q.id)}`);
      const size = uint(q.size, MQES + 1, `CQ ${i} size`);
      if (size < 2) Check.bad(`CQ ${i} size ${size}`);
      if (typeof q.ien !== 'boolean') Check.bad(`CQ ${i} ien`);
      const cq = newCq(i, uint(q.base, Number.MAX_SAFE_INTEGER, `CQ ${i} base`), size, uint(q.iv, 2047, `CQ ${i} iv`), q.ien);
      cq.head = uint(q.head, size - 1, `CQ ${i} head`);
      cq.tail = uint(q.tail, size - 1, `CQ ${i} tail`);
      cq.phase = uint(q.phase, 1, `CQ ${i} phase`);
      cq.backlog = Check.backlog(q.backlog, this.maxIoQueues, `CQ ${i} backlog`);
      return cq;
    });
    for (const sq of sqs) if (sq && !cqs[sq.cqid]) Check.bad(`SQ ${sq.id} feeds CQ ${sq.cqid}, which does not exist`);
    const features: Features = Check.features(json(s.features, 'features'), this.maxIoQueues);
    const aers = Check.aers(json(s.aers, 'aers'), 4);
    const events = Check.events(json(s.events, 'events'));
    const smart = Check.smart(json(s.smart, 'smart'));
    const regs = { cc: u32(s.cc, 'cc'), csts: u32(s.csts, 'csts'), aqa: u32(s.aqa, 'aqa'), asq: uint(s.asq, Number.MAX_SAFE_INTEGER, 'asq'), acq: uint(s.acq, Number.MAX_SAFE_INTEGER, 'acq'), intms: u32(s.intms, 'intms') };
    const maskedEventTypes = uint(s.maskedEventTypes, 0xff, 'maskedEventTypes');
    const errorCount = uint(s.errorCount, Number.MAX_SAFE_INTEGER, 'errorCount');
    const doorbells = Check.hexBytes(s.doorbells, 0x1000, 'doorbells');
    const shadows = parseShadows(s.dbbuf);
    // apply
    this.generation++;
    this.cc = regs.cc;
    this.csts = regs.csts;
    this.aqa = regs.aqa;
    this.asq = regs.asq;
    this.acq = regs.acq;
    this.intms = regs.intms;
    this.pageSize = 4096 * 2 ** ((this.cc >> CC.MPS_SHIFT) & 0xf);
    this.sqs = sqs;
    this.cqs = cqs;
    this.features = features;
    this.aers = aers;
    this.events = events;
    this.maskedEventTypes = maskedEventTypes;
    this.errorCount = errorCount;
    this.smart = smart;
    if (this.bar0.memory && doorbells) this.bar0.memory.set(doorbells, DOORBELL_BASE);
    this.poller.stop();
    this.restoreShadows(shadows);
    if (this.csts & CSTS.RDY) this.startPolling();
    if (this.lastDoorbells && this.bar0.memory) {
      // the doorbell values carried over are already reflected in the queues
      this.lastDoorbells.set(new Uint32Array(this.bar0.memory.buffer, this.bar0.memory.byteOffset + DOORBELL_BASE, this.lastDoorbells.length));
    }
  }
}

/** the optional dbbuf field of the migration state */
function parseShadows(v: unknown): { dbs: number; eis: number } | undefined {
  if (v === undefined || v === '') return undefined;
  let d: { dbs?: unknown; eis?: unknown } | undefined;
  try {
    d = typeof v === 'string' ? (JSON.parse(v) as typeof d) : undefined;
  } catch {
    d = undefined;
  }
  const addr = (a: unknown): number => (typeof a === 'number' && Number.isSafeInteger(a) && a > 0 && a % 4096 === 0 ? a : 0);
  const dbs = addr(d?.dbs);
  const eis = addr(d?.eis);
  if (!dbs || !eis) throw new NvmeStatusError(Status.INTERNAL_ERROR, 'nvme state: bad doorbell buffers');
  return { dbs, eis };
}

function newCq(id: number, base: number, size: number, iv: number, ien: boolean): CompQueue {
  return { id, base, size, head: 0, tail: 0, phase: 1, iv, ien, reserved: 0, backlog: [], irqPending: false, coalesced: 0 };
}

function defaultFeatures(ioQueues: number): Features {
  return {
    arbitration: 0,
    powerManagement: 0,
    tempOver: 343,
    tempUnder: 0,
    errorRecovery: 0,
    vwc: true,
    nsqa: ioQueues - 1,
    ncqa: ioQueues - 1,
    queuesSet: false,
    intCoalescing: 0,
    ivConfig: {},
    asyncEventConfig: 0,
    writeAtomicity: 0,
  };
}

function cqeBytes(dw0: number, sqhd: number, sqid: number, dw3: number): Uint8Array {
  const b = new Uint8Array(CQE_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, dw0 >>> 0, true);
  dv.setUint32(8, (sqhd | (sqid << 16)) >>> 0, true);
  dv.setUint32(12, dw3, true);
  return b;
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

function serialFrom(identity: string): string {
  let h = 2166136261;
  for (let i = 0; i < identity.length; i++) h = Math.imul(h ^ identity.charCodeAt(i), 16777619) >>> 0;
  return `NX${h.toString(16).padStart(8, '0').toUpperCase()}`;
}
