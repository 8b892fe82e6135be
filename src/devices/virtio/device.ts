/**
 * A virtio 1.2 device over the modern PCI transport (virtio 1.2, 4.1), as Linux's
 * virtio_pci (modern) and QEMU expect it. A device type extends VirtioPciDevice: it gives its
 * type, queue count, feature bits and configuration bytes, and handles requests.
 *
 * Layout (the same as QEMU's virtio-pci):
 *   BAR1 (32-bit, 4 KiB)           MSI-X table at 0, PBA at 0x800 (one vector per queue + config)
 *   BAR4 (64-bit prefetchable, 16 KiB)
 *     0x0000  common configuration (struct virtio_pci_common_cfg)
 *     0x1000  ISR status (read clears; INTx level follows it when MSI-X is off)
 *     0x2000  device-specific configuration
 *     0x3000  notifications: queue q at 0x3000 + 4q (notify_off_multiplier 4)
 * Config space: vendor capabilities COMMON, NOTIFY, ISR, DEVICE and PCI_CFG (the window into
 * the BARs through config space), MSI-X, power management and PCI Express.
 *
 * Transport features offered: VERSION_1, RING_INDIRECT_DESC, RING_EVENT_IDX and
 * ACCESS_PLATFORM (addresses are IOVAs translated by the client's IOMMU: with a vIOMMU the
 * guest must use the DMA API). FEATURES_OK sticks only for a subset of what is offered that
 * includes VERSION_1.
 *
 * Queues are consumed after DRIVER_OK, in order per queue, one request at a time; handlers
 * may be asynchronous. A broken ring or chain (VirtqError) sets NEEDS_RESET, stops every
 * queue and raises a configuration change interrupt; only a reset (status 0, FLR, client
 * reset) brings the device back. Reset waits for requests in flight and drops their results.
 * A client that goes away resets the device (PCI state, MSI-X, queues, status) before the
 * next client is served, unless it left the device stopped (migration STOP): then the next
 * client finds it as it was stopped, and resumes it.
 *
 * Migration: the device runs only in RUNNING and PRE_COPY. save() waits for requests in
 * flight (their completions are in the used rings before the state is taken), so the
 * destination resumes with nothing half done: it continues from each queue's last available
 * index, and every request is completed exactly once.
 *
 * One idea in one file although it passes 600 lines: the virtio PCI transport, whose common
 * configuration, queues, ISR, PCI_CFG window, reset and migration all act on the same device
 * status and queue state. The parts that stand alone are elsewhere: the rings (virtqueue.ts),
 * the device types (blk.ts).
 */
import { PciDevice, type Region } from '../../server/device.js';
import { IrqIndex } from '../../server/irq.js';
import { MigState } from '../../server/migration.js';
import { encodeState, decodeState } from '../../server/state.js';
import { VfioUserError, Errno } from '../../errors.js';
import {
  Status, Feature, bit, VIRTIO_PCI_VENDOR, VIRTIO_PCI_DEVICE_BASE, CapType, Cap, Common, NO_VECTOR, Isr, MAX_QUEUE_SIZE,
} from './constants.js';
import { Virtqueue, VirtqError, VirtioRequest, type QueueState } from './virtqueue.js';
import { Poller } from '../nvme/poller.js';
import { native } from '../../native/index.js';

export interface VirtioDeviceOptions {
  /** device type (5.x: 2 = block, 4 = entropy, ...) */
  deviceType: number;
  /** PCI class code (e.g. 0x010000 for storage) */
  classCode: number;
  name: string;
  /** number of virtqueues */
  queues: number;
  /** largest queue size the driver may configure (power of two, default 256) */
  queueSize?: number | undefined;
  /** device-type feature bits offered (bits 0..23 and any others the device implements) */
  features: bigint;
  /** bytes of device-specific configuration (at most 4096) */
  configSize: number;
  /**
   * Notifications: 'trap' (default) takes the driver's notify writes as REGION_WRITEs;
   * 'mmap' offers the notify page for mmap and polls it (a sleeping poller: every event-loop
   * turn while requests flow, then every millisecond; trapped writes work as well).
   */
  notify?: 'trap' | 'mmap' | undefined;
  /**
   * with notify 'mmap': keep polling the notify page this long after the last request (µs,
   * default 50). With notify 'trap' and RING_EVENT_IDX on rings in shared memory: keep
   * looking at the available ring this long after the last request before asking the driver
   * for a notification again (µs, default 1000: a driver at queue depth 1 under emulation
   * sends its next request 150-250 µs after a completion, which the look then picks up
   * without a trapped notify; 0 asks at once)
   */
  pollUs?: number | undefined;
  log?: ((msg: string) => void) | undefined;
}

