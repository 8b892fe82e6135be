/**
 * The DMA controller on its own: windows beyond 4 GiB, one mapping per file, bounds,
 * permissions, pins, the 65,535-map case, dirty logging rules.
 */
import { test } from 'node:test';
import { openSync, closeSync, writeFileSync, rmSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import assert from 'node:assert/strict';
import { DmaController, DmaError, WINDOW } from '../../src/server/dma.js';
import { native } from '../../src/native/index.js';
import { openFds, cpuMs } from '../helpers.js';

function memfd(size: number): number {
  const fd = native.memfdCreate('dma-test');
  native.ftruncate(fd, size);
  return fd;
}

test('a 5 GiB file is mapped in windows; views cross window boundaries', async () => {
  const size = 5 * 1024 * 1024 * 1024;
  const fd = memfd(size);
  const dma = new DmaController();
  dma.map(0x1_0000_0000, size, 3, native.dup(fd), 0);
  // write across the 4 GiB boundary of the file (and a window boundary)
  const at = 0x1_0000_0000 + 4 * WINDOW - 3;
  const views = dma.views(at, 8, true);
  assert.equal(views.length, 2, 'split at the window boundary');
  dma.writeSync(at, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
  assert.deepEqual([...dma.readSync(at, 8)], [1, 2, 3, 4, 5, 6, 7, 8]);
  // another mapping of the same file sees it: check through a second controller
  const other = new DmaController();
  other.map(0, 8192, 1, native.dup(fd), 4 * WINDOW - 4096);
  assert.deepEqual([...other.readSync(4096 - 3, 8)], [1, 2, 3, 4, 5, 6, 7, 8]);
  await other.unmapAll();
  await dma.unmapAll();
  native.close(fd);
});

test('maps of one file share one mapping, released with the last map; fds are not leaked', async () => {
  const before = openFds();
  const fd = memfd(1 << 20);
  const dma = new DmaController();
  for (let i = 0; i < 16; i++) dma.map(i * 0x10000, 0x10000, 3, native.dup(fd), i * 0x10000);
  assert.equal(dma.fileCount, 1);
  assert.equal(openFds(), before + 2, 'our fd and the one kept by the controller');
  for (let i = 0; i < 15; i++) await dma.unmap(i * 0x10000, 0x10000);
  assert.equal(dma.fileCount, 1);
  await dma.unmap(15 * 0x10000, 0x10000);
  assert.equal(dma.fileCount, 0);
  assert.equal(dma.idleFileCount, 1, 'the mapping is kept for the next map of the same file');
  dma.map(0, 0x10000, 3, native.dup(fd), 0);
  assert.equal(dma.idleFileCount, 0, 'and reused');
  await dma.unmapAll();
  assert.equal(dma.idleFileCount, 0, 'unmap-all releases everything');
  native.close(fd);
  assert.equal(openFds(), before);
});

test('bounds, permissions, overlaps, files shorter than the map', async () => {
  const fd = memfd(1 << 16);
  const dma = new DmaController();
  dma.map(0x1000, 0x4000, 1, native.dup(fd), 0); // read-only
  assert.throws(() => dma.map(0x4000, 0x1000, 3, native.dup(fd), 0), (e) => e instanceof DmaError && e.errno === 17);
  assert.throws(() => dma.map(0x10000, 0x20000, 3, native.dup(fd), 0), (e) => e instanceof DmaError && e.errno === 22, 'past end of file');
  assert.throws(() => dma.map(0x10000, 0x1000, 3, native.dup(fd), 100), (e) => e instanceof DmaError && e.errno === 22, 'unaligned offset');
  assert.throws(() => dma.map(0x10000, 0, 3, native.dup(fd), 0), (e) => e instanceof DmaError && e.errno === 22, 'size 0');
  assert.throws(() => dma.views(0x1000, 16, true), (e) => e instanceof DmaError && e.errno === 14, 'write to a read-only map');
  assert.throws(() => dma.views(0xfff, 2), (e) => e instanceof DmaError && e.errno === 14, 'starts before the map');
  assert.throws(() => dma.views(0x4ff0, 0x20), (e) => e instanceof DmaError && e.errno === 14, 'runs past the map');
  assert.throws(() => dma.views(-1, 1), DmaError);
  assert.throws(() => dma.views(2 ** 60, 1), DmaError);
  assert.equal(dma.readSync(0x1000, 4).length, 4);
  // message-only maps cannot be viewed
  dma.map(0x100000, 0x1000, 3, undefined, 0);
  assert.throws(() => dma.views(0x100000, 4), (e) => e instanceof DmaError && e.errno === 14);
  await assert.rejects(dma.read(0x100000, 4), (e) => e instanceof DmaError, 'no messenger: no client');
  await dma.unmapAll();
  native.close(fd);
});

test('unmap waits for pinned (in-flight) DMA', async () => {
  const fd = memfd(1 << 16);
  const dma = new DmaController();
  dma.map(0, 0x10000, 3, native.dup(fd), 0);
  const pin = dma.pin(0x100, 16, true);
  let done = false;
  const p = dma.unmap(0, 0x10000).then(() => (done = true));
  await new Promise((r) => setImmediate(r)); // a whole turn: an unmap that did not wait would have settled
  assert.equal(done, false, 'unmap waits');
  assert.throws(() => dma.views(0x100, 1), DmaError, 'no new access starts on a map being removed');
  pin.release();
  await p;
  assert.equal(done, true);
  native.close(fd);
});

test('65,535 maps: map, translate and unmap stay fast', async () => {
  const fd = memfd(65535 * 4096);
  const dma = new DmaController();
  const t0 = cpuMs();
  for (let i = 0; i < 65535; i++) dma.map(i * 8192, 4096, 3, native.dup(fd), i * 4096);
  const tMap = cpuMs() - t0;
  assert.equal(dma.count, 65535);
  assert.throws(() => dma.map(65535 * 8192, 4096, 3, native.dup(fd), 0), (e) => e instanceof DmaError && e.errno === 28, 'the limit holds');
  const t1 = cpuMs();
  for (let i = 0; i < 200000; i++) dma.views(((i * 7919) % 65535) * 8192 + 8, 8);
  const tLookup = (cpuMs() - t1) / 200000;
  assert.ok(tLookup < 20e-3, `translate ${tLookup * 1e6} ns`);
  assert.ok(tMap < 5000, `65,535 maps took ${tMap} ms`);
  assert.throws(() => dma.views(4096, 8), DmaError, 'the gaps are not mapped');
  await dma.unmapAll();
  assert.equal(dma.fileCount, 0);
  native.close(fd);
});

test('dirty logging: only logged ranges, bits cleared when reported, invalid requests refused', () => {
  const fd = memfd(1 << 20);
  const dma = new DmaController();
  dma.map(0, 1 << 20, 3, native.dup(fd), 0);
  assert.throws(() => dma.report(0, 4096, 4096), DmaError, 'not started');
  assert.throws(() => dma.startLogging(1000, [{ iova: 0, length: 4096 }]), DmaError, 'page size must be a power of two');
  assert.throws(() => dma.startLogging(4096, [{ iova: 0, length: 8192 }, { iova: 4096, length: 4096 }]), DmaError, 'overlapping ranges');
  dma.startLogging(4096, [{ iova: 0x10000, length: 0x10000 }]);
  assert.throws(() => dma.startLogging(4096, [{ iova: 0, length: 4096 }]), DmaError, 'already started');
  dma.writeSync(0x100, Uint8Array.of(1)); // outside the logged range: not logged
  dma.writeSync(0x10000 + 4096 * 3 + 5, Uint8Array.of(1));
  dma.markDirty(0x10000 + 4096 * 9, 4097);
  const bm = dma.report(0x10000, 0x10000, 4096);
  assert.equal(bm.length, 8);
  assert.equal(new DataView(bm.buffer).getBigUint64(0, true), (1n << 3n) | (1n << 9n) | (1n << 10n));
  assert.equal(new DataView(dma.report(0x10000, 0x10000, 4096).buffer).getBigUint64(0, true), 0n);
  assert.throws(() => dma.report(0, 0x10000, 4096), DmaError, 'outside the logged ranges');
  // a finer report page replicates the logged page's bit
  dma.markDirty(0x10000, 1);
  const fine = dma.report(0x10000, 8192, 1024);
  assert.equal(fine[0], 0x0f);
  dma.stopLogging();
  assert.throws(() => dma.stopLogging(), DmaError);
  void dma.unmapAll();
  native.close(fd);
});

test('mapped memfds are sealed against shrinking; unsealable files are flagged or refused', async () => {
  const fd = memfd(1 << 16);
  const dma = new DmaController({ requireSealed: false });
  const r = dma.map(0, 1 << 16, 3, native.dup(fd), 0);
  assert.equal(r.sealed, true);
  assert.throws(() => native.ftruncate(fd, 4096), (e) => (e as { code?: string }).code === 'EPERM', 'the client can no longer shrink it');
  native.ftruncate(fd, 1 << 17); // growing is still fine
  dma.writeSync(0xfff0, new Uint8Array(16).fill(1));
  const path = join(tmpdir(), `vfu-dma-${process.pid}.bin`);
  writeFileSync(path, new Uint8Array(1 << 16));
  const ffd = openSync(path, 'r+');
  const r2 = dma.map(0x100000, 1 << 16, 3, native.dup(ffd), 0);
  assert.equal(r2.sealed, false, 'a regular file cannot be sealed');
  assert.throws(() => dma.views(0x100000, 16), (e) => e instanceof DmaError && e.errno === 14, 'no direct views of it');
  dma.writeSync(0x100000 + 5, Uint8Array.of(1, 2, 3)); // copies work
  assert.deepEqual([...dma.readSync(0x100000 + 4, 5)], [0, 1, 2, 3, 0]);
  assert.equal(dma.isShared(0x100000, 16), false);
  const strict = new DmaController(); // refuses by default
  assert.throws(() => strict.map(0, 4096, 3, native.dup(ffd), 0), (e) => e instanceof DmaError && e.errno === 1);
  strict.map(0, 4096, 3, native.dup(fd), 0);
  // the client truncates it: accesses fail (EFAULT) instead of killing the process (SIGBUS)
  ftruncateSync(ffd, 0);
  assert.throws(() => dma.readSync(0x100000, 16), (e) => e instanceof DmaError && e.errno === 14);
  assert.throws(() => dma.writeSync(0x100000, new Uint8Array(16)), (e) => e instanceof DmaError && e.errno === 14);
  await assert.rejects(dma.read(0x100000, 16), (e) => e instanceof DmaError && e.errno === 14);
  assert.equal(dma.readSync(0xfff0, 1)[0], 1, 'the sealed map is untouched');
  await strict.unmapAll();
  await dma.unmapAll();
  closeSync(ffd);
  rmSync(path);
  native.close(fd);
});

test('64-bit IOVAs: maps up to 2^64, bigint accesses with byte offsets, messages, dirty logging', async () => {
  const fd = memfd(1 << 20);
  const dma = new DmaController();
  const hi = 0xffffffff01100000n;
  dma.map(hi, 0x10000, 3, native.dup(fd), 0x10000);
  dma.map(hi + 0x10000n, 0x10000, 3, native.dup(fd), 0x40000); // adjacent, elsewhere in the file
  dma.map(2n ** 64n - 0x2000n, 0x2000, 3, undefined, 0); // message-only, ends at 2^64
  assert.throws(() => dma.map(2n ** 64n - 0x1000n, 0x2000, 3, undefined, 0), (e) => e instanceof DmaError && e.errno === 22, 'past 2^64');
  assert.throws(() => dma.map(2n ** 60n + 1n, 0x1000, 3, undefined, 0), (e) => e instanceof DmaError && e.errno === 22, 'unaligned above 2^53');
  const across = dma.map(2 ** 53 - 0x1000, 0x3000, 3, undefined, 0); // crossing 2^53 is fine when aligned
  assert.equal(dma.regionAt(2n ** 53n + 5n), across);
  assert.equal(dma.regionAt(2 ** 53 - 1), across);
  // a write across the two maps, at a byte offset: two views, two places in the file
  dma.writeSync(hi + 0xfffdn, Uint8Array.of(1, 2, 3, 4, 5, 6));
  assert.deepEqual([...dma.readSync(hi + 0xfffdn, 6)], [1, 2, 3, 4, 5, 6]);
  const check = new DmaController();
  check.map(0, 1 << 20, 1, native.dup(fd), 0);
  assert.deepEqual([...check.readSync(0x1fffd, 3)], [1, 2, 3]);
  assert.deepEqual([...check.readSync(0x40000, 3)], [4, 5, 6]);
  await check.unmapAll();
  assert.equal(dma.regionAt(hi + 0x10000n)!.fileOffset, 0x40000);
  assert.equal(dma.regionAt(hi - 1n), undefined);
  // numbers above 2^53 are not exact addresses: refused, never rounded
  assert.throws(() => dma.views(Number(hi) + 5, 1), (e) => e instanceof DmaError && e.errno === 14);
  assert.throws(() => dma.views(2n ** 64n, 1), (e) => e instanceof DmaError && e.errno === 14);
  assert.throws(() => dma.views(hi + 0x20000n - 2n, 4), (e) => e instanceof DmaError && e.errno === 14, 'runs past the maps');
  // message-only memory at the top: the messenger gets exact bigint addresses
  const seen: bigint[] = [];
  dma.setMessenger({
    maxTransfer: 4096,
    read: async (iova, n) => (seen.push(iova), new Uint8Array(n).fill(7)),
    write: async (iova) => void seen.push(iova),
  });
  assert.deepEqual([...(await dma.read(2n ** 64n - 0x1003n, 3))], [7, 7, 7]);
  await dma.write(2n ** 64n - 0x2000n + 0xffen, new Uint8Array(4)); // split at maxTransfer
  assert.deepEqual(seen, [2n ** 64n - 0x1003n, 2n ** 64n - 0x2000n + 0xffen]);
  // dirty logging of a range above 2^53
  dma.startLogging(4096, [{ iova: hi, length: 0x20000n }]);
  dma.writeSync(hi + 0x10ffen, Uint8Array.of(1, 1, 1, 1)); // pages 0x10 and 0x11
  const bm = dma.report(hi, 0x20000n, 4096);
  assert.deepEqual([...bm], [0, 0, 0b11, 0, 0, 0, 0, 0], 'pages 16 and 17 dirty, nothing else');
  dma.stopLogging();
  await dma.unmapAll();
  native.close(fd);
});

test('unmap ranges as Linux VFIO type1: several maps, none, or refused when cutting one', async () => {
  const fd = memfd(1 << 20);
  const dma = new DmaController();
  for (let i = 0; i < 8; i++) dma.map(0x100000 + i * 0x10000, 0x8000, 3, native.dup(fd), i * 0x8000);
  assert.deepEqual((await dma.unmap(0, 0x100000)).length, 0, 'covering none');
  await assert.rejects(dma.unmap(0x100000, 0x4000), (e) => e instanceof DmaError && e.errno === 22, 'cuts the first map');
  await assert.rejects(dma.unmap(0x104000, 0x10000), (e) => e instanceof DmaError && e.errno === 22, 'starts inside a map');
  await assert.rejects(dma.unmap(0x0f0000, 0x14000), (e) => e instanceof DmaError && e.errno === 22, 'ends inside a map');
  assert.equal(dma.count, 8, 'a refused unmap removes nothing');
  const gone = await dma.unmap(0x0f0000, 0x38000); // [0xf0000, 0x128000): the maps at 0x100000..0x120000
  assert.deepEqual(gone.map((r) => r.iova), [0x100000, 0x110000, 0x120000]);
  await dma.unmap(0, 2n ** 64n - 0x1000n);
  assert.equal(dma.count, 0);
  assert.equal(dma.fileCount, 0);
  native.close(fd);
});

test('map storms in the controller: any order, accesses to every map with bounded windows, fast teardown', async (t) => {
  const fd = memfd(0);
  native.ftruncate(fd, 65536 * WINDOW); // sparse
  const dma = new DmaController({ windows: { softCount: 64, softBytes: 2 ** 40, hardCount: 256, hardBytes: 2 ** 44 } });
  const t0 = cpuMs();
  for (let i = 65534; i >= 0; i--) dma.map(i * 0x10000, 4096, 3, native.dup(fd), i * WINDOW); // descending IOVAs
  const tMap = cpuMs() - t0;
  assert.equal(dma.windowStats.count, 0, 'maps cost no mmap');
  // the device touches 2,048 of them, a turn of the event loop every 64: windows stay bounded
  let max = 0;
  for (let i = 0; i < 2048; i++) {
    const at = ((i * 31) % 65535) * 0x10000;
    dma.writeSync(at + 8, Uint8Array.of(i & 255, 1));
    assert.equal(dma.readSync(at + 8, 1)[0], i & 255);
    max = Math.max(max, dma.windowStats.count);
    if (i % 64 === 63) await new Promise((r) => setImmediate(r));
  }
  assert.ok(max <= 128, `at most ${max} windows at once`);
  assert.ok(dma.windowStats.bytes <= 128 * 2 * 1024 * 1024, 'small windows for small maps');
  // within one turn, past the hard limit: ENOMEM for the access, never more mappings
  let refused = 0;
  for (let i = 0; i < 400; i++) {
    try {
      dma.views(i * 97 * 0x10000, 16);
    } catch (e) {
      assert.ok(e instanceof DmaError && e.errno === 12);
      refused++;
    }
  }
  assert.ok(refused > 0 && dma.windowStats.count <= 256, `${refused} refused, ${dma.windowStats.count} windows`);
  await new Promise((r) => setImmediate(r));
  assert.ok(dma.windowStats.count <= 64, 'trimmed at the next turn');
  // the data is in the file: another controller sees it
  const other = new DmaController();
  other.map(0, 4096, 1, native.dup(fd), 31 * WINDOW);
  assert.deepEqual([...other.readSync(8, 2)], [1, 1]);
  await other.unmapAll();
  // pinned maps keep their windows through trims
  const pin = dma.pin(5 * 0x10000, 16, true);
  const v = dma.views(5 * 0x10000, 16, true)[0]!;
  for (let i = 0; i < 200; i++) if (i % 3 === 0) dma.readSync(i * 13 * 0x10000, 1);
  await new Promise((r) => setImmediate(r));
  v[0] = 0x5a; // still mapped
  pin.release();
  assert.equal(dma.readSync(5 * 0x10000, 1)[0], 0x5a);
  // individual unmaps, in another order, then the rest at once
  const t1 = cpuMs();
  for (let i = 0; i < 32768; i++) await dma.unmap(i * 2 * 0x10000, 4096);
  const tUnmap = cpuMs() - t1;
  const t2 = cpuMs();
  await dma.unmapAll();
  const tAll = cpuMs() - t2;
  assert.equal(dma.count, 0);
  assert.equal(dma.windowStats.count, 0);
  t.diagnostic(`CPU time: 65,535 maps (descending) ${tMap.toFixed(0)} ms; 32,768 single unmaps ${tUnmap.toFixed(0)} ms; unmap-all of 32,767 ${tAll.toFixed(0)} ms`);
  assert.ok(tMap < 20000 && tUnmap < 20000, 'seconds, not minutes');
  assert.ok(tAll < 1000, `teardown ${tAll} ms`);
  native.close(fd);
});

test('a window grows when a later map of its file needs more; the old one stays valid for the turn', async () => {
  const fd = memfd(64 << 20);
  const dma = new DmaController();
  dma.map(0, 4096, 3, native.dup(fd), 0);
  const small = dma.views(0, 16, true)[0]!;
  assert.equal(dma.windowStats.count, 1);
  assert.ok(dma.windowStats.bytes <= 2 << 20);
  dma.map(0x10000000, 4096, 3, native.dup(fd), 60 << 20); // same file, 60 MiB further: same slot
  dma.writeSync(0x10000000, Uint8Array.of(7));
  assert.equal(dma.windowStats.count, 2, 'a larger window, and the old one until the turn ends');
  small[0] = 9; // still mapped in this turn
  assert.equal(dma.readSync(0, 1)[0], 9, 'both views see the same file');
  await new Promise((r) => setImmediate(r));
  assert.equal(dma.windowStats.count, 1, 'the old window is gone at the next turn');
  assert.equal(small.length, 0, 'and its views are detached, never dangling');
  await dma.unmapAll();
  native.close(fd);
});
