/**
 * Live migration of virtio-blk between two servers sharing one image, with writers running:
 * pre-copy rounds while I/O goes on against the source, then stop-and-copy with requests
 * still in the rings — some notified to the source just before it stops, some published and
 * never notified (as when a vCPU stops mid-submission). The destination resumes from each
 * queue's last available index: every request completes exactly once (the two devices'
 * counters add up to what the driver submitted, no used entry comes twice), and every block
 * written before and after the move reads back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { migrate } from '../../src/client/migrate.js';
import { VirtioBlkDevice, BlkStatus } from '../../src/devices/virtio/index.js';
import { VirtioDriver, BlkDriver, pattern, listenDevice, type InProcessServer } from '../../src/testing/index.js';
import { assertMigrationRefused, waitFor } from '../helpers.js';

function serve(image: string, size = 16 << 20): InProcessServer<VirtioBlkDevice> {
  return listenDevice(new VirtioBlkDevice({ image, size, queues: 2, serial: 'MIGRATE1', log: () => {} }), { name: 'virtio-mig' });
}

for (const shared of [true, false]) {
  test(`virtio-blk: live migration under writers, requests in the rings complete exactly once on the destination (${shared ? 'shared memory' : 'DMA messages'})`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'vfu-virtio-mig-'));
    const image = join(dir, 'disk.img');
    const src = serve(image);
    const dst = serve(image);
    const srcClient = await VfioUserClient.connect(src.path);
    const d = await VirtioDriver.attach(srcClient, { memSize: 16 << 20, shared });
    await d.init({ size: 64 });
    const blk = new BlkDriver(d);

    const expected = new Map<number, number>();
    let seed = 1;
    let writes = 0;
    let reads = 0;
    let gate: Promise<void> | undefined;
    let openGate: () => void = () => {};
    let stop = false;
    let ops = 0;
    const workers = Array.from({ length: 12 }, async (_, w) => {
      const buf = d.alloc(4096);
      const rbuf = d.alloc(4096);
      for (let k = 0; !stop; k++) {
        if (gate) await gate;
        if (stop) break;
        const sector = (w * 64 + (k % 64)) * 8;
        const s = seed++;
        d.at(buf, 4096).set(pattern(4096, s));
        writes++;
        const r = await blk.write(w % 2, sector, [{ iova: buf, len: 4096 }]);
        assert.equal(r.status, BlkStatus.OK);
        expected.set(sector, s);
        if (k % 4 === 3) {
          reads++;
          const rr = await blk.read(w % 2, sector, [{ iova: rbuf, len: 4096 }]);
          assert.equal(rr.status, BlkStatus.OK);
          assert.ok(Buffer.from(d.at(rbuf, 4096)).equals(Buffer.from(pattern(4096, s))), `read back sector ${sector}`);
        }
        ops++;
      }
    });
    const late: Promise<void>[] = [];
    try {
      await waitFor(() => ops >= 20, 'I/O running on the source', 10000);
      const before = ops;
      const dstClient = await VfioUserClient.connect(dst.path);
      await d.ram.mapInto(dstClient);

      // requests left in the rings at the stop: notified to the source, and never notified
      const submitLate = (q: number, sector: number, s: number, noNotify: boolean): void => {
        const b = d.alloc(4096);
        d.at(b, 4096).set(pattern(4096, s));
        writes++;
        late.push(
          blk.write(q, sector, [{ iova: b, len: 4096 }], { noNotify }).then((r) => {
            assert.equal(r.status, BlkStatus.OK);
            expected.set(sector, s);
          }),
        );
      };
      let opsAtStop = 0;
      const res = await migrate(srcClient, dstClient, {
        threshold: -1,
        maxRounds: 2,
        betweenRounds: () => waitFor(() => ops >= before + 20, 'I/O against the source in PRE_COPY', 10000),
        beforeStopCopy: async () => {
          gate = new Promise((r) => (openGate = r)); // the vCPUs stop; requests in flight stay in flight
          opsAtStop = ops;
          for (let i = 0; i < 4; i++) submitLate(i % 2, 20000 + 8 * i, 100000 + i, false);
          await d.moveTo(dstClient);
        },
        progress: (p) => {
          // the source's state is taken: these are published after it, and never notified
          if (p.phase === 'stop-copy') for (let i = 0; i < 8; i++) submitLate(i % 2, 20100 + 8 * i, 200000 + i, true);
        },
      });
      assert.ok(opsAtStop >= before + 20, `I/O ran while the source was in PRE_COPY (${opsAtStop - before} ops)`);
      t.diagnostic(`migration under I/O: rounds=${res.rounds} bytes=${res.totalBytes} downtime=${res.downtimeMs.toFixed(2)} ms total=${res.totalMs.toFixed(2)} ms; source did ${src.device.stats.writes} writes, destination ${dst.device.stats.writes}`);
      assert.equal(await srcClient.getDeviceState(), 1, 'source stopped');
      gate = undefined;
      openGate();
      await Promise.all(late);
      assert.ok(dst.device.stats.writes >= 8, 'the requests published after the stop ran on the destination');
      await waitFor(() => ops > opsAtStop + 10, 'I/O continuing on the destination', 10000);
      stop = true;
      await Promise.all(workers);

      // exactly once: the devices executed what was submitted, no used entry came twice
      assert.equal(src.device.stats.writes + dst.device.stats.writes, writes, 'writes executed once');
      assert.equal(src.device.stats.reads + dst.device.stats.reads, reads, 'reads executed once');
      for (const q of d.queues) assert.deepEqual(q.stray, [], `queue ${q.index}: no unexpected used entries`);
      // every write, from before and after the migration, reads back on the destination
      const rb = d.alloc(4096);
      for (const [sector, s] of expected) {
        const r = await blk.read(0, sector, [{ iova: rb, len: 4096 }]);
        assert.equal(r.status, BlkStatus.OK);
        assert.ok(Buffer.from(d.at(rb, 4096)).equals(Buffer.from(pattern(4096, s))), `sector ${sector} (seed ${s}) after migration`);
      }
      dstClient.close();
    } finally {
      stop = true;
      openGate();
      d.close();
      srcClient.close();
      await src.close();
      await dst.close();
      d.mem.free();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('virtio-blk: a destination with a different disk refuses the state, the source runs on', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-virtio-mig-'));
  const src = serve(join(dir, 'a.img'));
  const other = serve(join(dir, 'b.img'), 8 << 20);
  try {
    await assertMigrationRefused(src.path, other.path);
  } finally {
    await src.close();
    await other.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
