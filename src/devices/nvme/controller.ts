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
 * Commands are fetched and started in order per SQ; with shared guest memory they run
 * synchronously, one at a time (zero-copy: preadv/pwritev between the image and DMA views).
 * Without it (DMA by message) an I/O command that waits for messages runs beside the next
 * ones and completes when done; admin commands still run one at a time. Guest memory is only
 * ever accessed through dev.dma; a DMA fault becomes a Data Transfer Error.
 *
 * Migration: the device runs only in RUNNING and PRE_COPY; save() quiesces (waits for
 * in-flight commands), and the state is registers, queues, features and namespace identity.
 * The image itself is shared by source and destination.
 *
 * This file is the coordinator: BAR0 accesses, enable/reset/shutdown, command dispatch. The
 * parts: registers.ts (register values), queues.ts (fetch, completions, interrupts),
 * doorbells.ts (MMIO, mmap page, shadow doorbells), admin.ts, io.ts, migration.ts; the
 * state they share is core.ts.
 */
import { PciDevice } from '../../server/device.js';
import { native } from '../../native/index.js';
import { DmaError } from '../../server/dma.js';
import { MigState } from '../../server/migration.js';
import { Reg, DOORBELL_BASE, CC, CSTS, Status, DNR, NvmeStatusError, NVME_VENDOR, NVME_DEVICE } from './constants.js';
import { Namespace, FileBackend, MemoryBackend, type Backend } from './namespace.js';
import { Poller } from './poller.js';
import { NvmeCore, newCq, defaultFeatures, type SubQueue, type Result } from './core.js';
import { updateIntx } from './queues.js';
import { doorbell, startPolling, scanDoorbells, armEventIdx } from './doorbells.js';
import { admin } from './admin.js';
import { io } from './io.js';
import { setRunning, quiesce, saveState, loadState } from './migration.js';

/**
 * Default poll window after the last I/O, in microseconds. Measured in a Linux guest under
 * QEMU TCG with shared RAM (bench/README.md, "NVMe in the guest", 2026-12-02 05:40): at 50 µs
 * the guest's next queue-depth-1 command came later than the window, which shrank to 0, and
 * every QD 1 command cost a trapped doorbell message (0.66-1.09x of QEMU's nvme over the 8 jobs); at 1000 µs the
 * poll picks up the guest's shadow doorbell write instead (0.01-0.03 doorbells per I/O,
 * 0.98-1.27x), at about twice the server CPU per I/O while I/O flows, and none when idle.
 */
export const DEFAULT_POLL_US = 1000;

export interface NvmeOptions {
  /** raw image file; created with `size` bytes when missing */
  image?: string | undefined;
  /** bytes (required for memory namespaces and new images) */
  size?: number | undefined;
  lbaSize?: 512 | 4096 | undefined;
  serial?: string | undefined;
  /** number of I/O queue pairs offered (default 16) */
  ioQueues?: number | undefined;
  /** doorbell mechanism (default 'trap') */
  doorbells?: 'trap' | 'mmap' | undefined;
  /** offer Doorbell Buffer Config (shadow doorbells, default true) */
  shadowDoorbells?: boolean | undefined;
  /**
   * keep polling the shadow doorbells (and the mmap page) at most this long after the last
   * I/O (microseconds, default {@link DEFAULT_POLL_US}; the window adapts below it)
   */
  pollUs?: number | undefined;
  /** log function for unexpected errors */
  log?: ((msg: string) => void) | undefined;
}

const BAR0_SIZE = 0x4000;
const MSIX_TABLE = 0x2000;
const MSIX_PBA = 0x3000;

export class NvmeDevice extends PciDevice {
  readonly namespaces = new Map<number, Namespace>();
  readonly maxIoQueues: number;
  readonly serial: string;
  readonly doorbellMode: 'trap' | 'mmap';
  readonly shadowDoorbells: boolean;
  private readonly log: (msg: string) => void;
  /** the controller's state, shared by its parts */
  private readonly c: NvmeCore;

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