/** BAR4 areas */
export const Layout = {
  BAR: 4,
  BAR_SIZE: 0x4000,
  COMMON: 0x0000,
  ISR: 0x1000,
  DEVICE: 0x2000,
  NOTIFY: 0x3000,
  AREA: 0x1000,
  NOTIFY_MULTIPLIER: 4,
  MSIX_BAR: 1,
  MSIX_TABLE: 0,
  MSIX_PBA: 0x800,
} as const;

/** the transport features this framework implements */
const TRANSPORT_FEATURES = bit(Feature.VERSION_1) | bit(Feature.RING_INDIRECT_DESC) | bit(Feature.RING_EVENT_IDX) | bit(Feature.ACCESS_PLATFORM);

// common configuration registers: offset -> size (64-bit fields are two 32-bit halves)
const COMMON_REGS: [number, number][] = [
  [0x00, 4], [0x04, 4], [0x08, 4], [0x0c, 4], [0x10, 2], [0x12, 2], [0x14, 1], [0x15, 1], [0x16, 2], [0x18, 2],
  [0x1a, 2], [0x1c, 2], [0x1e, 2], [0x20, 4], [0x24, 4], [0x28, 4], [0x2c, 4], [0x30, 4], [0x34, 4], [0x38, 2], [0x3a, 2],
];

export abstract class VirtioPciDevice extends PciDevice {
  readonly deviceType: number;
  readonly queues: Virtqueue[];
  /** features offered */
  readonly deviceFeatures: bigint;
  /** the device-specific configuration bytes (the device keeps them current) */
  readonly deviceConfig: Uint8Array;
  protected readonly log: (msg: string) => void;
  readonly bar: Region;

  private status = 0;
  private driverFeatures = 0n;
  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private configVector = NO_VECTOR;
  private configGeneration = 0;
  private queueSelect = 0;
  private isr = 0;
  /** bumped by every reset: work started before it is dropped */
  private generation = 0;
  /** false while migration has the device stopped */
  private running = true;
  /** in migration state STOP: kept as it is when the client leaves */
  private migStopped = false;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  /** why the device is in NEEDS_RESET (for logs and tests) */
  brokenReason: string | undefined;
  private pciCfg = { bar: 0, offset: 0, length: 0 };
  /** with notify 'mmap': polls the notify page (each queue's slot holds NOTIFY_IDLE until written) */
  private readonly poller: Poller | undefined;
  private notifySlots: Uint16Array | undefined;
  /** with notify 'trap': how long the available rings are looked at after the last request (ms) */
  private readonly ringPollMs: number;

