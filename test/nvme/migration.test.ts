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
import { VfioUserClient } from '../../src/client/client.js';
import { migrate } from '../../src/client/migrate.js';
import { NvmeDevice } from '../../src/devices/nvme/index.js';
import { NvmeDriver, pattern, listenDevice, type InProcessServer } from '../../src/testing/index.js';
import { assertMigrationRefused, waitFor } from '../helpers.js';

function serve(image: string, size = 32 << 20): InProcessServer<NvmeDevice> {
  return listenDevice(new NvmeDevice({ image, size, serial: 'MIGRATE1', log: () => {} }), { name: 'nvme-mig' });
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
    await waitFor(() => ops > 10, 'I/O running on the source', 10000); // a busy machine may take a while to get going
    const before = ops;

    // the destination: same guest memory at the same IOVA
    const dstClient = await VfioUserClient.connect(dst.path);
    await d.ram.mapInto(dstClient);

    // the workload keeps running through pre-copy; just before stop-and-copy it pauses (as a
    // VM's vCPUs stop), in-flight commands finish, and its interrupts move to the destination
    let opsAtStop = 0;
    const res = await migrate(srcClient, dstClient, {
      // two pre-copy rounds, the workload running against the source (in PRE_COPY) between them
      threshold: -1,
      maxRounds: 2,
      betweenRounds: () => waitFor(() => ops >= before + 20, 'I/O against the source in PRE_COPY', 10000),
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

    await waitFor(() => ops > opsAtStop + 10, 'I/O continuing on the destination', 10000);
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
    await src.close();
    await dst.close();
    d.mem.free();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('nvme: a destination with a different namespace refuses the state', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-mig-'));
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

test('nvme: crafted migration state that passes the CRC is refused field by field, nothing applied', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-state-'));
  try {
    const dev = new NvmeDevice({ image: join(dir, 'disk.img'), size: 8 << 20, serial: 'STATE1', log: () => {} });
    const hooks = dev.migration!;
    const good = await hooks.save();
    const doc = JSON.parse(new TextDecoder().decode(good)) as { state: Record<string, unknown> };
    const craft = (field: string, value: unknown): Uint8Array => {
      const d = structuredClone(doc);
      d.state[field] = value;
      return new TextEncoder().encode(JSON.stringify(d));
    };
    const cq = (extra: Record<string, unknown>): string => JSON.stringify([{ id: 0, base: 0x1000, size: 16, head: 0, tail: 0, phase: 1, iv: 0, ien: true, backlog: [], ...extra }]);
    const sq0 = JSON.stringify([{ id: 0, base: 0x2000, size: 16, head: 0, tail: 0, cqid: 0, prio: 0 }]);
    const cases: [string, unknown][] = [
      ['cqs', cq({ backlog: [{ sqid: 0, cid: 'x', status: 0, dw0: 0 }] })],
      ['cqs', cq({ backlog: 'nope' })],
      ['cqs', cq({ backlog: [{ sqid: 99, cid: 1, status: 0, dw0: 0 }] })],
      ['cqs', cq({ head: 16 })],
      ['cqs', cq({ iv: -1 })],
      ['cqs', cq({ ien: 'yes' })],
      ['cqs', '{'],
      ['sqs', JSON.stringify([{ id: 0, base: 0x2000, size: 16, head: 0, tail: 0, cqid: 5, prio: 0 }])],
      ['sqs', JSON.stringify(Array.from({ length: 100 }, () => null))],
      ['features', JSON.stringify({ ...JSON.parse(doc.state.features as string), nsqa: 'x' })],
      ['features', JSON.stringify({ ...JSON.parse(doc.state.features as string), nsqa: 1e9 })],
      ['features', JSON.stringify({ ...JSON.parse(doc.state.features as string), ivConfig: { abc: 1 } })],
      ['features', JSON.stringify({ arbitration: 0 })],
      ['events', JSON.stringify([{ type: 1e9, info: 0, log: 0 }])],
      ['events', JSON.stringify(Array.from({ length: 1000 }, () => ({ type: 0, info: 0, log: 0 })))],
      ['events', '"str"'],
      ['smart', JSON.stringify({ bytesRead: -1, bytesWritten: 0, readCommands: 0, writeCommands: 0 })],
      ['smart', JSON.stringify({})],
      ['aers', JSON.stringify([1, 2, 3, 4, 5])],
      ['aers', JSON.stringify(['a'])],
      ['cc', -1],
      ['cc', 2 ** 40],
      ['maskedEventTypes', 1e6],
      ['doorbells', 'zz'],
      ['namespaces', '[]'],
    ];
    for (const [field, value] of cases) {
      await assert.rejects(
        Promise.resolve().then(() => hooks.load(craft(field, value), [])),
        (e: unknown) => e instanceof Error && /nvme state/.test(e.message),
        `${field} = ${String(value).slice(0, 80)}`,
      );
    }
    assert.deepEqual(await hooks.save(), good, 'nothing was applied');
    // the good state still loads, and a consistent crafted queue set does too
    await hooks.load(good, []);
    const d = structuredClone(doc);
    d.state.cqs = cq({});
    d.state.sqs = sq0;
    await hooks.load(new TextEncoder().encode(JSON.stringify(d)), []);
    dev.destroy();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
