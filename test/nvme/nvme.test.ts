/**
 * The NVMe controller driven by the in-test NVMe driver (test/nvme/driver.ts) over a real
 * vfio-user socket: bring-up, Identify, features, logs, I/O with PRP lists and SGLs, flush,
 * write zeroes, deallocate, malformed commands, reset, INTx, DMA by message, the mmap-ed
 * doorbell page, and a server restart (child process) that keeps the data.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { VfioUserClient } from '../../src/client/client.js';
import { FileBackend } from '../../src/devices/backend.js';
import { NvmeDriver, ADMIN, sc, sglDesc, setU64, GUARD, pattern } from '../../src/testing/index.js';
import { serveChild, waitFor } from '../helpers.js';
import { rig, imagePath, type Rig } from './rig.js';
import { within } from '../client/util.js';

/** allocates n pages in reverse order (not contiguous in IOVA order) */
function scatteredPages(d: NvmeDriver, n: number): number[] {
  const base = d.alloc((n + 1) * 4096 * 2);
  const pages: number[] = [];
  for (let i = 0; i < n; i++) pages.push(base + (2 * (n - i)) * 4096);
  return pages;
}

function gather(d: NvmeDriver, pages: number[], len: number, firstOffset = 0): Uint8Array {
  const out = new Uint8Array(len);
  let p = 0;
  pages.forEach((pg, i) => {
    const start = i === 0 ? firstOffset : 0;
    const n = Math.min(4096 - start, len - p);
    if (n > 0) out.set(d.at(pg + start, n), p);
    p += Math.max(0, n);
  });
  return out;
}

function scatter(d: NvmeDriver, pages: number[], data: Uint8Array, firstOffset = 0): void {
  let p = 0;
  pages.forEach((pg, i) => {
    const start = i === 0 ? firstOffset : 0;
    const n = Math.min(4096 - start, data.length - p);
    if (n > 0) d.at(pg + start, n).set(data.subarray(p, p + n));
    p += Math.max(0, n);
  });
}

