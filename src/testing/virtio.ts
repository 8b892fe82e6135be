/**
 * A small virtio-pci (modern) driver built on the vfio-user client library, for tests and
 * benchmarks: it finds the virtio capabilities in config space, negotiates features, sets up
 * split virtqueues in guest memory (a memfd mapped with DMA_MAP, or DMA messages), takes
 * interrupts (MSI-X per queue, or INTx with the ISR) and runs requests, like Linux's
 * virtio_pci and virtio_ring would. Raw ring access is there for fuzzing.
 */
import type { VfioUserClient, GuestMemory, IrqHandle, MappedRegion } from '../client/client.js';
import { CapType, Common, Status, Feature, NO_VECTOR, Desc, bit } from '../devices/virtio/constants.js';
import { BlkType } from '../devices/virtio/blk.js';
import { fullBarrier } from '../devices/virtio/virtqueue.js';
import { IrqIndex } from '../server/irq.js';
import { GuestRam, PAGE } from './memory.js';
import { GuestDriver } from './driver.js';
import { enableMsix, disableMsix, armMsixVectors } from './pci.js';

/** Options of {@link VirtioDriver.attach}. */
export interface VirtioDriverOptions {
  /** guest memory size (default 16 MiB) */
  memSize?: number;
  /** IOVA of the first mapped byte (default 0x100000000) */
  iova?: number;
  /** pass the memfd (default) or make the server use DMA messages */
  shared?: boolean;
  /** MSI-X (default: config on vector 0, queue i on vector i + 1) or INTx (with the ISR) */
  interrupts?: 'msix' | 'intx';
  /** an existing memory object (migration destination) */
  mem?: GuestMemory;
  /** write notifications into the notify area mmap-ed (when the server offers it) instead of REGION_WRITEs */
  mmapNotify?: boolean;
}

/** Where a virtio capability's structure is: its config-space offset, BAR and range. */
export interface CapLocation {
  cap: number;
  bar: number;
  offset: number;
  length: number;
  multiplier?: number | undefined;
}

/** A buffer of a descriptor chain. */
export interface Buf {
  iova: number;
  len: number;
  /** device-writable */
  write?: boolean;
}

/** A used-ring entry: the chain's head and the bytes the device wrote. */
export interface Used {
  id: number;
  len: number;
}

/** A split virtqueue in guest memory, driver side: descriptor table, available ring, used ring. */
export class DriverQueue {
  readonly index: number;
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  vector: number;
  availIdx = 0;
  lastUsed = 0;
  private free: number[];
  readonly waiters = new Map<number, { resolve: (u: Used) => void; descs: number[] }>();
  /** used entries seen with no waiter (fuzzing) */
  readonly stray: Used[] = [];

  constructor(
    private readonly d: VirtioDriver,
    index: number,
    size: number,
    vector: number,
  ) {
    this.index = index;
    this.size = size;
    this.vector = vector;
    this.desc = d.alloc(16 * size, 16);
    this.avail = d.alloc(6 + 2 * size, 2);
    this.used = d.alloc(6 + 8 * size, 4);
    this.free = Array.from({ length: size }, (_, i) => i);
  }

  private dv(iova: number, len: number): DataView {
    return this.d.ram.view(iova, len);
  }

  get freeCount(): number {
    return this.free.length;
  }

  /** Writes one descriptor. */
  setDesc(i: number, addr: number, len: number, flags: number, next: number, table = this.desc): void {
    const v = this.dv(table + 16 * i, 16);
    v.setUint32(0, addr % 2 ** 32, true);
    v.setUint32(4, Math.floor(addr / 2 ** 32), true);
    v.setUint32(8, len >>> 0, true);
    v.setUint16(12, flags, true);
    v.setUint16(14, next, true);
  }

