/**
 * The MSI-X table and Pending Bit Array that live in a BAR (PCI 3.0 section 6.8.2).
 * The server routes BAR accesses for the table/PBA ranges here; the function-level
 * state (MSI-X Enable, Function Mask) comes from ConfigSpace.events.onMsix.
 *
 * Table entry (16 bytes): +0 address low, +4 address high, +8 data, +12 vector control
 * (bit 0 = mask, other bits reserved and read 0). Entries reset masked.
 * Writes must be aligned dwords or aligned qwords inside the table; other writes are
 * ignored (the spec leaves them undefined). Reads of any size are served, with bytes
 * outside the table/PBA reading 0. The PBA is read-only.
 */
import { ConfigSpaceError } from './errors.js';
import { byteAt } from '../../bytes.js';
import * as R from './registers.js';

const SAVE_MAGIC = 0x58535556; // "VUSX"
const SAVE_VERSION = 1;
const SAVE_HEADER = 8;

export class MsixTable {
  readonly vectors: number;
  /** table size in bytes */
  readonly tableSize: number;
  /** PBA size in bytes (a multiple of 8) */
  readonly pbaSize: number;
  /** called when a vector with its pending bit set becomes unmasked; deliver, then setPending(v, false) */
  onUnmask?: (v: number) => void;

  private readonly table: Uint8Array;
  private readonly pba: Uint8Array;
  private enabled = false;
  private functionMask = false;