describe('nvme: bring-up, identify, features, logs', () => {
  let r: Rig;
  before(async () => {
    r = await rig({ serial: 'TESTSERIAL1' }, {}, { queues: 2 });
  });
  after(() => r.close());

  test('config space: class 010802, ids, BAR0 64-bit, MSI-X, PCIe, PM', async () => {
    const cfg = await r.client.readConfig(0, 256);
    const dv = new DataView(cfg.buffer, cfg.byteOffset);
    assert.equal(dv.getUint16(0, true), 0x4e58);
    assert.equal(dv.getUint16(2, true), 0x0002);
    assert.equal(dv.getUint32(8, true) >>> 8, 0x010802);
    assert.equal(dv.getUint16(0x2c, true), 0x4e58);
    assert.equal(cfg[0x10]! & 0x6, 0x4, 'BAR0 is 64-bit memory');
    assert.ok(await r.d.findCap(0x11), 'MSI-X');
    assert.ok(await r.d.findCap(0x10), 'PCI Express');
    assert.ok(await r.d.findCap(0x01), 'power management');
  });

  test('registers: CAP, VS, CSTS', async () => {
    const cap = await r.d.r64(0);
    assert.equal(Number(cap & 0xffffn), 1023, 'MQES');
    assert.equal(Number((cap >> 16n) & 1n), 1, 'CQR');
    assert.equal(Number((cap >> 32n) & 0xfn), 0, 'DSTRD');
    assert.equal(Number((cap >> 37n) & 1n), 1, 'NVM command set');
    assert.equal(await r.d.r32(8), 0x00010400);
    assert.equal((await r.d.r32(0x1c)) & 1, 1, 'ready');
  });

  test('identify controller, namespace, active list, descriptors', async () => {
    const c = r.d.identifyData!;
    const dv = new DataView(c.buffer);
    assert.equal(dv.getUint16(0, true), 0x4e58);
    assert.equal(Buffer.from(c.subarray(4, 24)).toString().trim(), 'TESTSERIAL1');
    assert.match(Buffer.from(c.subarray(24, 64)).toString(), /vfio-user NVMe/);
    assert.equal(dv.getUint32(516, true), 1, 'one namespace');
    assert.equal(dv.getUint32(536, true) & 3, 1, 'SGLs supported');
    assert.equal(c[525]! & 1, 1, 'volatile write cache present');
    assert.equal(r.d.nsBlocks, (16 << 20) / 512);
    assert.equal(r.d.lbaSize, 512);
    const list = await r.d.identify(2, 0);
    assert.equal(list.c.status, 0);
    assert.deepEqual([...new Uint32Array(list.data.buffer, 0, 3)], [1, 0, 0]);
    const desc = await r.d.identify(3, 1);
    assert.equal(desc.c.status, 0);
    assert.deepEqual([desc.data[0], desc.data[1]], [1, 8], 'EUI-64 descriptor');
    assert.deepEqual([desc.data[12], desc.data[13]], [2, 16], 'NGUID descriptor');
    const bad = await r.d.identify(0x55, 0);
    assert.equal(sc(bad.c), 0x02, 'unknown CNS: Invalid Field');
    const badNs = await r.d.identify(3, 7);
    assert.equal(sc(badNs.c), 0x0b, 'descriptors of a missing namespace: Invalid Namespace');
  });

  test('get/set features: queues, write cache, coalescing, arbitration, power, temperature', async () => {
    const q = await r.d.ok(ADMIN, { opc: 0x0a, cdw10: 0x07 });
    assert.equal(q.dw0, (1 << 16) | 1, 'two I/O queue pairs allocated');
    await r.d.ok(ADMIN, { opc: 0x09, cdw10: 0x06, cdw11: 0 });
    assert.equal((await r.d.ok(ADMIN, { opc: 0x0a, cdw10: 0x06 })).dw0, 0);
    await r.d.ok(ADMIN, { opc: 0x09, cdw10: 0x06, cdw11: 1 });
    assert.equal((await r.d.ok(ADMIN, { opc: 0x0a, cdw10: 0x06 })).dw0, 1);
    await r.d.ok(ADMIN, { opc: 0x09, cdw10: 0x08, cdw11: 0x0a04 });
    assert.equal((await r.d.ok(ADMIN, { opc: 0x0a, cdw10: 0x08 })).dw0, 0x0a04);
    await r.d.ok(ADMIN, { opc: 0x09, cdw10: 0x01, cdw11: 0x03020103 });
    assert.equal((await r.d.ok(ADMIN, { opc: 0x0a, cdw10: 0x01 })).dw0, 0x03020103);
    assert.equal((await r.d.ok(ADMIN, { opc: 0x0a, cdw10: 0x02 })).dw0, 0);
    assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x09, cdw10: 0x02, cdw11: 2 })), 0x02, 'no power state 2');
    assert.equal((await r.d.ok(ADMIN, { opc: 0x0a, cdw10: 0x04 })).dw0, 343);
    assert.equal((await r.d.ok(ADMIN, { opc: 0x0a, cdw10: 0x0104 })).dw0, 343, 'default value (SEL=1)');
    assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x0a, cdw10: 0x7f })), 0x02, 'unknown feature');
    assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x09, cdw10: 0x80000006, cdw11: 1 })), 0x10d, 'not saveable');
  });

  test('async event: a temperature threshold below the temperature completes a pending AER', async () => {
    await r.d.ok(ADMIN, { opc: 0x09, cdw10: 0x0b, cdw11: 0x02 }); // SMART temperature events on
    const aer = r.d.submit(ADMIN, { opc: 0x0c }, { timeoutMs: 5000 });
    await r.d.ok(ADMIN, { opc: 0x09, cdw10: 0x04, cdw11: 300 }); // over-temperature threshold 300 K < 310 K
    const c = await aer;
    assert.equal(c.status, 0);
    assert.equal(c.dw0 & 7, 1, 'SMART / health');
    assert.equal((c.dw0 >> 8) & 0xff, 1, 'temperature threshold');
    assert.equal((c.dw0 >> 16) & 0xff, 2, 'log page 2');
    const buf = r.d.alloc(4096);
    await r.d.ok(ADMIN, { opc: 0x02, prp1: buf, cdw10: (127 << 16) | 0x02 });
    assert.equal(r.d.at(buf, 1)[0]! & 2, 2, 'critical warning: temperature');
    await r.d.ok(ADMIN, { opc: 0x09, cdw10: 0x04, cdw11: 343 });
    // the AER limit: 4 outstanding
    const pending = [0, 1, 2, 3].map(() => r.d.submit(ADMIN, { opc: 0x0c }, { timeoutMs: 60000 }).catch(() => undefined));
    assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x0c })), 0x105, 'AER limit exceeded');
    void pending;
  });

  test('log pages: SMART counts I/O, error log, firmware slot, bad log id', async () => {
    const data = r.d.alloc(4096);
    r.d.at(data, 4096).set(pattern(4096, 9));
    await r.d.ok(1, { opc: 0x01, nsid: 1, prp1: data, cdw10: 0, cdw12: 7 });
    await r.d.ok(1, { opc: 0x02, nsid: 1, prp1: data, cdw10: 0, cdw12: 7 });
    const buf = r.d.alloc(4096);
    await r.d.ok(ADMIN, { opc: 0x02, prp1: buf, cdw10: (127 << 16) | 0x02 });
    const s = new DataView(r.d.at(buf, 512).slice().buffer);
    assert.equal(s.getUint16(1, true), 310, 'temperature');
    assert.ok(s.getBigUint64(64, true) >= 1n, 'host read commands');
    assert.ok(s.getBigUint64(80, true) >= 1n, 'host write commands');
    await r.d.submit(1, { opc: 0x02, nsid: 1, prp1: data, cdw10: 0xffffff, cdw11: 0x7f, cdw12: 0 }); // an error
    const err = r.d.alloc(4096);
    await r.d.ok(ADMIN, { opc: 0x02, prp1: err, cdw10: (15 << 16) | 0x01 });
    const e = new DataView(r.d.at(err, 64).slice().buffer);
    assert.ok(e.getBigUint64(0, true) >= 1n, 'error count');
    assert.equal(e.getUint16(8, true), 1, 'error on SQ 1');
    assert.equal((e.getUint16(12, true) >> 1) & 0xff, 0x80, 'LBA out of range recorded');
    const fw = r.d.alloc(4096);
    await r.d.ok(ADMIN, { opc: 0x02, prp1: fw, cdw10: (127 << 16) | 0x03 });
    assert.equal(r.d.at(fw, 1)[0], 1, 'active slot 1');
    assert.equal(Buffer.from(r.d.at(fw + 8, 8)).toString().trim(), '0.1.0');
    assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x02, prp1: fw, cdw10: (127 << 16) | 0x42 })), 0x109, 'invalid log page');
    // a 16 GiB log page request (NUMD all ones) is refused, not allocated
    assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x02, prp1: fw, cdw10: (0xffff << 16) | 0x02, cdw11: 0xffff })), 0x02, 'invalid field');
  });

  test('abort and keep alive complete; unknown admin opcode is rejected', async () => {
    const a = await r.d.ok(ADMIN, { opc: 0x08, cdw10: (1234 << 16) | 1 });
    assert.equal(a.dw0 & 1, 1, 'not aborted (already complete)');
    await r.d.ok(ADMIN, { opc: 0x18 });
    assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x7f })), 0x01);
  });
});

