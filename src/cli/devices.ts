/**
 * The devices `vfio-user serve` knows, by name.
 */
import { existsSync } from 'node:fs';
import { GpioDevice } from '../devices/gpio.js';
import { NullDevice } from '../devices/null.js';
import { NvmeDevice, parseSize } from '../devices/nvme/index.js';
import { VirtioBlkDevice } from '../devices/virtio/index.js';
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
  nvme: {
    description: 'NVMe 1.4 controller with one namespace backed by a raw image file (or memory)',
    options: {
      image: 'raw image file (created with --size when missing); without it the namespace is in memory',
      size: 'namespace size, e.g. 64M, 1G (default 64M for new images and memory)',
      'lba-size': '512 (default) or 4096',
      doorbells: 'trap (default: trapped REGION_WRITEs) or mmap (shared doorbell page, polled)',
      'shadow-doorbells': 'on (default: offer Doorbell Buffer Config) or off',
      'poll-us': 'keep polling shadow doorbells this many microseconds after the last I/O (default 50; 0: sleep at once)',
      serial: 'controller serial number (default: derived from the image path)',
    },
    create(o) {
      const lba = o['lba-size'] ? Number(o['lba-size']) : 512;
      if (lba !== 512 && lba !== 4096) throw new Error('--lba-size must be 512 or 4096');
      const doorbells = o.doorbells ?? 'trap';
      if (doorbells !== 'trap' && doorbells !== 'mmap') throw new Error('--doorbells must be trap or mmap');
      const size = o.size ? parseSize(o.size) : o.image ? undefined : 64 << 20;
      return new NvmeDevice({
        image: o.image,
        size: o.image && !size && !existsSync(o.image) ? 64 << 20 : size,
        lbaSize: lba,
        shadowDoorbells: o['shadow-doorbells'] !== 'off',
        pollUs: o['poll-us'] !== undefined ? pollUs(o['poll-us']) : undefined,
        doorbells,
        serial: o.serial,
        log: (m) => process.stderr.write(`vfio-user[nvme] ${m}\n`),
      });
    },
  },
  'virtio-blk': {
    description: 'virtio-blk disk (modern virtio-pci) over a raw image file (or memory)',
    options: {
      image: 'raw image file (created with --size when missing); without it the disk is in memory',
      size: 'disk size, e.g. 64M, 1G (default 64M for new images and memory)',
      'read-only': 'read-only disk (writes fail with VIRTIO_BLK_S_IOERR); the image must exist',
      queues: 'request queues, 1..64 (default 1)',
      serial: 'the disk ID (GET_ID; default: derived from the image path)',
    },
    create(o) {
      const queues = o.queues ? Number(o.queues) : 1;
      if (!Number.isInteger(queues) || queues < 1 || queues > 64) throw new Error('--queues must be 1..64');
      const readOnly = o['read-only'] !== undefined && (o['read-only'] as unknown) !== false;
      const size = o.size ? parseSize(o.size) : o.image ? undefined : 64 << 20;
      return new VirtioBlkDevice({
        image: o.image,
        size: o.image && !size && !readOnly && !existsSync(o.image) ? 64 << 20 : size,
        readOnly,
        queues,
        serial: o.serial,
        log: (m) => process.stderr.write(`vfio-user[virtio-blk] ${m}\n`),
      });
    },
  },
  null: {
    description: 'minimal device: one 4 KiB BAR0 that reads back what is written',
    options: {},
    create: () => new NullDevice(),
  },
};

function pollUs(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 1_000_000) throw new Error('--poll-us must be 0..1000000');
  return n;
}