  constructor(o: VirtioDeviceOptions) {
    const qs = o.queueSize ?? 256;
    if (!Number.isInteger(o.queues) || o.queues < 1 || o.queues > 1024) throw new Error('queues must be 1..1024');
    if (!Number.isInteger(qs) || qs < 2 || qs > MAX_QUEUE_SIZE || qs & (qs - 1)) throw new Error('queueSize must be a power of two, 2..32768');
    if (!Number.isInteger(o.configSize) || o.configSize < 0 || o.configSize > Layout.AREA) throw new Error('configSize must be 0..4096');
    if (Layout.NOTIFY_MULTIPLIER * o.queues > Layout.AREA) throw new Error('too many queues for the notify area');
    super({
      name: o.name,
      vendorId: VIRTIO_PCI_VENDOR,
      deviceId: VIRTIO_PCI_DEVICE_BASE + o.deviceType,
      subsystemVendorId: VIRTIO_PCI_VENDOR,
      subsystemId: 0x1100,
      classCode: o.classCode,
      revision: 1, // modern-only devices have revision 1 or more (4.1.2.1)
      size: 4096,
      interruptPin: 1,
      irqs: { intx: 1, msix: o.queues + 1 },
    });
    this.deviceType = o.deviceType;
    this.log = o.log ?? ((m) => process.stderr.write(`virtio-${o.name}: ${m}\n`));
    this.deviceFeatures = o.features | TRANSPORT_FEATURES;
    this.deviceConfig = new Uint8Array(o.configSize);
    this.queues = Array.from({ length: o.queues }, (_, i) => new Virtqueue(i, qs));

    this.addRegion(Layout.MSIX_BAR, { size: 0x1000, access: { read: (_o, n) => new Uint8Array(n), write: () => {} } });
    const mmapNotify = o.notify === 'mmap';
    this.bar = this.addRegion(Layout.BAR, {
      size: Layout.BAR_SIZE,
      bar: { kind: 'mem64', prefetchable: true },
      access: { read: (off, len) => this.readBar(off, len), write: (off, data) => this.writeBar(off, data) },
      ...(mmapNotify ? { shared: true, mmapAreas: [{ offset: Layout.NOTIFY, size: Layout.AREA }] } : {}),
    });
    this.ringPollMs = mmapNotify ? 0 : (o.pollUs ?? 1000) / 1000;
    if (mmapNotify) {
      const mem = this.bar.memory!;
      this.notifySlots = new Uint16Array(mem.buffer, mem.byteOffset + Layout.NOTIFY, Layout.AREA / 2);
      this.poller = new Poller({ step: () => this.scanNotify(), arm: () => this.scanNotify(), spinUs: o.pollUs ?? 50, idleMs: 1, idle: () => native.schedYield() });
    }
    this.config.addPowerManagement();
    this.addMsix({ vectors: o.queues + 1, tableBar: Layout.MSIX_BAR, tableOffset: Layout.MSIX_TABLE, pbaBar: Layout.MSIX_BAR, pbaOffset: Layout.MSIX_PBA });
    this.config.addPciExpress({ flr: true });
    const cap = (type: number, offset: number, length: number, extra?: Uint8Array): number => {
      // payload after the 3-byte header: cfg_type, bar, id, padding[2], offset, length, extra
      const p = new Uint8Array(13 + (extra?.length ?? 0));
      const dv = new DataView(p.buffer);
      p[0] = type;
      p[1] = Layout.BAR;
      dv.setUint32(5, offset, true);
      dv.setUint32(9, length, true);
      if (extra) p.set(extra, 13);
      return this.config.addVendorSpecific(p);
    };
    cap(CapType.COMMON, Layout.COMMON, Layout.AREA);
    cap(CapType.ISR, Layout.ISR, Layout.AREA);
    cap(CapType.DEVICE, Layout.DEVICE, Layout.AREA);
    cap(CapType.NOTIFY, Layout.NOTIFY, Layout.AREA, Uint8Array.of(Layout.NOTIFY_MULTIPLIER, 0, 0, 0));
    this.addPciCfgCap(cap(CapType.PCI_CFG, 0, 0, new Uint8Array(4)));

    this.onReset = () => this.virtioReset();
    // A client that leaves a running device takes its rings, vectors and interrupt fds with it:
    // the next one (a restarted VMM, after a health probe) finds the device as at power-on,
    // MSI-X off included, and work still running for the old one is awaited (it can no longer
    // reach memory: the maps are gone) before the next client is served. A device the client
    // stopped (migration STOP) keeps everything for the next client, which maps the same
    // memory, sets its interrupts and resumes it (RUNNING) where it stopped.
    this.onDetach = () => (this.migStopped ? undefined : this.reset('lost-client'));
    this.migration = {
      save: () => this.saveState(),
      load: (data) => this.loadState(data),
      onStateChange: (_from, to) => {
        this.migStopped = to === MigState.STOP;
        this.setRunning(to === MigState.RUNNING || to === MigState.PRE_COPY);
      },
      quiesce: () => this.quiesce(),
    };
  }

  // ------------------------------------------------------------ what a device type provides

  /**
   * Handles one request; returns the number of bytes written into its writable part (the
   * used length). May be asynchronous. Throwing a VirtqError puts the device in NEEDS_RESET.
   */
  protected abstract handleRequest(queue: Virtqueue, req: VirtioRequest): number | Promise<number>;

  /** A driver write to the device configuration (after the bytes are stored, if writable). */
  protected writeDeviceConfig(_offset: number, _data: Uint8Array): void {}

  /** Whether the device accepts the driver's features (beyond the subset/VERSION_1 rules). */
  protected acceptFeatures(_features: bigint): boolean {
    return true;
  }

  /** Device-type state back to power-on (the transport is reset already). */
  protected resetDevice(): void {}

  /** Device-type migration state (JSON-serializable), and its validated restore. */
  protected saveDevice(): Record<string, unknown> {
    return {};
  }
  protected loadDevice(_state: Record<string, unknown>): void {}

  // ------------------------------------------------------------ for device types

  /** the status register */
  get deviceStatus(): number {
    return this.status;
  }

  /** the features the driver accepted (valid once FEATURES_OK is set) */
  get negotiated(): bigint {
    return this.driverFeatures;
  }

  has(feature: number): boolean {
    return (this.driverFeatures & bit(feature)) !== 0n;
  }

  /** The device configuration changed: new generation, configuration change interrupt. */
  configChanged(): void {
    this.configGeneration = (this.configGeneration + 1) & 0xff;
    if (this.status & Status.DRIVER_OK) this.configInterrupt();
  }

  /** Puts the device in NEEDS_RESET (a broken driver): no queue runs until a reset. */
  needsReset(reason: string): void {
    if (this.status & Status.NEEDS_RESET) return;
    this.log(`needs reset: ${reason}`);
    this.brokenReason = reason;
    this.status |= Status.NEEDS_RESET;
    if (this.status & Status.DRIVER_OK) this.configInterrupt();
  }

  // ------------------------------------------------------------ BAR access

