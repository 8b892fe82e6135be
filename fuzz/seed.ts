/**
 * Writes the seed corpora fuzz/corpus/<target>/seed-* from the codec's byte fixtures
 * (test/protocol/fixture-table.ts), a device's real migration streams and hand-made NVMe
 * commands. Run by `npm run fuzz -- --seed`; files are named by content, so rerunning is
 * harmless. Inputs found by campaigns (--save) sit beside them.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../test/protocol/fixture-table.js';
import { concat } from '../test/helpers.js';
import * as P from '../src/protocol/index.js';
import { codecInput } from './targets/codec.js';
import { messageRecord } from './frames.js';
import { GpioDevice } from '../src/devices/gpio.js';
import { NvmeDevice } from '../src/devices/nvme/index.js';
import { Migration, MigState } from '../src/server/migration.js';
import type { PciDevice } from '../src/server/device.js';

const root = new URL('../../fuzz/corpus/', import.meta.url).pathname;

function put(target: string, bytes: Uint8Array): void {
  const dir = join(root, target);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `seed-${createHash('sha1').update(bytes).digest('hex').slice(0, 16)}`), bytes);
}

const cat = concat;

// codec: every fixture in its direction
for (const f of FIXTURES) put('codec', codecInput(f.command, f.direction, f.bytes));

// server: a valid VERSION (added by the target) then one request fixture; and all of them
const requests = FIXTURES.filter((f) => f.direction === 'request' && f.command !== P.Command.VERSION);
for (const f of requests) put('server', cat(new Uint8Array([0]), messageRecord(f.command, f.bytes)));
put('server', cat(new Uint8Array([0]), ...requests.map((f) => messageRecord(f.command, f.bytes))));
// ... and a raw VERSION fixture first instead of the target's
const versionReq = FIXTURES.find((f) => f.direction === 'request' && f.command === P.Command.VERSION)!;
put('server', cat(new Uint8Array([1]), messageRecord(P.Command.VERSION, versionReq.bytes)));

// client: the VERSION reply, then each reply fixture as the answer to the next request
const replies = FIXTURES.filter((f) => f.direction === 'reply' && f.command !== P.Command.VERSION);
const versionReps = FIXTURES.filter((f) => f.direction === 'reply' && f.command === P.Command.VERSION);
for (const v of versionReps) {
  put('client', cat(new Uint8Array([0]), messageRecord(0, v.bytes)));
  for (const f of replies) put('client', cat(new Uint8Array([0]), messageRecord(0, v.bytes), messageRecord(0, f.bytes)));
  put('client', cat(new Uint8Array([0]), messageRecord(0, v.bytes), ...replies.map((f) => messageRecord(0, f.bytes))));
}

// migration: real streams of both devices, raw and as framed records
async function streamOf(dev: PciDevice): Promise<Uint8Array> {
  const m = new Migration(dev);
  await m.setState(MigState.STOP);
  await m.setState(MigState.STOP_COPY);
  const parts: Uint8Array[] = [];
  for (;;) {
    const d = await m.read(65536);
    if (!d.length) break;
    parts.push(d);
  }
  return cat(...parts);
}
const devices = [new GpioDevice(), new NvmeDevice({ size: 1 << 20, ioQueues: 2, log: () => {} })];
for (let i = 0; i < devices.length; i++) {
  const s = await streamOf(devices[i]!);
  put('migration', cat(new Uint8Array([i]), s));
  // framed: the records between the magic and the END record
  const recs: Uint8Array[] = [];
  const dv = new DataView(s.buffer, s.byteOffset, s.byteLength);
  for (let p = 8; p < s.length && s[p] !== 0xff; p += 5 + dv.getUint32(p + 1, true)) {
    const len = dv.getUint32(p + 1, true);
    const r = new Uint8Array(3 + len);
    r[0] = s[p]!;
    new DataView(r.buffer).setUint16(1, len, true);
    r.set(s.subarray(p + 5, p + 5 + len), 3);
    recs.push(r);
  }
  put('migration', cat(new Uint8Array([i | 2]), ...recs));
}
// field edits of each device's own state (fuzz/targets/migration.ts, option bit 4): field 0
// to a number, field 1 to null, field 2 edited inside (a JSON-holding field for NVMe)
for (let i = 0; i < devices.length; i++) {
  put('migration', new Uint8Array([0x10 | i]));
  put('migration', new Uint8Array([0x10 | i, 0, 0, 0, 0, 7, 0, 1, 1, 4]));
  put('migration', new Uint8Array([0x10 | i, 2, 1, 0, 0, 0, 1, 1]));
}
for (const d of devices) d.destroy();

// nvme: data pointers (PRP list, SGL segment) and controller commands
{
  const dp = (prp1: number, prp2: number, len: number, shift: number, sgl: number[], mem: Uint8Array): Uint8Array => {
    const b = new Uint8Array(1 + 8 + 8 + 4 + 1 + 16);
    const dv = new DataView(b.buffer);
    dv.setBigUint64(1, BigInt(prp1), true);
    dv.setBigUint64(9, BigInt(prp2), true);
    dv.setUint32(17, len, true);
    b[21] = shift;
    b.set(sgl, 22);
    return cat(b, mem);
  };
  const list = new Uint8Array(64);
  new DataView(list.buffer).setBigUint64(0, 0x2000n, true);
  new DataView(list.buffer).setBigUint64(8, 0x3000n, true);
  put('nvme', dp(0x10, 0x0, 3 * 4096, 0, [], list));
  put('nvme', dp(0x1000, 0x2000, 8192, 0, [], new Uint8Array(0)));
  const seg = new Uint8Array(32);
  const sv = new DataView(seg.buffer);
  sv.setBigUint64(0, 0x1000n, true);
  sv.setUint32(8, 512, true);
  sv.setBigUint64(16, 0x2000n, true);
  sv.setUint32(24, 512, true);
  const first = new Array(16).fill(0);
  first[8] = 32;
  first[15] = 0x30; // last segment at address 0
  put('nvme', dp(0, 0, 1024, 0, first, seg));
  const cmd = (op: number, nsid: number, prp1: number, cdw10: number, cdw11 = 0, cdw12 = 0): Uint8Array => {
    const c = new Uint8Array(64);
    const dv = new DataView(c.buffer);
    dv.setUint32(0, op | (7 << 16), true);
    dv.setUint32(4, nsid, true);
    dv.setBigUint64(24, BigInt(prp1), true);
    dv.setUint32(40, cdw10, true);
    dv.setUint32(44, cdw11, true);
    dv.setUint32(48, cdw12, true);
    return c;
  };
  const DATA = 0x100000 + 0x4000;
  put('nvme', cat(new Uint8Array([1, 0]), cmd(0x06, 0, DATA, 1)));
  put('nvme', cat(new Uint8Array([1, 2]), cmd(0x06, 1, DATA, 0), cmd(0x02, 0xffffffff, DATA, 0x7f0002), cmd(0x09, 0, 0, 7), cmd(0x0a, 0, 0, 7)));
  put('nvme', cat(new Uint8Array([3, 1]), cmd(0x01, 1, DATA, 0, 0, 7), cmd(0x02, 1, DATA, 0, 0, 7)));
  put('nvme', cat(new Uint8Array([3, 2]), cmd(0x00, 1, 0, 0), cmd(0x09, 1, DATA, 0, 4), cmd(0x08, 1, 0, 0, 0, 7)));
}
// virtio: well-formed virtio-blk chains (direct, indirect) for fuzz/targets/virtio.ts
{
  const IOVA = 0x100000;
  const TABLE = 0x1000; // bytes of the descriptor area in the input
  const desc = (t: DataView, i: number, addr: number, len: number, flags: number, next: number): void => {
    t.setBigUint64(16 * i, BigInt(addr), true);
    t.setUint32(16 * i + 8, len, true);
    t.setUint16(16 * i + 12, flags, true);
    t.setUint16(16 * i + 14, next, true);
  };
  const input = (flags: number, heads: number[], build: (table: DataView, data: DataView) => void): Uint8Array => {
    const head = new Uint8Array(2 + 2 * heads.length);
    head[0] = flags;
    head[1] = heads.length - 1;
    heads.forEach((h, i) => new DataView(head.buffer).setUint16(2 + 2 * i, h, true));
    const table = new Uint8Array(TABLE);
    const data = new Uint8Array(0x4000); // guest memory from 0x3000
    build(new DataView(table.buffer), new DataView(data.buffer));
    return cat(head, table, data);
  };
  const at = (memOff: number): number => IOVA + memOff;
  // IN: header at 0x3000, 512 bytes at 0x4000, status at 0x5000
  put('virtio', input(1, [0], (t, d) => {
    desc(t, 0, at(0x3000), 16, 1, 1);
    desc(t, 1, at(0x4000), 512, 3, 2);
    desc(t, 2, at(0x5000), 1, 2, 0);
    d.setUint32(0, 0, true);
  }));
  // OUT through an indirect table at 0x6000 (data offset 0x3000)
  put('virtio', input(3, [0, 1], (t, d) => {
    desc(t, 0, at(0x6000), 48, 4, 0);
    desc(t, 1, at(0x3000), 16, 1, 2);
    desc(t, 2, at(0x5000), 1, 2, 0);
    d.setUint32(0, 1, true);
    const ind = new DataView(d.buffer, 0x3000, 48);
    desc(ind, 0, at(0x3000), 16, 1, 1);
    desc(ind, 1, at(0x4000), 512, 1, 2);
    desc(ind, 2, at(0x5000), 1, 2, 0);
  }));
}
console.log(`seeds written under ${root}`);