describe('nvme: I/O with data verification', () => {
  let r: Rig;
  before(async () => {
    r = await rig({ size: 64 << 20 }, {}, { queues: 4, depth: 64 });
  });
  after(() => r.close());

  test('PRP: one page, two pages, a multi-page PRP list over scattered pages, offset first page', async () => {
    for (const [lba, bytes, off] of [[0, 4096, 0], [100, 8192, 0], [1000, 12 * 4096, 0], [3000, 64 * 1024, 512], [5000, 1 << 20, 0]] as const) {
      const pages = scatteredPages(r.d, Math.ceil((bytes + off) / 4096));
      const data = pattern(bytes, lba);
      scatter(r.d, pages, data, off);
      const dptr = r.d.prps([pages[0]! + off, ...pages.slice(1)], bytes);
      assert.equal((await r.d.rw('write', 1, lba, bytes / 512, dptr)).status, 0);
      const rpages = scatteredPages(r.d, Math.ceil((bytes + off) / 4096));
      const rdptr = r.d.prps([rpages[0]! + off, ...rpages.slice(1)], bytes);
      assert.equal((await r.d.rw('read', 2, lba, bytes / 512, rdptr)).status, 0);
      assert.ok(Buffer.from(gather(r.d, rpages, bytes, off)).equals(Buffer.from(data)), `data at lba ${lba} (${bytes} bytes)`);
    }
    // the image holds it too
    const backend = r.dev.namespaces.get(1)!.backend;
    assert.ok(backend instanceof FileBackend, 'the rig serves an image file');
    const img = readFileSync(backend.path);
    assert.ok(img.subarray(1000 * 512, 1000 * 512 + 12 * 4096).equals(Buffer.from(pattern(12 * 4096, 1000))));
  });

  test('PRP list chained across list pages', async () => {
    // a list pointer 16 bytes before the end of its page: 1 entry there, then a chain pointer
    const n = 6;
    const pages = scatteredPages(r.d, n);
    const data = pattern(n * 4096, 77);
    scatter(r.d, pages, data);
    const l1 = r.d.alloc(4096);
    const l2 = r.d.alloc(4096);
    const [p0, p1, ...rest] = pages;
    assert.ok(p0 !== undefined && p1 !== undefined && rest.length === n - 2);
    const v1 = new DataView(r.d.at(l1, 4096).buffer, r.d.at(l1, 4096).byteOffset, 4096);
    setU64(v1, 4080, p1);
    setU64(v1, 4088, l2);
    const v2 = new DataView(r.d.at(l2, 4096).buffer, r.d.at(l2, 4096).byteOffset, 4096);
    rest.forEach((page, i) => setU64(v2, 8 * i, page));
    assert.equal((await r.d.rw('write', 1, 20000, n * 8, { prp1: p0, prp2: l1 + 4080 })).status, 0);
    const back = r.d.alloc(n * 4096);
    assert.equal((await r.d.rw('read', 1, 20000, n * 8, r.d.prps(Array.from({ length: n }, (_, i) => back + i * 4096), n * 4096))).status, 0);
    assert.ok(Buffer.from(r.d.at(back, n * 4096)).equals(Buffer.from(data)));
  });

  test('SGL: one data block, and segment chains of odd-sized unaligned blocks', async () => {
    const data = pattern(8192, 5);
    const a = r.d.alloc(8192);
    r.d.at(a, 8192).set(data);
    assert.equal((await r.d.rw('write', 1, 40000, 16, { sgl: r.d.sgl([{ iova: a, len: 8192 }]) })).status, 0);
    const b = r.d.alloc(8192);
    assert.equal((await r.d.rw('read', 1, 40000, 16, { sgl: r.d.sgl([{ iova: b, len: 8192 }]) })).status, 0);
    assert.ok(Buffer.from(r.d.at(b, 8192)).equals(Buffer.from(data)));
    // 40 chunks of 1000/48 bytes at odd addresses, 3 segments (16 per segment)
    const total = 40 * 512;
    const big = pattern(total, 6);
    const chunks: { iova: number; len: number }[] = [];
    let p = 0;
    for (let i = 0; p < total; i++) {
      const len = Math.min(total - p, i % 2 ? 1000 : 24);
      const at = r.d.alloc(len + 3, 1) + 3;
      r.d.at(at, len).set(big.subarray(p, p + len));
      chunks.push({ iova: at, len });
      p += len;
    }
    assert.equal((await r.d.rw('write', 3, 41000, 40, { sgl: r.d.sgl(chunks, 16) })).status, 0);
    const back = r.d.alloc(total);
    assert.equal((await r.d.rw('read', 4, 41000, 40, r.d.prps(Array.from({ length: total / 4096 + 1 }, (_, i) => back + i * 4096), total))).status, 0);
    assert.ok(Buffer.from(r.d.at(back, total)).equals(Buffer.from(big)));
    // and read back through an SGL of the same chunks after clearing them
    for (const c of chunks) r.d.at(c.iova, c.len).fill(0);
    assert.equal((await r.d.rw('read', 3, 41000, 40, { sgl: r.d.sgl(chunks, 7) })).status, 0);
    const got = Buffer.concat(chunks.map((c) => Buffer.from(r.d.at(c.iova, c.len))));
    assert.ok(got.equals(Buffer.from(big)));
  });

  test('flush, write zeroes, deallocate; FUA write', async () => {
    const buf = r.d.alloc(16 * 512);
    r.d.at(buf, 8192).set(pattern(8192, 11));
    const dptr = r.d.prps([buf, buf + 4096], 8192);
    assert.equal((await r.d.rw('write', 1, 50000, 16, dptr, { cdw12: 15 | (1 << 30) })).status, 0, 'FUA write');
    assert.equal((await r.d.flush(1)).status, 0);
    assert.equal((await r.d.flush(1, 0xffffffff)).status, 0, 'flush all namespaces');
    assert.equal((await r.d.writeZeroes(1, 50002, 4)).status, 0);
    assert.equal((await r.d.deallocate(1, [{ lba: 50010, nlb: 3 }, { lba: 50014, nlb: 1 }])).status, 0);
    const back = r.d.alloc(8192);
    assert.equal((await r.d.rw('read', 1, 50000, 16, r.d.prps([back, back + 4096], 8192))).status, 0);
    const want = Buffer.from(pattern(8192, 11));
    want.fill(0, 2 * 512, 6 * 512);
    want.fill(0, 10 * 512, 13 * 512);
    want.fill(0, 14 * 512, 15 * 512);
    assert.ok(Buffer.from(r.d.at(back, 8192)).equals(want));
    assert.equal(sc(await r.d.writeZeroes(1, r.d.nsBlocks - 2, 4)), 0x80, 'write zeroes out of range');
    assert.equal(sc(await r.d.deallocate(1, [{ lba: r.d.nsBlocks, nlb: 1 }])), 0x80, 'deallocate out of range');
  });

  test('queue depth 32 on several queues at once, each queue with its own MSI-X vector', async () => {
    const before = new Map(r.d.interrupts);
    const jobs: Promise<void>[] = [];
    for (let q = 1; q <= 4; q++) {
      for (let k = 0; k < 32; k++) {
        const lba = 60000 + q * 1000 + k * 8;
        const buf = r.d.alloc(4096);
        r.d.at(buf, 4096).set(pattern(4096, lba));
        jobs.push(r.d.rw('write', q, lba, 8, { prp1: buf }).then((c) => assert.equal(c.status, 0)));
      }
    }
    await Promise.all(jobs);
    const reads: Promise<void>[] = [];
    for (let q = 1; q <= 4; q++) {
      for (let k = 0; k < 32; k++) {
        const lba = 60000 + q * 1000 + k * 8;
        const buf = r.d.alloc(4096);
        reads.push(
          r.d.rw('read', 5 - q, lba, 8, { prp1: buf }).then((c) => {
            assert.equal(c.status, 0);
            assert.ok(Buffer.from(r.d.at(buf, 4096)).equals(Buffer.from(pattern(4096, lba))));
          }),
        );
      }
    }
    await Promise.all(reads);
    for (let v = 1; v <= 4; v++) assert.ok((r.d.interrupts.get(v) ?? 0) > (before.get(v) ?? 0), `vector ${v} fired`);
  });
});

