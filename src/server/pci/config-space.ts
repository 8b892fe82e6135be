/**
 * PCI configuration space of an emulated type-0 function (vfio-user region index 7).
 *
 * Pure logic, no I/O. The whole space is a byte array plus, per byte, a writable mask,
 * an RW1C mask and a "kind" tag naming the register with side effects (command, BARs,
 * ROM, PMCSR, MSI, MSI-X control, PCIe device control). A write is one tight loop
 *   new = ((old & ~wmask) | (data & wmask)) & ~(data & w1c)
 * followed by side-effect processing only for the kinds touched. BAR sizing falls out of
 * the masks: a BAR's writable bits are exactly its address bits, so writing all-ones
 * reads back the size mask plus the read-only type bits.
 *
 * Events are emitted after the whole write has been applied, in register order, and only
 * when a value actually changed; reset(), load() and poke() never emit.
 *
 * One idea, kept in one file although it passes 800 lines: every register with side effects
 * shares the byte array, the masks, the kind tags, the hooks and the event order of one write,
 * so splitting it by register would spread one state machine over files that all reach into
 * it. What stands alone is elsewhere: the capability images (capabilities.ts), the register
 * layout (registers.ts), the MSI-X table (msix.ts).
 */
import {
  type CapImage,
  type MsiLayout,
  type MsiOptions,
  type MsixOptions,
  type PciExpressOptions,
  type PowerManagementOptions,
  msiImage,
  msiLayout,
  msixImage,
  pcieImage,
  pmImage,
  serialNumberImage,
  vendorSpecificExtendedImage,
  vendorSpecificImage,
} from './capabilities.js';
import { byteAt, le16, le32 } from '../../bytes.js';
import { ConfigSpaceError } from './errors.js';
import * as R from './registers.js';

export interface ConfigSpaceOptions {
  /** 256 (conventional) or 4096 (PCIe, with extended space); default 256 */
  size?: 256 | 4096;
  vendorId: number;
  deviceId: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** 24-bit: base << 16 | sub << 8 | prog-if */
  classCode: number;
  revision?: number;
  /** 0 none, 1 INTA .. 4 INTD; default 1 (INTA) */
  interruptPin?: 0 | 1 | 2 | 3 | 4;
}

export type BarKind = 'mem32' | 'mem64' | 'io';

export interface BarDefinition {
  size: number | bigint;
  kind: BarKind;
  prefetchable?: boolean;
}

export interface BarInfo {
  size: bigint;
  kind: BarKind;
  prefetchable: boolean;
}

export type PowerState = 0 | 1 | 2 | 3;

export interface MsiState {
  enabled: boolean;
  address: bigint;
  data: number;
  /** 1 << Multiple Message Enable */
  vectorsEnabled: number;
  /** 1 << Multiple Message Capable */
  vectorsCapable: number;
  address64: boolean;
  perVectorMask: boolean;
  /** 0 when per-vector masking is not implemented */
  maskBits: number;
  /** 0 when per-vector masking is not implemented */
  pendingBits: number;
}

export interface MsixControlState {
  enabled: boolean;
  functionMask: boolean;
}

export interface MsixInfo extends MsixControlState {
  /** number of vectors */
  tableSize: number;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

export interface ConfigEvents {
  onCommand?: (value: number, old: number) => void;
  /** a BAR's address changed (all-ones sizing writes and their restore are not reported) */
  onBarProgrammed?: (index: number, address: bigint) => void;
  onRomProgrammed?: (address: bigint, enabled: boolean) => void;
  onMsi?: (state: MsiState) => void;
  onMsix?: (state: MsixControlState) => void;
  /** "Initiate FLR" was written; the device should quiesce and call reset() */
  onFlr?: () => void;
  onPowerState?: (d: PowerState) => void;
  onIntxDisable?: (disabled: boolean) => void;
}

export interface ConfigHook {
  /** may modify data (the overlapping portion of the read) in place */
  read?(offset: number, data: Uint8Array): void;
  /** return true if handled: the default write is skipped for these bytes */
  write?(offset: number, data: Uint8Array): boolean;
}

export interface CapabilityInfo {
  id: number;
  offset: number;
  extended: boolean;
}

/* byte kinds (bit positions in the "touched" mask) */
const K_NONE = 0;
const K_COMMAND = 1;
const K_BAR0 = 2; // .. K_BAR0 + 5
const K_ROM = 8;
const K_PM = 9;
const K_MSI = 10;
const K_MSIX = 11;
const K_DEVCTL = 12;

interface BarSlot extends BarInfo {
  /** writable bits of the low / high dword */
  lowMask: number;
  highMask: number;
}

interface Hook {
  start: number;
  end: number;
  read: ConfigHook['read'] | undefined;
  write: ConfigHook['write'] | undefined;
}

const SAVE_MAGIC = 0x53435556; // "VUCS"
const SAVE_VERSION = 1;
const SAVE_HEADER = 16;
const SAVE_TAIL = 56; // 6 x u64 BAR addresses, u32 ROM address, u8 ROM enabled, 3 pad

function put(a: Uint8Array, o: number, len: number, v: number): void {
  for (let i = 0; i < len; i++) a[o + i] = (v >>> (8 * i)) & 0xff;
}
function bad(msg: string): never {
  throw new ConfigSpaceError('VFU_CONFIG_BAD_ARG', msg);
}
function checkU16(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff) bad(`${name} ${v} is not a 16-bit value`);
}
function align4(n: number): number {
  return (n + 3) & ~3;
}

