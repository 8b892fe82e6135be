/**
 * The devices `vfio-user serve` knows, by name.
 */
import { GpioDevice } from '../devices/gpio.js';
import { NullDevice } from '../devices/null.js';
import type { PciDevice } from '../server/device.js';

export interface DeviceFactory {
  description: string;
  /** extra options this device takes (name -> help) */
  options: Record<string, string>;
  create(opts: Record<string, string | undefined>): Promise<PciDevice> | PciDevice;
}

export const DEVICES: Record<string, DeviceFactory> = {
  gpio: {
    description: 'GPIO card compatible with the ACCES PCI-IDIO-16 (Linux driver gpio-pci-idio-16)',
    options: { inputs: 'initial input lines as a number, e.g. 0x00ff' },
    create(o) {
      const d = new GpioDevice();
      if (o.inputs) d.setInputs(Number(o.inputs));
      return d;
    },
  },
  null: {
    description: 'minimal device: one 4 KiB BAR0 that reads back what is written',
    options: {},
    create: () => new NullDevice(),
  },
};