describe('nvme: malformed commands', () => {
  let r: Rig;
  before(async () => {
    r = await rig({}, {}, { queues: 1 });
  });
  after(() => r.close());

  function guards(): Buffer {
    const m = r.d.mem.bytes;
    return Buffer.concat([Buffer.from(m.subarray(0, GUARD)), Buffer.from(m.subarray(m.length - GUARD))]);
  }

  test('every bad command completes with the right status and the server keeps working', async () => {
    const m = r.d.mem.bytes;
    m.fill(0xcc, 0, GUARD);
    m.fill(0xcc, m.length - GUARD);
    const canary = guards();
    const below = r.d.iova - GUARD; // the unmapped guard page just below the map
    const above = r.d.iova + m.length - 2 * GUARD; // just past the end
    const good = r.d.alloc(4 * 4096);
    const cases: [string, Promise<{ status: number }>, number][] = [
      ['read into unmapped PRP1', r.d.rw('read', 1, 0, 8, { prp1: below }), 0x04],
      ['read into PRP1 far outside', r.d.rw('read', 1, 0, 8, { prp1: 0xdead0000 }), 0x04],
      ['read with PRP2 past the map', r.d.rw('read', 1, 0, 16, { prp1: good, prp2: above }), 0x04],
      ['read straddling the end of the map', r.d.rw('read', 1, 0, 16, { prp1: above - 4096 + 512, prp2: above }), 0x04],
      ['PRP list outside the map', r.d.rw('read', 1, 0, 24, { prp1: good, prp2: above }), 0x04],
      ['PRP2 with an offset', r.d.rw('read', 1, 0, 16, { prp1: good, prp2: good + 4096 + 8 }), 0x13],
      ['write from unmapped memory', r.d.rw('write', 1, 0, 8, { prp1: below }), 0x04],
      ['LBA out of range', r.d.rw('read', 1, r.d.nsBlocks - 4, 8, { prp1: good }), 0x80],
      ['LBA past 2^53', r.d.rw('read', 1, 2 ** 60, 1, { prp1: good }), 0x80],
      ['invalid namespace', r.d.submit(1, { opc: 0x02, nsid: 9, prp1: good, cdw12: 0 }), 0x0b],
      ['invalid I/O opcode', r.d.submit(1, { opc: 0x7e, nsid: 1 }), 0x01],
      ['fused operation', r.d.submit(1, { opc: 0x02, nsid: 1, flags: 0x01, prp1: good }), 0x02],
      ['transfer over MDTS', r.d.rw('read', 1, 0, 4096, { prp1: good }), 0x02],
      ['SGL: bad descriptor type', r.d.rw('read', 1, 0, 8, { sgl: sglDesc(good, 4096, 0x50) }), 0x11],
      ['SGL: too short for the transfer', r.d.rw('read', 1, 0, 8, { sgl: sglDesc(good, 1024, 0x00) }), 0x0f],
      ['SGL: segment outside the map', r.d.rw('read', 1, 0, 8, { sgl: sglDesc(below, 32, 0x30) }), 0x04],
      ['SGL: data block outside the map', r.d.rw('read', 1, 0, 8, { sgl: sglDesc(above, 4096, 0x00) }), 0x04],
      ['SGL: bad segment length', r.d.rw('read', 1, 0, 8, { sgl: sglDesc(good, 20, 0x30) }), 0x0d],
      ['SGL on the admin queue', r.d.submit(ADMIN, { opc: 0x06, sgl: sglDesc(good, 4096, 0), cdw10: 1 }), 0x02],
      ['identify into unmapped memory', r.d.submit(ADMIN, { opc: 0x06, prp1: below, cdw10: 1 }), 0x04],
      ['create SQ with QID 0', r.d.submit(ADMIN, { opc: 0x01, prp1: good, cdw10: (15 << 16) | 0, cdw11: (1 << 16) | 1 }), 0x101],
      ['create SQ with QID past the maximum', r.d.submit(ADMIN, { opc: 0x01, prp1: good, cdw10: (15 << 16) | 999, cdw11: (1 << 16) | 1 }), 0x101],
      ['create SQ that exists', r.d.submit(ADMIN, { opc: 0x01, prp1: good, cdw10: (15 << 16) | 1, cdw11: (1 << 16) | 1 }), 0x101],
      ['create SQ on a missing CQ', r.d.submit(ADMIN, { opc: 0x01, prp1: good, cdw10: (15 << 16) | 5, cdw11: (7 << 16) | 1 }), 0x100],
      ['create CQ too large', r.d.submit(ADMIN, { opc: 0x05, prp1: good, cdw10: (5000 << 16) | 5, cdw11: 3 }), 0x102],
      ['create CQ with a bad vector', r.d.submit(ADMIN, { opc: 0x05, prp1: good, cdw10: (15 << 16) | 5, cdw11: (200 << 16) | 3 }), 0x108],
      ['create CQ not contiguous', r.d.submit(ADMIN, { opc: 0x05, prp1: good, cdw10: (15 << 16) | 5, cdw11: 2 }), 0x02],
      ['delete a missing SQ', r.d.submit(ADMIN, { opc: 0x00, cdw10: 9 }), 0x101],
      ['delete the admin SQ', r.d.submit(ADMIN, { opc: 0x00, cdw10: 0 }), 0x101],
      ['delete a CQ with an SQ on it', r.d.submit(ADMIN, { opc: 0x04, cdw10: 1 }), 0x10c],
    ];
    for (const [name, p, want] of cases) {
      const c = await p;
      assert.equal(c.status & 0x7ff, want, `${name}: status 0x${c.status.toString(16)}`);
      if (want !== 0x04) assert.ok(c.status & 0x4000, `${name}: DNR set`);
    }
    assert.ok(guards().equals(canary), 'nothing outside the maps was touched');
    // still working
    r.d.at(good, 4096).set(pattern(4096, 1));
    assert.equal((await r.d.rw('write', 1, 8, 8, { prp1: good })).status, 0);
    r.d.at(good, 4096).fill(0);
    assert.equal((await r.d.rw('read', 1, 8, 8, { prp1: good })).status, 0);
    assert.ok(Buffer.from(r.d.at(good, 4096)).equals(Buffer.from(pattern(4096, 1))));
  });

  test('queue create/delete: an SQ on a new CQ, I/O on it, delete SQ then CQ', async () => {
    await r.d.createQueuePair(7, 16, 1);
    const buf = r.d.alloc(4096);
    assert.equal((await r.d.rw('read', 7, 0, 8, { prp1: buf })).status, 0);
    await r.d.ok(ADMIN, { opc: 0x00, cdw10: 7 });
    await r.d.ok(ADMIN, { opc: 0x04, cdw10: 7 });
    assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x04, cdw10: 7 })), 0x101, 'already deleted');
  });

  test('bad register values: enabling with an unaligned admin queue sets CSTS.CFS; a reset clears it', async () => {
    await r.d.disable();
    await r.d.w64(0x28, r.d.iova + 512); // ASQ low bits are reserved: the register drops them
    await r.d.w32(0x24, 0); // AQA of one entry each: invalid
    await r.d.w32(0x14, (4 << 20) | (6 << 16) | 1);
    assert.equal((await r.d.r32(0x1c)) & 3, 2, 'CFS, not ready');
    await r.d.init({ queues: 1 });
    assert.equal((await r.d.r32(0x1c)) & 3, 1);
  });
});