  /** Publishes a head in the available ring (no notification). */
  publish(head: number): void {
    const v = this.dv(this.avail, 6 + 2 * this.size);
    v.setUint16(4 + 2 * (this.availIdx % this.size), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    v.setUint16(2, this.availIdx, true);
  }

  setAvailFlags(f: number): void {
    this.dv(this.avail, 2).setUint16(0, f, true);
  }

  /** used_event (event index) */
  setUsedEvent(v: number): void {
    this.dv(this.avail + 4 + 2 * this.size, 2).setUint16(0, v, true);
  }

  usedIdx(): number {
    return this.dv(this.used + 2, 2).getUint16(0, true);
  }

  availEvent(): number {
    return this.dv(this.used + 4 + 8 * this.size, 2).getUint16(0, true);
  }

  /** Builds a chain (direct, or one indirect table) for the buffers and publishes it. */
  add(bufs: Buf[], opts: { indirect?: boolean } = {}): { head: number; done: Promise<Used> } {
    let descs: number[];
    let head: number;
    if (opts.indirect) {
      const t = this.d.alloc(16 * bufs.length, 16);
      bufs.forEach((b, i) => this.setDesc(i, b.iova, b.len, (b.write ? Desc.F_WRITE : 0) | (i < bufs.length - 1 ? Desc.F_NEXT : 0), i + 1, t));
      head = this.take();
      descs = [head];
      this.setDesc(head, t, 16 * bufs.length, Desc.F_INDIRECT, 0);
    } else {
      if (this.free.length < bufs.length) throw new Error(`queue ${this.index}: no free descriptors`);
      descs = bufs.map(() => this.take());
      bufs.forEach((b, i) => this.setDesc(descs[i]!, b.iova, b.len, (b.write ? Desc.F_WRITE : 0) | (i < bufs.length - 1 ? Desc.F_NEXT : 0), descs[i + 1] ?? 0));
      head = descs[0]!;
    }
    const done = new Promise<Used>((resolve) => this.waiters.set(head, { resolve, descs }));
    this.publish(head);
    return { head, done };
  }

  private take(): number {
    const i = this.free.shift();
    if (i === undefined) throw new Error(`queue ${this.index}: no free descriptors`);
    return i;
  }

  /** Consumes new used entries; returns how many. */
  drain(eventIdx: boolean): number {
    const v = this.dv(this.used, 6 + 8 * this.size);
    let n = 0;
    for (;;) {
      n += this.drainOnce(v);
      if (!eventIdx) return n;
      // ask for an interrupt at the next entry, then look again (as virtqueue_enable_cb does):
      // an entry the device added before it could see our used event interrupts nobody
      this.setUsedEvent(this.lastUsed);
      fullBarrier();
      if (this.lastUsed === v.getUint16(2, true)) return n;
    }
  }

  private drainOnce(v: DataView): number {
    let n = 0;
    while (this.lastUsed !== v.getUint16(2, true)) {
      const slot = this.lastUsed % this.size;
      const u = { id: v.getUint32(4 + 8 * slot, true), len: v.getUint32(8 + 8 * slot, true) };
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      n++;
      const w = this.waiters.get(u.id);
      if (w) {
        this.waiters.delete(u.id);
        this.free.push(...w.descs);
        w.resolve(u);
      } else this.stray.push(u);
    }
    return n;
  }
}

/**
 * A virtio-pci (modern) driver over a {@link VfioUserClient}, like Linux's virtio_pci and
 * virtio_ring: it finds the virtio capabilities, negotiates features, sets up split
 * virtqueues in guest memory, takes interrupts (MSI-X per queue, or INTx with the ISR) and
 * runs requests. Raw ring access ({@link DriverQueue}) is there for tests of malformed rings.
 *
 * ```ts
 * const d = await VirtioDriver.attach(client);
 * await d.init({ queues: 1, size: 64 });
 * const buf = d.alloc(4096);
 * const used = await d.submit(0, [{ iova: buf, len: 4096, write: true }]);
 * ```
 */
export class VirtioDriver extends GuestDriver<VirtioDriverOptions> {
  caps = new Map<number, CapLocation>();
  queues: DriverQueue[] = [];
  features = 0n;
  deviceFeatures = 0n;
  private irqs: IrqHandle[] = [];
  /** interrupts per vector (INTx counts as vector 0) */
  readonly interrupts = new Map<number, number>();
  configInterrupts = 0;
  /** notifications sent / suppressed by the device (event index or NO_NOTIFY) */
  notifies = 0;
  suppressed = 0;
  private readonly timers = new Set<NodeJS.Timeout>();

