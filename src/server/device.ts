/**
 * The device description API: what a device author writes.
 *
 *   const dev = new PciDevice({ vendorId: 0x494f, deviceId: 0x0dc8, classCode: 0xff0000,
 *                               irqs: { intx: 1 } });
 *   dev.addRegion(2, { size: 256, bar: { kind: 'mem32' }, access: { read, write } });
 *   dev.trigger(IrqIndex.INTX);
 *
 * Regions are either trapped (access callbacks, sync or async; the server runs commands one
 * at a time, so ordering holds) or backed by shared memory the client may mmap, in whole or
 * in sparse areas; trapped accesses outside the sparse areas go to the callbacks, or to the
 * memory when there are none. Config space (region 7) is emulated by `dev.config`.
 */
import { native, PROT_READ, PROT_WRITE } from '../native/index.js';
import { VfioUserError, Errno } from '../errors.js';
import { PciRegion } from '../protocol/constants.js';
import { ConfigSpace, type ConfigSpaceOptions, MsixTable } from './pci/index.js';
import { DmaController } from './dma.js';
import { IrqController, IrqIndex } from './irq.js';
import { served } from './served.js';

/** Region indexes: vfio-pci's fixed ones, and the first device-specific one (with a type cap). */
export const RegionIndex = { ...PciRegion, DEVICE_SPECIFIC: PciRegion.NUM } as const;

export interface RegionAccess {
  /** Returns `length` bytes at `offset` (copied at once: the same buffer may be returned each time). */
  read?(offset: number, length: number): Uint8Array | Promise<Uint8Array>;
  write?(offset: number, data: Uint8Array): void | Promise<void>;
}

export interface RegionOptions {
  size: number;
  readable?: boolean;
  writable?: boolean;
  /** trapped access callbacks */
  access?: RegionAccess;
  /** back the region with shared memory the client can mmap */
  shared?: boolean;
  /** mmap-able areas when shared (default: the whole region); page-aligned */
  mmapAreas?: { offset: number; size: number }[];
  /** for BARs: the BAR's kind (default mem32) */
  bar?: { kind?: 'mem32' | 'mem64' | 'io'; prefetchable?: boolean };
  /** for device-specific regions: the region type capability */
  type?: { type: number; subtype: number };
}

export interface IoEventFd {
  readonly fd: number;
  readonly region: number;
  readonly offset: number;
  readonly size: number;
  readonly datamatch: bigint | undefined;
}

export class Region {
  readonly index: number;
  readonly size: number;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly access: RegionAccess | undefined;
  readonly type: { type: number; subtype: number } | undefined;
  /** shared memory: its fd (sent to the client on GET_REGION_INFO) and the server's view */
  readonly memfd: number;
  readonly memory: Uint8Array | undefined;
  private readonly memoryBuffer: ArrayBuffer | undefined;
  readonly mmapAreas: { offset: number; size: number }[];
  readonly ioeventfds: IoEventFd[] = [];

  constructor(index: number, o: RegionOptions) {
    this.index = index;
    this.size = o.size;
    this.readable = o.readable ?? true;
    this.writable = o.writable ?? true;
    this.access = o.access;
    this.type = o.type;
    if (o.shared) {
      const pg = native.PAGE_SIZE;
      if (o.size % pg) throw new VfioUserError('VFU_INVALID_ARGUMENT', `shared region ${index} size must be page-aligned`, Errno.EINVAL);
      this.memfd = native.memfdCreate(`vfio-user-region-${index}`);
      native.ftruncate(this.memfd, o.size);
      this.memoryBuffer = native.mmap(this.memfd, 0, o.size, PROT_READ | PROT_WRITE);
      this.memory = new Uint8Array(this.memoryBuffer);
      this.mmapAreas = o.mmapAreas ?? [{ offset: 0, size: o.size }];
      for (const a of this.mmapAreas) {
        if (a.offset % pg || a.size % pg || a.size <= 0 || a.offset + a.size > o.size) {
          throw new VfioUserError('VFU_INVALID_ARGUMENT', `bad mmap area in region ${index}`, Errno.EINVAL);
        }
      }
    } else {
      this.memfd = -1;
      this.memory = undefined;
      this.mmapAreas = [];
    }
  }

