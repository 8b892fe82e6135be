/**
 * A device made for tests: it exercises every part of the device API.
 *
 * BAR0 (4 KiB, trapped registers):
 *   0x00 u32 scratch (RW)
 *   0x08 u64 DMA address   0x10 u32 DMA length   0x14 u32 DMA command: 1 = copy BAR-side buffer
 *        to guest memory, 2 = copy guest memory into the buffer, 3 = fill guest memory with 0xA5
 *        through views (logged dirty); result in 0x18 (0 ok, else errno)
 *   0x20 u32 raise: writing v raises MSI-X vector v (or INTx when v = 0xffff)
 *   0x100.. 256-byte buffer
 *   0x800 async register: reads resolve after a timer (ordering test)
 * BAR1 (16 KiB, shared memory; sparse mmap areas at 0 and 8 KiB, pages 1 and 3 trapped)
 * BAR2 (64-bit prefetchable, 8 KiB): MSI-X table at 0, PBA at 4 KiB
 * Region 9: device-specific (type 0x8086 subtype 1), 4 KiB trapped, reads 0x5a
 */
import { PciDevice } from '../../src/server/device.js';
import { IrqIndex } from '../../src/server/irq.js';
import { encodeState, decodeState } from '../../src/server/state.js';

export class TestDevice extends PciDevice {
  scratch = 0;
  readonly buffer = new Uint8Array(256);
  dmaAddr: number | bigint = 0;
  dmaLen = 0;
  dmaResult = 0;
  asyncCounter = 0;
  resets = 0;
  pendingDma: Promise<void> | undefined;
  /** 64 KiB of device memory migrated in pre-copy (16 pages); dirty pages are resent */
  readonly ram = new Uint8Array(65536);
  readonly ramDirty = new Set<number>(Array.from({ length: 16 }, (_, i) => i));
  writeRam(page: number, value: number): void {
    this.ram.fill(value, page * 4096, page * 4096 + 4096);
    this.ramDirty.add(page);
  }

  constructor() {
    super({
      name: 'testdev',
      vendorId: 0x1af4,
      deviceId: 0x10ff,
      subsystemVendorId: 0x1af4,
      subsystemId: 0x0001,
      classCode: 0x058000,
      revision: 2,
      size: 4096,
      irqs: { intx: 1, msi: 4, msix: 8, err: 1, req: 1 },
    });
    this.addRegion(0, {
      size: 4096,
      access: { read: (o, n) => this.readBar0(o, n), write: (o, d) => this.writeBar0(o, d) },
    });
    const r1 = this.addRegion(1, {
      size: 16384,
      shared: true,
      mmapAreas: [
        { offset: 0, size: 4096 },
        { offset: 8192, size: 4096 },
      ],
    });
    r1.memory![4096] = 0x77;
    this.addRegion(2, { size: 8192, bar: { kind: 'mem64', prefetchable: true } , access: { read: (_o, n) => new Uint8Array(n), write: () => {} } });
    this.addRegion(9, { size: 4096, type: { type: 0x8086, subtype: 1 }, access: { read: (_o, n) => new Uint8Array(n).fill(0x5a) } });
    this.config.addPowerManagement();
    this.config.addMsi({ vectors: 4, address64: true, perVectorMask: true });
    this.addMsix({ vectors: 8, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 4096 });
    this.config.addPciExpress({ flr: true });
    this.config.addVendorSpecific(Uint8Array.of(1, 2, 3, 4));
    this.config.addSerialNumber(0x0123456789abcdefn);
    this.onReset = () => {
      this.scratch = 0;
      this.buffer.fill(0);
      this.resets++;
    };
    this.migration = {
      // pre-copy: the 64 KiB "ram" goes first; pages written since are sent again
      precopyPending: () => this.ramDirty.size * 4096,
      precopyRead: (max) => {
        const out: number[] = [];
        for (const p of this.ramDirty) {
          if ((out.length + 1) * (4096 + 2) > max) break;
          out.push(p);
          this.ramDirty.delete(p);
        }
        const b = new Uint8Array(out.length * 4098);
        out.forEach((p, i) => {
          b[i * 4098] = p;
          b.set(this.ram.subarray(p * 4096, p * 4096 + 4096), i * 4098 + 2);
        });
        return b;
      },
      save: () => encodeState('testdev', 1, { scratch: this.scratch, buffer: Buffer.from(this.buffer).toString('hex') }),
      load: (data, precopy) => {
        for (const c of precopy) {
          if (c.length % 4098) throw new Error('bad pre-copy chunk');
        }
        for (const c of precopy) for (let i = 0; i < c.length; i += 4098) this.ram.set(c.subarray(i + 2, i + 4098), c[i]! * 4096);
        const s = decodeState<{ scratch: number; buffer: string }>(data, 'testdev', 1, { scratch: 'number', buffer: 'string' });
        const b = Buffer.from(s.buffer, 'hex');
        if (b.length !== 256) throw new Error('bad buffer');
        this.scratch = s.scratch;
        this.buffer.set(b);
      },
    };
  }

  private readBar0(o: number, n: number): Uint8Array | Promise<Uint8Array> {
    const out = new Uint8Array(n);
    const dv = new DataView(out.buffer);
    if (o === 0 && n === 4) dv.setUint32(0, this.scratch, true);
    else if (o === 0x18 && n === 4) dv.setUint32(0, this.dmaResult, true);
    else if (o >= 0x100 && o + n <= 0x200) out.set(this.buffer.subarray(o - 0x100, o - 0x100 + n));
    else if (o === 0x800 && n === 4) {
      const v = ++this.asyncCounter;
      return new Promise((r) => setTimeout(() => (dv.setUint32(0, v, true), r(out)), 5));
    }
    return out;
  }

  private writeBar0(o: number, d: Uint8Array): void | Promise<void> {
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    if (o === 0 && d.length === 4) this.scratch = dv.getUint32(0, true);
    else if (o === 0x08 && d.length === 8) this.dmaAddr = dv.getBigUint64(0, true); // full 64-bit
    else if (o === 0x10 && d.length === 4) this.dmaLen = dv.getUint32(0, true);
    else if (o === 0x14 && d.length === 4) return this.runDma(dv.getUint32(0, true));
    else if (o === 0x20 && d.length === 4) {
      const v = dv.getUint32(0, true);
      if (v === 0xffff) this.trigger(IrqIndex.INTX, 0);
      else this.trigger(IrqIndex.MSIX, v);
    } else if (o >= 0x100 && o + d.length <= 0x200) this.buffer.set(d, o - 0x100);
    else if (o === 0x800) {
      return new Promise((r) => setTimeout(() => (this.asyncCounter += 100, r()), 5));
    }
  }

  private async runDma(cmd: number): Promise<void> {
    try {
      if (cmd === 1) await this.dma.write(this.dmaAddr, this.buffer.subarray(0, this.dmaLen));
      else if (cmd === 2) this.buffer.set(await this.dma.read(this.dmaAddr, this.dmaLen));
      else if (cmd === 3) for (const v of this.dma.views(this.dmaAddr, this.dmaLen, true)) v.fill(0xa5);
      this.dmaResult = 0;
    } catch (e) {
      this.dmaResult = (e as { errno?: number }).errno ?? 5;
    }
  }
}