export class ConfigSpace {
  readonly size: number;
  readonly events: ConfigEvents = {};

  private readonly raw: Uint8Array;
  private readonly defaults: Uint8Array;
  private readonly wmask: Uint8Array;
  private readonly w1c: Uint8Array;
  private readonly kind: Uint8Array;
  private readonly bars: (BarSlot | null)[] = [null, null, null, null, null, null];
  /** for the high half of a mem64 BAR: index of its low half, else -1 */
  private readonly barOwner: number[] = [-1, -1, -1, -1, -1, -1];
  private romSz = 0;
  private hooks: Hook[] = [];
  private readonly caps: CapabilityInfo[] = [];
  private nextStd = R.PCI_CAP_FIRST;
  private lastStd = 0;
  private nextExt = R.PCI_EXT_CAP_FIRST;
  private lastExt = 0;

  private pm = 0;
  private pmD1 = false;
  private pmD2 = false;
  private msiOff = 0;
  private msiL: MsiLayout | null = null;
  private msixOff = 0;
  private exp = 0;

  /* shadows of the last reported values */
  private shCommand = 0;
  private readonly shBar: bigint[] = [0n, 0n, 0n, 0n, 0n, 0n];
  private shRomAddr = 0;
  private shRomEnabled = false;
  private shPower = 0;
  private shMsiFlags = 0;
  private shMsiAddr = 0n;
  private shMsiData = 0;
  private shMsiMask = 0;
  private shMsixFlags = 0;

  constructor(opts: ConfigSpaceOptions) {
    const size = opts.size ?? R.PCI_CFG_SPACE_SIZE;
    if (size !== R.PCI_CFG_SPACE_SIZE && size !== R.PCI_CFG_SPACE_EXP_SIZE) bad(`config space size ${String(size)} is not 256 or 4096`);
    checkU16('vendorId', opts.vendorId);
    if (opts.vendorId === 0xffff) bad('vendorId 0xffff means "no device"');
    checkU16('deviceId', opts.deviceId);
    checkU16('subsystemVendorId', opts.subsystemVendorId ?? 0);
    checkU16('subsystemId', opts.subsystemId ?? 0);
    const cc = opts.classCode;
    if (!Number.isInteger(cc) || cc < 0 || cc > 0xffffff) bad(`classCode ${cc} is not 24-bit`);
    const rev = opts.revision ?? 0;
    if (!Number.isInteger(rev) || rev < 0 || rev > 0xff) bad(`revision ${rev} is not 8-bit`);
    const pin = opts.interruptPin ?? 1;
    if (!Number.isInteger(pin) || pin < 0 || pin > 4) bad(`interruptPin ${pin} is not 0..4`);

    this.size = size;
    this.raw = new Uint8Array(size);
    this.defaults = new Uint8Array(size);
    this.wmask = new Uint8Array(size);
    this.w1c = new Uint8Array(size);
    this.kind = new Uint8Array(size);

    const d = this.defaults;
    put(d, R.PCI_VENDOR_ID, 2, opts.vendorId);
    put(d, R.PCI_DEVICE_ID, 2, opts.deviceId);
    d[R.PCI_REVISION_ID] = rev;
    put(d, R.PCI_CLASS_PROG, 3, cc);
    d[R.PCI_HEADER_TYPE] = R.PCI_HEADER_TYPE_NORMAL;
    put(d, R.PCI_SUBSYSTEM_VENDOR_ID, 2, opts.subsystemVendorId ?? 0);
    put(d, R.PCI_SUBSYSTEM_ID, 2, opts.subsystemId ?? 0);
    d[R.PCI_INTERRUPT_PIN] = pin;

    put(this.wmask, R.PCI_COMMAND, 2, R.PCI_COMMAND_WRITABLE);
    this.kind[R.PCI_COMMAND] = this.kind[R.PCI_COMMAND + 1] = K_COMMAND;
    put(this.w1c, R.PCI_STATUS, 2, R.PCI_STATUS_RW1C);
    this.wmask[R.PCI_CACHE_LINE_SIZE] = 0xff;
    // PCIe (4096-byte space) hardwires the latency timer to 0.
    if (size === R.PCI_CFG_SPACE_SIZE) this.wmask[R.PCI_LATENCY_TIMER] = 0xff;
    this.wmask[R.PCI_INTERRUPT_LINE] = 0xff;
    for (let i = 0; i < R.PCI_NUM_BARS * 4; i++) this.kind[R.PCI_BASE_ADDRESS_0 + i] = K_BAR0 + (i >> 2);
    for (let i = 0; i < 4; i++) this.kind[R.PCI_ROM_ADDRESS + i] = K_ROM;

    this.raw.set(d);
    this.syncShadows(true);
  }

  /* ================================================================ builders */

