/**
 * Bounded fuzzing of the NVMe controller with hostile guest commands: random opcodes, flags
 * (PRP or SGL), namespace ids, data pointers (valid, outside the maps, unaligned, zero),
 * PRP lists and SGL segments full of such pointers, and random command dwords, on the admin
 * queue and an I/O queue. Every command must complete (any status), nothing outside the maps
 * is touched, and the controller still works afterwards. Seeded; VFU_FUZZ_SEED reproduces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NvmeDevice } from '../../src/devices/nvme/index.js';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient } from '../../src/client/client.js';
import { NvmeDriver, ADMIN, GUARD } from '../../src/testing/index.js';
import { sockPath } from '../helpers.js';

const seed = Number(process.env.VFU_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));

function rng(s: number): () => number {
  let x = s >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

// admin opcodes that would take the rig's own queues away or never complete by design
const SKIP_ADMIN = new Set([0x00 /* delete SQ */, 0x04 /* delete CQ */, 0x0c /* AER: completes on an event */]);

test(`nvme: hostile commands all complete, nothing outside the maps is touched (seed ${seed})`, { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-fuzz-'));
  const dev = new NvmeDevice({ image: join(dir, 'disk.img'), size: 16 << 20, log: () => {} });
  const server = new VfioUserServer(dev);
  const path = sockPath('nvme-fuzz');
  server.listen(path);
  const client = await VfioUserClient.connect(path);
  const d = await NvmeDriver.attach(client, { memSize: 8 << 20 });
  try {
    await d.init({ queues: 1, depth: 64 });
    const scratch = d.alloc(256 * 1024);
    const scratchEnd = scratch + 256 * 1024;
    const r = rng(seed);
    const pick = <T>(a: readonly T[]): T => a[r() % a.length]!;
    // pointers a hostile guest might use: inside the scratch area (aligned or not), just
    // outside the maps, zero, huge
    const ptr = (): number =>
      pick([
        () => scratch + (r() % (scratchEnd - scratch - 4096)),
        () => scratch + (r() % 64) * 4096,
        () => d.iova - 4096 + (r() % 4096),
        () => d.iova + d.mem.size - 2 * GUARD + (r() % 8192),
        () => 0,
        () => 2 ** 52 + r(),
      ])();
    const before = d.mem.bytes.slice(0, GUARD);
    const afterGuard = d.mem.bytes.slice(d.mem.size - GUARD);
    const statuses = new Map<number, number>();
    const n = 1500;
    for (let i = 0; i < n; i++) {
      // refill the scratch area with more pointers (PRP list entries, SGL descriptors)
      const s = d.at(scratch, 4096 * 4);
      const sdv = new DataView(s.buffer, s.byteOffset, s.byteLength);
      for (let o = 0; o < s.length; o += 16) {
        const p = ptr();
        sdv.setUint32(o, p % 2 ** 32, true);
        sdv.setUint32(o + 4, Math.floor(p / 2 ** 32) >>> 0, true);
        sdv.setUint32(o + 8, r() % 0x20000, true); // SGL length
        sdv.setUint32(o + 12, (r() & 0x3) << 28 | (r() % 4) << 24, true); // SGL type/subtype
      }
      const admin = (r() & 3) === 0;
      let opc = admin ? pick([0x01, 0x02, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x18, 0x7c, r() & 0xff]) : pick([0x00, 0x01, 0x02, 0x08, 0x09, r() & 0xff]);
      if (admin && SKIP_ADMIN.has(opc)) opc = 0x06;
      // Doorbell Buffer Config into the scratch area would hand the queue pointers to the
      // random bytes written there (a guest may wreck its own queues; test/nvme/shadow.test.ts
      // covers accepted buffers): here only buffers that must be refused
      const dbbuf = admin && opc === 0x7c;
      const c = await d.submit(admin ? ADMIN : 1, {
        opc,
        flags: pick([0, 0, 0x40, 0x80, 0xc0, r() & 0xff]) & ~0x03, // no fused commands
        nsid: pick([0, 1, 1, 1, 2, 0xffffffff, r()]),
        prp1: dbbuf ? pick([0, d.iova - 4096, scratch + 8, 2 ** 52]) : ptr(),
        prp2: dbbuf ? pick([0, d.iova + d.mem.size - 2 * GUARD, scratch + 4]) : pick([ptr, () => scratch + (r() % 4) * 4096 + (r() & 1 ? 0 : r() % 4096)])(),
        cdw10: pick([0, 1, r(), r() & 0xffff, r() % 64]),
        cdw11: pick([0, r(), r() & 0xffff]),
        cdw12: pick([0, r() & 0xffff, r(), 0x7f]),
        cdw13: r(),
        cdw14: r(),
        cdw15: r(),
      }, { timeoutMs: 10_000 });
      statuses.set(c.status, (statuses.get(c.status) ?? 0) + 1);
    }
    assert.deepEqual(d.mem.bytes.subarray(0, GUARD), before, 'the guard page below the map is untouched');
    assert.deepEqual(d.mem.bytes.subarray(d.mem.size - GUARD), afterGuard, 'the guard page above the map is untouched');
    // the controller still works: identify, then a write and read back through a valid PRP
    const id = await d.identify(1);
    assert.equal(id.c.status, 0, 'identify after the fuzz');
    const buf = d.alloc(4096);
    d.at(buf, 4096).fill(0x6b);
    await d.ok(1, { opc: 0x01, nsid: 1, prp1: buf, cdw10: 0, cdw12: 7 });
    d.at(buf, 4096).fill(0);
    await d.ok(1, { opc: 0x02, nsid: 1, prp1: buf, cdw10: 0, cdw12: 7 });
    assert.ok(d.at(buf, 4096).every((b) => b === 0x6b), 'data written and read back after the fuzz');
    assert.ok(statuses.size > 3, `a variety of outcomes: ${JSON.stringify([...statuses])}`);
    t.diagnostic(`statuses (status: count): ${JSON.stringify([...statuses].sort((a, b) => a[0] - b[0]))}`);
  } finally {
    d.close();
    client.close();
    server.close();
    dev.destroy();
    d.mem.free();
    rmSync(dir, { recursive: true, force: true });
  }
});