    const access = {
      read: (off: number, len: number) => this.readBar(off, len),
      write: (off: number, data: Uint8Array) => this.writeBar(off, data),
    };
    const bar0 =
      this.doorbellMode === 'mmap'
        ? this.addRegion(0, { size: BAR0_SIZE, bar: { kind: 'mem64' }, shared: true, mmapAreas: [{ offset: DOORBELL_BASE, size: 0x1000 }], access })
        : this.addRegion(0, { size: BAR0_SIZE, bar: { kind: 'mem64' }, access });
    const c = new NvmeCore({
      dev: this,
      bar0,
      namespaces: this.namespaces,
      maxIoQueues: ioQueues,
      serial: this.serial,
      shadowDoorbells: this.shadowDoorbells,
      log: this.log,
    });
    c.poller = new Poller({
      step: () => scanDoorbells(c),
      arm: () => armEventIdx(c),
      spinUs: o.pollUs ?? DEFAULT_POLL_US,
      // the doorbell page is written without any notification: never fully asleep
      idleMs: this.doorbellMode === 'mmap' ? 1 : 0,
      // a pass that found nothing gives the CPU to whatever is queued on it: on a host with
      // few CPUs that is often the VMM's thread that delivers our interrupt or runs the guest
      // (measured: a poll that does not yield halved QD 1 throughput on a busy 2-vCPU host)
      idle: () => native.schedYield(),
    });
    c.execute = (sq, sqe) => this.execute(sq, sqe);
    // under a guest IOMMU the host maps a command's pages (one synchronous DMA_MAP each) just
    // before it rings, and unmaps them after the completion: poll through those bursts
    this.dma.watch(() => {
      if (c.dbbuf && c.running && c.regs.csts & CSTS.RDY) c.poller.hint();
    });
    this.c = c;
    this.config.addPowerManagement();
    this.addMsix({ vectors: ioQueues + 1, tableBar: 0, tableOffset: MSIX_TABLE, pbaBar: 0, pbaOffset: MSIX_PBA });
    this.config.addPciExpress({ flr: true, maxPayload: 256 });
    this.onReset = () => this.powerOnReset();
    this.migration = {
      save: () => saveState(c),
      load: (data) => loadState(c, data),
      onStateChange: (_from, to) => setRunning(c, to === MigState.RUNNING || to === MigState.PRE_COPY),
      quiesce: () => quiesce(c),
    };
  }

  /** the namespace backends' descriptions (for logs) */
  describe(): string {
    return [...this.namespaces.values()].map((n) => `ns${n.nsid}: ${n.backend.description}, ${n.blocks} x ${n.lbaSize} B`).join('; ');
  }

  override destroy(): void {
    this.c.poller.stop();
    clearTimeout(this.c.coalesceTimer);
    for (const ns of this.namespaces.values()) ns.backend.close();
    super.destroy();
  }

  /** poller statistics (wake-ups from sleep, polling turns) */
  get pollStats(): { wakeups: number; turns: number; polling: boolean; pending: boolean } {
    const p = this.c.poller;
    return { wakeups: p.wakeups, turns: p.turns, polling: p.polling, pending: p.pending };
  }

  /** counters for benchmarks' per-I/O breakdowns: commands completed, interrupts raised, MMIO doorbell writes, poller */
  get perfStats(): { commands: number; irqs: number; mmioDoorbells: number; pollWakeups: number; pollTurns: number; pollWindowUs: number } {
    const p = this.c.poller;
    return { ...this.c.counters, pollWakeups: p.wakeups, pollTurns: p.turns, pollWindowUs: p.windowUs };
  }

  /** Stops fetching and waits until nothing is in flight. */
  quiesce(): Promise<void> {
    return quiesce(this.c);
  }

  // ------------------------------------------------------------ BAR0

  private readBar(off: number, len: number): Uint8Array {
    const mem = this.c.bar0.memory;
    const out = new Uint8Array(len);
    for (let i = 0; i < len; i++) {
      const a = off + i;
      if (a >= DOORBELL_BASE) {
        out[i] = mem ? mem[a]! : 0;
        continue;
      }
      out[i] = (this.c.regs.read32(a & ~3) >>> ((a & 3) * 8)) & 0xff;
    }
    return out;
  }

  private writeBar(off: number, data: Uint8Array): void {
    // split into dwords; unwritten bytes keep their current value
    let i = 0;
    while (i < data.length) {
      const a = off + i;
      const dw = a & ~3;
      let merged = dw >= DOORBELL_BASE ? 0 : this.c.regs.read32(dw);
      let only = 0;
      for (; i < data.length && ((off + i) & ~3) === dw; i++) {
        const sh = ((off + i) & 3) * 8;
        merged = ((merged & ~(0xff << sh)) | (data[i]! << sh)) >>> 0;
        only = (only | (data[i]! << sh)) >>> 0;
      }
      if (dw >= DOORBELL_BASE) {
        this.c.counters.mmioDoorbells++;
        doorbell(this.c, dw, merged);
      }
      else this.writeReg(dw, merged, only);
    }
  }

  private writeReg(off: number, v: number, only: number): void {
    const r = this.c.regs;
    switch (off) {
      case Reg.INTMS:
        if (!this.c.msixEnabled()) r.intms = (r.intms | only) >>> 0;
        updateIntx(this.c);
        break;
      case Reg.INTMC:
        if (!this.c.msixEnabled()) r.intms = (r.intms & ~only) >>> 0;
        updateIntx(this.c);
        break;
      case Reg.CC:
        this.writeCc(v);
        break;
      default:
        r.writeAdminQueue(off, v); // else read-only or reserved
        break;
    }
  }

  // ------------------------------------------------------------ enable, reset, shutdown

  private writeCc(v: number): void {
    const r = this.c.regs;
    const old = r.cc;
    r.cc = v;
    if (!(old & CC.EN) && v & CC.EN) this.enable();
    else if (old & CC.EN && !(v & CC.EN)) this.controllerReset();
    const shn = (v >> CC.SHN_SHIFT) & 3;
    const oldShn = (old >> CC.SHN_SHIFT) & 3;
    if (shn && !oldShn) {
      // normal or abrupt shutdown: make everything durable, then report complete
      r.csts = (r.csts & ~(3 << CSTS.SHST_SHIFT)) | (CSTS.SHST_OCCURRING << CSTS.SHST_SHIFT);
      for (const ns of this.namespaces.values()) {
        try {
          ns.backend.flush();
        } catch (e) {
          this.log(`flush at shutdown failed: ${(e as Error).message}`);
        }
      }
      r.csts = (r.csts & ~(3 << CSTS.SHST_SHIFT)) | (CSTS.SHST_COMPLETE << CSTS.SHST_SHIFT);
    }
  }

  private enable(): void {
    const r = this.c.regs;
    const mps = (r.cc >> CC.MPS_SHIFT) & 0xf;
    const css = (r.cc >> CC.CSS_SHIFT) & 7;
    const asqs = (r.aqa & 0xfff) + 1;
    const acqs = ((r.aqa >> 16) & 0xfff) + 1;
    r.pageSize = 4096 * 2 ** mps;
    if (mps > 4 || css !== 0 || asqs < 2 || acqs < 2 || r.asq % r.pageSize || r.acq % r.pageSize) {
      r.csts |= CSTS.CFS;
      this.log(`enable refused: CC=0x${r.cc.toString(16)} AQA=0x${r.aqa.toString(16)}`);
      return;
    }
    this.c.sqs = [{ id: 0, base: r.asq, size: asqs, head: 0, tail: 0, cqid: 0, prio: 0, active: false }];
    this.c.cqs = [newCq(0, r.acq, acqs, 0, true)];
    r.csts = CSTS.RDY; // SHST back to normal
    startPolling(this.c);
  }

  /** CC.EN 1 -> 0: every queue is deleted, outstanding commands are dropped, features return to defaults. */
  private controllerReset(): void {
    const c = this.c;
    c.generation++;
    c.sqs = [];
    c.cqs = [];
    c.aers = [];
    c.events = [];
    c.maskedEventTypes = 0;
    c.dbbuf = undefined;
    c.features = defaultFeatures(this.maxIoQueues);
    c.regs.intms = 0;
    c.regs.csts &= ~(CSTS.RDY | CSTS.CFS);
    c.poller.stop();
    clearTimeout(c.coalesceTimer);
    c.coalesceTimer = undefined;
    updateIntx(c);
  }

  /** PCI-level reset (DEVICE_RESET, FLR): all registers to their power-on values. */
  private powerOnReset(): void {
    this.controllerReset();
    this.c.regs.reset();
    this.c.bar0.memory?.fill(0);
  }

  // ------------------------------------------------------------ command dispatch

  /** Runs one command: synchronously when it can (I/O on shared memory), else a promise. */
  private execute(sq: SubQueue, sqe: Uint8Array): Result | undefined | Promise<Result | undefined> {
    try {
      if (sqe[1]! & 0x03) return { status: Status.INVALID_FIELD | DNR }; // fused operations unsupported
      const r = sq.id === 0 ? admin(this.c, sq, sqe) : io(this.c, sq, sqe);
      return r instanceof Promise ? r.catch((e: unknown) => this.failed(sqe, e)) : r;
    } catch (e) {
      return this.failed(sqe, e);
    }
  }

  private failed(sqe: Uint8Array, e: unknown): Result {
    if (e instanceof NvmeStatusError) return { status: e.status };
    if (e instanceof DmaError) return { status: Status.DATA_TRANSFER_ERROR };
    this.log(`internal error in opcode 0x${sqe[0]!.toString(16)}: ${(e as Error).stack ?? String(e)}`);
    return { status: Status.INTERNAL_ERROR };
  }
}

function serialFrom(identity: string): string {
  let h = 2166136261;
  for (let i = 0; i < identity.length; i++) h = Math.imul(h ^ identity.charCodeAt(i), 16777619) >>> 0;
  return `NX${h.toString(16).padStart(8, '0').toUpperCase()}`;
}