  defineBar(index: number, bar: BarDefinition): void {
    if (!Number.isInteger(index) || index < 0 || index >= R.PCI_NUM_BARS) bad(`BAR index ${index} is not 0..5`);
    const kind = bar.kind;
    if (kind !== 'mem32' && kind !== 'mem64' && kind !== 'io') bad(`unknown BAR kind ${String(kind)}`);
    let size: bigint;
    try {
      size = BigInt(bar.size);
    } catch {
      bad(`BAR${index} size ${String(bar.size)} is not an integer`);
    }
    if (size <= 0n || (size & (size - 1n)) !== 0n) bad(`BAR${index} size ${size} is not a power of two`);
    const pf = !!bar.prefetchable;
    const taken = (i: number) => this.bars[i] !== null || (this.barOwner[i] ?? -1) >= 0; // (i < 6: no owner past the BARs)
    if (taken(index)) throw new ConfigSpaceError('VFU_CONFIG_CONFLICT', `BAR${index} is already defined`);

    let lowMask: number;
    let highMask = 0;
    let type: number;
    if (kind === 'io') {
      if (pf) bad('an I/O BAR cannot be prefetchable');
      if (size < R.PCI_BAR_IO_MIN_SIZE || size > R.PCI_BAR_IO_MAX_SIZE) bad(`I/O BAR${index} size ${size} is not in 4..256`);
      lowMask = (~(Number(size) - 1) & R.PCI_BASE_ADDRESS_IO_MASK) >>> 0;
      type = R.PCI_BASE_ADDRESS_SPACE_IO;
    } else if (kind === 'mem32') {
      if (size < R.PCI_BAR_MEM_MIN_SIZE || size > 1n << 31n) bad(`mem32 BAR${index} size ${size} is not in 16..2^31`);
      lowMask = (~(Number(size) - 1) & R.PCI_BASE_ADDRESS_MEM_MASK) >>> 0;
      type = R.PCI_BASE_ADDRESS_MEM_TYPE_32 | (pf ? R.PCI_BASE_ADDRESS_MEM_PREFETCH : 0);
    } else {
      if (index === R.PCI_NUM_BARS - 1) bad('a mem64 BAR cannot start at index 5');
      if (taken(index + 1)) throw new ConfigSpaceError('VFU_CONFIG_CONFLICT', `BAR${index + 1} (upper half of mem64 BAR${index}) is already defined`);
      if (size < R.PCI_BAR_MEM_MIN_SIZE || size > 1n << 63n) bad(`mem64 BAR${index} size ${size} is not in 16..2^63`);
      const m = ~(size - 1n) & 0xffffffffffffffffn;
      lowMask = (Number(m & 0xffffffffn) & R.PCI_BASE_ADDRESS_MEM_MASK) >>> 0;
      highMask = Number(m >> 32n);
      type = R.PCI_BASE_ADDRESS_MEM_TYPE_64 | (pf ? R.PCI_BASE_ADDRESS_MEM_PREFETCH : 0);
      this.barOwner[index + 1] = index;
      for (let i = 0; i < 4; i++) this.kind[R.PCI_BASE_ADDRESS_0 + 4 * (index + 1) + i] = K_BAR0 + index;
      put(this.wmask, R.PCI_BASE_ADDRESS_0 + 4 * (index + 1), 4, highMask);
      this.setDefault(R.PCI_BASE_ADDRESS_0 + 4 * (index + 1), 4, 0);
    }
    this.bars[index] = { size, kind, prefetchable: pf, lowMask, highMask };
    const off = R.PCI_BASE_ADDRESS_0 + 4 * index;
    put(this.wmask, off, 4, lowMask);
    this.setDefault(off, 4, type);
    this.shBar[index] = 0n;
  }

  defineRom(size: number): void {
    if (this.romSz !== 0) throw new ConfigSpaceError('VFU_CONFIG_CONFLICT', 'expansion ROM is already defined');
    if (!Number.isInteger(size) || size < R.PCI_ROM_MIN_SIZE || size > R.PCI_ROM_MAX_SIZE || (size & (size - 1)) !== 0) {
      bad(`ROM size ${size} is not a power of two in 2 KiB..16 MiB`);
    }
    this.romSz = size;
    put(this.wmask, R.PCI_ROM_ADDRESS, 4, ((~(size - 1) & R.PCI_ROM_ADDRESS_MASK) | R.PCI_ROM_ADDRESS_ENABLE) >>> 0);
    this.setDefault(R.PCI_ROM_ADDRESS, 4, 0);
    this.shRomAddr = 0;
    this.shRomEnabled = false;
  }

  addPowerManagement(opts: PowerManagementOptions = {}): number {
    if (this.pm) throw new ConfigSpaceError('VFU_CONFIG_CONFLICT', 'power management capability already added');
    const off = this.placeStd(pmImage(opts));
    this.pm = off;
    this.pmD1 = !!opts.d1;
    this.pmD2 = !!opts.d2;
    this.mark(off + R.PCI_PM_CTRL, 2, K_PM);
    this.shPower = 0;
    return off;
  }

  addMsi(opts: MsiOptions): number {
    if (this.msiL) throw new ConfigSpaceError('VFU_CONFIG_CONFLICT', 'MSI capability already added');
    const l = msiLayout(opts);
    const img = msiImage(l);
    const off = this.placeStd(img);
    this.msiOff = off;
    this.msiL = l;
    this.mark(off + R.PCI_MSI_FLAGS, img.size - R.PCI_MSI_FLAGS, K_MSI);
    this.syncShadows(false);
    return off;
  }

