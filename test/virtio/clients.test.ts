/**
 * One virtio-blk server, clients in sequence (a VMM restarting, a health probe before the
 * VMM): whatever the previous client left behind (MSI-X on, queues enabled with their rings
 * and vectors, DRIVER_OK, a request in flight), the next one finds the device as at power-on,
 * brings it up its own way (INTx after MSI-X, MSI-X after INTx) and reads what the previous
 * ones wrote. Server in its own process; real clients over the socket.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { Common, NO_VECTOR } from '../../src/devices/virtio/constants.js';
import { VirtioDriver, BlkDriver, pattern, findCapability } from '../../src/testing/index.js';
import { serveChild } from '../helpers.js';

const MSIX_CAP = 0x11;

/** What a new client must find: nothing left from the one before. */
async function assertPowerOn(c: VfioUserClient, queues: number, who: string): Promise<void> {
  const msix = await findCapability(c, MSIX_CAP);
  const ctl = await c.readConfig(msix + 2, 2);
  assert.equal(ctl[1]! & 0xc0, 0, `${who}: MSI-X enable and function mask clear`);
  const cmd = await c.readConfig(4, 2);
  assert.equal(cmd[0]! & 0x06, 0, `${who}: memory decoding and bus mastering off`);
  const d = await VirtioDriver.attach(c, { interrupts: 'intx', memSize: 1 << 20 });
  try {
    // attach() switched INTx on, nothing else: the virtio registers are as the device left them
    assert.equal(await d.status(), 0, `${who}: device status 0`);
    assert.equal(await d.readCommon(Common.CONFIG_MSIX_VECTOR, 2), NO_VECTOR, `${who}: no config vector`);
    assert.equal(await d.readCommon(Common.QUEUE_SELECT, 2), 0, `${who}: queue_select 0`);
    for (let q = 0; q < queues; q++) {
      await d.writeCommon(Common.QUEUE_SELECT, 2, q);
      assert.equal(await d.readCommon(Common.QUEUE_ENABLE, 2), 0, `${who}: queue ${q} disabled`);
      assert.equal(await d.readCommon(Common.QUEUE_MSIX_VECTOR, 2), NO_VECTOR, `${who}: queue ${q} without a vector`);
      assert.equal(await d.readCommon(Common.QUEUE_DESC, 4), 0, `${who}: queue ${q} ring address cleared`);
    }
    assert.equal(await d.readIsr(), 0, `${who}: ISR clear`);
  } finally {
    d.close();
    await c.dmaUnmapAll();
  }
}

test('virtio-blk across clients: MSI-X, queues and status reset when a client leaves; each next client (probe, INTx, MSI-X) is served from power-on', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-virtio-clients-'));
  const image = join(dir, 'disk.img');
  const srv = await serveChild('virtio-blk', [`--image=${image}`, '--size=4M', '--queues=2']);
  try {
    const data = (seed: number): Uint8Array => pattern(8192, seed);

    // 1: MSI-X, two queues, writes; leaves with a request in flight and everything enabled
    {
      const c = await VfioUserClient.connect(srv.path);
      await c.writeConfig(4, Uint8Array.of(0x06, 0)); // memory decoding, bus mastering
      const d = await VirtioDriver.attach(c, { memSize: 2 << 20 });
      await d.init({ queues: 2 });
      const blk = new BlkDriver(d);
      const buf = d.alloc(8192);
      d.at(buf, 8192).set(data(1));
      assert.equal((await blk.write(1, 16, [{ iova: buf, len: 8192 }])).status, 0);
      assert.ok((d.interrupts.get(2) ?? 0) > 0, 'client 1 took MSI-X interrupts on queue 1 vector');
      const msix = await findCapability(c, MSIX_CAP);
      assert.equal((await c.readConfig(msix + 3, 1))[0]! & 0x80, 0x80, 'client 1 enabled MSI-X');
      void blk.write(0, 32, [{ iova: buf, len: 8192 }]).catch(() => {}); // in flight as it leaves
      d.close();
      c.close();
    }

    // 2: a health probe (connects, negotiates, leaves), then 3 finds power-on state
    (await VfioUserClient.connect(srv.path)).close();
    {
      const c = await VfioUserClient.connect(srv.path);
      await assertPowerOn(c, 2, 'after client 1 and a probe');
      // brought up with INTx this time: interrupts must come as INTx, the data is there
      const d = await VirtioDriver.attach(c, { interrupts: 'intx', memSize: 2 << 20 });
      await d.init({ queues: 1 });
      const blk = new BlkDriver(d);
      const buf = d.alloc(8192);
      assert.equal((await blk.read(0, 16, [{ iova: buf, len: 8192, write: true }])).status, 0);
      assert.deepEqual(d.at(buf, 8192), data(1), 'what client 1 wrote reads back');
      assert.ok((d.interrupts.get(0) ?? 0) > 0, 'completions announced by INTx');
      d.at(buf, 8192).set(data(3));
      assert.equal((await blk.write(0, 64, [{ iova: buf, len: 8192 }])).status, 0);
      d.close();
      c.close();
    }

    // 4: after an INTx client, MSI-X again, on both queues
    {
      const c = await VfioUserClient.connect(srv.path);
      await assertPowerOn(c, 2, 'after the INTx client');
      const d = await VirtioDriver.attach(c, { memSize: 2 << 20 });
      await d.init({ queues: 2 });
      const blk = new BlkDriver(d);
      const buf = d.alloc(8192);
      for (const q of [0, 1]) {
        assert.equal((await blk.read(q, 64, [{ iova: buf, len: 8192, write: true }])).status, 0);
        assert.deepEqual(d.at(buf, 8192), data(3), `client 3's data on queue ${q}`);
        assert.ok((d.interrupts.get(q + 1) ?? 0) > 0, `MSI-X vector ${q + 1} used`);
      }
      d.close();
      c.close();
    }
  } finally {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