  private readBar(off: number, len: number): Uint8Array {
    const area = off - (off % Layout.AREA);
    const o = off - area;
    if (o + len > Layout.AREA) return new Uint8Array(len); // across two areas: nothing there
    switch (area) {
      case Layout.COMMON: return this.readCommon(o, len);
      case Layout.ISR: {
        const out = new Uint8Array(len);
        if (o === 0) {
          out[0] = this.isr;
          this.isr = 0; // reading acknowledges
          this.updateIntx();
        }
        return out;
      }
      case Layout.DEVICE: {
        const out = new Uint8Array(len);
        if (o < this.deviceConfig.length) out.set(this.deviceConfig.subarray(o, Math.min(o + len, this.deviceConfig.length)));
        return out;
      }
      default: return new Uint8Array(len);
    }
  }

  private writeBar(off: number, data: Uint8Array): void | Promise<void> {
    const area = off - (off % Layout.AREA);
    const o = off - area;
    if (o + data.length > Layout.AREA) return;
    switch (area) {
      case Layout.COMMON: return this.writeCommon(o, data);
      case Layout.DEVICE: return this.writeDeviceConfig(o, data);
      case Layout.NOTIFY: {
        if (o % Layout.NOTIFY_MULTIPLIER) return;
        const q = this.queues[o / Layout.NOTIFY_MULTIPLIER];
        if (q) this.kick(q);
        return;
      }
      default: return; // ISR is read-only
    }
  }

  private selected(): Virtqueue | undefined {
    return this.queues[this.queueSelect];
  }

  private commonReg(off: number): number {
    const q = this.selected();
    switch (off) {
      case Common.DEVICE_FEATURE_SELECT: return this.deviceFeatureSelect;
      case Common.DEVICE_FEATURE: return this.deviceFeatureSelect < 4 ? Number((this.deviceFeatures >> BigInt(32 * this.deviceFeatureSelect)) & 0xffffffffn) : 0;
      case Common.DRIVER_FEATURE_SELECT: return this.driverFeatureSelect;
      case Common.DRIVER_FEATURE: return this.driverFeatureSelect < 4 ? Number((this.driverFeatures >> BigInt(32 * this.driverFeatureSelect)) & 0xffffffffn) : 0;
      case Common.CONFIG_MSIX_VECTOR: return this.configVector;
      case Common.NUM_QUEUES: return this.queues.length;
      case Common.DEVICE_STATUS: return this.status;
      case Common.CONFIG_GENERATION: return this.configGeneration;
      case Common.QUEUE_SELECT: return this.queueSelect;
      case Common.QUEUE_SIZE: return q ? q.size : 0;
      case Common.QUEUE_MSIX_VECTOR: return q ? q.msixVector : NO_VECTOR;
      case Common.QUEUE_ENABLE: return q?.enabled ? 1 : 0;
      case Common.QUEUE_NOTIFY_OFF: return q ? q.index : 0;
      case Common.QUEUE_DESC: return q ? q.desc % 2 ** 32 : 0;
      case Common.QUEUE_DESC + 4: return q ? Math.floor(q.desc / 2 ** 32) : 0;
      case Common.QUEUE_DRIVER: return q ? q.driver % 2 ** 32 : 0;
      case Common.QUEUE_DRIVER + 4: return q ? Math.floor(q.driver / 2 ** 32) : 0;
      case Common.QUEUE_DEVICE: return q ? q.device % 2 ** 32 : 0;
      case Common.QUEUE_DEVICE + 4: return q ? Math.floor(q.device / 2 ** 32) : 0;
      case Common.QUEUE_NOTIF_CONFIG_DATA: return q ? q.index : 0;
      default: return 0; // queue_reset (RING_RESET not offered) and beyond
    }
  }

  private readCommon(off: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    for (const [r, size] of COMMON_REGS) {
      if (r + size <= off || r >= off + len) continue;
      const v = this.commonReg(r);
      for (let i = 0; i < size; i++) {
        const a = r + i - off;
        if (a >= 0 && a < len) out[a] = (v >>> (8 * i)) & 0xff;
      }
    }
    return out;
  }

  private writeCommon(off: number, data: Uint8Array): void | Promise<void> {
    let pending: Promise<void> | undefined;
    for (const [r, size] of COMMON_REGS) {
      if (r + size <= off || r >= off + data.length) continue;
      // merge the written bytes into the register's current value
      let v = this.commonReg(r);
      for (let i = 0; i < size; i++) {
        const a = r + i - off;
        if (a >= 0 && a < data.length) v = ((v & ~(0xff << (8 * i))) | (data[a]! << (8 * i))) >>> 0;
      }
      const p = this.writeCommonReg(r, v);
      if (p) pending = pending ? pending.then(() => p) : p;
    }
    return pending;
  }

