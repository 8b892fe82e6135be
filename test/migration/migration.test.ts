/**
 * Live migration (issue #6): the state machine's paths, the data stream, the client driver
 * and the CLI, corrupt data and a source dying mid-migration.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { migrationPath, MigState, parseStream, Migration } from '../../src/server/migration.js';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient } from '../../src/client/client.js';
import { migrate } from '../../src/client/migrate.js';
import { VfioUserError } from '../../src/errors.js';
import { GpioDevice } from '../../src/devices/gpio.js';
import { TestDevice } from '../server/testdev.js';
import { serveChild, sockPath, CLI, flipBits } from '../helpers.js';

const S = MigState;
const ALL = [S.RUNNING, S.STOP, S.STOP_COPY, S.RESUMING, S.PRE_COPY];

describe('migration state machine paths', () => {
  test('every direct arc of the spec is one step', () => {
    const arcs: [number, number][] = [
      [S.RUNNING, S.STOP],
      [S.STOP_COPY, S.STOP],
      [S.RESUMING, S.STOP],
      [S.PRE_COPY, S.RUNNING],
      [S.STOP, S.RUNNING],
      [S.RUNNING, S.PRE_COPY],
      [S.STOP, S.STOP_COPY],
      [S.PRE_COPY, S.STOP_COPY],
      [S.STOP, S.RESUMING],
    ];
    for (const [a, b] of arcs) assert.deepEqual(migrationPath(a, b), [b], `${a} -> ${b}`);
  });

  test('complex transitions take the shortest path with no saving state inside', () => {
    const saving = new Set<number>([S.PRE_COPY, S.STOP_COPY]);
    for (const a of ALL) {
      for (const b of ALL) {
        const p = migrationPath(a, b);
        if (a === S.STOP_COPY && b === S.PRE_COPY) {
          assert.equal(p, undefined, 'STOP_COPY -> PRE_COPY is refused');
          continue;
        }
        assert.ok(p, `${a} -> ${b} has a path`);
        for (const s of p.slice(0, -1)) assert.ok(!saving.has(s), `${a} -> ${b} passes through saving state ${s}`);
      }
    }
    assert.deepEqual(migrationPath(S.RUNNING, S.STOP_COPY), [S.STOP, S.STOP_COPY]);
    assert.deepEqual(migrationPath(S.RUNNING, S.RESUMING), [S.STOP, S.RESUMING]);
    assert.deepEqual(migrationPath(S.PRE_COPY, S.RESUMING), [S.RUNNING, S.STOP, S.RESUMING]);
    assert.deepEqual(migrationPath(S.STOP_COPY, S.RUNNING), [S.STOP, S.RUNNING]);
    assert.deepEqual(migrationPath(S.RESUMING, S.RUNNING), [S.STOP, S.RUNNING]);
    assert.equal(migrationPath(S.RUNNING, S.ERROR), undefined);
    assert.equal(migrationPath(S.ERROR, S.RUNNING), undefined);
    assert.equal(migrationPath(S.RUNNING, S.RUNNING_P2P), undefined);
  });
});

describe('migration data stream', () => {
  test('the stream round-trips and any truncation or corruption is refused', async () => {
    const src = new TestDevice();
    src.scratch = 0x1234;
    src.buffer.fill(7);
    const mig = new Migration(src);
    await mig.setState(S.STOP_COPY);
    const chunks: Uint8Array[] = [];
    for (;;) {
      const d = await mig.read(100);
      chunks.push(d);
      if (d.length < 100) break;
    }
    const all = Buffer.concat(chunks);
    const parsed = parseStream(all);
    assert.ok(parsed.device.length > 0 && parsed.config.length > 0);
    for (const cut of [0, 1, 8, 20, all.length - 5, all.length - 1]) {
      assert.throws(() => parseStream(all.subarray(0, cut)), VfioUserError, `truncated at ${cut}`);
    }
    for (let i = 0; i < all.length; i += 7) {
      const bad = Buffer.from(all);
      flipBits(bad, i, 0x40);
      assert.throws(() => parseStream(bad), VfioUserError, `flipped byte ${i}`);
    }
    src.destroy();
  });
});

async function pairOfServers<T>(fn: (a: { dev: TestDevice; path: string }, b: { dev: TestDevice; path: string }) => Promise<T>): Promise<T> {
  const da = new TestDevice();
  const db = new TestDevice();
  const sa = new VfioUserServer(da);
  const sb = new VfioUserServer(db);
  const pa = sockPath('mig-src');
  const pb = sockPath('mig-dst');
  sa.listen(pa);
  sb.listen(pb);
  try {
    return await fn({ dev: da, path: pa }, { dev: db, path: pb });
  } finally {
    sa.close();
    sb.close();
    da.destroy();
    db.destroy();
  }
}

describe('migrating a device', () => {
  test('the client driver moves device state and config space; the destination runs', async () => {
    await pairOfServers(async (a, b) => {
      const src = await VfioUserClient.connect(a.path);
      const dst = await VfioUserClient.connect(b.path);
      await src.write(0, 0, Uint8Array.of(0x78, 0x56, 0x34, 0x12));
      await src.write(0, 0x100, Uint8Array.of(9, 8, 7));
      await src.write(7, 4, Uint8Array.of(0x06, 0x00)); // command: memory + bus master
      const progress: string[] = [];
      const r = await migrate(src, dst, { progress: (p) => progress.push(p.phase) });
      assert.ok(r.totalBytes > 0 && r.stopCopyBytes > 0);
      assert.ok(r.downtimeMs >= 0);
      assert.ok(progress.includes('stop-copy') && progress.at(-1) === 'done');
      assert.equal(b.dev.scratch, 0x12345678);
      assert.deepEqual([...b.dev.buffer.subarray(0, 3)], [9, 8, 7]);
      assert.equal((await dst.read(7, 4, 2))[0]! & 6, 6, 'config space moved');
      assert.equal(await dst.getDeviceState(), S.RUNNING);
      assert.equal(await src.getDeviceState(), S.STOP);
      src.close();
      dst.close();
    });
  });

  test('pre-copy rounds carry device memory, re-dirtied pages are sent again', async () => {
    await pairOfServers(async (a, b) => {
      const src = await VfioUserClient.connect(a.path);
      const dst = await VfioUserClient.connect(b.path);
      for (let p = 0; p < 16; p++) a.dev.writeRam(p, p + 1);
      let rounds = 0;
      const r = await migrate(src, dst, {
        chunk: 8192 + 100,
        threshold: 0,
        maxRounds: 3,
        betweenRounds: (round) => {
          rounds = round;
          a.dev.writeRam(3, 0xee); // the device keeps running during pre-copy
        },
      });
      assert.equal(r.rounds, 3);
      assert.equal(rounds, 2);
      assert.ok(r.precopyBytes >= 16 * 4096 + 2 * 4096, `pre-copy bytes ${r.precopyBytes}`);
      assert.equal(b.dev.ram[3 * 4096], 0xee);
      assert.equal(b.dev.ram[15 * 4096 + 4095], 16);
      assert.deepEqual(b.dev.ram, a.dev.ram);
      src.close();
      dst.close();
    });
  });

  test('the destination takes over the DMA maps and IRQ handles: DMA and interrupts continue', async () => {
    await pairOfServers(async (a, b) => {
      const { GuestMemory } = await import('../../src/client/client.js');
      const src = await VfioUserClient.connect(a.path);
      const dst = await VfioUserClient.connect(b.path);
      const mem = new GuestMemory(1 << 16);
      await src.dmaMap(mem, 0x100000);
      const irq = await src.enableIrqs(2, 8);
      let rebound = 0;
      irq.on('rebound', () => rebound++);
      const waiting = irq.next(); // a waiter across the move
      const r = await migrate(src, dst);
      assert.ok(r.totalBytes > 0);
      assert.equal(rebound, 1);
      assert.equal(b.dev.dma.count, 1, 'the destination has the map');
      // the destination device writes guest memory and raises vector 4
      b.dev.buffer.fill(0x42);
      await b.dev.dma.write(0x100000 + 64, b.dev.buffer.subarray(0, 16));
      assert.equal(mem.bytes[64], 0x42);
      b.dev.trigger(2, 4);
      assert.equal(await waiting, 4, 'the waiter from before the move gets the interrupt');
      src.close();
      dst.close();
      mem.free();
    });
  });

  test('corrupt data: the destination refuses it, goes to ERROR, nothing applied, recovers by reset', async () => {
    await pairOfServers(async (a, b) => {
      const src = await VfioUserClient.connect(a.path);
      const dst = await VfioUserClient.connect(b.path);
      await src.write(0, 0, Uint8Array.of(1, 0, 0, 0));
      b.dev.scratch = 77;
      await src.setDeviceState(S.STOP_COPY);
      const data = await src.migDataRead(1 << 20);
      await dst.setDeviceState(S.RESUMING);
      const bad = Buffer.from(data);
      flipBits(bad, bad.length - 10, 1);
      await dst.migDataWrite(bad);
      await assert.rejects(dst.setDeviceState(S.STOP), (e) => e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR');
      assert.equal(await dst.getDeviceState(), S.ERROR);
      assert.equal(b.dev.scratch, 77, 'nothing half-applied');
      await assert.rejects(dst.setDeviceState(S.RUNNING));
      await dst.reset();
      assert.equal(await dst.getDeviceState(), S.RUNNING);
      // truncated data is refused the same way
      await dst.setDeviceState(S.RESUMING);
      await dst.migDataWrite(data.subarray(0, data.length - 3));
      await assert.rejects(dst.setDeviceState(S.STOP));
      assert.equal(await dst.getDeviceState(), S.ERROR);
      src.close();
      dst.close();
    });
  });

  test('a source dying mid-migration: the destination discards what it received', async () => {
    const srcSrv = await serveChild('gpio');
    const dstSrv = await serveChild('gpio');
    try {
      const src = await VfioUserClient.connect(srcSrv.path);
      const dst = await VfioUserClient.connect(dstSrv.path);
      await src.write(2, 0, Uint8Array.of(0x5a));
      await src.setDeviceState(S.STOP_COPY);
      const part = await src.migDataRead(20);
      await dst.setDeviceState(S.RESUMING);
      await dst.migDataWrite(part);
      await srcSrv.stop(); // the source dies
      await assert.rejects(src.migDataRead(1 << 16), (e) => e instanceof VfioUserError && e.code === 'VFU_DISCONNECTED');
      dst.close(); // the migrator gives up: the destination must drop the partial stream
      const again = await VfioUserClient.connect(dstSrv.path);
      assert.equal(await again.getDeviceState(), S.STOP, 'stopped, not resumed with partial data');
      assert.equal((await again.read(2, 0, 1))[0], 0, 'outputs untouched');
      await again.setDeviceState(S.RUNNING);
      again.close();
    } finally {
      await srcSrv.stop();
      await dstSrv.stop();
    }
  });

  test('vfio-user migrate moves the GPIO device between two server processes', async () => {
    const srcSrv = await serveChild('gpio', ['--inputs=0x00f0']);
    const dstSrv = await serveChild('gpio');
    try {
      const c = await VfioUserClient.connect(srcSrv.path);
      await c.write(2, 0, Uint8Array.of(0xa5));
      await c.write(2, 4, Uint8Array.of(0x3c));
      await c.read(2, 2, 1); // enables the change-of-state interrupt
      c.close();
      const r = spawnSync(process.execPath, [CLI, 'migrate', `--from=${srcSrv.path}`, `--to=${dstSrv.path}`, '--json'], { encoding: 'utf8', timeout: 30000 });
      assert.equal(r.status, 0, r.stderr);
      const res = JSON.parse(r.stdout.trim().split('\n').pop()!);
      assert.ok(res.totalBytes > 0 && typeof res.downtimeMs === 'number');
      dstSrv.send('state');
      const st = await dstSrv.waitEvent('state');
      assert.equal(st.outputs, 0x3ca5);
      assert.equal(st.inputs, 0x00f0);
      assert.equal(st.irqEnabled, true);
    } finally {
      await srcSrv.stop();
      await dstSrv.stop();
    }
  });
});

void GpioDevice;

describe('migration data a destination buffers', () => {
  test('bounded by what the device takes: past it the stream is refused and its memory freed at once', async () => {
    const dev = new TestDevice();
    dev.migration!.maxStateBytes = 100_000;
    const server = new VfioUserServer(dev);
    const path = sockPath('migbound');
    server.listen(path);
    try {
      const c = await VfioUserClient.connect(path);
      await c.setDeviceState(S.STOP);
      await c.setDeviceState(S.RESUMING);
      const chunk = new Uint8Array(65536);
      chunk.set(new TextEncoder().encode('VFUMIG01'));
      let writes = 0;
      let refused: unknown;
      for (; writes < 100; writes++) {
        try {
          await c.migDataWrite(chunk);
        } catch (e) {
          refused = e;
          break;
        }
      }
      assert.ok(refused instanceof VfioUserError && refused.errno === 28, `refused with ENOSPC, got ${String(refused)}`);
      assert.ok(writes <= 3, `refused after ${writes} writes of 64 KiB (limit 100,000 + framing)`);
      assert.equal(server.migration!.resumeBytes, 0, 'buffered data freed when the stream was refused');
      assert.equal(await c.getDeviceState(), S.ERROR);
      await c.reset();
      // a stream that is not ours is refused at its first bytes
      await c.setDeviceState(S.STOP);
      await c.setDeviceState(S.RESUMING);
      await assert.rejects(c.migDataWrite(new Uint8Array(4096).fill(0x41)), (e) => e instanceof VfioUserError && e.errno === 22);
      assert.equal(server.migration!.resumeBytes, 0);
      assert.equal(await c.getDeviceState(), S.ERROR);
      c.close();
    } finally {
      server.close();
      dev.destroy();
    }
  });
});
