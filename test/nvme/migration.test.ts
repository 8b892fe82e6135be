/**
 * Live migration of the NVMe controller between two servers sharing one image file, while the
 * test driver keeps I/O going: the source is stopped and saved (registers, queues, features),
 * the destination resumes with the same guest memory and interrupts, I/O continues there, and
 * every write made on either side reads back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient } from '../../src/client/client.js';
import { migrate } from '../../src/client/migrate.js';
import { NvmeDevice } from '../../src/devices/nvme/index.js';
import { NvmeDriver, GUARD, pattern } from './driver.js';
import { sockPath, serveDevice, assertMigrationRefused } from '../helpers.js';


function serve(image: string): { dev: NvmeDevice; server: VfioUserServer; path: string } {
  const dev = new NvmeDevice({ image, size: 32 << 20, serial: 'MIGRATE1', log: () => {} });
  const server = new VfioUserServer(dev);
  const path = sockPath('nvme-mig');
  server.listen(path);
  return { dev, server, path };
}

test('nvme: live migration under continuous I/O loses no writes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-mig-'));
  const image = join(dir, 'disk.img');
  const src = serve(image);
  const dst = serve(image);
  const srcClient = await VfioUserClient.connect(src.path);
  const d = await NvmeDriver.attach(srcClient, { memSize: 16 << 20 });
  await d.init({ queues: 2, depth: 32 });

  // workload: 16 workers, each writes its own blocks with increasing seeds, reads back now and then
  const expected = new Map<number, number>();
  let seed = 1;
  let gate: Promise<void> | undefined;
  let openGate: () => void = () => {};
  let inflight = 0;
  let idle: (() => void) | undefined;
  let stop = false;
  let ops = 0;
  const workers = Array.from({ length: 16 }, async (_, w) => {
    const buf = d.alloc(4096);
    const rbuf = d.alloc(4096);
    for (let k = 0; !stop; k++) {
      if (gate) await gate;
      if (stop) break;
      const lba = (w * 64 + (k % 64)) * 8;
      const s = seed++;
      d.at(buf, 4096).set(pattern(4096, s));
      inflight++;
      try {
        const c = await d.rw('write', 1 + (w % 2), lba, 8, { prp1: buf });
        assert.equal(c.status, 0);
        expected.set(lba, s);
        if (k % 4 === 3) {
          const r = await d.rw('read', 1 + (w % 2), lba, 8, { prp1: rbuf });
          assert.equal(r.status, 0);
          assert.ok(Buffer.from(d.at(rbuf, 4096)).equals(Buffer.from(pattern(4096, s))), `read back lba ${lba}`);
        }
        ops++;
      } finally {
        if (--inflight === 0 && idle) idle();
      }
    }
  });
  try {
    await new Promise((r) => setTimeout(r, 150));
    const before = ops;
    assert.ok(before > 10, `I/O is running (${before} ops)`);

    // the destination: same guest memory at the same IOVA
    const dstClient = await VfioUserClient.connect(dst.path);
    await dstClient.dmaMap(d.mem, d.iova, { offset: GUARD, size: d.mem.size - 2 * GUARD });

    // the workload keeps running through pre-copy; just before stop-and-copy it pauses (as a
    // VM's vCPUs stop), in-flight commands finish, and its interrupts move to the destination
    let opsAtStop = 0;
    const res = await migrate(srcClient, dstClient, {
      // two pre-copy rounds, the workload running against the source (in PRE_COPY) between them
      threshold: -1,
      maxRounds: 2,
      betweenRounds: async () => {
        const until = Date.now() + 5000;
        while (ops < before + 20 && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      },
      beforeStopCopy: async () => {
        gate = new Promise((r) => (openGate = r));
        if (inflight > 0) await new Promise<void>((r) => (idle = r));
        idle = undefined;
        opsAtStop = ops;
        await d.moveTo(dstClient); // interrupts armed on the destination; doorbells go there
      },
    });
    assert.ok(res.totalBytes > 0);
    assert.ok(opsAtStop >= before + 20, `I/O ran while the source was in PRE_COPY (${opsAtStop - before} ops)`);
    t.diagnostic(`migration under I/O: rounds=${res.rounds} bytes=${res.totalBytes} (pre-copy ${res.precopyBytes}, stop-copy ${res.stopCopyBytes}) downtime=${res.downtimeMs.toFixed(2)} ms total=${res.totalMs.toFixed(2)} ms; ${expected.size} blocks verified`);
    const stateSrc = await srcClient.getDeviceState();
    assert.equal(stateSrc, 1, 'source stopped');
    gate = undefined;
    openGate();

    await new Promise((r) => setTimeout(r, 150));
    assert.ok(ops > before + 10, `I/O continued on the destination (${ops - before} more ops)`);
    stop = true;
    await Promise.all(workers);

    // every write, from before and after the migration, reads back on the destination
    const rb = d.alloc(4096);
    for (const [lba, s] of expected) {
      const c = await d.rw('read', 1, lba, 8, { prp1: rb });
      assert.equal(c.status, 0);
      assert.ok(Buffer.from(d.at(rb, 4096)).equals(Buffer.from(pattern(4096, s))), `lba ${lba} (seed ${s}) after migration`);
    }
    // the source does nothing any more: a doorbell there is ignored (it is stopped)
    const q = d.queue(1);
    assert.equal(q.sqHead, q.sqTail);
    dstClient.close();
  } finally {
    stop = true;
    openGate();
    d.close();
    srcClient.close();
    src.server.close();
    dst.server.close();
    src.dev.destroy();
    dst.dev.destroy();
    d.mem.free();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('nvme: a destination with a different namespace refuses the state', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-mig-'));
  const src = serve(join(dir, 'a.img'));
  const other = serveDevice(new NvmeDevice({ image: join(dir, 'b.img'), size: 8 << 20, serial: 'MIGRATE1', log: () => {} }), 'nvme-mig');
  try {
    await assertMigrationRefused(src.path, other.path);
  } finally {
    src.server.close();
    src.dev.destroy();
    other.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
