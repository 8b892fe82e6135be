/**
 * virtio-blk over vfio-user, driven by the test kit's virtio driver (no QEMU): the PCI
 * transport as Linux finds it, feature negotiation, MSI-X per queue and INTx with the ISR,
 * every request type on a real image file (checked on the host), read-only mode, event index
 * and interrupt suppression, DMA messages, broken requests, and reset.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserServer } from '../../src/server/server.js';
import { VirtioBlkDevice, BlkFeature, BlkType, BlkStatus, BlkConfig } from '../../src/devices/virtio/index.js';
import { CapType, Common, Status, Feature, bit, Desc } from '../../src/devices/virtio/constants.js';
import { VirtioDriver, BlkDriver, pattern } from '../../src/testing/index.js';
import { serveChild, sockPath, CLI, waitFor, delay } from '../helpers.js';


function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'vfu-virtio-'));
}

/** An in-process device and server, for tests that look inside the device. */
function serveInProcess(o: ConstructorParameters<typeof VirtioBlkDevice>[0]): { dev: VirtioBlkDevice; server: VfioUserServer; path: string; close(): void } {
  const dev = new VirtioBlkDevice({ log: () => {}, ...o });
  const server = new VfioUserServer(dev);
  const path = sockPath('virtio-blk');
  server.listen(path);
  return { dev, server, path, close: () => (server.close(), dev.destroy()) };
}

