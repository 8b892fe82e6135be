/**
 * virtio notifications by an mmap-able notify page (notify 'mmap', `--doorbells=mmap`): the
 * driver stores queue indexes into the mapped page and the device's poller finds them, at QD1
 * and with many requests in flight on two queues; trapped notify writes still work on such a
 * device; a reset stops the poller and DRIVER_OK starts it again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VirtioBlkDevice } from '../../src/devices/virtio/index.js';
import * as P from '../../src/protocol/index.js';
import { native } from '../../src/native/index.js';
import { VirtioDriver, BlkDriver, pattern, listenDevice } from '../../src/testing/index.js';

test('virtio-blk with a polled mmap notify page: requests complete on notify stores alone (QD1 and 16 in flight on two queues); trapped notifies too; reset stops the poller', async () => {
  const h = listenDevice(new VirtioBlkDevice({ size: 4 << 20, queues: 2, notify: 'mmap', pollUs: 20, log: () => {} }));
  const dev = h.device;
  try {
    const c = await h.connect();
    const info = await c.regionInfoRaw(4);
    assert.ok(info.info.flags & P.RegionInfoFlags.MMAP, 'BAR4 offers mmap');
    const sparse = info.info.caps.find((x) => x.kind === 'sparse-mmap');
    assert.ok(sparse && sparse.kind === 'sparse-mmap' && sparse.areas.length === 1 && sparse.areas[0]!.offset === 0x3000n, 'only the notify page');
    if (info.fd !== undefined) native.close(info.fd);

    const d = await VirtioDriver.attach(c, { memSize: 2 << 20, mmapNotify: true });
    await d.init({ queues: 2 });
    const blk = new BlkDriver(d);
    const buf = d.alloc(4096);
    for (let i = 0; i < 20; i++) {
      d.at(buf, 4096).set(pattern(4096, i));
      assert.equal((await blk.write(i % 2, i * 8, [{ iova: buf, len: 4096 }])).status, 0);
    }
    const bufs = Array.from({ length: 16 }, () => d.alloc(4096));
    await Promise.all(bufs.map(async (b, i) => {
      assert.equal((await blk.read(i % 2, (i % 20) * 8, [{ iova: b, len: 4096, write: true }])).status, 0);
      assert.deepEqual(d.at(b, 4096), pattern(4096, i % 20));
    }));
    assert.ok(d.notifies > 0, 'the driver notified (by stores)');
    assert.ok(dev.notifyPoller!.turns > 0, 'the poller found them');
    d.close();

    // the same device, notified by trapped REGION_WRITEs
    const t = await VirtioDriver.attach(c, { memSize: 2 << 20, iova: 0x2_0000_0000 });
    await t.init({ queues: 1 });
    const tb = new BlkDriver(t);
    const b2 = t.alloc(4096);
    assert.equal((await tb.read(0, 3 * 8, [{ iova: b2, len: 4096, write: true }])).status, 0);
    assert.deepEqual(t.at(b2, 4096), pattern(4096, 3));
    await t.reset();
    assert.equal(dev.notifyPoller!.pending, false, 'nothing polls after a reset');
    t.close();
  } finally {
    await h.close();
  }
});