describe('nvme: reset and re-initialization', () => {
  test('CC.EN 1 -> 0 deletes queues; re-init finds the data; FLR and DEVICE_RESET too; shutdown', async () => {
    const r = await rig({}, {}, { queues: 2 });
    try {
      const buf = r.d.alloc(4096);
      r.d.at(buf, 4096).set(pattern(4096, 3));
      assert.equal((await r.d.rw('write', 1, 16, 8, { prp1: buf })).status, 0);
      await r.d.disable();
      assert.equal((await r.d.r32(0x1c)) & 1, 0);
      await r.d.init({ queues: 2 });
      const back = r.d.alloc(4096);
      assert.equal((await r.d.rw('read', 2, 16, 8, { prp1: back })).status, 0);
      assert.ok(Buffer.from(r.d.at(back, 4096)).equals(Buffer.from(pattern(4096, 3))));
      // device reset from the client: registers back to power-on values
      await r.client.reset();
      assert.equal(await r.d.r32(0x14), 0);
      assert.equal(await r.d.r32(0x1c), 0);
      // FLR through the PCIe capability
      await r.client.writeConfig((await r.d.findCap(0x11)) + 3, Uint8Array.of(0x80)); // MSI-X back on after reset
      await r.d.init({ queues: 1 });
      const exp = await r.d.findCap(0x10);
      await r.client.writeConfig(exp + 9, Uint8Array.of(0x80)); // DEVCTL: initiate FLR
      assert.equal(await r.d.r32(0x14), 0, 'FLR reset the controller');
      await r.client.writeConfig((await r.d.findCap(0x11)) + 3, Uint8Array.of(0x80));
      await r.d.init({ queues: 1 });
      assert.equal((await r.d.rw('read', 1, 16, 8, { prp1: back })).status, 0);
      // normal shutdown
      await r.d.w32(0x14, (await r.d.r32(0x14)) | (1 << 14));
      assert.equal(((await r.d.r32(0x1c)) >> 2) & 3, 2, 'shutdown complete');
    } finally {
      await r.close();
    }
  });
});