test('virtio-blk (CLI, two processes): PCI identity, capabilities, features, every request type on an image, multi-queue MSI-X', async (t) => {
  const dir = tmp();
  const image = join(dir, 'disk.img');
  const srv = await serveChild('virtio-blk', [`--image=${image}`, '--size=8M', '--queues=2', '--serial=DISK-1'], {});
  const client = await VfioUserClient.connect(srv.path);
  const d = await VirtioDriver.attach(client);
  try {
    assert.ok(existsSync(image) && statSync(image).size === 8 << 20, 'the image is created with --size');
    const cfg = await client.readConfig(0, 64);
    const cv = new DataView(cfg.buffer, cfg.byteOffset, 64);
    assert.equal(cv.getUint16(0, true), 0x1af4, 'virtio vendor');
    assert.equal(cv.getUint16(2, true), 0x1042, 'modern virtio-blk device ID');
    assert.ok(cfg[8]! >= 1, 'revision 1 or more');
    // the structures Linux maps: all in a 64-bit memory BAR, inside it, PCI_CFG present
    for (const type of [CapType.COMMON, CapType.NOTIFY, CapType.ISR, CapType.DEVICE]) {
      const c = d.caps.get(type)!;
      const info = await client.regionInfo(c.bar);
      assert.ok(c.offset + c.length <= info.size, `capability ${type} inside BAR${c.bar}`);
    }
    assert.equal(d.caps.get(CapType.NOTIFY)!.multiplier, 4);
    assert.ok(d.caps.has(CapType.PCI_CFG), 'PCI_CFG capability');
    const bar = (await client.readConfig(0x10 + 4 * d.caps.get(CapType.COMMON)!.bar, 4))[0]!;
    assert.equal(bar & 0x7, 0x4, 'BAR4 is 64-bit memory');

    const offered = await d.readDeviceFeatures();
    for (const f of [Feature.VERSION_1, Feature.RING_EVENT_IDX, Feature.RING_INDIRECT_DESC, Feature.ACCESS_PLATFORM, BlkFeature.FLUSH, BlkFeature.MQ, BlkFeature.DISCARD, BlkFeature.WRITE_ZEROES, BlkFeature.BLK_SIZE, BlkFeature.SEG_MAX]) {
      assert.ok(offered & bit(f), `feature ${f} offered`);
    }
    assert.equal(offered & bit(BlkFeature.RO), 0n);
    assert.equal(await d.readCommon(Common.NUM_QUEUES, 2), 2);

    await d.init();
    const blk = new BlkDriver(d);
    assert.equal(await blk.capacity(), (8 << 20) / 512);
    const nqb = await d.readDeviceConfig(BlkConfig.NUM_QUEUES, 2);
    const nq = nqb[0]! | (nqb[1]! << 8);
    assert.equal(nq, 2);

    // writes on both queues, direct and indirect, scattered over several buffers
    const data = pattern(64 * 1024, 7);
    const bufs = [0, 1, 2, 3].map((i) => {
      const b = d.alloc(16384);
      d.at(b, 16384).set(data.subarray(i * 16384, (i + 1) * 16384));
      return { iova: b, len: 16384 };
    });
    let r = await blk.write(0, 100, bufs);
    assert.deepEqual(r, { status: BlkStatus.OK, used: 1 });
    r = await blk.write(1, 1000, bufs.slice(0, 2), { indirect: true });
    assert.equal(r.status, BlkStatus.OK);
    const rb = d.alloc(64 * 1024);
    r = await blk.read(1, 100, [{ iova: rb, len: 4096 }, { iova: rb + 4096, len: 60 * 1024 }], { indirect: true });
    assert.deepEqual(r, { status: BlkStatus.OK, used: 64 * 1024 + 1 });
    assert.ok(Buffer.from(d.at(rb, 64 * 1024)).equals(Buffer.from(data)), 'read back what was written');
    r = await blk.flush(0);
    assert.equal(r.status, BlkStatus.OK);
    // on the host: the image has the data (flush made it durable; it is in the file either way)
    const img = readFileSync(image);
    assert.ok(img.subarray(100 * 512, 100 * 512 + data.length).equals(Buffer.from(data)));
    assert.ok(img.subarray(1000 * 512, 1000 * 512 + 32768).equals(Buffer.from(data.subarray(0, 32768))));

    const id = await blk.getId(0);
    assert.equal(id.r.status, BlkStatus.OK);
    assert.equal(id.id, 'DISK-1');

    r = await blk.ranges(0, BlkType.WRITE_ZEROES, [{ sector: 100, count: 8 }, { sector: 1000, count: 8, flags: 1 }]);
    assert.equal(r.status, BlkStatus.OK);
    r = await blk.ranges(1, BlkType.DISCARD, [{ sector: 108, count: 8 }]);
    assert.equal(r.status, BlkStatus.OK);
    r = await blk.ranges(1, BlkType.DISCARD, [{ sector: 108, count: 8, flags: 1 }]);
    assert.equal(r.status, BlkStatus.UNSUPP, 'discard with the unmap flag is unsupported');
    r = await blk.ranges(1, BlkType.WRITE_ZEROES, [{ sector: 0, count: 8, flags: 2 }]);
    assert.equal(r.status, BlkStatus.UNSUPP, 'unknown flags are unsupported');
    const img2 = readFileSync(image);
    assert.ok(img2.subarray(100 * 512, 116 * 512).every((b) => b === 0), 'zeroed and discarded sectors read as zeroes');
    assert.ok(img2.subarray(116 * 512, 124 * 512).equals(Buffer.from(data.subarray(16 * 512, 24 * 512))), 'the rest is untouched');

    // errors that are failed requests
    r = await blk.read(0, (8 << 20) / 512 - 1, [{ iova: rb, len: 1024 }]);
    assert.equal(r.status, BlkStatus.IOERR, 'beyond the capacity');
    r = await blk.read(0, 0, [{ iova: rb, len: 100 }]);
    assert.equal(r.status, BlkStatus.IOERR, 'not a whole sector');
    r = await blk.request(0, 99, 0);
    assert.equal(r.status, BlkStatus.UNSUPP, 'unknown request type');
    r = await blk.read(0, 0, [{ iova: d.iova - 4096, len: 512 }]);
    assert.equal(r.status, BlkStatus.IOERR, 'data outside the maps');
    r = await blk.write(0, 0, [{ iova: d.iova + d.mem.size, len: 512 }]);
    assert.equal(r.status, BlkStatus.IOERR, 'data outside the maps');

    // interrupts: one vector per queue, and no config interrupts
    assert.ok((d.interrupts.get(1) ?? 0) > 0 && (d.interrupts.get(2) ?? 0) > 0, `MSI-X per queue ${JSON.stringify([...d.interrupts])}`);
    assert.equal(d.configInterrupts, 0);
    assert.equal(await d.status(), Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
    t.diagnostic(`notifications ${d.notifies}, suppressed by event index ${d.suppressed}`);
  } finally {
    d.close();
    client.close();
    d.mem.free();
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('virtio-blk: feature negotiation rules (VERSION_1 required, nothing not offered), and driver features read back', async () => {
  const s = serveInProcess({ size: 1 << 20 });
  const client = await VfioUserClient.connect(s.path);
  const d = await VirtioDriver.attach(client);
  try {
    const offered = await d.readDeviceFeatures();
    const tryFeatures = async (f: bigint): Promise<boolean> => {
      await d.reset();
      await d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER);
      await d.writeDriverFeatures(f);
      await d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
      return ((await d.status()) & Status.FEATURES_OK) !== 0;
    };
    assert.equal(await tryFeatures(offered & ~bit(Feature.VERSION_1)), false, 'legacy (no VERSION_1) refused');
    assert.equal(await tryFeatures(offered | bit(Feature.RING_PACKED)), false, 'a feature not offered is refused');
    assert.equal(await tryFeatures(bit(Feature.VERSION_1)), true, 'the minimum is accepted');
    // features cannot change after FEATURES_OK
    await d.writeCommon(Common.DRIVER_FEATURE_SELECT, 4, 0);
    await d.writeCommon(Common.DRIVER_FEATURE, 4, 0xffff);
    assert.equal(await d.readCommon(Common.DRIVER_FEATURE, 4), 0);
    // DRIVER_OK without FEATURES_OK does not stick
    await d.reset();
    await d.setStatus(Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK);
    assert.equal((await d.status()) & Status.DRIVER_OK, 0);
    // a vector that does not exist reads back NO_VECTOR
    await d.writeCommon(Common.CONFIG_MSIX_VECTOR, 2, 50);
    assert.equal(await d.readCommon(Common.CONFIG_MSIX_VECTOR, 2), 0xffff);
    // a queue past num_queues has size 0
    await d.writeCommon(Common.QUEUE_SELECT, 2, 5);
    assert.equal(await d.readCommon(Common.QUEUE_SIZE, 2), 0);
  } finally {
    d.close();
    client.close();
    d.mem.free();
    s.close();
  }
});

test('virtio-blk: INTx with the ISR when MSI-X is off, DMA messages when memory is not shared', async () => {
  const s = serveInProcess({ size: 4 << 20 });
  for (const mode of [{ interrupts: 'intx' as const, shared: true }, { interrupts: 'msix' as const, shared: false }, { interrupts: 'intx' as const, shared: false }]) {
    const client = await VfioUserClient.connect(s.path);
    const d = await VirtioDriver.attach(client, { ...mode, memSize: 4 << 20 });
    try {
      await d.init({ size: 64 });
      const blk = new BlkDriver(d);
      const b = d.alloc(8192);
      d.at(b, 8192).set(pattern(8192, 3));
      assert.equal((await blk.write(0, 8, [{ iova: b, len: 8192 }])).status, BlkStatus.OK);
      const rb = d.alloc(8192);
      assert.equal((await blk.read(0, 8, [{ iova: rb, len: 4096 }, { iova: rb + 4096, len: 4096 }], { indirect: true })).status, BlkStatus.OK);
      assert.ok(Buffer.from(d.at(rb, 8192)).equals(Buffer.from(pattern(8192, 3))), `${JSON.stringify(mode)}: data`);
      assert.ok((d.interrupts.get(mode.interrupts === 'intx' ? 0 : 1) ?? 0) > 0, `${JSON.stringify(mode)}: interrupts`);
      if (mode.interrupts === 'intx') assert.equal(await d.readIsr(), 0, 'the ISR was read (and cleared) by the handler');
      // a large transfer (several DMA messages when memory is not shared)
      const big = d.alloc(256 * 1024);
      d.at(big, 256 * 1024).set(pattern(256 * 1024, 5));
      assert.equal((await blk.write(0, 64, [{ iova: big, len: 256 * 1024 }])).status, BlkStatus.OK);
      d.at(big, 256 * 1024).fill(0);
      assert.equal((await blk.read(0, 64, [{ iova: big, len: 256 * 1024 }])).status, BlkStatus.OK);
      assert.ok(Buffer.from(d.at(big, 256 * 1024)).equals(Buffer.from(pattern(256 * 1024, 5))), `${JSON.stringify(mode)}: 256 KiB`);
    } finally {
      d.close();
      await d.reset().catch(() => {});
      client.close();
      d.mem.free();
    }
  }
  s.close();
});

test('virtio-blk: read-only disk fails writes with IOERR (image untouched), discard is unsupported', async () => {
  const dir = tmp();
  const image = join(dir, 'ro.img');
  writeFileSync(image, Buffer.from(pattern(1 << 20, 11)));
  const srv = await serveChild('virtio-blk', [`--image=${image}`, '--read-only']);
  const client = await VfioUserClient.connect(srv.path);
  const d = await VirtioDriver.attach(client);
  try {
    await d.init();
    assert.ok(d.features & bit(BlkFeature.RO), 'RO negotiated');
    assert.equal(d.features & (bit(BlkFeature.DISCARD) | bit(BlkFeature.WRITE_ZEROES)), 0n, 'discard and write zeroes not offered');
    const blk = new BlkDriver(d);
    const b = d.alloc(4096);
    assert.equal((await blk.read(0, 0, [{ iova: b, len: 4096 }])).status, BlkStatus.OK);
    assert.ok(Buffer.from(d.at(b, 4096)).equals(Buffer.from(pattern(1 << 20, 11).subarray(0, 4096))));
    d.at(b, 4096).fill(0xee);
    assert.equal((await blk.write(0, 0, [{ iova: b, len: 4096 }])).status, BlkStatus.IOERR);
    assert.equal((await blk.ranges(0, BlkType.DISCARD, [{ sector: 0, count: 8 }])).status, BlkStatus.UNSUPP);
    assert.equal((await blk.ranges(0, BlkType.WRITE_ZEROES, [{ sector: 0, count: 8 }])).status, BlkStatus.UNSUPP);
    assert.equal((await blk.flush(0)).status, BlkStatus.OK);
    assert.ok(readFileSync(image).equals(Buffer.from(pattern(1 << 20, 11))), 'the image is unchanged');
  } finally {
    d.close();
    client.close();
    d.mem.free();
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('virtio-blk: event index (avail_event published, used_event honoured) and NO_INTERRUPT without it', async () => {
  const s = serveInProcess({ size: 1 << 20 });
  const client = await VfioUserClient.connect(s.path);
  const d = await VirtioDriver.attach(client);
  try {
    await d.init({ size: 16 });
    const blk = new BlkDriver(d);
    assert.ok(d.eventIdx);
    const q = d.queues[0]!;
    const b = d.alloc(4096);
    for (let i = 0; i < 5; i++) assert.equal((await blk.read(0, i, [{ iova: b, len: 512 }])).status, BlkStatus.OK);
    // once it stops looking at the ring (the poll window after the last request) the device
    // asks to be notified at the next available entry
    await waitFor(() => q.availEvent() === q.availIdx, 'avail_event at the next available entry');
    // used_event far ahead: the device completes without interrupting
    const before = d.interrupts.get(1) ?? 0;
    q.setUsedEvent((q.lastUsed + 100) & 0xffff);
    const p = blk.read(0, 0, [{ iova: b, len: 512 }]);
    await waitFor(() => q.usedIdx() === ((q.lastUsed + 1) & 0xffff), 'the used entry');
    await delay(50); // proves a negative: nothing marks an interrupt the device decided not to send
    assert.equal(d.interrupts.get(1) ?? 0, before, 'no interrupt before used_event');
    q.drain(true);
    assert.equal((await p).status, BlkStatus.OK);

    // without event index: the avail flags' NO_INTERRUPT
    await d.init({ want: ~bit(Feature.RING_EVENT_IDX), size: 16 });
    const q2 = d.queues[0]!;
    q2.setAvailFlags(1);
    const before2 = d.interrupts.get(1) ?? 0;
    const p2 = blk.read(0, 0, [{ iova: b, len: 512 }]);
    await waitFor(() => q2.usedIdx() === 1, 'the used entry');
    await delay(50); // proves a negative, as above
    assert.equal(d.interrupts.get(1) ?? 0, before2, 'NO_INTERRUPT honoured');
    q2.setAvailFlags(0);
    q2.drain(false);
    assert.equal((await p2).status, BlkStatus.OK);
    assert.equal((await blk.read(0, 0, [{ iova: b, len: 512 }])).status, BlkStatus.OK);
    assert.ok((d.interrupts.get(1) ?? 0) > before2, 'interrupts again');
  } finally {
    d.close();
    client.close();
    d.mem.free();
    s.close();
  }
});

test('virtio-blk: a broken chain sets NEEDS_RESET with a config interrupt; reset recovers; PCI_CFG window reads the BAR', async () => {
  const s = serveInProcess({ size: 1 << 20 });
  const client = await VfioUserClient.connect(s.path);
  const d = await VirtioDriver.attach(client);
  try {
    await d.init({ size: 16 });
    const q = d.queues[0]!;
    // a descriptor loop: 0 -> 1 -> 0
    q.setDesc(0, d.iova, 16, Desc.F_NEXT, 1);
    q.setDesc(1, d.iova, 16, Desc.F_NEXT, 0);
    q.publish(0);
    d.notify(q, true);
    await waitFor(async () => ((await d.status()) & Status.NEEDS_RESET) !== 0, 'NEEDS_RESET');
    assert.match(s.dev.brokenReason ?? '', /longer than|loop/);
    await waitFor(() => d.configInterrupts > 0, 'the configuration change interrupt');
    // the status byte outside the maps: NEEDS_RESET too (the request cannot be answered)
    await d.init({ size: 16 });
    const blk = new BlkDriver(d);
    assert.equal((await blk.flush(0)).status, BlkStatus.OK, 'works again after reset');
    const q2 = d.queues[0]!;
    const hdr = d.alloc(16);
    q2.setDesc(0, hdr, 16, Desc.F_NEXT, 1);
    q2.setDesc(1, d.iova + d.mem.size, 1, Desc.F_WRITE, 0);
    q2.publish(0);
    d.notify(q2, true);
    await waitFor(async () => ((await d.status()) & Status.NEEDS_RESET) !== 0, 'NEEDS_RESET');
    assert.match(s.dev.brokenReason ?? '', /status byte/);

    // PCI_CFG: bar 4, offset of the device config, length 4 -> capacity low dword
    const pc = d.caps.get(CapType.PCI_CFG)!.cap;
    const dev = d.caps.get(CapType.DEVICE)!;
    await client.writeConfig(pc + 4, Uint8Array.of(dev.bar));
    const le = (v: number): Uint8Array => Uint8Array.of(v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >>> 24);
    await client.writeConfig(pc + 8, le(dev.offset));
    await client.writeConfig(pc + 12, le(4));
    const viaCfg = await client.readConfig(pc + 16, 4);
    assert.deepEqual([...viaCfg], [...(await d.readDeviceConfig(0, 4))]);
    assert.equal(new DataView(viaCfg.buffer, viaCfg.byteOffset).getUint32(0, true), (1 << 20) / 512);
  } finally {
    d.close();
    client.close();
    d.mem.free();
    s.close();
  }
});

test('vfio-user serve virtio-blk: bad options exit with an error', () => {
  const r = spawnSync(process.execPath, [CLI, 'serve', 'virtio-blk', `--socket-path=${sockPath('x')}`, '--queues=0'], { encoding: 'utf8' });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /queues/);
  const dir = tmp();
  const r2 = spawnSync(process.execPath, [CLI, 'serve', 'virtio-blk', `--socket-path=${sockPath('x')}`, `--image=${join(dir, 'missing.img')}`, '--read-only'], { encoding: 'utf8' });
  assert.notEqual(r2.status, 0, 'a read-only image must exist');
  assert.ok(!existsSync(join(dir, 'missing.img')));
  rmSync(dir, { recursive: true, force: true });
});




test('virtio-blk: after a request the device looks at the ring for pollUs, so the next requests need no notify; pollUs 0 asks for one each time', async () => {
  for (const pollUs of [undefined, 0]) {
    const s = serveInProcess({ size: 1 << 20, ...(pollUs === undefined ? {} : { pollUs }) });
    const client = await VfioUserClient.connect(s.path);
    const d = await VirtioDriver.attach(client);
    try {
      await d.init({ size: 16 });
      assert.ok(d.eventIdx);
      const blk = new BlkDriver(d);
      const b = d.alloc(4096);
      for (let i = 0; i < 20; i++) assert.equal((await blk.read(0, i, [{ iova: b, len: 512 }])).status, BlkStatus.OK);
      if (pollUs === 0) {
        assert.equal(d.suppressed, 0, 'with pollUs 0 the device asks for every request');
        assert.equal(d.notifies, 20);
      } else {
        // back-to-back requests come within the default 1000 µs window (a busy machine can
        // stretch a gap past it now and then: most, not all, go without a notify)
        assert.ok(d.suppressed >= 10, `notifies ${d.notifies}, suppressed ${d.suppressed}`);
        // once the window has passed the device asks again, and a request notifies
        const q = d.queues[0]!;
        await waitFor(() => q.availEvent() === q.availIdx, 'avail_event at the next available entry');
        const before = d.notifies;
        assert.equal((await blk.read(0, 0, [{ iova: b, len: 512 }])).status, BlkStatus.OK);
        assert.equal(d.notifies, before + 1, 'a request after the window notifies');
      }
    } finally {
      d.close();
      client.close();
      d.mem.free();
      s.close();
    }
  }
});
