/**
 * The state the parts of the NVMe controller share (registers, queues, features, events,
 * shadow doorbells, run state) and the few services they all use. The controller
 * (controller.ts) owns one and coordinates; queues.ts, doorbells.ts, admin.ts, io.ts and
 * migration.ts are functions over it. Not part of the public API.
 */
import type { PciDevice, Region } from '../../server/device.js';
import { DmaError } from '../../server/dma.js';
import type * as Check from './state-check.js';
import type * as Id from './identify.js';
import type { Namespace } from './namespace.js';
import type { DoorbellBuffers, DoorbellTracker } from './shadow.js';
import type { Poller } from './poller.js';
import { CSTS } from './constants.js';
import { Registers } from './registers.js';

/** 1 MiB transfers (4 KiB << 8) */
export const MDTS = 8;

export interface SubQueue {
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
  db?: DoorbellTracker | undefined;
}

export interface CompQueue {
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
  db?: DoorbellTracker | undefined;
  /**
   * CQ entries not yet written, for a CQ reached by DMA message: adjacent entries posted in one
   * job go in one DMA_WRITE (see queues.ts writeCqe)
   */
  unsent?: { addr: number; bytes: Uint8Array; n: number; gen: number } | undefined;
}

/** a command's completion: status and dword 0 */
export interface Result {
  status: number;
  dw0?: number;
}

/** the Set/Get Features values (their checked form is the migration state's) */
export type Features = Check.FeatureValues;

export interface CoreOptions {
  dev: PciDevice;
  bar0: Region;
  namespaces: Map<number, Namespace>;
  maxIoQueues: number;
  serial: string;
  shadowDoorbells: boolean;
  log: (msg: string) => void;
}

export class NvmeCore {
  readonly dev: PciDevice;
  readonly bar0: Region;
  readonly namespaces: Map<number, Namespace>;
  readonly maxIoQueues: number;
  readonly serial: string;
  readonly shadowDoorbells: boolean;
  readonly log: (msg: string) => void;
  readonly regs = new Registers();

  sqs: (SubQueue | undefined)[] = [];
  cqs: (CompQueue | undefined)[] = [];
  features: Features;
  aers: number[] = [];
  events: { type: number; info: number; log: number }[] = [];
  maskedEventTypes = 0;
  errors: Id.ErrorLogEntry[] = [];
  errorCount = 0;
  smart = { bytesRead: 0, bytesWritten: 0, readCommands: 0, writeCommands: 0 };
  readonly started = Date.now();
  /** Doorbell Buffer Config: shadow doorbells and EventIdx in guest memory */
  dbbuf: DoorbellBuffers | undefined;
  /** bumped by every controller reset: work started before it is dropped */
  generation = 0;
  /** false while migration has the device stopped */
  running = true;
  inflight = 0;
  idleWaiters: (() => void)[] = [];
  /** the Aggregation Time of interrupt coalescing, while entries wait for it */
  coalesceTimer: NodeJS.Timeout | undefined;
  /** polls the shadow doorbells (and the mmap doorbell page) while I/O flows (set by the controller) */
  poller!: Poller;
  mmapDoorbells: Uint32Array | undefined;
  lastDoorbells: Uint32Array | undefined;
  /** for benchmarks' per-I/O breakdowns: commands completed, interrupts raised, MMIO doorbell writes */
  readonly counters = { commands: 0, irqs: 0, mmioDoorbells: 0 };
  /** a nextTick is due that writes the unsent CQ entries and raises their interrupts */
  cqeFlushDue = false;
  /** the CQs with unsent entries (kept here, not found through cqs: a reset or a deleted CQ must still settle them) */
  unsentCqs: CompQueue[] = [];
  /** executes one command (the controller's dispatch); undefined: it completes later (AER) */
  execute!: (sq: SubQueue, sqe: Uint8Array) => Result | undefined | Promise<Result | undefined>;

  constructor(o: CoreOptions) {
    this.dev = o.dev;
    this.bar0 = o.bar0;
    this.namespaces = o.namespaces;
    this.maxIoQueues = o.maxIoQueues;
    this.serial = o.serial;
    this.shadowDoorbells = o.shadowDoorbells;
    this.log = o.log;
    this.features = defaultFeatures(o.maxIoQueues);
  }

  msixEnabled(): boolean {
    return this.dev.config.msix()?.enabled ?? false;
  }

  fatal(msg: string): void {
    this.log(`controller fatal status: ${msg}`);
    this.regs.csts |= CSTS.CFS;
    this.generation++;
  }

  /** Work started with inflight++ is over: wakes quiesce() when nothing is left. */
  settled(): void {
    if (--this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
  }

  /**
   * The shadow doorbell and EventIdx views (undefined when shadows are off, or, with the
   * controller failed, when the buffers have left the DMA maps).
   */
  shadowViews(): { db: Uint32Array; ei: Uint32Array } | undefined {
    const b = this.dbbuf;
    if (!b) return undefined;
    try {
      return { db: b.shadowView(), ei: b.eventIdxView() };
    } catch (e) {
      this.shadowFault(e);
      return undefined;
    }
  }

  /** One shadow doorbell slot (undefined, and the controller fails, when the buffer is gone). */
  readShadow(slot: number): number | undefined {
    const v = this.shadowViews();
    return v && Atomics.load(v.db, slot);
  }

  /** The doorbell buffers left the DMA maps: a controller fatal status (the host resets). */
  shadowFault(e: unknown): void {
    if (!(e instanceof DmaError)) throw e;
    this.dbbuf = undefined;
    for (const q of this.sqs) if (q) q.db = undefined;
    for (const q of this.cqs) if (q) q.db = undefined;
    this.poller.stop();
    this.fatal(`shadow doorbells: ${e.message}`);
  }
}

export function newCq(id: number, base: number, size: number, iv: number, ien: boolean): CompQueue {
  return { id, base, size, head: 0, tail: 0, phase: 1, iv, ien, reserved: 0, backlog: [], irqPending: false, coalesced: 0 };
}

export function defaultFeatures(ioQueues: number): Features {
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