  get mappable(): boolean {
    return this.memfd >= 0 && this.mmapAreas.length > 0;
  }

  /** Releases the shared memory (the device is being destroyed). */
  destroy(): void {
    if (this.memoryBuffer) native.munmap(this.memoryBuffer);
    if (this.memfd >= 0) native.close(this.memfd);
    for (const e of this.ioeventfds) native.close(e.fd);
    this.ioeventfds.length = 0;
  }
}

export interface PciDeviceOptions extends ConfigSpaceOptions {
  /** vector counts per IRQ index */
  irqs?: { intx?: number | undefined; msi?: number | undefined; msix?: number | undefined; err?: number | undefined; req?: number | undefined } | undefined;
  /** device name for logs and `info` */
  name?: string;
}

export type ResetReason = 'client' | 'flr' | 'lost-client';

/** What a migratable device provides. */
export interface MigrationHooks {
  /** pre-copy: an estimate of the bytes still to send now (0 when converged) */
  precopyPending?(): number;
  /** pre-copy: up to max bytes of state that may still change later (empty when nothing now) */
  precopyRead?(max: number): Uint8Array;
  /** the final device state, taken with the device stopped */
  save(): Uint8Array | Promise<Uint8Array>;
  /**
   * Validates, then applies, the state produced by save() (and the pre-copy chunks, in order).
   * Must throw without changing anything when the data is bad.
   */
  load(state: Uint8Array, precopy: Uint8Array[]): void | Promise<void>;
  /** device activity follows the state: stop DMA and interrupts when not running */
  onStateChange?(from: number, to: number): void;
  /**
   * Entering STOP from a running state: resolves once the device does no more DMA (requests in
   * flight finished). The STOP reply waits for it, so a client that stops the device and
   * leaves (its maps go) leaves nothing half done; the state is kept for the next client.
   */
  quiesce?(): Promise<void>;
  /**
   * The most bytes of migration data this device takes when resuming (its pre-copy data and
   * final state, plus a little framing); a stream beyond it is refused as it arrives.
   * Default 64 MiB.
   */
  maxStateBytes?: number;
}

/** A PCI device served over vfio-user. */
export class PciDevice {
  readonly name: string;
  readonly config: ConfigSpace;
  readonly regions = new Map<number, Region>();
  readonly irqs: IrqController;
  readonly dma: DmaController;
  /** called on DEVICE_RESET and FLR: return the device to its power-on state */
  onReset: ((reason: ResetReason) => void | Promise<void>) | undefined;
  /**
   * called when a client attaches (after VERSION) and detaches (its DMA maps and IRQ fds are
   * gone by then); the next client is served once a returned promise settles
   */
  onAttach: (() => void) | undefined;
  onDetach: (() => void) | (() => Promise<void>) | undefined;
  /** set to make the device migratable (before serving it) */
  migration: MigrationHooks | undefined;
  get migratable(): boolean {
    return this.migration !== undefined;
  }