  private constructor(client: VfioUserClient, ram: GuestRam, opts: VirtioDriverOptions) {
    super(client, ram, opts);
  }

  /** Maps guest memory, finds the virtio capabilities and sets up interrupts (the device is not reset). */
  static async attach(client: VfioUserClient, opts: VirtioDriverOptions = {}): Promise<VirtioDriver> {
    const d = new VirtioDriver(client, await GuestDriver.mapRam(client, opts, 16 << 20), opts);
    await d.findCaps();
    await d.setupInterrupts();
    if (opts.mmapNotify) {
      const c = d.loc(CapType.NOTIFY);
      const r = await client.mapRegion(c.bar);
      const area = r.areas.find((a) => a.offset <= c.offset && c.offset + c.length <= a.offset + a.size);
      if (!area) {
        r.unmap();
        throw new Error('the notify area is not mmap-able');
      }
      d.notifyMap = { region: r, bytes: area.bytes.subarray(c.offset - area.offset, c.offset - area.offset + c.length) };
    }
    return d;
  }

  /** the mmap-ed notify area (mmapNotify) */
  private notifyMap: { region: MappedRegion; bytes: Uint8Array } | undefined;

  // ------------------------------------------------------------ capabilities and registers

  /** Walks the capability list for the virtio vendor capabilities (the first of each type). */
  private async findCaps(): Promise<void> {
    const cfg = await this.client.readConfig(0, 256);
    const dv = new DataView(cfg.buffer, cfg.byteOffset, 256);
    let p = cfg[0x34]! & 0xfc;
    for (let n = 0; p && n < 48; n++) {
      if (cfg[p] === 0x09) {
        const type = cfg[p + 3]!;
        if (!this.caps.has(type)) {
          this.caps.set(type, {
            cap: p,
            bar: cfg[p + 4]!,
            offset: dv.getUint32(p + 8, true),
            length: dv.getUint32(p + 12, true),
            multiplier: type === CapType.NOTIFY ? dv.getUint32(p + 16, true) : undefined,
          });
        }
      }
      p = cfg[p + 1]! & 0xfc;
    }
    for (const t of [CapType.COMMON, CapType.NOTIFY, CapType.ISR, CapType.DEVICE]) if (!this.caps.has(t)) throw new Error(`no virtio capability of type ${t}`);
  }

  private loc(type: number): CapLocation {
    return this.caps.get(type)!;
  }

  async readCommon(off: number, len: 1 | 2 | 4): Promise<number> {
    const c = this.loc(CapType.COMMON);
    const b = await this.client.read(c.bar, c.offset + off, len);
    const dv = new DataView(b.buffer, b.byteOffset, len);
    return len === 1 ? dv.getUint8(0) : len === 2 ? dv.getUint16(0, true) : dv.getUint32(0, true);
  }

  async writeCommon(off: number, len: 1 | 2 | 4, v: number): Promise<void> {
    const c = this.loc(CapType.COMMON);
    const b = new Uint8Array(len);
    const dv = new DataView(b.buffer);
    if (len === 1) dv.setUint8(0, v);
    else if (len === 2) dv.setUint16(0, v, true);
    else dv.setUint32(0, v >>> 0, true);
    await this.client.write(c.bar, c.offset + off, b);
  }

  async status(): Promise<number> {
    return this.readCommon(Common.DEVICE_STATUS, 1);
  }

  async setStatus(v: number): Promise<void> {
    await this.writeCommon(Common.DEVICE_STATUS, 1, v);
  }

  /** Device configuration bytes. */
  async readDeviceConfig(off: number, len: number): Promise<Uint8Array> {
    const c = this.loc(CapType.DEVICE);
    return this.client.read(c.bar, c.offset + off, len);
  }

  async readIsr(): Promise<number> {
    const c = this.loc(CapType.ISR);
    return (await this.client.read(c.bar, c.offset, 1))[0]!;
  }