describe('nvme: interrupt and DMA variants', () => {
  test('INTx when MSI-X is off', async () => {
    const r = await rig({}, { interrupts: 'intx' }, { queues: 1 });
    try {
      for (let i = 0; i < 20; i++) {
        const buf = r.d.alloc(4096);
        r.d.at(buf, 4096).set(pattern(4096, i));
        assert.equal((await r.d.rw('write', 1, i * 8, 8, { prp1: buf })).status, 0);
        const back = r.d.alloc(4096);
        assert.equal((await r.d.rw('read', 1, i * 8, 8, { prp1: back })).status, 0);
        assert.ok(Buffer.from(r.d.at(back, 4096)).equals(Buffer.from(pattern(4096, i))));
      }
      assert.ok((r.d.interrupts.get(0) ?? 0) > 0);
    } finally {
      await r.close();
    }
  });

  test('guest memory without an fd: everything by DMA_READ/DMA_WRITE messages', async () => {
    const r = await rig({}, { shared: false, memSize: 8 << 20 }, { queues: 1 });
    try {
      const pages = scatteredPages(r.d, 5);
      const data = pattern(5 * 4096, 42);
      scatter(r.d, pages, data);
      assert.equal((await r.d.rw('write', 1, 64, 40, r.d.prps(pages, 5 * 4096))).status, 0);
      const back = scatteredPages(r.d, 5);
      assert.equal((await r.d.rw('read', 1, 64, 40, r.d.prps(back, 5 * 4096))).status, 0);
      assert.ok(Buffer.from(gather(r.d, back, 5 * 4096)).equals(Buffer.from(data)));
      const chunks = [{ iova: r.d.alloc(1000, 8), len: 1000 }, { iova: r.d.alloc(3096, 8), len: 3096 }];
      assert.equal((await r.d.rw('read', 1, 64, 8, { sgl: r.d.sgl(chunks) })).status, 0);
      assert.ok(Buffer.from(r.d.at(chunks[0]!.iova, 1000)).equals(Buffer.from(data.subarray(0, 1000))));
      assert.equal((await r.d.rw('read', 1, 0, 8, { prp1: 0xdead0000 })).status & 0xff, 0x04, 'unmapped: Data Transfer Error');
      // deallocate: its ranges come by message too; blocks 64-65 read back as zeroes, 66 not
      assert.equal((await r.d.deallocate(1, [{ lba: 64, nlb: 2 }])).status, 0);
      assert.equal((await r.d.rw('read', 1, 64, 8, { prp1: back[0]! })).status, 0);
      assert.ok(r.d.at(back[0]!, 1024).every((x) => x === 0));
      assert.ok(Buffer.from(r.d.at(back[0]! + 1024, 512)).equals(Buffer.from(data.subarray(1024, 1536))));
      assert.equal(sc(await r.d.deallocate(1, [{ lba: r.d.nsBlocks, nlb: 1 }])), 0x80, 'out of range, by message');
    } finally {
      await r.close();
    }
  });

  test('guest memory without an fd: the SQ entries rung together come in one DMA_READ, their CQ entries go in one DMA_WRITE (and both wrap around the ring)', async () => {
    const reads: number[] = [];
    const cqeWrites: number[] = [];
    const r = await rig({}, { shared: false, memSize: 8 << 20 }, { queues: 1, depth: 8 }, {
      beforeDma: (kind, _iova, len) => void (kind === 'read' ? reads.push(len) : len < 4096 && cqeWrites.push(len)),
    });
    try {
      for (let k = 0; k < 8; k++) {
        const buf = r.d.alloc(4096);
        r.d.at(buf, 4096).set(pattern(4096, 700 + k));
        assert.equal((await r.d.rw('write', 1, 8 * k, 8, { prp1: buf })).status, 0);
      }
      // three rounds of 5 reads rung at once on an 8-entry ring: the second and third wrap
      for (let round = 0; round < 3; round++) {
        reads.length = 0;
        cqeWrites.length = 0;
        r.d.heldRings = [];
        const bufs = Array.from({ length: 5 }, () => r.d.alloc(4096));
        const done = bufs.map((b, i) => r.d.rw('read', 1, 8 * ((round + i) % 8), 8, { prp1: b }));
        r.d.releaseRings();
        for (const c of await Promise.all(done)) assert.equal(c.status, 0);
        bufs.forEach((b, i) => assert.ok(Buffer.from(r.d.at(b, 4096)).equals(Buffer.from(pattern(4096, 700 + ((round + i) % 8)))), `round ${round} read ${i}`));
        // reads by message: SQ entries only (the data goes by DMA_WRITE)
        assert.equal(reads.reduce((a, b) => a + b, 0), 5 * 64, `round ${round}: each entry fetched once`);
        assert.ok(reads.length <= 2, `round ${round}: ${reads.length} DMA_READs (${reads.join(', ')} bytes) for 5 entries rung together`);
        // the data went by 4 KiB DMA_WRITEs, the completions by the smaller ones
        assert.equal(cqeWrites.reduce((a, b) => a + b, 0), 5 * 16, `round ${round}: each CQ entry written once`);
        assert.ok(cqeWrites.length <= 2, `round ${round}: ${cqeWrites.length} CQ entry DMA_WRITEs (${cqeWrites.join(', ')} bytes) for 5 completions`);
      }
    } finally {
      await r.close();
    }
  });

  test('guest memory without an fd: a write waiting for its data does not hold up the commands after it; its completion comes when the data does', async () => {
    let holdAt = -1;
    let release: (() => void) | undefined;
    const r = await rig({}, { shared: false, memSize: 8 << 20 }, { queues: 1, depth: 8 }, {
      beforeDma: (kind, iova) => (kind === 'read' && iova === holdAt ? new Promise<void>((go) => (release = go)) : undefined),
    });
    try {
      const slow = r.d.alloc(4096);
      r.d.at(slow, 4096).set(pattern(4096, 801));
      const fast = r.d.alloc(4096);
      r.d.at(fast, 4096).set(pattern(4096, 802));
      holdAt = slow;
      const a = r.d.rw('write', 1, 0, 8, { prp1: slow });
      let aDone = false;
      void a.then(() => (aDone = true));
      await waitFor(() => release !== undefined, 'the slow write asked for its data');
      // submitted after it, completed before it
      assert.equal((await within(r.d.rw('write', 1, 8, 8, { prp1: fast }), 5000, 'the write after the held one')).status, 0);
      const back = r.d.alloc(4096);
      assert.equal((await within(r.d.rw('read', 1, 8, 8, { prp1: back }), 5000, 'a read after the held one')).status, 0);
      assert.ok(Buffer.from(r.d.at(back, 4096)).equals(Buffer.from(pattern(4096, 802))));
      assert.equal(aDone, false, 'the held write has not completed');
      release!();
      assert.equal((await within(a, 5000, 'the held write')).status, 0);
      assert.equal((await r.d.rw('read', 1, 0, 8, { prp1: back })).status, 0);
      assert.ok(Buffer.from(r.d.at(back, 4096)).equals(Buffer.from(pattern(4096, 801))));
    } finally {
      release?.();
      await r.close();
    }
  });

  test('mmap-ed doorbell page, polled', async () => {
    const r = await rig({ doorbells: 'mmap' }, { mmapDoorbells: true }, { queues: 2 });
    try {
      const regions = await r.client.regionInfo(0);
      assert.ok(regions.mappable);
      assert.deepEqual(regions.sparseAreas, [{ offset: 0x1000, size: 0x1000 }]);
      const jobs: Promise<unknown>[] = [];
      for (let k = 0; k < 40; k++) {
        const buf = r.d.alloc(4096);
        r.d.at(buf, 4096).set(pattern(4096, 500 + k));
        jobs.push(r.d.rw('write', 1 + (k % 2), 8 * k, 8, { prp1: buf }));
      }
      for (const c of await Promise.all(jobs)) assert.equal((c as { status: number }).status, 0);
      for (let k = 0; k < 40; k++) {
        const back = r.d.alloc(4096);
        assert.equal((await r.d.rw('read', 1, 8 * k, 8, { prp1: back })).status, 0);
        assert.ok(Buffer.from(r.d.at(back, 4096)).equals(Buffer.from(pattern(4096, 500 + k))));
      }
    } finally {
      await r.close();
    }
  });
});

