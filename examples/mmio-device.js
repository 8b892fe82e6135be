// @ts-check
/**
 * A small MMIO device: four 32-bit registers in BAR0 and four MSI-X vectors.
 *
 *   0x00 ID        read-only, 0x31554656 ("VFU1" in memory)
 *   0x04 SCRATCH   read/write
 *   0x08 COUNT     read-only: doorbells rung since the last reset
 *   0x0c DOORBELL  write v: raises MSI-X vector v (0-3) and counts it
 *
 * Serve it:   vfio-user serve ./examples/mmio-device.js --socket-path=/tmp/mmio.sock
 * Test it:    serveDevice(new MmioDevice()) or spawnDevice('./examples/mmio-device.js')
 *             from 'vfio-user/testing' (test/examples/examples.test.ts does both)
 */
import { PciDevice, IrqIndex, VfioUserError, Errno } from 'vfio-user';

export const REG = { ID: 0x00, SCRATCH: 0x04, COUNT: 0x08, DOORBELL: 0x0c };
export const ID = 0x31554656;
export const VECTORS = 4;

export class MmioDevice extends PciDevice {
  scratch = 0;
  count = 0;

  constructor() {
    super({ name: 'mmio-example', vendorId: 0x1234, deviceId: 0x11e1, classCode: 0xff0000, irqs: { intx: 1, msix: VECTORS } });
    // BAR0: the registers, trapped: every client access calls read() or write()
    this.addRegion(0, {
      size: 4096,
      access: { read: (offset, length) => this.read(offset, length), write: (offset, data) => this.write(offset, data) },
    });
    // BAR2: MSI-X table and PBA, emulated by the library
    this.addRegion(2, { size: 8192, bar: { kind: 'mem64' }, access: { read: (_offset, length) => new Uint8Array(length), write: () => {} } });
    this.addMsix({ vectors: VECTORS, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 4096 });
    // DEVICE_RESET (and FLR): back to the power-on state
    this.onReset = () => {
      this.scratch = 0;
      this.count = 0;
    };
  }

  /**
   * @param {number} offset
   * @param {number} length
   * @returns {Uint8Array}
   */
  read(offset, length) {
    const regs = new DataView(new ArrayBuffer(16));
    regs.setUint32(REG.ID, ID, true);
    regs.setUint32(REG.SCRATCH, this.scratch, true);
    regs.setUint32(REG.COUNT, this.count, true);
    const out = new Uint8Array(length); // past the registers: zeros
    if (offset < 16) out.set(new Uint8Array(regs.buffer, offset, Math.min(length, 16 - offset)));
    return out;
  }

  /**
   * @param {number} offset
   * @param {Uint8Array} data
   */
  write(offset, data) {
    if (data.length !== 4 || offset % 4) throw new VfioUserError('VFU_INVALID_ARGUMENT', 'registers take aligned 32-bit writes', Errno.EINVAL);
    const v = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
    if (offset === REG.SCRATCH) this.scratch = v;
    else if (offset === REG.DOORBELL) {
      if (v >= VECTORS) throw new VfioUserError('VFU_INVALID_ARGUMENT', `no MSI-X vector ${v}`, Errno.EINVAL);
      this.count++;
      this.trigger(IrqIndex.MSIX, v);
    }
    // ID and COUNT are read-only: writes are ignored, as on most hardware
  }
}

/** The device factory `vfio-user serve ./examples/mmio-device.js` and spawnDevice() call. */
export default function createDevice() {
  return new MmioDevice();
}
