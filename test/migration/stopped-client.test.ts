/**
 * A device its client stopped (migration state STOP) and left keeps its state for the next
 * client (spec, "Client Disconnection": maps and interrupt fds go, the device state stays):
 * the next client finds it in STOP with its registers, queues and MSI-X as they were, gives
 * it the same guest memory and its own interrupts while it is still stopped, sets RUNNING,
 * and the device carries on where it stopped. The server runs in its own process; each
 * client has its own connection and the first one leaves (its socket closes) with the device
 * stopped, as a VMM stopping the device and exiting would.
 *
 * virtio-blk: requests notified just before the stop finish before STOP is answered (no DMA
 * after it); requests published in the rings and never notified (a vCPU stopped
 * mid-submission) run once the next client resumes the device; each exactly once. NVMe:
 * the controller is still enabled, its I/O queues still there, and I/O continues on them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import { Common, Status } from '../../src/devices/virtio/constants.js';
import { VirtioDriver, BlkDriver, NvmeDriver, pattern } from '../../src/testing/index.js';
import { serveChild, waitFor } from '../helpers.js';

const STOP = 1;
const RUNNING = 2;
const MSIX_CAP = 0x11;

/** A server of `device` (own process, fresh 4 MiB image); `body` registers what to close after it. */
async function onServer(device: string, args: string[], body: (path: string, later: (f: () => void) => void) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-stopped-'));
  const srv = await serveChild(device, [`--image=${join(dir, 'disk.img')}`, '--size=4M', ...args]);
  const undo: (() => void)[] = [];
  try {
    await body(srv.path, (f) => undo.push(f));
  } finally {
    for (const f of undo.reverse()) f();
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function msixEnabled(c: VfioUserClient, cap: number): Promise<boolean> {
  return ((await c.readConfig(cap + 3, 1))[0]! & 0x80) !== 0;
}

test('virtio-blk: stopped (migration STOP) by a client that leaves; the next client finds the state intact, resumes it, and requests left in the rings complete exactly once', async () => {
  await onServer('virtio-blk', ['--queues=2'], async (path, later) => {
    const c1 = await VfioUserClient.connect(path);
    await c1.writeConfig(4, Uint8Array.of(0x06, 0)); // memory decoding, bus mastering
    const d = await VirtioDriver.attach(c1, { memSize: 2 << 20 });
    later(() => d.mem.free());
    later(() => d.close());
    await d.init({ queues: 2 });
    const blk = new BlkDriver(d);
    const msix = await d.findCap(MSIX_CAP);
    const buf = d.alloc(4096);
    for (let i = 0; i < 4; i++) {
      d.at(buf, 4096).set(pattern(4096, i + 1));
      assert.equal((await blk.write(i % 2, 8 * i, [{ iova: buf, len: 4096 }])).status, 0);
    }
    // published in both rings, never notified: the stopped device must not have run them
    const late = Array.from({ length: 6 }, (_, i) => {
      const b = d.alloc(4096);
      d.at(b, 4096).set(pattern(4096, 100 + i));
      return blk.write(i % 2, 800 + 8 * i, [{ iova: b, len: 4096 }], { noNotify: true });
    });
    // notified just before the stop: in flight as STOP comes, which waits for it (no DMA after STOP)
    const notified = Array.from({ length: 4 }, (_, i) => {
      const b = d.alloc(4096);
      d.at(b, 4096).set(pattern(4096, 200 + i));
      return blk.write(i % 2, 1200 + 8 * i, [{ iova: b, len: 4096 }]);
    });
    assert.equal(await c1.setDeviceState(STOP), STOP);
    d.close();
    c1.close(); // the first client is gone, the device stopped

    const c2 = await VfioUserClient.connect(path);
    later(() => c2.close());
    assert.equal(await c2.getDeviceState(), STOP, 'the next client finds the device stopped');
    assert.ok(await msixEnabled(c2, msix), 'MSI-X still enabled');
    assert.equal((await c2.readConfig(4, 1))[0]! & 0x06, 0x06, 'memory decoding and bus mastering kept');
    // its memory (the same guest RAM) and its interrupts, while the device is still stopped
    await d.ram.mapInto(c2);
    await d.moveTo(c2);
    assert.equal(await d.status(), Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK, 'device status kept');
    for (let q = 0; q < 2; q++) {
      await d.writeCommon(Common.QUEUE_SELECT, 2, q);
      assert.equal(await d.readCommon(Common.QUEUE_ENABLE, 2), 1, `queue ${q} still enabled`);
      assert.equal(await d.readCommon(Common.QUEUE_DESC, 4), d.queues[q]!.desc % 2 ** 32, `queue ${q} ring address kept`);
    }
    assert.equal(await c2.setDeviceState(RUNNING), RUNNING);
    for (const r of await Promise.all(late)) assert.equal(r.status, 0, 'a request left in the ring ran after the resume');
    for (const r of await Promise.all(notified)) assert.equal(r.status, 0, 'a request in flight at the stop completed');
    // and on it goes: new requests, everything written before and after reads back
    d.at(buf, 4096).set(pattern(4096, 50));
    assert.equal((await blk.write(1, 8 * 50, [{ iova: buf, len: 4096 }])).status, 0);
    const rb = d.alloc(4096);
    const written: [number, number][] = [[0, 1], [8, 2], [16, 3], [24, 4], [400, 50], 
      ...Array.from({ length: 6 }, (_, i): [number, number] => [800 + 8 * i, 100 + i]),
      ...Array.from({ length: 4 }, (_, i): [number, number] => [1200 + 8 * i, 200 + i]),
    ];
    for (const [sector, seed] of written) {
      assert.equal((await blk.read(0, sector, [{ iova: rb, len: 4096 }])).status, 0);
      assert.ok(Buffer.from(d.at(rb, 4096)).equals(Buffer.from(pattern(4096, seed))), `sector ${sector} reads back`);
    }
    for (const q of d.queues) assert.deepEqual(q.stray, [], `queue ${q.index}: no used entry twice`);
    assert.ok((d.interrupts.get(1) ?? 0) + (d.interrupts.get(2) ?? 0) > 0, 'queue interrupts on the next client');
  });
});

test('nvme: stopped (migration STOP) by a client that leaves; the next client finds the controller enabled with its queues, resumes it, and I/O goes on', async () => {
  await onServer('nvme', [], async (path, later) => {
    const c1 = await VfioUserClient.connect(path);
    const d = await NvmeDriver.attach(c1, { memSize: 4 << 20 });
    later(() => d.mem.free());
    later(() => d.close());
    await d.init({ queues: 2, depth: 16 });
    const buf = d.alloc(4096);
    for (let i = 0; i < 4; i++) {
      d.at(buf, 4096).set(pattern(4096, i + 1));
      assert.equal((await d.rw('write', 1 + (i % 2), 8 * i, 8, { prp1: buf })).status, 0);
    }
    assert.equal(await c1.setDeviceState(STOP), STOP);
    d.close();
    c1.close();

    const c2 = await VfioUserClient.connect(path);
    later(() => c2.close());
    assert.equal(await c2.getDeviceState(), STOP, 'the next client finds the device stopped');
    await d.ram.mapInto(c2);
    await d.moveTo(c2);
    assert.equal((await d.r32(0x1c)) & 1, 1, 'CSTS.RDY: the controller is still enabled');
    assert.equal(await c2.setDeviceState(RUNNING), RUNNING);
    d.at(buf, 4096).set(pattern(4096, 50));
    assert.equal((await d.rw('write', 2, 8 * 50, 8, { prp1: buf })).status, 0, 'I/O on the queues the first client made');
    const rb = d.alloc(4096);
    for (const [lba, seed] of [[0, 1], [8, 2], [16, 3], [24, 4], [400, 50]] as const) {
      assert.equal((await d.rw('read', 1, lba, 8, { prp1: rb })).status, 0);
      assert.ok(Buffer.from(d.at(rb, 4096)).equals(Buffer.from(pattern(4096, seed))), `lba ${lba} reads back`);
    }
  });
});

test('virtio-blk, DMA by message: a STOP waiting for a request in flight does not hold back the client\'s DMA unmap, which the client (like QEMU) answers before it answers the request\'s DMA', async () => {
  await onServer('virtio-blk', [], async (path, later) => {
    // the client's answer to the device's read of the write's data waits for `gate`, as QEMU's
    // main loop waits for its own DMA_UNMAP reply before it answers DMA
    let gate: Promise<void> | undefined;
    let watch = -1;
    let asked = 0;
    const c = await VfioUserClient.connect(path, {
      beforeDma: (_kind, iova) => {
        if (iova !== watch) return undefined;
        asked++;
        return gate;
      },
    });
    later(() => c.close());
    const d = await VirtioDriver.attach(c, { memSize: 1 << 20, shared: false });
    later(() => d.mem.free());
    later(() => d.close());
    await d.init({ queues: 1 });
    const blk = new BlkDriver(d);
    const other = new GuestMemory(8192);
    later(() => other.free());
    await c.dmaMap(other, 0x2_0000_0000, { shared: false });
    const buf = d.alloc(4096);
    d.at(buf, 4096).set(pattern(4096, 9));

    let open: () => void = () => {};
    gate = new Promise((r) => (open = r));
    watch = buf;
    const write = blk.write(0, 64, [{ iova: buf, len: 4096 }]);
    await waitFor(() => asked > 0, 'the request in flight reads its data by DMA', 10000);
    const stop = c.setDeviceState(STOP); // waits for the request, which waits for our DMA answer
    let unmapped = false;
    const unmap = c.dmaUnmap(0x2_0000_0000, 8192).then(() => {
      unmapped = true;
      open(); // the unmap answered: our "main loop" answers DMA again
    });
    await waitFor(() => unmapped, 'the DMA_UNMAP answered while the STOP waits', 10000);
    gate = undefined;
    await unmap;
    const usedBefore = d.queues[0]!.lastUsed; // as the driver last saw it: before this write
    assert.equal(await stop, STOP);
    // done before the STOP reply: its used entry is in our memory (its interrupt waits for RUNNING)
    const usedIdx = new DataView(d.at(d.queues[0]!.used, 4).slice().buffer).getUint16(2, true);
    assert.equal(usedIdx, (usedBefore + 1) & 0xffff, 'the request in flight completed before the STOP reply');
    assert.equal(await c.setDeviceState(RUNNING), RUNNING);
    assert.equal((await write).status, 0);
    const rb = d.alloc(4096);
    assert.equal((await blk.read(0, 64, [{ iova: rb, len: 4096 }])).status, 0);
    assert.ok(Buffer.from(d.at(rb, 4096)).equals(Buffer.from(pattern(4096, 9))), 'the write reads back');
  });
});