  addMsix(opts: MsixOptions): number {
    if (this.msixOff) throw new ConfigSpaceError('VFU_CONFIG_CONFLICT', 'MSI-X capability already added');
    const n = opts.tableSize;
    if (!Number.isInteger(n) || n < 1 || n > R.PCI_MSIX_MAX_VECTORS) bad(`MSI-X table size ${n} is not 1..2048`);
    const tableBytes = n * R.PCI_MSIX_ENTRY_SIZE;
    const pbaBytes = Math.ceil(n / 64) * 8;
    this.checkMsixRegion('table', opts.tableBar, opts.tableOffset, tableBytes);
    this.checkMsixRegion('PBA', opts.pbaBar, opts.pbaOffset, pbaBytes);
    if (
      opts.tableBar === opts.pbaBar &&
      opts.tableOffset < opts.pbaOffset + pbaBytes &&
      opts.pbaOffset < opts.tableOffset + tableBytes
    ) {
      bad('MSI-X table and PBA overlap');
    }
    const off = this.placeStd(msixImage(opts));
    this.msixOff = off;
    this.mark(off + R.PCI_MSIX_FLAGS, 2, K_MSIX);
    this.shMsixFlags = le16(this.raw, off + R.PCI_MSIX_FLAGS);
    return off;
  }

  addPciExpress(opts: PciExpressOptions = {}): number {
    if (this.exp) throw new ConfigSpaceError('VFU_CONFIG_CONFLICT', 'PCI Express capability already added');
    const off = this.placeStd(pcieImage(opts));
    this.exp = off;
    this.mark(off + R.PCI_EXP_DEVCTL, 2, K_DEVCTL);
    return off;
  }

  addVendorSpecific(payload: Uint8Array): number {
    return this.placeStd(vendorSpecificImage(payload));
  }

  addSerialNumber(serial: bigint): number {
    return this.placeExt(serialNumberImage(serial));
  }

  addVendorSpecificExtended(vsecId: number, rev: number, payload: Uint8Array): number {
    return this.placeExt(vendorSpecificExtendedImage(vsecId, rev, payload));
  }