  // ------------------------------------------------------------ interrupts

  private async setupInterrupts(): Promise<void> {
    if ((this.opts.interrupts ?? 'msix') === 'intx') {
      // MSI-X off (a previous client may have left it on), INTx by eventfd
      await disableMsix(this.client);
      const h = await this.client.enableIrqs(IrqIndex.INTX, 1);
      h.on('irq', () => void this.intx());
      this.irqs = [h];
      return;
    }
    await this.armMsix(this.client, await enableMsix(this.client));
  }

  private async armMsix(client: VfioUserClient, vectors: number): Promise<void> {
    this.irqs = await armMsixVectors(client, vectors, (v) => this.msix(v));
  }

  /** the interrupt handles (MSI-X in chunks of the server's max_msg_fds, or INTx) */
  get irqHandles(): readonly IrqHandle[] {
    return this.irqs;
  }

  /** Finds a capability in config space (its offset, 0 when absent). */
  private count(v: number): void {
    this.interrupts.set(v, (this.interrupts.get(v) ?? 0) + 1);
  }

  private msix(v: number): void {
    this.count(v);
    if (v === 0) this.configInterrupts++;
    for (const q of this.queues) if (q.vector === v) q.drain(this.eventIdx);
  }

  private async intx(): Promise<void> {
    this.count(0);
    const isr = await this.readIsr().catch(() => 0);
    if (isr & 2) this.configInterrupts++;
    for (const q of this.queues) q.drain(this.eventIdx);
    await this.client.unmaskIrq(0, 0).catch(() => {});
  }

  get eventIdx(): boolean {
    return (this.features & bit(Feature.RING_EVENT_IDX)) !== 0n;
  }

  /** Re-arms interrupts on a new client (migration destination). */
  async moveTo(client: VfioUserClient): Promise<void> {
    for (const h of this.irqs) h.close();
    this.setClient(client);
    if ((this.opts.interrupts ?? 'msix') === 'intx') {
      const h = await client.enableIrqs(IrqIndex.INTX, 1);
      h.on('irq', () => void this.intx());
      this.irqs = [h];
    } else {
      const info = await client.irqInfo(IrqIndex.MSIX);
      await this.armMsix(client, info.count);
    }
    for (const q of this.queues) q.drain(this.eventIdx);
  }

  // ------------------------------------------------------------ bring-up

  /** Reset, then wait until the status reads back 0. */
  async reset(): Promise<void> {
    await this.setStatus(0);
    const end = Date.now() + 5000;
    while ((await this.status()) !== 0) {
      if (Date.now() > end) throw new Error('device did not reset');
      await new Promise((r) => setTimeout(r, 1));
    }
    this.queues = [];
  }

  /** Reads the 64 bits of device features. */
  async readDeviceFeatures(): Promise<bigint> {
    let f = 0n;
    for (let sel = 0; sel < 2; sel++) {
      await this.writeCommon(Common.DEVICE_FEATURE_SELECT, 4, sel);
      f |= BigInt(await this.readCommon(Common.DEVICE_FEATURE, 4)) << BigInt(32 * sel);
    }
    return f;
  }

  async writeDriverFeatures(f: bigint): Promise<void> {
    for (let sel = 0; sel < 2; sel++) {
      await this.writeCommon(Common.DRIVER_FEATURE_SELECT, 4, sel);
      await this.writeCommon(Common.DRIVER_FEATURE, 4, Number((f >> BigInt(32 * sel)) & 0xffffffffn));
    }
  }

