/**
 * Fuzz target: migration stream loading (src/server/migration.ts: the stream parser, CRC and
 * the RESUMING -> STOP arc) and the devices' load paths (GPIO, NVMe).
 * Input: u8 options, then
 *   bit 0: device (0 GPIO, 1 NVMe with a memory namespace)
 *   bit 1 set: framed: records "u8 type, u16 length, bytes" up to the end of the input; the
 *     target adds the magic and a correct END record (CRC), so the fuzzer reaches the device's
 *     load() instead of the checksum; bit 1 clear: the raw stream.
 *   bits 2-3: the stream is written in 1-4 MIG_DATA_WRITE chunks.
 *   bit 4 set (overrides bit 1): the device's own saved state with fields replaced, so the
 *     fuzzer reaches each field's validation: repeated "u8 field, u8 kind, value" edits
 *     (kind: number, extreme number, string, boolean, null, JSON text, or an edit inside a
 *     field that itself holds JSON, such as NVMe's queues); config space kept valid.
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
/** each device's own saved state at power-on: config space image and device state JSON */
let saved: { config: Uint8Array; doc: { kind: string; version: number; state: Record<string, unknown> } }[] | undefined;

const EXTREMES = [-1, 0.5, 2 ** 53, -(2 ** 31), 2 ** 32, 1e308, Number.MAX_SAFE_INTEGER, 65536, 1024, 4096];

function value(b: Bytes): unknown {
  switch (b.u8() % 7) {
    case 0:
      return b.u32();
    case 1:
      return EXTREMES[b.u8() % EXTREMES.length];
    case 2:
      return new TextDecoder().decode(b.take(b.u8() % 64));
    case 3:
      return b.bool();
    case 4:
      return null;
    case 5: {
      const text = new TextDecoder().decode(b.take(b.u8()));
      try {
        return JSON.parse(text) as unknown;
      } catch {
        return text;
      }
    }
    default:
      return [value(b), value(b)];
  }
}

/** Replaces something inside a JSON value: a member of an object, an element of an array. */
function edit(v: unknown, b: Bytes, depth = 0): unknown {
  if (depth < 3 && v !== null && typeof v === 'object') {
    const keys = Object.keys(v);
    const sel = b.u8();
    if (keys.length && sel < 0xf0) {
      const k = keys[sel % keys.length]!;
      const o = v as Record<string, unknown>;
      o[k] = b.bool() ? edit(o[k], b, depth + 1) : value(b);
      return v;
    }
    if (Array.isArray(v)) v.push(value(b));
    return v;
  }
  if (typeof v === 'string' && /^[[{]/.test(v)) {
    // a field holding JSON text (NVMe: queues, features, events...): edit inside it
    try {
      return JSON.stringify(edit(JSON.parse(v) as unknown, b, depth + 1));
    } catch {
      return v;
    }
  }
  return value(b);
}

async function savedOf(dev: PciDevice): Promise<NonNullable<typeof saved>[number]> {
  const doc = JSON.parse(new TextDecoder().decode(await dev.migration!.save()));
  return { config: dev.config.save(), doc };
}

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
  saved ??= [await savedOf(devices[0]!), await savedOf(devices[1]!)];
  let stream: Uint8Array;
  if (opts & 16) {
    const own = saved[opts & 1]!;
    const doc = structuredClone(own.doc);
    while (b.left > 0) doc.state = edit(doc.state, b) as Record<string, unknown>;
    stream = frameStream([
      { type: 2, body: own.config },
      { type: 3, body: new TextEncoder().encode(JSON.stringify(doc)) },
    ]);
  } else if (opts & 2) {
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