  constructor(o: PciDeviceOptions) {
    this.name = o.name ?? `pci-${hex4(o.vendorId)}-${hex4(o.deviceId)}`;
    this.config = new ConfigSpace(o);
    const irq = o.irqs ?? {};
    const counts = [irq.intx ?? 0, irq.msi ?? 0, irq.msix ?? 0, irq.err ?? 0, irq.req ?? 0];
    checkIrqCounts(irq);
    this.irqs = new IrqController(counts);
    this.dma = new DmaController();
    this.config.events.onFlr = () => {
      served(this).flrRequested = true;
    };
    // MSI per-vector masks live in config space: unmasking there delivers what is pending, and
    // the capability's pending bits mirror ours
    this.config.events.onMsi = (st) => {
      for (let v = 0; v < this.irqs.count(IrqIndex.MSI); v++) if (!((st.maskBits >>> v) & 1)) this.irqs.deviceUnmasked(IrqIndex.MSI, v);
    };
    this.irqs.onPendingChange = (index, v, on) => this.pendingChanged(index, v, on);
    this.irqs.deviceMasked = (index, v) => {
      const msix = served(this).msix;
      if (index === IrqIndex.MSIX && msix) {
        // A client like QEMU emulates the MSI-X table itself and never forwards table
        // accesses: the server's copy (all vectors masked at reset) then says nothing, and
        // masking reaches us as SET_IRQS. Only a client that writes the table drives it here.
        if (msix.table.functionState().functionMask) return true;
        return msix.tableDriven && msix.table.entry(v).masked;
      }
      if (index === IrqIndex.MSI) {
        const msi = this.config.msi();
        if (msi && (msi.maskBits >>> v) & 1) return true;
      }
      return false;
    };
  }