  /** Registers a hook; hooks run in registration order for every access overlapping [offset, offset+length). */
  hook(range: { offset: number; length: number }, h: ConfigHook): void {
    const { offset, length } = range;
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length <= 0 || offset + length > this.size) {
      throw new ConfigSpaceError('VFU_CONFIG_RANGE', `hook range ${offset}+${length} is outside config space of ${this.size}`);
    }
    this.hooks.push({ start: offset, end: offset + length, read: h.read?.bind(h), write: h.write?.bind(h) });
  }

  /* ================================================================ accesses */

  read(offset: number, length: number): Uint8Array {
    this.checkRange(offset, length);
    const out = this.raw.slice(offset, offset + length);
    if (this.hooks.length !== 0) this.runReadHooks(offset, out);
    return out;
  }

  /** Little-endian read of 1, 2 or 4 bytes without allocating (unless a hook covers the range). */
  readUint(offset: number, length: 1 | 2 | 4): number {
    if (length !== 1 && length !== 2 && length !== 4) {
      throw new ConfigSpaceError('VFU_CONFIG_RANGE', `readUint length ${String(length)} is not 1, 2 or 4`);
    }
    this.checkRange(offset, length);
    if (this.hooks.length !== 0 && this.hooked(offset, offset + length)) {
      const b = this.read(offset, length);
      return length === 1 ? byteAt(b, 0) : length === 2 ? le16(b, 0) : le32(b, 0);
    }
    const r = this.raw;
    return length === 1 ? byteAt(r, offset) : length === 2 ? le16(r, offset) : le32(r, offset);
  }

  write(offset: number, data: Uint8Array): void {
    const len = data.length;
    this.checkRange(offset, len);
    if (len === 0) return;
    const touched = this.hooks.length === 0 ? this.apply(offset, data, 0, len) : this.writeWithHooks(offset, data);
    if (touched !== 0) this.afterWrite(touched);
  }

  /* ================================================================ device side */

  /** Currently programmed address of a BAR (type bits masked off); 0n for undefined BARs and mem64 upper halves. */
  barAddress(index: number): bigint {
    if (!Number.isInteger(index) || index < 0 || index >= R.PCI_NUM_BARS) bad(`BAR index ${index} is not 0..5`);
    const b = this.bars[index];
    if (!b) return 0n;
    const off = R.PCI_BASE_ADDRESS_0 + 4 * index;
    const low = le32(this.raw, off) & b.lowMask;
    if (b.kind !== 'mem64') return BigInt(low >>> 0);
    return (BigInt(le32(this.raw, off + 4) & b.highMask) << 32n) | BigInt(low >>> 0);
  }

  /** Definition of BAR `index`, or null if undefined (or the upper half of a mem64 BAR). */
  bar(index: number): BarInfo | null {
    const b = this.bars[index];
    return b ? { size: b.size, kind: b.kind, prefetchable: b.prefetchable } : null;
  }

  /** Expansion ROM size in bytes, 0 if none. */
  get romSize(): number {
    return this.romSz;
  }

  romAddress(): { address: bigint; enabled: boolean } {
    const v = le32(this.raw, R.PCI_ROM_ADDRESS);
    return { address: BigInt((v & R.PCI_ROM_ADDRESS_MASK) >>> 0), enabled: (v & R.PCI_ROM_ADDRESS_ENABLE) !== 0 };
  }

  command(): number {
    return le16(this.raw, R.PCI_COMMAND);
  }

  /** PMCSR power state; 0 when there is no PM capability. */
  powerState(): PowerState {
    return this.pm ? ((byteAt(this.raw, this.pm + R.PCI_PM_CTRL) & R.PCI_PM_CTRL_STATE_MASK) as PowerState) : 0;
  }

  /** Sets or clears the Interrupt Status bit (status bit 3), which is read-only to the driver. */
  setInterruptStatus(on: boolean): void {
    const o = R.PCI_STATUS;
    this.raw[o] = on ? byteAt(this.raw, o) | R.PCI_STATUS_INTERRUPT : byteAt(this.raw, o) & ~R.PCI_STATUS_INTERRUPT;
  }

  /**
   * Device-side write bypassing masks, RW1C rules, hooks and events (e.g. to set an error
   * status bit, PME_Status or a vendor-capability field). Shadows are resynchronised so
   * later driver writes report changes relative to the poked value.
   */
  poke(offset: number, data: Uint8Array): void {
    this.checkRange(offset, data.length);
    this.raw.set(data, offset);
    this.syncShadows(false);
  }

  msi(): MsiState | null {
    const l = this.msiL;
    if (!l) return null;
    const o = this.msiOff;
    const flags = le16(this.raw, o + R.PCI_MSI_FLAGS);
    return {
      enabled: (flags & R.PCI_MSI_FLAGS_ENABLE) !== 0,
      address: this.msiAddress(),
      data: le16(this.raw, o + l.data),
      vectorsEnabled: 1 << ((flags & R.PCI_MSI_FLAGS_QSIZE) >> 4),
      vectorsCapable: l.vectors,
      address64: l.address64,
      perVectorMask: l.perVectorMask,
      maskBits: l.mask ? le32(this.raw, o + l.mask) : 0,
      pendingBits: l.pending ? le32(this.raw, o + l.pending) : 0,
    };
  }

  /**
   * Message for MSI vector `vector` (data low bits replaced by the vector number), or null
   * when MSI is disabled or the vector is beyond the enabled count. Masking is not applied.
   */
  msiMessage(vector: number): { address: bigint; data: number } | null {
    const s = this.msi();
    if (!s || !s.enabled || !Number.isInteger(vector) || vector < 0 || vector >= s.vectorsEnabled) return null;
    return { address: s.address, data: ((s.data & ~(s.vectorsEnabled - 1)) | vector) & 0xffff };
  }

  /** Sets an MSI Pending bit (read-only to the driver). Requires per-vector masking. */
  setMsiPending(vector: number, pending: boolean): void {
    const l = this.msiL;
    if (!l) bad('no MSI capability');
    if (!l.pending) bad('MSI capability has no per-vector masking, hence no pending bits');
    if (!Number.isInteger(vector) || vector < 0 || vector >= l.vectors) bad(`MSI vector ${vector} is not 0..${l.vectors - 1}`);
    const o = this.msiOff + l.pending;
    const v = pending ? le32(this.raw, o) | (1 << vector) : le32(this.raw, o) & ~(1 << vector);
    put(this.raw, o, 4, v >>> 0);
  }

  msix(): MsixInfo | null {
    const o = this.msixOff;
    if (!o) return null;
    const flags = le16(this.raw, o + R.PCI_MSIX_FLAGS);
    const table = le32(this.raw, o + R.PCI_MSIX_TABLE);
    const pba = le32(this.raw, o + R.PCI_MSIX_PBA);
    return {
      enabled: (flags & R.PCI_MSIX_FLAGS_ENABLE) !== 0,
      functionMask: (flags & R.PCI_MSIX_FLAGS_MASKALL) !== 0,
      tableSize: (flags & R.PCI_MSIX_FLAGS_QSIZE) + 1,
      tableBar: table & R.PCI_MSIX_BIR_MASK,
      tableOffset: (table & R.PCI_MSIX_OFFSET_MASK) >>> 0,
      pbaBar: pba & R.PCI_MSIX_BIR_MASK,
      pbaOffset: (pba & R.PCI_MSIX_OFFSET_MASK) >>> 0,
    };
  }

  /** Capabilities in list order (standard first, then extended). */
  capabilities(): CapabilityInfo[] {
    return this.caps.map((c) => ({ ...c }));
  }

  /** Offset of the first capability with this ID, or 0. */
  findCapability(id: number, extended = false): number {
    for (const c of this.caps) if (c.id === id && c.extended === extended) return c.offset;
    return 0;
  }

  /** Power-on values: keeps BAR/ROM/capability definitions and hooks, clears all programmed state. No events. */
  reset(): void {
    this.raw.set(this.defaults);
    this.syncShadows(true);
  }

  /* ================================================================ migration */

  save(): Uint8Array {
    const out = new Uint8Array(SAVE_HEADER + this.size + SAVE_TAIL);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, SAVE_MAGIC, true);
    dv.setUint16(4, SAVE_VERSION, true);
    dv.setUint16(6, this.size, true);
    dv.setUint16(8, le16(this.defaults, R.PCI_VENDOR_ID), true);
    dv.setUint16(10, le16(this.defaults, R.PCI_DEVICE_ID), true);
    dv.setUint32(12, this.fingerprint(), true);
    out.set(this.raw, SAVE_HEADER);
    const t = SAVE_HEADER + this.size;
    for (const [i, bar] of this.shBar.entries()) dv.setBigUint64(t + 8 * i, bar, true);
    dv.setUint32(t + 48, this.shRomAddr, true);
    out[t + 52] = this.shRomEnabled ? 1 : 0;
    return out;
  }

  /** Restores a save() blob from an identically built ConfigSpace. No events: query state afterwards. */
  load(state: Uint8Array): void {
    const fail = (m: string): never => {
      throw new ConfigSpaceError('VFU_CONFIG_BAD_STATE', m);
    };
    if (state.length < SAVE_HEADER) fail(`state of ${state.length} bytes is too short`);
    const dv = new DataView(state.buffer, state.byteOffset, state.byteLength);
    if (dv.getUint32(0, true) !== SAVE_MAGIC) fail('bad magic');
    if (dv.getUint16(4, true) !== SAVE_VERSION) fail(`unsupported state version ${dv.getUint16(4, true)}`);
    const size = dv.getUint16(6, true);
    if (size !== this.size) fail(`state is for a ${size}-byte config space, this one is ${this.size}`);
    if (state.length !== SAVE_HEADER + size + SAVE_TAIL) fail(`state length ${state.length} does not match`);
    const vid = dv.getUint16(8, true);
    const did = dv.getUint16(10, true);
    const myVid = le16(this.defaults, R.PCI_VENDOR_ID);
    const myDid = le16(this.defaults, R.PCI_DEVICE_ID);
    if (vid !== myVid || did !== myDid) {
      fail(`state is for device ${vid.toString(16)}:${did.toString(16)}, this is ${myVid.toString(16)}:${myDid.toString(16)}`);
    }
    if (le16(state, SAVE_HEADER + R.PCI_VENDOR_ID) !== myVid || le16(state, SAVE_HEADER + R.PCI_DEVICE_ID) !== myDid) {
      fail('saved config space bytes carry different IDs');
    }
    if (dv.getUint32(12, true) !== this.fingerprint()) fail('state is from a device with a different BAR/capability layout');
    this.raw.set(state.subarray(SAVE_HEADER, SAVE_HEADER + size));
    const t = SAVE_HEADER + size;
    this.syncShadows(false);
    for (let i = 0; i < R.PCI_NUM_BARS; i++) this.shBar[i] = dv.getBigUint64(t + 8 * i, true);
    this.shRomAddr = dv.getUint32(t + 48, true);
    this.shRomEnabled = state[t + 52] !== 0;
  }

  /* ================================================================ internals */

  private checkRange(offset: number, length: number): void {
    if (!(Number.isInteger(offset) && Number.isInteger(length) && offset >= 0 && length >= 0 && offset + length <= this.size)) {
      throw new ConfigSpaceError('VFU_CONFIG_RANGE', `config space access ${offset}+${length} is outside 0..${this.size}`);
    }
  }

  private setDefault(off: number, len: number, v: number): void {
    put(this.defaults, off, len, v);
    put(this.raw, off, len, v);
  }

  private mark(off: number, len: number, k: number): void {
    this.kind.fill(k, off, off + len);
  }

  private placeStd(img: CapImage): number {
    const off = this.nextStd;
    const end = off + align4(img.size);
    if (end > R.PCI_CFG_SPACE_SIZE) {
      throw new ConfigSpaceError('VFU_CONFIG_NO_SPACE', `capability 0x${img.id.toString(16)} of ${img.size} bytes does not fit below 0x100`);
    }
    this.copyImage(off, img);
    this.setDefault(off + R.PCI_CAP_LIST_ID, 1, img.id);
    this.setDefault(off + R.PCI_CAP_LIST_NEXT, 1, 0);
    if (this.lastStd === 0) {
      this.setDefault(R.PCI_CAPABILITY_LIST, 1, off);
      this.defaults[R.PCI_STATUS] = byteAt(this.defaults, R.PCI_STATUS) | R.PCI_STATUS_CAP_LIST;
      this.raw[R.PCI_STATUS] = byteAt(this.raw, R.PCI_STATUS) | R.PCI_STATUS_CAP_LIST;
    } else {
      this.setDefault(this.lastStd + R.PCI_CAP_LIST_NEXT, 1, off);
    }
    this.lastStd = off;
    this.nextStd = end;
    this.caps.push({ id: img.id, offset: off, extended: false });
    return off;
  }

  private placeExt(img: CapImage): number {
    if (this.size !== R.PCI_CFG_SPACE_EXP_SIZE) bad('extended capabilities need a 4096-byte config space');
    const off = this.nextExt;
    const end = off + align4(img.size);
    if (end > this.size) {
      throw new ConfigSpaceError('VFU_CONFIG_NO_SPACE', `extended capability 0x${img.id.toString(16)} of ${img.size} bytes does not fit`);
    }
    this.copyImage(off, img);
    this.setDefault(off, 4, (img.id | (img.version << R.PCI_EXT_CAP_VER_SHIFT)) >>> 0);
    if (this.lastExt !== 0) {
      const hdr = le32(this.defaults, this.lastExt);
      this.setDefault(this.lastExt, 4, ((hdr & 0xfffff) | (off << R.PCI_EXT_CAP_NEXT_SHIFT)) >>> 0);
    }
    this.lastExt = off;
    this.nextExt = end;
    this.caps.push({ id: img.id, offset: off, extended: true });
    return off;
  }

  private copyImage(off: number, img: CapImage): void {
    this.defaults.set(img.init, off);
    this.raw.set(img.init, off);
    this.wmask.set(img.wmask, off);
    this.w1c.set(img.w1c, off);
  }

  private checkMsixRegion(what: string, bir: number, offset: number, bytes: number): void {
    if (!Number.isInteger(bir) || bir < 0 || bir >= R.PCI_NUM_BARS) bad(`MSI-X ${what} BAR ${bir} is not 0..5`);
    if (!Number.isInteger(offset) || offset < 0 || offset > 0xffffffff || offset % 8 !== 0) {
      bad(`MSI-X ${what} offset ${offset} is not a 32-bit multiple of 8`);
    }
    const b = this.bars[bir];
    if (!b) bad(`MSI-X ${what} BAR${bir} is not defined (define BARs before addMsix)`);
    if (b.kind === 'io') bad(`MSI-X ${what} BAR${bir} is an I/O BAR`);
    if (BigInt(offset + bytes) > b.size) bad(`MSI-X ${what} (${bytes} bytes at 0x${offset.toString(16)}) exceeds BAR${bir} of ${b.size} bytes`);
  }

  private hooked(start: number, end: number): boolean {
    for (const h of this.hooks) if (h.start < end && start < h.end) return true;
    return false;
  }

  private runReadHooks(offset: number, out: Uint8Array): void {
    const end = offset + out.length;
    for (const h of this.hooks) {
      if (!h.read) continue;
      const s = Math.max(offset, h.start);
      const e = Math.min(end, h.end);
      if (s < e) h.read(s, out.subarray(s - offset, e - offset));
    }
  }

  private writeWithHooks(offset: number, data: Uint8Array): number {
    const len = data.length;
    const end = offset + len;
    let handled: Uint8Array | null = null;
    for (const h of this.hooks) {
      if (!h.write) continue;
      const s = Math.max(offset, h.start);
      const e = Math.min(end, h.end);
      if (s < e && h.write(s, data.subarray(s - offset, e - offset)) === true) {
        handled ??= new Uint8Array(len);
        handled.fill(1, s - offset, e - offset);
      }
    }
    if (!handled) return this.apply(offset, data, 0, len);
    let touched = 0;
    for (let i = 0; i < len; ) {
      if (handled[i]) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < len && !handled[j]) j++;
      touched |= this.apply(offset, data, i, j);
      i = j;
    }
    return touched;
  }

  /** The per-byte mask loop. Returns the set of register kinds touched (bit per kind). */
  private apply(offset: number, data: Uint8Array, from: number, to: number): number {
    const raw = this.raw;
    const wm = this.wmask;
    const wc = this.w1c;
    const kind = this.kind;
    let touched = 0;
    for (let i = from; i < to; i++) {
      const o = offset + i;
      const m = byteAt(wm, o);
      const c = byteAt(wc, o);
      if ((m | c) === 0) continue;
      const d = byteAt(data, i);
      raw[o] = ((byteAt(raw, o) & ~m) | (d & m)) & ~(d & c);
      touched |= 1 << byteAt(kind, o);
    }
    return touched & ~(1 << K_NONE);
  }

  private afterWrite(touched: number): void {
    const ev = this.events;
    const raw = this.raw;
    if (touched & (1 << K_COMMAND)) {
      const v = le16(raw, R.PCI_COMMAND);
      const old = this.shCommand;
      if (v !== old) {
        this.shCommand = v;
        ev.onCommand?.(v, old);
        if ((v ^ old) & R.PCI_COMMAND_INTX_DISABLE) ev.onIntxDisable?.((v & R.PCI_COMMAND_INTX_DISABLE) !== 0);
      }
    }
    for (let i = 0; i < R.PCI_NUM_BARS; i++) {
      if (touched & (1 << (K_BAR0 + i))) this.barWritten(i);
    }
    if (touched & (1 << K_ROM) && this.romSz) {
      const v = le32(raw, R.PCI_ROM_ADDRESS);
      const mask = (this.wmaskU32(R.PCI_ROM_ADDRESS) & ~R.PCI_ROM_ADDRESS_ENABLE) >>> 0;
      const addr = (v & mask) >>> 0;
      const en = (v & R.PCI_ROM_ADDRESS_ENABLE) !== 0;
      // all address bits set = ROM sizing; not a real address
      if (addr !== mask && (addr !== this.shRomAddr || en !== this.shRomEnabled)) {
        this.shRomAddr = addr;
        this.shRomEnabled = en;
        ev.onRomProgrammed?.(BigInt(addr), en);
      }
    }
    if (touched & (1 << K_PM)) {
      const o = this.pm + R.PCI_PM_CTRL;
      let st = byteAt(raw, o) & R.PCI_PM_CTRL_STATE_MASK;
      if ((st === 1 && !this.pmD1) || (st === 2 && !this.pmD2)) {
        // PCI PM 1.2 5.4.1: unsupported state -> write completes, data discarded, no change
        st = this.shPower;
        raw[o] = (byteAt(raw, o) & ~R.PCI_PM_CTRL_STATE_MASK) | st;
      }
      if (st !== this.shPower) {
        this.shPower = st;
        ev.onPowerState?.(st as PowerState);
      }
    }
    if (touched & (1 << K_MSI)) this.msiWritten();
    if (touched & (1 << K_MSIX)) {
      const f = le16(raw, this.msixOff + R.PCI_MSIX_FLAGS);
      const ctl = R.PCI_MSIX_FLAGS_ENABLE | R.PCI_MSIX_FLAGS_MASKALL;
      if ((f ^ this.shMsixFlags) & ctl) {
        this.shMsixFlags = f;
        ev.onMsix?.({ enabled: (f & R.PCI_MSIX_FLAGS_ENABLE) !== 0, functionMask: (f & R.PCI_MSIX_FLAGS_MASKALL) !== 0 });
      }
    }
    // last, because the handler is expected to call reset()
    if (touched & (1 << K_DEVCTL)) {
      const o = this.exp + R.PCI_EXP_DEVCTL + 1;
      if (byteAt(raw, o) & (R.PCI_EXP_DEVCTL_BCR_FLR >> 8)) {
        raw[o] = byteAt(raw, o) & ~(R.PCI_EXP_DEVCTL_BCR_FLR >> 8); // always reads 0
        ev.onFlr?.();
      }
    }
  }

  private wmaskU32(o: number): number {
    return le32(this.wmask, o);
  }

  private barWritten(i: number): void {
    const b = this.bars[i];
    if (!b) return;
    const off = R.PCI_BASE_ADDRESS_0 + 4 * i;
    const low = (le32(this.raw, off) & b.lowMask) >>> 0;
    let sizing = b.lowMask !== 0 && low === b.lowMask;
    if (b.kind === 'mem64') {
      const high = (le32(this.raw, off + 4) & b.highMask) >>> 0;
      sizing ||= b.highMask !== 0 && high === b.highMask;
    }
    if (sizing) return; // all-ones sizing write: not an address
    const addr = this.barAddress(i);
    if (addr !== this.shBar[i]) {
      this.shBar[i] = addr;
      this.events.onBarProgrammed?.(i, addr);
    }
  }

  private msiAddress(): bigint {
    const l = this.msiL!;
    const lo = BigInt(le32(this.raw, this.msiOff + R.PCI_MSI_ADDRESS_LO));
    return l.address64 ? (BigInt(le32(this.raw, this.msiOff + R.PCI_MSI_ADDRESS_HI)) << 32n) | lo : lo;
  }

  private msiWritten(): void {
    const l = this.msiL!;
    const o = this.msiOff + R.PCI_MSI_FLAGS;
    let flags = le16(this.raw, o);
    // Multiple Message Enable is clamped to Multiple Message Capable (as QEMU does)
    if ((flags & R.PCI_MSI_FLAGS_QSIZE) >> 4 > l.mmc) {
      flags = (flags & ~R.PCI_MSI_FLAGS_QSIZE) | (l.mmc << 4);
      put(this.raw, o, 2, flags);
    }
    const addr = this.msiAddress();
    const data = le16(this.raw, this.msiOff + l.data);
    const mask = l.mask ? le32(this.raw, this.msiOff + l.mask) : 0;
    const ctl = R.PCI_MSI_FLAGS_ENABLE | R.PCI_MSI_FLAGS_QSIZE;
    if ((flags & ctl) !== (this.shMsiFlags & ctl) || addr !== this.shMsiAddr || data !== this.shMsiData || mask !== this.shMsiMask) {
      this.shMsiFlags = flags;
      this.shMsiAddr = addr;
      this.shMsiData = data;
      this.shMsiMask = mask;
      this.events.onMsi?.(this.msi()!);
    }
  }

  /** Resynchronises event shadows with the raw bytes (BAR/ROM shadows only when `bars`). */
  private syncShadows(bars: boolean): void {
    const raw = this.raw;
    this.shCommand = le16(raw, R.PCI_COMMAND);
    this.shPower = this.pm ? byteAt(raw, this.pm + R.PCI_PM_CTRL) & R.PCI_PM_CTRL_STATE_MASK : 0;
    if (this.msiL) {
      const l = this.msiL;
      this.shMsiFlags = le16(raw, this.msiOff + R.PCI_MSI_FLAGS);
      this.shMsiAddr = this.msiAddress();
      this.shMsiData = le16(raw, this.msiOff + l.data);
      this.shMsiMask = l.mask ? le32(raw, this.msiOff + l.mask) : 0;
    }
    if (this.msixOff) this.shMsixFlags = le16(raw, this.msixOff + R.PCI_MSIX_FLAGS);
    if (bars) {
      for (let i = 0; i < R.PCI_NUM_BARS; i++) this.shBar[i] = this.barAddress(i);
      const rom = this.romAddress();
      this.shRomAddr = Number(rom.address);
      this.shRomEnabled = rom.enabled;
    }
  }

  /** FNV-1a over defaults, writable and RW1C masks: identifies the device layout for load(). */
  private fingerprint(): number {
    let h = 0x811c9dc5;
    for (const a of [this.defaults, this.wmask, this.w1c]) {
      for (const x of a) h = Math.imul(h ^ x, 0x01000193);
    }
    return h >>> 0;
  }
}