  private writeCommonReg(off: number, v: number): void | Promise<void> {
    const q = this.selected();
    const queueWritable = q && !q.enabled;
    const hi = (cur: number): number => v * 2 ** 32 + (cur % 2 ** 32);
    const lo = (cur: number): number => Math.floor(cur / 2 ** 32) * 2 ** 32 + v;
    switch (off) {
      case Common.DEVICE_FEATURE_SELECT: this.deviceFeatureSelect = v; break;
      case Common.DRIVER_FEATURE_SELECT: this.driverFeatureSelect = v; break;
      case Common.DRIVER_FEATURE:
        if (this.status & Status.FEATURES_OK || this.driverFeatureSelect >= 4) break;
        {
          const sh = BigInt(32 * this.driverFeatureSelect);
          this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << sh)) | (BigInt(v) << sh);
        }
        break;
      case Common.CONFIG_MSIX_VECTOR: this.configVector = this.validVector(v); break;
      case Common.DEVICE_STATUS: return this.writeStatus(v & 0xff);
      case Common.QUEUE_SELECT: this.queueSelect = v; break;
      case Common.QUEUE_SIZE:
        // a power of two no larger than the maximum (2.7: split queue sizes); else ignored
        if (queueWritable && v >= 1 && v <= q.maxSize && !(v & (v - 1))) q.size = v;
        break;
      case Common.QUEUE_MSIX_VECTOR: if (q) q.msixVector = this.validVector(v); break;
      case Common.QUEUE_ENABLE:
        if (queueWritable && v === 1) this.enableQueue(q);
        break;
      case Common.QUEUE_DESC: if (queueWritable) q.desc = lo(q.desc); break;
      case Common.QUEUE_DESC + 4: if (queueWritable) q.desc = hi(q.desc); break;
      case Common.QUEUE_DRIVER: if (queueWritable) q.driver = lo(q.driver); break;
      case Common.QUEUE_DRIVER + 4: if (queueWritable) q.driver = hi(q.driver); break;
      case Common.QUEUE_DEVICE: if (queueWritable) q.device = lo(q.device); break;
      case Common.QUEUE_DEVICE + 4: if (queueWritable) q.device = hi(q.device); break;
      default: break; // read-only or reserved
    }
  }

  /** MSI-X vectors are accepted only when they exist (a driver reads back NO_VECTOR otherwise). */
  private validVector(v: number): number {
    return v < this.irqs.count(IrqIndex.MSIX) ? v : NO_VECTOR;
  }

  private enableQueue(q: Virtqueue): void {
    q.eventIdx = this.has(Feature.RING_EVENT_IDX);
    q.indirect = this.has(Feature.RING_INDIRECT_DESC);
    q.lastAvail = q.usedIdx = q.signalledUsed = 0;
    q.signalledValid = false;
    q.enabled = true;
  }

  private writeStatus(v: number): void | Promise<void> {
    if (v === 0) return this.transportReset();
    const old = this.status;
    let s = (v & ~Status.NEEDS_RESET) | (old & Status.NEEDS_RESET);
    if (s & Status.FEATURES_OK && !(old & Status.FEATURES_OK) && !this.featuresOk()) s &= ~Status.FEATURES_OK;
    if (s & Status.DRIVER_OK && !(s & Status.FEATURES_OK)) s &= ~Status.DRIVER_OK; // DRIVER_OK needs FEATURES_OK
    this.status = s;
    if (s & Status.DRIVER_OK && !(old & Status.DRIVER_OK)) {
      this.startPolling();
      for (const q of this.queues) this.kick(q);
    }
  }

  // ------------------------------------------------------------ mmap notify area

  /** with notify 'mmap': the poller's wake-ups from sleep, polling turns, and whether it is running */
  get notifyPoller(): { wakeups: number; turns: number; pending: boolean } | undefined {
    const p = this.poller;
    return p && { wakeups: p.wakeups, turns: p.turns, pending: p.pending };
  }

  /** (Re)starts the notify poller: every queue's slot idle, polled slowly until a request. */
  private startPolling(): void {
    if (!this.poller || !this.notifySlots || !this.running || !(this.status & Status.DRIVER_OK)) return;
    for (let q = 0; q < this.queues.length; q++) this.notifySlots[(q * Layout.NOTIFY_MULTIPLIER) / 2] = NOTIFY_IDLE;
    this.poller.start();
  }

  /** One look at the notify page: a slot the driver wrote is set idle again and its queue kicked. */
  private scanNotify(): boolean {
    const slots = this.notifySlots!;
    let moved = false;
    for (let q = 0; q < this.queues.length; q++) {
      const i = (q * Layout.NOTIFY_MULTIPLIER) / 2;
      if (slots[i] === NOTIFY_IDLE) continue;
      // idle first, then the queue: a write after this point is seen next time, and one
      // before it is covered by the ring the queue reads after the kick
      slots[i] = NOTIFY_IDLE;
      this.kick(this.queues[q]!);
      moved = true;
    }
    return moved;
  }

  private featuresOk(): boolean {
    const f = this.driverFeatures;
    if (f & ~this.deviceFeatures) return false;
    if (!(f & bit(Feature.VERSION_1))) return false;
    return this.acceptFeatures(f);
  }

  // ------------------------------------------------------------ reset

  /** Waits for requests in flight (their results are dropped), then resets. */
  private async transportReset(): Promise<void> {
    this.generation++;
    this.poller?.stop();
    if (this.inflight > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
    this.status = 0;
    this.driverFeatures = 0n;
    this.deviceFeatureSelect = this.driverFeatureSelect = 0;
    this.configVector = NO_VECTOR;
    this.queueSelect = 0;
    this.isr = 0;
    this.brokenReason = undefined;
    for (const q of this.queues) q.reset();
    this.updateIntx();
    this.resetDevice();
  }

  private async virtioReset(): Promise<void> {
    await this.transportReset();
    this.configGeneration = 0;
    this.pciCfg = { bar: 0, offset: 0, length: 0 };
  }

  // ------------------------------------------------------------ queues

  /** A notification for a queue: consume what is available. */
  kick(q: Virtqueue): void {
    if (!q.enabled || !(this.status & Status.DRIVER_OK) || this.status & Status.NEEDS_RESET) return;
    if (!this.running) {
      q.kicked = true; // taken up on resume
      return;
    }
    if (q.active) {
      q.kicked = true;
      return;
    }
    this.poller?.kick(); // requests flow: poll every turn for a while
    void this.runQueue(q);
  }

  private async runQueue(q: Virtqueue): Promise<void> {
    q.active = true;
    const gen = this.generation;
    const live = (): boolean => this.running && gen === this.generation && !(this.status & Status.NEEDS_RESET);
    this.inflight++;
    let n = 0;
    let pollAgain = false;
    try {
      do {
        q.kicked = false;
        pollAgain = false;
        for (;;) {
          const avail = await q.availIdx(this.dma);
          if (!live()) return;
          if (avail === q.lastAvail) {
            // event index: ask for a notification past what we consumed, then look again
            if (!q.eventIdx) break;
            if (this.pollRing(q)) {
              pollAgain = true; // the driver's next request is looked for instead
              break;
            }
            await q.publishAvailEvent(this.dma);
            if ((await q.availIdx(this.dma)) === q.lastAvail) break;
            continue;
          }
          // from here the request is ours: it completes (only a reset drops it)
          const head = await q.nextHead(this.dma);
          const req = await q.chain(this.dma, head);
          const written = await this.handleRequest(q, req);
          if (gen !== this.generation) return;
          await q.pushUsed(this.dma, head, written);
          q.lastWork = performance.now();
          if (++n % 32 === 0) await this.notify(q);
          if (!live()) break;
        }
      } while (q.kicked && live());
      await this.notify(q);
      if (pollAgain && live()) {
        // one look per event-loop turn (sockets and other queues are served in between); a
        // look that found nothing first gives the CPU to whatever is queued on it (often the
        // VMM's thread that delivers our interrupt or runs the guest: see the NVMe poller)
        native.schedYield();
        setImmediate(() => {
          if (!q.active && q.enabled && live()) void this.runQueue(q);
        });
      }
    } catch (e) {
      if (gen !== this.generation) return;
      if (e instanceof VirtqError) this.needsReset(e.message);
      else {
        this.log(`internal error on queue ${q.index}: ${(e as Error).stack ?? String(e)}`);
        this.needsReset(`internal error on queue ${q.index}`);
      }
    } finally {
      q.active = false;
      // a notification that came during the last steps (after the final look at the ring)
      if (q.kicked && gen === this.generation) this.kick(q);
      if (--this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /**
   * Whether to look at `q`'s available ring again in the next event-loop turn rather than ask
   * for a notification now: with trapped notifies, within the poll window after the queue's
   * last request, and only while the ring is in shared memory (a look by DMA message would
   * cost a round trip through the VMM each turn).
   */
  private pollRing(q: Virtqueue): boolean {
    if (!this.ringPollMs || performance.now() - q.lastWork > this.ringPollMs) return false;
    return this.dma.isShared(q.driver, 4);
  }

  /** Interrupts the driver for a queue's new used entries, if it wants one. */
  private async notify(q: Virtqueue): Promise<void> {
    if (!q.pendingUsed || !this.running) return;
    q.pendingUsed = false;
    if (!(await q.shouldInterrupt(this.dma))) return;
    this.interrupt(q.msixVector, Isr.QUEUE);
  }

  private configInterrupt(): void {
    if (this.running) this.interrupt(this.configVector, Isr.CONFIG);
  }

  /** MSI-X on `vector` (none when the driver set NO_VECTOR), or INTx with `isrBit` set in the ISR. */
  private interrupt(vector: number, isrBit: number): void {
    if (this.msixEnabled()) {
      if (vector !== NO_VECTOR) this.trigger(IrqIndex.MSIX, vector);
    } else {
      this.isr |= isrBit;
      this.updateIntx();
    }
  }

  private msixEnabled(): boolean {
    return this.config.msix()?.enabled ?? false;
  }

  /** INTx is asserted while the ISR has bits and MSI-X is off. */
  private updateIntx(): void {
    if (!this.running) return;
    this.setIrqLevel(this.isr !== 0 && !this.msixEnabled());
  }

  // ------------------------------------------------------------ PCI_CFG capability

  /** VIRTIO_PCI_CAP_PCI_CFG: bar/offset/length select a window into BAR4, pci_cfg_data moves the bytes. */
  private addPciCfgCap(at: number): void {
    const fields = { bar: at + Cap.BAR, offset: at + Cap.OFFSET, length: at + Cap.LENGTH, data: at + Cap.PCI_CFG_DATA };
    const window = (): { ok: boolean; off: number; len: number } => {
      const { bar, offset, length } = this.pciCfg;
      const ok = bar === Layout.BAR && (length === 1 || length === 2 || length === 4) && offset % length === 0 && offset + length <= Layout.BAR_SIZE;
      return { ok, off: offset, len: length };
    };
    this.config.hook({ offset: at, length: Cap.PCI_CFG_DATA + 4 }, {
      read: (off, data) => {
        for (let i = 0; i < data.length; i++) {
          const a = off + i;
          if (a === fields.bar) data[i] = this.pciCfg.bar;
          else if (a >= fields.offset && a < fields.offset + 4) data[i] = (this.pciCfg.offset >>> (8 * (a - fields.offset))) & 0xff;
          else if (a >= fields.length && a < fields.length + 4) data[i] = (this.pciCfg.length >>> (8 * (a - fields.length))) & 0xff;
        }
        if (off <= fields.data && off + data.length > fields.data) {
          const w = window();
          const bytes = w.ok ? this.readBar(w.off, w.len) : new Uint8Array(4);
          for (let i = 0; i < 4 && fields.data + i < off + data.length; i++) if (fields.data + i >= off) data[fields.data + i - off] = bytes[i] ?? 0;
        }
      },
      write: (off, data) => {
        let toBar = false;
        for (let i = 0; i < data.length; i++) {
          const a = off + i;
          const b = data[i]!;
          if (a === fields.bar) this.pciCfg.bar = b;
          else if (a >= fields.offset && a < fields.offset + 4) this.pciCfg.offset = setByte(this.pciCfg.offset, a - fields.offset, b);
          else if (a >= fields.length && a < fields.length + 4) this.pciCfg.length = setByte(this.pciCfg.length, a - fields.length, b);
          else if (a >= fields.data) toBar = true;
        }
        if (toBar) {
          const w = window();
          const start = Math.max(off, fields.data);
          const bytes = data.subarray(start - off, start - off + w.len);
          if (w.ok && start === fields.data && bytes.length === w.len) {
            // a reset through the window finishes on its own (config writes are synchronous)
            const p = this.writeBar(w.off, bytes.slice());
            if (p) p.catch((e: Error) => this.log(`PCI_CFG write: ${e.message}`));
          }
        }
        return true;
      },
    });
  }

  // ------------------------------------------------------------ migration

  private setRunning(on: boolean): void {
    if (on === this.running) return;
    this.running = on;
    if (!on) {
      this.poller?.stop();
      return;
    }
    this.startPolling();
    this.updateIntx();
    for (const q of this.queues) {
      if (!q.enabled) continue;
      // interrupts held back while stopped, and notifications that came meanwhile
      q.pendingUsed ||= q.usedIdx !== q.signalledUsed || !q.signalledValid;
      this.kick(q);
      if (!q.active) void this.notify(q).catch((e: Error) => this.needsReset(e.message));
    }
  }

  override destroy(): void {
    this.poller?.stop();
    super.destroy();
  }

  /** Stops consuming queues and waits until nothing is in flight. */
  async quiesce(): Promise<void> {
    this.running = false;
    this.poller?.stop();
    if (this.inflight > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
  }

  private async saveState(): Promise<Uint8Array> {
    await this.quiesce();
    return encodeState(`virtio-${this.deviceType}`, 1, {
      status: this.status,
      deviceFeatures: this.deviceFeatures.toString(16),
      driverFeatures: this.driverFeatures.toString(16),
      deviceFeatureSelect: this.deviceFeatureSelect,
      driverFeatureSelect: this.driverFeatureSelect,
      configVector: this.configVector,
      configGeneration: this.configGeneration,
      queueSelect: this.queueSelect,
      isr: this.isr,
      pciCfg: JSON.stringify(this.pciCfg),
      queues: JSON.stringify(this.queues.map((q) => ({ ...q.state(), maxSize: q.maxSize }))),
      deviceConfig: Buffer.from(this.deviceConfig).toString('hex'),
      device: JSON.stringify(this.saveDevice()),
    });
  }

  private loadState(data: Uint8Array): void {
    const s = decodeState<Record<string, unknown>>(data, `virtio-${this.deviceType}`, 1, {
      status: 'number', deviceFeatures: 'string', driverFeatures: 'string', deviceFeatureSelect: 'number', driverFeatureSelect: 'number',
      configVector: 'number', configGeneration: 'number', queueSelect: 'number', isr: 'number', pciCfg: 'string', queues: 'string',
      deviceConfig: 'string', device: 'string',
    });
    const bad = (why: string): never => {
      throw new VfioUserError('VFU_BAD_STATE', `virtio state: ${why}`, Errno.EINVAL);
    };
    const num = (v: unknown, max: number): number => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max ? v : bad(`bad value ${String(v)}`));
    const big = (v: string): bigint => (/^[0-9a-f]{1,32}$/.test(v) ? BigInt(`0x${v}`) : bad(`bad features ${v}`));
    const parse = (v: string): unknown => {
      try {
        return JSON.parse(v);
      } catch {
        return bad('not JSON');
      }
    };
    // validate everything before applying anything
    const offered = big(s.deviceFeatures as string);
    const driver = big(s.driverFeatures as string);
    if (offered !== this.deviceFeatures) bad('the destination offers different features');
    if (driver & ~offered) bad('negotiated features not offered');
    const qs = parse(s.queues as string);
    if (!Array.isArray(qs) || qs.length !== this.queues.length) bad('queue count differs');
    const vectors = this.irqs.count(IrqIndex.MSIX);
    const states = (qs as Record<string, unknown>[]).map((q, i): QueueState => {
      if (!q || typeof q !== 'object' || q.maxSize !== this.queues[i]!.maxSize) bad(`queue ${i} differs`);
      const size = num(q.size, this.queues[i]!.maxSize);
      if (size < 1 || size & (size - 1)) bad(`queue ${i} size`);
      const vec = num(q.msixVector, 0xffff);
      if (vec !== NO_VECTOR && vec >= vectors) bad(`queue ${i} vector`);
      return {
        size, msixVector: vec, enabled: q.enabled === true,
        desc: num(q.desc, Number.MAX_SAFE_INTEGER), driver: num(q.driver, Number.MAX_SAFE_INTEGER), device: num(q.device, Number.MAX_SAFE_INTEGER),
        lastAvail: num(q.lastAvail, 0xffff), usedIdx: num(q.usedIdx, 0xffff),
      };
    });
    const cfg = s.deviceConfig as string;
    if (cfg.length !== this.deviceConfig.length * 2 || !/^[0-9a-f]*$/.test(cfg)) bad('device configuration size differs');
    const pc = parse(s.pciCfg as string) as Record<string, unknown>;
    const pciCfg = { bar: num(pc?.bar, 0xff), offset: num(pc?.offset, 0xffffffff), length: num(pc?.length, 0xffffffff) };
    const dev = parse(s.device as string);
    if (!dev || typeof dev !== 'object') bad('device state');
    const status = num(s.status, 0xff);
    const configVector = num(s.configVector, 0xffff);
    if (configVector !== NO_VECTOR && configVector >= vectors) bad('config vector');
    const sel = [num(s.deviceFeatureSelect, 0xffffffff), num(s.driverFeatureSelect, 0xffffffff), num(s.queueSelect, 0xffff)];
    const gen = num(s.configGeneration, 0xff);
    const isr = num(s.isr, 3);
    const prevFeatures = this.driverFeatures;
    this.driverFeatures = driver;
    try {
      this.loadDevice(dev as Record<string, unknown>); // validates (throws before changing anything)
    } catch (e) {
      this.driverFeatures = prevFeatures;
      throw e;
    }
    // apply
    this.generation++;
    this.status = status;
    [this.deviceFeatureSelect, this.driverFeatureSelect, this.queueSelect] = sel as [number, number, number];
    this.configVector = configVector;
    this.configGeneration = gen;
    this.isr = isr;
    this.pciCfg = pciCfg;
    this.deviceConfig.set(Buffer.from(cfg, 'hex'));
    states.forEach((st, i) => {
      const q = this.queues[i]!;
      q.reset();
      Object.assign(q, st);
      q.eventIdx = this.has(Feature.RING_EVENT_IDX);
      q.indirect = this.has(Feature.RING_INDIRECT_DESC);
      q.signalledUsed = st.usedIdx;
      q.signalledValid = false; // the next used entry interrupts
    });
  }
}

/** a notify slot nobody wrote since we last looked (the driver writes a queue index, < 0xffff) */
const NOTIFY_IDLE = 0xffff;

function setByte(v: number, i: number, b: number): number {
  return ((v & ~(0xff << (8 * i))) | (b << (8 * i))) >>> 0;
}
