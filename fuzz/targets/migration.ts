/**
 * Fuzz target: migration stream loading (src/server/migration.ts: the stream parser, CRC and
 * the RESUMING -> STOP arc) and the devices' load paths (GPIO, NVMe).
 * Input: u8 options, then
 *   bit 0: device (0 GPIO, 1 NVMe with a memory namespace)
 *   bit 1 set: framed: records "u8 type, u16 length, bytes" up to the end of the input; the
 *     target adds the magic and a correct END record (CRC), so the fuzzer reaches the device's
 *     load() instead of the checksum; bit 1 clear: the raw stream.
 *   bits 2-3: the stream is written in 1-4 MIG_DATA_WRITE chunks.
 * Loading (any write, or the final transition) may fail only with a VfioUserError, leaving
 * the device in ERROR; a state that loads must leave a device that saves again and runs
 * (RUNNING) without an unexpected error.
 */
import { GpioDevice } from '../../src/devices/gpio.js';
import { NvmeDevice } from '../../src/devices/nvme/index.js';
import { Migration, MigState, crc32 } from '../../src/server/migration.js';
import type { PciDevice } from '../../src/server/device.js';
import { Bytes, onlyExpected } from '../lib.js';

export const MAGIC = new TextEncoder().encode('VFUMIG01');

let devices: PciDevice[] | undefined;

/** magic + records + END(crc) */
export function frameStream(records: { type: number; body: Uint8Array }[]): Uint8Array {
  let n = MAGIC.length + 9;
  for (const r of records) n += 5 + r.body.length;
  const out = new Uint8Array(n);
  const dv = new DataView(out.buffer);
  out.set(MAGIC);
  let p = MAGIC.length;
  for (const r of records) {
    out[p] = r.type;
    dv.setUint32(p + 1, r.body.length, true);
    out.set(r.body, p + 5);
    p += 5 + r.body.length;
  }
  out[p] = 0xff;
  dv.setUint32(p + 1, 4, true);
  dv.setUint32(p + 5, crc32(out.subarray(0, p)), true);
  return out;
}

export async function fuzz(data: Buffer): Promise<void> {
  devices ??= [new GpioDevice(), new NvmeDevice({ size: 1 << 20, ioQueues: 2, log: () => {} })];
  const b = new Bytes(data);
  const opts = b.u8();
  const dev = devices[opts & 1]!;
  let stream: Uint8Array;
  if (opts & 2) {
    const records: { type: number; body: Uint8Array }[] = [];
    while (b.left > 0) records.push({ type: b.u8(), body: b.take(b.u16()) });
    stream = frameStream(records);
  } else {
    stream = b.rest();
  }
  const m = new Migration(dev);
  await m.setState(MigState.STOP);
  await m.setState(MigState.RESUMING);
  const chunks = 1 + ((opts >> 2) & 3);
  const step = Math.ceil(stream.length / chunks) || 1;
  let loaded = false;
  try {
    // a stream may be refused at any write (not ours, too large) or at the final transition
    for (let p = 0; p < stream.length; p += step) await m.write(stream.subarray(p, p + step));
    await m.setState(MigState.STOP);
    loaded = true;
  } catch (e) {
    onlyExpected(e, 'resume');
    if (m.state !== MigState.ERROR) throw new Error(`a refused stream left the migration in ${m.stateName}, not ERROR`);
  }
  if (loaded) {
    // what loaded must be a working device: it saves again and runs
    try {
      await dev.migration!.save();
      await m.setState(MigState.RUNNING);
      await new Promise((r) => setImmediate(r));
    } catch (e) {
      onlyExpected(e, 'after a successful load');
    }
  }
  m.reset();
  await dev.reset('client');
}