  /**
   * Full bring-up: reset, ACKNOWLEDGE, DRIVER, features (offered & `want`), FEATURES_OK,
   * `queues` queues of `size` entries (vector q+1 under MSI-X, config on vector 0), DRIVER_OK.
   */
  async init(o: { want?: bigint; queues?: number; size?: number } = {}): Promise<void> {
    await this.reset();
    await this.setStatus(Status.ACKNOWLEDGE);
    await this.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
    this.deviceFeatures = await this.readDeviceFeatures();
    this.features = this.deviceFeatures & (o.want ?? this.deviceFeatures);
    await this.writeDriverFeatures(this.features);
    await this.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
    if (!((await this.status()) & Status.FEATURES_OK)) throw new Error('FEATURES_OK did not stick');
    const msix = (this.opts.interrupts ?? 'msix') === 'msix';
    if (msix) {
      await this.writeCommon(Common.CONFIG_MSIX_VECTOR, 2, 0);
      if ((await this.readCommon(Common.CONFIG_MSIX_VECTOR, 2)) !== 0) throw new Error('config vector refused');
    }
    const n = o.queues ?? (await this.readCommon(Common.NUM_QUEUES, 2));
    for (let i = 0; i < n; i++) await this.setupQueue(i, o.size, msix ? i + 1 : NO_VECTOR);
    await this.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
  }

  async setupQueue(i: number, size: number | undefined, vector: number): Promise<DriverQueue> {
    await this.writeCommon(Common.QUEUE_SELECT, 2, i);
    const max = await this.readCommon(Common.QUEUE_SIZE, 2);
    if (max === 0) throw new Error(`queue ${i} is not available`);
    const n = Math.min(max, size ?? max);
    if (n !== max) await this.writeCommon(Common.QUEUE_SIZE, 2, n);
    const q = new DriverQueue(this, i, n, vector);
    const w64 = async (off: number, v: number): Promise<void> => {
      await this.writeCommon(off, 4, v % 2 ** 32);
      await this.writeCommon(off + 4, 4, Math.floor(v / 2 ** 32));
    };
    await w64(Common.QUEUE_DESC, q.desc);
    await w64(Common.QUEUE_DRIVER, q.avail);
    await w64(Common.QUEUE_DEVICE, q.used);
    await this.writeCommon(Common.QUEUE_MSIX_VECTOR, 2, vector);
    if ((await this.readCommon(Common.QUEUE_MSIX_VECTOR, 2)) !== vector) throw new Error(`queue ${i}: vector ${vector} refused`);
    await this.writeCommon(Common.QUEUE_ENABLE, 2, 1);
    this.queues[i] = q;
    return q;
  }

  // ------------------------------------------------------------ requests

  /** Notifies the device about queue q (honouring event index / NO_NOTIFY as a driver would, unless forced). */
  notify(q: DriverQueue, force = false, prevAvail?: number): void {
    if (!force) {
      if (this.eventIdx && prevAvail !== undefined) {
        fullBarrier(); // the available index we wrote before the device's available event we read
        const ev = q.availEvent();
        if (((q.availIdx - ev - 1) & 0xffff) >= ((q.availIdx - prevAvail) & 0xffff)) {
          this.suppressed++;
          return;
        }
      }
    }
    this.notifies++;
    const c = this.loc(CapType.NOTIFY);
    if (this.notifyMap) {
      // a 16-bit store of the queue index, as a guest's would be (the ring is written before)
      new DataView(this.notifyMap.bytes.buffer, this.notifyMap.bytes.byteOffset).setUint16(q.index * (c.multiplier ?? 0), q.index, true);
      return;
    }
    void this.client.write(c.bar, c.offset + q.index * (c.multiplier ?? 0), Uint8Array.of(q.index & 0xff, q.index >> 8), { posted: true }).catch(() => {});
  }

  /** Adds a chain to queue `qi`, notifies, and waits for its used entry. */
  async submit(qi: number, bufs: Buf[], opts: { indirect?: boolean; timeoutMs?: number; noNotify?: boolean } = {}): Promise<Used> {
    const q = this.queues[qi];
    if (!q) throw new Error(`no queue ${qi}`);
    const prev = q.availIdx;
    const { head, done } = q.add(bufs, opts);
    // a barrier is implied: the notification is a message after the stores
    if (!opts.noNotify) this.notify(q, false, prev);
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new Error(`request ${head} on queue ${qi} timed out`)), opts.timeoutMs ?? 10000);
      this.timers.add(t);
    });
    try {
      return await Promise.race([done, timeout]);
    } finally {
      clearTimeout(t);
      this.timers.delete(t!);
    }
  }

  close(): void {
    this.notifyMap?.region.unmap();
    this.notifyMap = undefined;
    for (const h of this.irqs) h.close();
    this.irqs = [];
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}