describe('nvme: the doorbell poller across controller resets', () => {
  test('an idle poller (on its timer) stopped by a reset: the next enable polls again, and setImmediate still works', async () => {
    const r = await rig({ doorbells: 'mmap' }, { mmapDoorbells: true }, { queues: 1 });
    try {
      const io = async (k: number): Promise<void> => {
        const buf = r.d.alloc(4096);
        r.d.at(buf, 4096).set(pattern(4096, 900 + k));
        assert.equal((await within(r.d.rw('write', 1, 8 * k, 8, { prp1: buf }), 5000, `write ${k}`)).status, 0);
      };
      await io(0);
      // let the poller go idle and fall back to its timer (2,000 idle turns)
      await waitFor(() => !r.dev.pollStats.polling && r.dev.pollStats.pending, 'the poller idle on its timer');
      // as Linux does at probe: disable, enable, then I/O through the page
      await r.d.init({ queues: 1 });
      await io(1);
      let ran = false;
      setImmediate(() => (ran = true));
      await waitFor(() => ran, 'setImmediate callbacks still run in this process');
    } finally {
      await r.close();
    }
  });
});

describe('nvme: served by `vfio-user serve nvme` in a child process', () => {
  test('data written survives a SIGTERM and a restart of the server', async () => {
    const image = imagePath();
    let srv = await serveChild('nvme', [`--image=${image}`, '--size=8M']);
    assert.equal(statSync(image).size, 8 << 20, 'image created with --size');
    let client = await VfioUserClient.connect(srv.path);
    let d = await NvmeDriver.attach(client, { memSize: 8 << 20 });
    await d.init({ queues: 2 });
    const writes: [number, number][] = [];
    for (let k = 0; k < 64; k++) {
      const lba = ((k * 7919) % 2000) * 8;
      const buf = d.alloc(4096);
      d.at(buf, 4096).set(pattern(4096, 9000 + k));
      assert.equal((await d.rw('write', 1 + (k % 2), lba, 8, { prp1: buf })).status, 0);
      writes.push([lba, 9000 + k]);
    }
    d.close();
    client.close();
    assert.equal(await srv.stop(), 0, 'clean exit on SIGTERM');
    d.mem.free();
    // the image file has every write
    const img = readFileSync(image);
    const last = new Map(writes);
    for (const [lba, seed] of last) assert.ok(img.subarray(lba * 512, lba * 512 + 4096).equals(Buffer.from(pattern(4096, seed))), `lba ${lba} in the image`);
    // a new server on the same image serves the same data
    srv = await serveChild('nvme', [`--image=${image}`]);
    client = await VfioUserClient.connect(srv.path);
    d = await NvmeDriver.attach(client, { memSize: 8 << 20 });
    await d.init({ queues: 1 });
    assert.equal(d.nsBlocks, (8 << 20) / 512);
    for (const [lba, seed] of last) {
      const buf = d.alloc(4096);
      assert.equal((await d.rw('read', 1, lba, 8, { prp1: buf })).status, 0);
      assert.ok(Buffer.from(d.at(buf, 4096)).equals(Buffer.from(pattern(4096, seed))), `lba ${lba} after restart`);
    }
    d.close();
    client.close();
    assert.equal(await srv.stop(), 0);
    d.mem.free();
  });
});
