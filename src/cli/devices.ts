/**
 * The devices `vfio-user serve` knows by name, as device factories (the contract a device
 * module follows too: src/cli/factory.ts).
 */
import { existsSync, statSync } from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import { GpioDevice } from '../devices/gpio.js';
import { NullDevice } from '../devices/null.js';
import { NvmeDevice } from '../devices/nvme/index.js';
import { VirtioBlkDevice } from '../devices/virtio/index.js';
import { defineDevice, parseInteger, UsageError, type DeviceFactory } from './factory.js';

const DEFAULT_SIZE = 64 << 20;
/** the largest in-memory namespace or disk (one typed array) */
const MAX_MEMORY_SIZE = bufferConstants.MAX_LENGTH;

/**
 * The size a block device gets: --size (checked against the block size, and against what
 * memory can hold when there is no image), else an existing image's size (which must be a
 * whole number of blocks), else 64 MiB for a new image or memory.
 */
function blockSize(o: { image?: string; size?: number }, block: number, createMissing: boolean): number | undefined {
  if (o.size !== undefined) {
    if (o.size % block !== 0) throw new UsageError(`--size: ${o.size} is not a whole number of ${block}-byte blocks`);
    if (!o.image && o.size > MAX_MEMORY_SIZE) throw new UsageError(`--size: ${o.size} bytes do not fit in memory (at most ${MAX_MEMORY_SIZE} without --image=FILE)`);
    return o.size;
  }
  if (!o.image) return DEFAULT_SIZE;
  if (!existsSync(o.image)) return createMissing ? DEFAULT_SIZE : undefined;
  const st = statSync(o.image);
  if (st.isFile() && (st.size === 0 || st.size % block !== 0)) {
    throw new UsageError(`--image: ${o.image} is ${st.size} bytes, not a whole number of ${block}-byte blocks (give --size to grow it)`);
  }
  return undefined;
}

const gpio = defineDevice({
  description: 'GPIO card compatible with the ACCES PCI-IDIO-16 (Linux driver gpio-pci-idio-16)',
  options: { inputs: { type: 'integer', min: 0, max: 0xffff, help: 'initial input lines as a number, e.g. 0x00ff' } },
  create(o, ctx) {
    const d = new GpioDevice();
    if (o.inputs !== undefined) d.setInputs(o.inputs);
    d.onOutputs = (value) => ctx.event('outputs', { value });
    return d;
  },
  control: {
    inputs: {
      usage: 'inputs <n 0-0xffff>',
      run(d, args, ctx) {
        if (args.length !== 1) throw new Error('usage: inputs <n 0-0xffff>');
        d.setInputs(parseInteger('inputs', args[0]!, 0, 0xffff));
        ctx.event('inputs', { value: d.inputs });
      },
    },
    input: {
      usage: 'input <line 0-15> <0|1>',
      run(d, args, ctx) {
        if (args.length !== 2 || (args[1] !== '0' && args[1] !== '1')) throw new Error('usage: input <line 0-15> <0|1>');
        d.setInput(parseInteger('line', args[0]!, 0, 15), args[1] === '1');
        ctx.event('inputs', { value: d.inputs });
      },
    },
    state: {
      usage: 'state',
      run(d, _args, ctx) {
        ctx.event('state', { outputs: d.outputs, inputs: d.inputs, irqEnabled: d.irqEnabled });
      },
    },
  },
});

const nvme = defineDevice({
  description: 'NVMe 1.4 controller with one namespace backed by a raw image file (or memory)',
  options: {
    image: { type: 'string', help: 'raw image file (created with --size when missing); without it the namespace is in memory' },
    size: { type: 'size', help: 'namespace size, a whole number of blocks, e.g. 64M, 1G (default 64M for new images and memory)' },
    'lba-size': { type: 'integer', min: 512, max: 4096, help: '512 (default) or 4096' },
    doorbells: { type: 'string', choices: ['trap', 'mmap'], help: 'trap (default: trapped REGION_WRITEs) or mmap (shared doorbell page, polled)' },
    'shadow-doorbells': { type: 'string', choices: ['on', 'off'], help: 'on (default: offer Doorbell Buffer Config) or off' },
    'poll-us': { type: 'integer', min: 0, max: 1_000_000, help: 'poll shadow doorbells at most this many microseconds after the last I/O (default 1000; the window adapts to the host, shrinking to 0 when work comes later than that; 0: sleep at once)' },
    serial: { type: 'string', help: 'controller serial number (default: derived from the image path)' },
  },
  create(o, ctx) {
    const lba = o['lba-size'] ?? 512;
    if (lba !== 512 && lba !== 4096) throw new UsageError('--lba-size must be 512 or 4096');
    return new NvmeDevice({
      image: o.image,
      size: blockSize(o, lba, true),
      lbaSize: lba,
      shadowDoorbells: o['shadow-doorbells'] !== 'off',
      pollUs: o['poll-us'],
      doorbells: (o.doorbells ?? 'trap') as 'trap' | 'mmap',
      serial: o.serial,
      log: (m) => ctx.log('info', m),
    });
  },
});

const virtioBlk = defineDevice({
  description: 'virtio-blk disk (modern virtio-pci) over a raw image file (or memory)',
  type: 'block',
  options: {
    image: { type: 'string', help: 'raw image file (created with --size when missing); without it the disk is in memory' },
    size: { type: 'size', help: 'disk size, a whole number of 512-byte sectors, e.g. 64M, 1G (default 64M for new images and memory)' },
    'read-only': { type: 'boolean', help: 'read-only disk (writes fail with VIRTIO_BLK_S_IOERR); the image must exist' },
    queues: { type: 'integer', min: 1, max: 64, help: 'request queues, 1..64 (default 1)' },
    serial: { type: 'string', help: 'the disk ID (GET_ID; default: derived from the image path)' },
    doorbells: { type: 'string', choices: ['trap', 'mmap'], help: 'trap (default: notifications are trapped REGION_WRITEs) or mmap (mmap-able notify page, polled)' },
    'poll-us': { type: 'integer', min: 0, max: 1_000_000, help: 'look at the available rings (trapped notify, default 1000) or the notify page (--doorbells=mmap, default 50) every event-loop turn this many microseconds after the last request; 0: ask for a notify at once' },
  },
  create(o, ctx) {
    const readOnly = o['read-only'] ?? false;
    if (readOnly && o.size !== undefined) throw new UsageError('--size cannot be given with --read-only');
    return new VirtioBlkDevice({
      image: o.image,
      size: blockSize(o, 512, !readOnly),
      readOnly,
      queues: o.queues ?? 1,
      serial: o.serial,
      notify: (o.doorbells ?? 'trap') as 'trap' | 'mmap',
      pollUs: o['poll-us'],
      log: (m) => ctx.log('info', m),
    });
  },
});

const nul = defineDevice({
  description: 'minimal device: one 4 KiB BAR0 that reads back what is written',
  create: () => new NullDevice(),
});

export const DEVICES: Record<string, DeviceFactory> = {
  gpio: gpio,
  nvme: nvme,
  'virtio-blk': virtioBlk,
  null: nul,
};