// ------------------------------------------------------------ virtio-blk on top

/** The outcome of a virtio-blk request: its status byte and the used length. */
export interface BlkResult {
  status: number;
  used: number;
}

/** virtio-blk requests over a VirtioDriver (header, data, status byte in guest memory). */
export class BlkDriver {
  constructor(readonly d: VirtioDriver) {}

  private slots: number[] = [];

  /** a 64-byte scratch slot: header at 0, status at 16, ID at 32 */
  private slot(): number {
    if (!this.slots.length) {
      const page = this.d.alloc(PAGE);
      for (let o = 0; o < PAGE; o += 64) this.slots.push(page + o);
    }
    return this.slots.pop()!;
  }

  /** One request: header (type, sector), readable data, writable data, status. */
  async request(q: number, type: number, sector: number, data: { out?: Buf[]; in?: Buf[] } = {}, opts: { indirect?: boolean; noNotify?: boolean } = {}): Promise<BlkResult> {
    const s = this.slot();
    try {
      const hv = new DataView(this.d.at(s, 16).buffer, this.d.at(s, 16).byteOffset, 16);
      hv.setUint32(0, type, true);
      hv.setUint32(4, 0, true);
      hv.setUint32(8, sector % 2 ** 32, true);
      hv.setUint32(12, Math.floor(sector / 2 ** 32), true);
      const st = s + 16;
      this.d.at(st, 1)[0] = 0xff;
      const bufs: Buf[] = [{ iova: s, len: 16 }, ...(data.out ?? []), ...(data.in ?? []).map((b) => ({ ...b, write: true })), { iova: st, len: 1, write: true }];
      const u = await this.d.submit(q, bufs, opts);
      return { status: this.d.at(st, 1)[0]!, used: u.len };
    } finally {
      this.slots.push(s);
    }
  }

  read(q: number, sector: number, bufs: Buf[], opts: { indirect?: boolean } = {}): Promise<BlkResult> {
    return this.request(q, BlkType.IN, sector, { in: bufs }, opts);
  }

  write(q: number, sector: number, bufs: Buf[], opts: { indirect?: boolean; noNotify?: boolean } = {}): Promise<BlkResult> {
    return this.request(q, BlkType.OUT, sector, { out: bufs }, opts);
  }

  flush(q: number): Promise<BlkResult> {
    return this.request(q, BlkType.FLUSH, 0);
  }

  async getId(q: number): Promise<{ r: BlkResult; id: string }> {
    const b = this.slot();
    try {
      this.d.at(b, 20).fill(0);
      const r = await this.request(q, BlkType.GET_ID, 0, { in: [{ iova: b, len: 20 }] });
      return { r, id: Buffer.from(this.d.at(b, 20)).toString('latin1').replace(/\0+$/, '') };
    } finally {
      this.slots.push(b);
    }
  }

  /** DISCARD or WRITE_ZEROES over ranges. */
  ranges(q: number, type: number, ranges: { sector: number; count: number; flags?: number }[]): Promise<BlkResult> {
    const b = this.d.alloc(16 * ranges.length, 16);
    const v = new DataView(this.d.at(b, 16 * ranges.length).buffer, this.d.at(b, 0).byteOffset, 16 * ranges.length);
    ranges.forEach((r, i) => {
      v.setUint32(16 * i, r.sector % 2 ** 32, true);
      v.setUint32(16 * i + 4, Math.floor(r.sector / 2 ** 32), true);
      v.setUint32(16 * i + 8, r.count, true);
      v.setUint32(16 * i + 12, r.flags ?? 0, true);
    });
    return this.request(q, type, 0, { out: [{ iova: b, len: 16 * ranges.length }] });
  }

  async capacity(): Promise<number> {
    const b = await this.d.readDeviceConfig(0, 8);
    return Number(new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true));
  }
}