  constructor(vectors: number) {
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > R.PCI_MSIX_MAX_VECTORS) {
      throw new ConfigSpaceError('VFU_CONFIG_BAD_ARG', `MSI-X vector count ${vectors} is not 1..2048`);
    }
    this.vectors = vectors;
    this.tableSize = vectors * R.PCI_MSIX_ENTRY_SIZE;
    this.pbaSize = Math.ceil(vectors / 64) * 8;
    this.table = new Uint8Array(this.tableSize);
    this.pba = new Uint8Array(this.pbaSize);
    this.reset();
  }

  readTable(offset: number, length: number): Uint8Array {
    return window(this.table, offset, length);
  }

  writeTable(offset: number, data: Uint8Array): void {
    const len = data.length;
    if (!Number.isInteger(offset) || offset < 0 || offset + len > this.tableSize) return;
    if (!((len === 4 && offset % 4 === 0) || (len === 8 && offset % 8 === 0))) return;
    for (let i = 0; i < len; i += 4) {
      const o = offset + i;
      if ((o & 0xf) === R.PCI_MSIX_ENTRY_VECTOR_CTRL) {
        const v = o >> 4;
        const wasMasked = this.isMasked(v);
        // only the mask bit is implemented; the rest is reserved (reads 0)
        this.table[o] = byteAt(data, i) & R.PCI_MSIX_ENTRY_CTRL_MASKBIT;
        this.table[o + 1] = this.table[o + 2] = this.table[o + 3] = 0;
        if (wasMasked && !this.isMasked(v) && this.pending(v)) this.onUnmask?.(v);
      } else {
        this.table.set(data.subarray(i, i + 4), o);
      }
    }
  }

  readPba(offset: number, length: number): Uint8Array {
    return window(this.pba, offset, length);
  }

  entry(v: number): { address: bigint; data: number; masked: boolean } {
    this.checkVector(v);
    const o = v * R.PCI_MSIX_ENTRY_SIZE;
    const dv = new DataView(this.table.buffer, this.table.byteOffset + o, R.PCI_MSIX_ENTRY_SIZE);
    return {
      address: (BigInt(dv.getUint32(R.PCI_MSIX_ENTRY_UPPER_ADDR, true)) << 32n) | BigInt(dv.getUint32(R.PCI_MSIX_ENTRY_LOWER_ADDR, true)),
      data: dv.getUint32(R.PCI_MSIX_ENTRY_DATA, true),
      masked: (byteAt(this.table, o + R.PCI_MSIX_ENTRY_VECTOR_CTRL) & R.PCI_MSIX_ENTRY_CTRL_MASKBIT) !== 0,
    };
  }

  /** True when vector v must not be signalled: per-vector mask, function mask or MSI-X disabled. */
  isMasked(v: number): boolean {
    return (
      !this.enabled ||
      this.functionMask ||
      (byteAt(this.table, v * R.PCI_MSIX_ENTRY_SIZE + R.PCI_MSIX_ENTRY_VECTOR_CTRL) & R.PCI_MSIX_ENTRY_CTRL_MASKBIT) !== 0
    );
  }

  /** Feed from ConfigSpace.events.onMsix; fires onUnmask for pending vectors that became deliverable. */
  setFunctionState(enabled: boolean, functionMask: boolean): void {
    const before = this.enabled && !this.functionMask;
    this.enabled = enabled;
    this.functionMask = functionMask;
    if (before || !enabled || functionMask || !this.onUnmask) return;
    for (let v = 0; v < this.vectors; v++) {
      if (this.pending(v) && !this.isMasked(v)) this.onUnmask?.(v);
    }
  }

  functionState(): { enabled: boolean; functionMask: boolean } {
    return { enabled: this.enabled, functionMask: this.functionMask };
  }

  setPending(v: number, on: boolean): void {
    this.checkVector(v);
    const bit = 1 << (v & 7);
    const b = byteAt(this.pba, v >> 3);
    this.pba[v >> 3] = on ? b | bit : b & ~bit;
  }

  pending(v: number): boolean {
    return (byteAt(this.pba, v >> 3) & (1 << (v & 7))) !== 0;
  }

  /**
   * Convenience for raising vector v: returns true if the caller should deliver the message
   * now (entry(v) has it); otherwise sets the pending bit and returns false.
   */
  signal(v: number): boolean {
    this.checkVector(v);
    if (!this.isMasked(v)) return true;
    this.setPending(v, true);
    return false;
  }

  /** All entries masked with zero address/data, PBA clear, MSI-X disabled. */
  reset(): void {
    this.table.fill(0);
    for (let v = 0; v < this.vectors; v++) {
      this.table[v * R.PCI_MSIX_ENTRY_SIZE + R.PCI_MSIX_ENTRY_VECTOR_CTRL] = R.PCI_MSIX_ENTRY_CTRL_MASKBIT;
    }
    this.pba.fill(0);
    this.enabled = false;
    this.functionMask = false;
  }

  save(): Uint8Array {
    const out = new Uint8Array(SAVE_HEADER + this.tableSize + this.pbaSize);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, SAVE_MAGIC, true);
    out[4] = SAVE_VERSION;
    out[5] = (this.enabled ? 1 : 0) | (this.functionMask ? 2 : 0);
    dv.setUint16(6, this.vectors, true);
    out.set(this.table, SAVE_HEADER);
    out.set(this.pba, SAVE_HEADER + this.tableSize);
    return out;
  }

  /** Restores a save() blob (no onUnmask calls). */
  load(b: Uint8Array): void {
    const fail = (m: string): never => {
      throw new ConfigSpaceError('VFU_CONFIG_BAD_STATE', m);
    };
    if (b.length < SAVE_HEADER) fail('MSI-X state too short');
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (dv.getUint32(0, true) !== SAVE_MAGIC) fail('bad MSI-X state magic');
    if (b[4] !== SAVE_VERSION) fail(`unsupported MSI-X state version ${b[4]}`);
    if (dv.getUint16(6, true) !== this.vectors) fail(`MSI-X state has ${dv.getUint16(6, true)} vectors, this table ${this.vectors}`);
    if (b.length !== SAVE_HEADER + this.tableSize + this.pbaSize) fail('MSI-X state length mismatch');
    this.table.set(b.subarray(SAVE_HEADER, SAVE_HEADER + this.tableSize));
    this.pba.set(b.subarray(SAVE_HEADER + this.tableSize));
    this.enabled = (byteAt(b, 5) & 1) !== 0;
    this.functionMask = (byteAt(b, 5) & 2) !== 0;
  }

  private checkVector(v: number): void {
    if (!Number.isInteger(v) || v < 0 || v >= this.vectors) {
      throw new ConfigSpaceError('VFU_CONFIG_RANGE', `MSI-X vector ${v} is not 0..${this.vectors - 1}`);
    }
  }
}

/** Copy of a[offset, offset+length) with out-of-range bytes as zero. */
function window(a: Uint8Array, offset: number, length: number): Uint8Array {
  const len = Number.isInteger(length) && length > 0 ? length : 0;
  const out = new Uint8Array(len);
  if (!Number.isInteger(offset) || offset >= a.length || offset + len <= 0) return out;
  const s = Math.max(offset, 0);
  const e = Math.min(offset + len, a.length);
  out.set(a.subarray(s, e), s - offset);
  return out;
}