  /** Adds a region. BARs also appear in config space with the right type and size. */
  addRegion(index: number, o: RegionOptions): Region {
    if (served(this).attached) {
      throw new VfioUserError('VFU_DEVICE_DEFINITION', `region ${index} added while a client is attached: define every region before serving`, Errno.EBUSY);
    }
    if (!o.access && !o.shared) {
      throw new VfioUserError('VFU_DEVICE_DEFINITION', `region ${index} has neither access callbacks nor shared memory: nothing could serve it`, Errno.EINVAL);
    }
    if (!Number.isInteger(index) || index < 0 || index > 0xffff) {
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `bad region index ${index}`, Errno.EINVAL);
    }
    if (index === RegionIndex.CONFIG) throw new VfioUserError('VFU_INVALID_ARGUMENT', 'config space is emulated by dev.config', Errno.EINVAL);
    if (this.regions.has(index)) throw new VfioUserError('VFU_INVALID_ARGUMENT', `region ${index} already defined`, Errno.EEXIST);
    if (index >= RegionIndex.DEVICE_SPECIFIC && !o.type) {
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `device-specific region ${index} needs a type`, Errno.EINVAL);
    }
    if (!(o.size > 0) || !Number.isSafeInteger(o.size)) throw new VfioUserError('VFU_INVALID_ARGUMENT', `bad size for region ${index}`, Errno.EINVAL);
    if (index <= RegionIndex.BAR5) {
      this.config.defineBar(index, { size: o.size, kind: o.bar?.kind ?? 'mem32', prefetchable: o.bar?.prefetchable ?? false });
    } else if (index === RegionIndex.ROM) {
      this.config.defineRom(o.size);
    }
    const r = new Region(index, index === RegionIndex.ROM ? { ...o, writable: false } : o);
    this.regions.set(index, r);
    return r;
  }

  /** Adds an MSI-X capability with its table and PBA emulated in the given BAR(s). */
  addMsix(o: { vectors: number; tableBar: number; tableOffset: number; pbaBar: number; pbaOffset: number }): number {
    const declared = this.irqs.count(IrqIndex.MSIX);
    if (declared !== o.vectors) {
      throw new VfioUserError(
        'VFU_DEVICE_DEFINITION',
        `MSI-X capability with ${o.vectors} vectors but ${declared} MSI-X IRQs declared (irqs.msix must be ${o.vectors})`,
        Errno.EINVAL,
      );
    }
    const off = this.config.addMsix({ tableSize: o.vectors, ...o });
    const table = new MsixTable(o.vectors);
    served(this).msix = { table, location: { tableBar: o.tableBar, tableOffset: o.tableOffset, pbaBar: o.pbaBar, pbaOffset: o.pbaOffset }, tableDriven: false };
    // the table calls onUnmask for pending vectors that its function state unmasks
    this.config.events.onMsix = (s) => table.setFunctionState(s.enabled, s.functionMask);
    table.onUnmask = (v) => this.irqs.deviceUnmasked(IrqIndex.MSIX, v);
    return off;
  }

  private pendingChanged(index: number, v: number, on: boolean): void {
    if (index === IrqIndex.MSIX) served(this).msix?.table.setPending(v, on);
    else if (index === IrqIndex.MSI && this.config.msi()?.perVectorMask) this.config.setMsiPending(v, on);
  }

  /**
   * Raises an interrupt (edge): delivered now, or left pending while masked. While DMA
   * writes by message (guest memory not shared) are still unanswered, the interrupt waits
   * for them, so it never reaches the guest before the data it announces; it then counts
   * as delivered (true).
   */
  trigger(index: number = IrqIndex.INTX, vector = 0): boolean {
    this.checkVector(index, vector);
    let delivered = true;
    this.dma.writeOrder.after(() => {
      delivered = this.irqs.trigger(index, vector);
    });
    return delivered;
  }

  /** Sets the level of a level-triggered interrupt (INTx), in order after pending DMA writes as trigger() does. */
  setIrqLevel(high: boolean, vector = 0): void {
    this.checkVector(IrqIndex.INTX, vector);
    this.dma.writeOrder.after(() => this.irqs.setLevel(IrqIndex.INTX, vector, high));
  }

  private checkVector(index: number, vector: number): void {
    if (!(vector >= 0 && vector < this.irqs.count(index))) {
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `no IRQ vector ${index}/${vector}`, Errno.EINVAL);
    }
  }

  /**
   * Registers an ioeventfd: the client may write the eventfd instead of sending a
   * REGION_WRITE of `size` bytes at `offset` (with `datamatch`, only that value). The handler
   * runs when it fires, with the eventfd's counter: the writes it coalesced when the client
   * writes 1 each time (as KVM and QEMU do), exact whatever the client wrote (a u64, hence a
   * bigint). Returns the registration.
   */
  addIoEventFd(
    region: number,
    offset: number,
    size: 1 | 2 | 4 | 8,
    datamatch: bigint | undefined,
    handler: (count: bigint) => void,
  ): IoEventFd {
    const r = this.regions.get(region);
    if (!r) throw new VfioUserError('VFU_INVALID_ARGUMENT', `no region ${region}`, Errno.EINVAL);
    if (offset < 0 || offset + size > r.size) throw new VfioUserError('VFU_INVALID_ARGUMENT', 'ioeventfd outside its region', Errno.EINVAL);
    const fd = native.eventfd(0, false);
    const e: IoEventFd = { fd, region, offset, size, datamatch };
    r.ioeventfds.push(e);
    const poller = native.createPoller(fd, (status) => {
      if (status < 0) return;
      const n = native.eventfdRead(fd);
      if (n > 0n) handler(n);
    });
    poller.start(native.POLL_READABLE);
    poller.unref();
    this.ioeventPollers.push(poller);
    return e;
  }
  private readonly ioeventPollers: { close(): void }[] = [];

  /** Resets device state common to every device (config space, IRQ state), then the device's own. */
  async reset(reason: ResetReason): Promise<void> {
    this.config.reset();
    const st = served(this);
    st.msix?.table.reset();
    this.irqs.reset();
    st.flrRequested = false;
    await this.onReset?.(reason);
  }

  /** Frees the device's resources (shared memory, ioeventfds). */
  destroy(): void {
    for (const p of this.ioeventPollers) p.close();
    this.ioeventPollers.length = 0;
    for (const r of this.regions.values()) r.destroy();
  }
}

/** IRQ counts: whole numbers within what PCI allows (MSI 32, MSI-X 2,048 vectors). */
function checkIrqCounts(irq: NonNullable<PciDeviceOptions['irqs']>): void {
  const max = { intx: 1, msi: 32, msix: 2048, err: 1, req: 1 } as const;
  for (const [k, limit] of Object.entries(max)) {
    const n = irq[k as keyof typeof max];
    if (n !== undefined && !(Number.isInteger(n) && n >= 0 && n <= limit)) {
      throw new VfioUserError('VFU_DEVICE_DEFINITION', `irqs.${k} = ${n}: must be a whole number 0..${limit}`, Errno.EINVAL);
    }
  }
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}
