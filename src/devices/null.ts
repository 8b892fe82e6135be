/**
 * A minimal device: one 4 KiB BAR0 of RAM that reads back what was written, and nothing else.
 * Useful for protocol tests, benchmarks and as the smallest example of the device API.
 */
import { PciDevice } from '../server/device.js';

export class NullDevice extends PciDevice {
  readonly ram: Uint8Array;
  constructor(opts: { size?: number } = {}) {
    super({ name: 'null', vendorId: 0x4e58, deviceId: 0x0001, classCode: 0xff0000 });
    const size = opts.size ?? 4096;
    this.ram = new Uint8Array(size);
    this.addRegion(0, {
      size,
      bar: { kind: 'mem32' },
      access: {
        read: (offset, length) => this.ram.slice(offset, offset + length),
        write: (offset, data) => {
          this.ram.set(data, offset);
        },
      },
    });
    this.onReset = () => {
      this.ram.fill(0);
    };
  }
}
