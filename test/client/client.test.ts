/**
 * The client library against our own server: every command, in-process (test device) and in a
 * child process (`vfio-user serve gpio`), including disconnects and reconnects.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import * as P from '../../src/protocol/index.js';
import { native, PROT_READ } from '../../src/native/index.js';
import { TestDevice } from '../server/testdev.js';
import { serveChild, sockPath, openFds, waitFor, processState, CLI } from '../helpers.js';
import { u32, u64, rd32, withServer, isCode, within } from './util.js';

/** counts the requests a client sends, by command */
function countRequests(c: VfioUserClient): Map<number, number> {
  const counts = new Map<number, number>();
  const orig = c.conn.request.bind(c.conn);
  c.conn.request = (cmd, payload, opts) => {
    counts.set(cmd, (counts.get(cmd) ?? 0) + 1);
    return orig(cmd, payload, opts);
  };
  const origPost = c.conn.post.bind(c.conn);
  c.conn.post = (cmd, payload, fds) => {
    counts.set(cmd, (counts.get(cmd) ?? 0) + 1);
    return origPost(cmd, payload, fds);
  };
  return counts;
}

async function deviceDma(c: VfioUserClient, cmd: number, iova: number, len: number): Promise<number> {
  await c.write(0, 0x08, u64(iova));
  await c.write(0, 0x10, u32(len));
  await c.write(0, 0x14, u32(cmd));
  return rd32(await c.read(0, 0x18, 4));
}

describe('client: connection and negotiation', () => {
  test('connect by path, with and without the twin socket, and by fd', async () => {
    const fds0 = openFds();
    await withServer(async ({ server: s, dev, path }) => {
      for (const twin of [true, false]) {
        const c = await VfioUserClient.connect(path, { twinSocket: twin });
        assert.equal(c.twinSocket, twin);
        assert.deepEqual(c.version, { major: 0, minor: 0 });
        assert.equal(c.maxDataXferSize, 1048576);
        assert.equal(c.serverCaps.writeMultiple, true);
        assert.ok(c.serverCaps.migration);
        const gone = once(s, 'disconnect');
        c.close();
        await gone;
      }
      const [a, b] = native.socketpair();
      s.close(); // a device is served by one server at a time
      const srv2 = new VfioUserServer(dev);
      srv2.serveFd(a);
      const c = await VfioUserClient.connect({ fd: b });
      assert.equal(c.path, undefined);
      await c.write(0, 0, u32(0x1234));
      assert.equal(dev.scratch, 0x1234);
      await assert.rejects(c.reconnect(), isCode('VFU_BAD_STATE'));
      c.close();
      srv2.close();
    });
    await waitFor(() => openFds() === fds0, 'no fd leaked (all closed)');
  });

  test('connecting to nothing fails with VFU_DISCONNECTED', async () => {
    await assert.rejects(VfioUserClient.connect(sockPath('none')), isCode('VFU_DISCONNECTED'));
  });
});

describe('client: device description', () => {
  test('device, regions (sparse areas, type cap), IRQs, config space with capability lists', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path);
      const di = await c.deviceInfo();
      assert.equal(di.numRegions, 10);
      assert.equal(di.numIrqs, 5);
      const regions = await c.regions();
      assert.equal(regions.length, 10);
      assert.deepEqual(
        regions.map((r) => r.size),
        [4096, 16384, 8192, 0, 0, 0, 0, 4096, 0, 4096],
      );
      assert.deepEqual(regions[1]!.sparseAreas, [
        { offset: 0, size: 4096 },
        { offset: 8192, size: 4096 },
      ]);
      assert.ok(regions[1]!.mappable && !regions[0]!.mappable);
      assert.deepEqual(regions[9]!.type, { type: 0x8086, subtype: 1 });
      const counts = [];
      for (let i = 0; i < di.numIrqs; i++) counts.push((await c.irqInfo(i)).count);
      assert.deepEqual(counts, [1, 4, 8, 1, 1]);
      const { bytes, decoded } = await c.config();
      assert.equal(bytes.length, 4096);
      assert.equal(decoded.vendorId, 0x1af4);
      assert.equal(decoded.deviceId, 0x10ff);
      assert.equal(decoded.revision, 2);
      const caps = decoded.capabilities.map((x) => x.name);
      assert.deepEqual(caps, ['Power Management', 'MSI', 'MSI-X', 'Express', 'Vendor Specific', 'Device Serial Number']);
      const msix = decoded.capabilities.find((x) => x.name === 'MSI-X')!;
      assert.equal(msix.fields.count, 8);
      assert.equal(msix.fields.table, 'BAR=2 offset=0x00000000');
      assert.equal(decoded.capabilities.find((x) => x.name === 'Device Serial Number')!.fields.serial, '0123456789abcdef');
      assert.equal(decoded.bars[2]!.kind, 'mem64');
      const io = await c.regionIoFds(0);
      assert.equal(io.reply.subRegions.length, 0);
      assert.equal(io.fds.length, 0);
      c.close();
    });
  });

  test('direct access: mmap of sparse areas; a trapped region is refused', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const mr = await c.mapRegion(1);
      assert.deepEqual(
        mr.areas.map((a) => [a.offset, a.size]),
        [
          [0, 4096],
          [8192, 4096],
        ],
      );
      mr.areas[1]!.bytes[3] = 0xab;
      assert.equal(dev.regions.get(1)!.memory![8192 + 3], 0xab);
      assert.deepEqual([...(await c.read(1, 8192 + 3, 1))], [0xab], 'the same bytes by message');
      mr.unmap();
      await assert.rejects(c.mapRegion(0), isCode('VFU_INVALID_ARGUMENT'));
      c.close();
    });
  });
});

describe('client: region access', () => {
  test('reads and writes are chunked by max_data_xfer_size', async () => {
    await withServer(
      async ({ dev, path }) => {
        const c = await VfioUserClient.connect(path);
        const counts = countRequests(c);
        const data = new Uint8Array(256).map((_, i) => 255 - i);
        await c.write(0, 0x100, data);
        assert.equal(counts.get(P.Command.REGION_WRITE), 4);
        assert.deepEqual(dev.buffer, data);
        assert.deepEqual(await c.read(0, 0x100, 256), data);
        assert.equal(counts.get(P.Command.REGION_READ), 4);
        assert.deepEqual(await c.read(0, 0x100 + 10, 100), data.subarray(10, 110));
        c.close();
      },
      { maxDataXferSize: 64 },
    );
  });

  test('posted writes are ordered before a later read', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const ps = [];
      for (let i = 1; i <= 500; i++) ps.push(c.write(0, 0, u32(i), { posted: true }));
      await Promise.all(ps);
      assert.equal(rd32(await c.read(0, 0, 4)), 500);
      assert.equal(dev.scratch, 500);
      c.close();
    });
  });

  test('batch(): small writes of one tick become one WRITE_MULTI, order kept with large writes', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const counts = countRequests(c);
      const b = c.batch();
      const ps = [];
      for (let i = 0; i < 32; i++) ps.push(b.write(0, 0x100 + i * 8, u64(i + 1)));
      assert.equal(b.queued, 32);
      await Promise.all(ps);
      assert.equal(counts.get(P.Command.REGION_WRITE_MULTI), 1);
      assert.equal(counts.get(P.Command.REGION_WRITE), undefined);
      assert.equal(b.messages, 1);
      for (let i = 0; i < 32; i++) assert.equal(dev.buffer[i * 8], i + 1);
      // a larger write flushes the queue first: the later 16-byte write wins
      void b.write(0, 0x100, u32(0xaaaaaaaa));
      void b.write(0, 0x100, new Uint8Array(16).fill(0x55));
      void b.write(0, 0x104, Uint8Array.of(0x66));
      await b.flush();
      assert.deepEqual([...dev.buffer.subarray(0, 6)], [0x55, 0x55, 0x55, 0x55, 0x66, 0x55]);
      // maxEntries splits; posted batches
      const small = c.batch({ maxEntries: 5, posted: true });
      for (let i = 0; i < 12; i++) void small.write(0, 0, u32(1000 + i));
      await small.flush();
      assert.equal(small.messages, 3);
      assert.equal(rd32(await c.read(0, 0, 4)), 1011);
      // writeMulti refuses entries over 8 bytes
      await assert.rejects(c.writeMulti([{ region: 0, offset: 0, data: new Uint8Array(9) }]), isCode('VFU_INVALID_ARGUMENT'));
      // a failed entry rejects its write and flush()
      const bad = c.batch();
      const p = bad.write(3, 0, u32(1));
      await assert.rejects(p, isCode('VFU_REMOTE_ERROR', 22));
      await assert.rejects(bad.flush(), isCode('VFU_REMOTE_ERROR', 22));
      c.close();
    });
  });

  test('batch() falls back to REGION_WRITE when the server lacks write_multiple', async () => {
    await withServer(
      async ({ dev, path }) => {
        const c = await VfioUserClient.connect(path);
        assert.equal(c.serverCaps.writeMultiple, false);
        const counts = countRequests(c);
        const b = c.batch();
        for (let i = 0; i < 4; i++) void b.write(0, 0x100 + i, Uint8Array.of(i + 7));
        await b.flush();
        assert.equal(counts.get(P.Command.REGION_WRITE_MULTI), undefined);
        assert.equal(counts.get(P.Command.REGION_WRITE), 4);
        assert.deepEqual([...dev.buffer.subarray(0, 4)], [7, 8, 9, 10]);
        c.close();
      },
      { writeMultiple: false },
    );
  });
});

describe('client: guest memory', () => {
  test('shared maps (fd), unmap, unmap-all', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const mem = new GuestMemory(1 << 20);
      await c.dmaMap(mem, 0x100000, { size: 0x80000 });
      await c.dmaMap(mem, 0x200000, { offset: 0x80000, size: 0x80000 });
      assert.equal(dev.dma.count, 2);
      dev.buffer.fill(0x42);
      assert.equal(await deviceDma(c, 1, 0x200000 + 0x10, 32), 0);
      assert.equal(mem.bytes[0x80010], 0x42);
      assert.equal(mem.bytes[0x80010 + 32], 0);
      await c.dmaUnmap(0x200000, 0x80000);
      assert.equal(c.dmaMaps.length, 1);
      assert.equal(await deviceDma(c, 1, 0x200000, 4), 14, 'EFAULT after unmap');
      await c.dmaUnmapAll();
      assert.equal(dev.dma.count, 0);
      assert.equal(c.dmaMaps.length, 0);
      c.close();
      mem.free();
    });
  });

  test('private memory: the client answers DMA_READ/WRITE (spec layout) bounds-checked, on both channels', async () => {
    for (const twin of [true, false]) {
      await withServer(async ({ server: s, dev, path }) => {
        const c = await VfioUserClient.connect(path, { twinSocket: twin });
        assert.equal(s.session!.dmaLayout, 'spec', 'our server uses the spec layout with our client');
        const mem = new GuestMemory(1 << 16);
        const ro = new GuestMemory(4096);
        await c.dmaMap(mem, 0x10000, { shared: false });
        await c.dmaMap(ro, 0x40000, { shared: false, prot: PROT_READ });
        const errors: unknown[] = [];
        c.on('dma-error', (e) => errors.push(e));
        dev.buffer.set([1, 2, 3, 4, 5, 6, 7, 8]);
        assert.equal(await deviceDma(c, 1, 0x10000 + 0xff8, 8), 0);
        assert.deepEqual([...mem.bytes.subarray(0xff8, 0x1000)], [1, 2, 3, 4, 5, 6, 7, 8]);
        mem.bytes.fill(0x77, 0x3000, 0x3000 + 256);
        assert.equal(await deviceDma(c, 2, 0x13000, 256), 0);
        assert.equal(dev.buffer[255], 0x77);
        // outside every map, across the end of a map, into read-only memory: refused
        assert.equal(await deviceDma(c, 1, 0x30000, 8), 14);
        assert.equal(await deviceDma(c, 1, 0x10000 + 0xfffc, 8), 14);
        ro.bytes[0] = 0x99;
        assert.equal(await deviceDma(c, 1, 0x40000, 8), 14, 'no DMA write to a read-only map');
        assert.equal(ro.bytes[0], 0x99);
        assert.equal(await deviceDma(c, 2, 0x40000, 8), 0, 'DMA read of a read-only map is fine');
        assert.equal(dev.buffer[0], 0x99);
        // our server checks its own map table first, so nothing out of bounds reached us
        // (the client's own checks are proven against a hostile server in hostile.test.ts)
        assert.deepEqual(errors, []);
        c.close();
        mem.free();
        ro.free();
      });
    }
  });

  test('dirty page logging report (DMA_LOGGING_START/REPORT/STOP)', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const mem = new GuestMemory(1 << 20);
      await c.dmaMap(mem, 0x100000);
      assert.equal(await c.probeFeature(P.DeviceFeature.DMA_LOGGING_START, P.DeviceFeatureFlags.SET), true);
      await c.dmaLoggingStart(4096, [{ iova: 0x100000, length: 1 << 20 }]);
      assert.equal(await deviceDma(c, 3, 0x103000, 4096 * 2), 0);
      const bm = await c.dmaLoggingReport(0x100000, 1 << 20, 4096);
      assert.equal(bm.length, 32);
      assert.equal(bm[0], 0b00011000);
      assert.equal(mem.bytes[0x3000], 0xa5);
      await c.dmaLoggingStop();
      assert.equal(dev.dma.loggingActive, false);
      c.close();
      mem.free();
    });
  });
});

describe('client: interrupts', () => {
  test('events, async iteration, mask/unmask, trigger, close ends iteration', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const { decoded } = await c.config();
      const msix = decoded.capabilities.find((x) => x.name === 'MSI-X')!;
      await c.write(7, msix.offset + 2, Uint8Array.of(0x07, 0x80));
      const irq = await c.enableIrqs(P.PciIrq.MSIX, 8);
      assert.equal(irq.eventfds.length, 8);
      assert.equal(c.irqs.length, 1);
      const seen: number[] = [];
      irq.on('irq', (v) => seen.push(v));
      const got: number[] = [];
      const iterating = (async () => {
        for await (const v of irq) {
          got.push(v);
          if (got.length === 3) break;
        }
      })();
      // one at a time: two eventfds ready in the same poll may be reported in either order
      await c.write(0, 0x20, u32(1));
      await waitFor(() => seen.length === 1, 'vector 1');
      await c.write(0, 0x20, u32(6));
      await waitFor(() => seen.length === 2, 'vector 6');
      await c.triggerIrq(P.PciIrq.MSIX, 2);
      await within(iterating, 2000, 'async iteration');
      assert.deepEqual(got, [1, 6, 2]);
      assert.deepEqual(seen, [1, 6, 2]);
      // masked vectors stay pending until unmasked
      await c.maskIrq(P.PciIrq.MSIX, 4);
      await c.write(0, 0x20, u32(4));
      await waitFor(() => dev.irqs.isPending(P.PciIrq.MSIX, 4), 'vector 4 pending');
      assert.equal(seen.includes(4), false);
      await c.unmaskIrq(P.PciIrq.MSIX, 4);
      assert.equal(await within(irq.next(), 2000, 'next'), 4);
      // a signal nobody pulled is kept for next()
      await c.write(0, 0x20, u32(7));
      await waitFor(() => seen.includes(7), 'vector 7 delivered');
      assert.equal(await irq.next(), 7);
      // close ends iteration and rejects waiters
      const waiting = irq.next();
      const iter2 = (async () => {
        const out: number[] = [];
        for await (const v of irq) out.push(v);
        return out;
      })();
      irq.close();
      await assert.rejects(waiting, isCode('VFU_BAD_STATE'));
      assert.deepEqual(await within(iter2, 1000, 'iteration end'), []);
      assert.equal(irq.state, 'closed');
      assert.equal(c.irqs.length, 0);
      await c.disableIrqs(P.PciIrq.MSIX);
      assert.equal(dev.irqs.enabled(P.PciIrq.MSIX, 0), false);
      c.close();
    });
  });

  test('INTx: automasked delivery, unmask to get it again', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const irq = await c.enableIrqs(P.PciIrq.INTX, 1);
      dev.setIrqLevel(true);
      assert.equal(await within(irq.next(), 2000, 'INTx'), 0);
      await c.unmaskIrq(P.PciIrq.INTX);
      assert.equal(await within(irq.next(), 2000, 'INTx again'), 0);
      dev.setIrqLevel(false);
      c.close();
      assert.equal(irq.state, 'detached');
      await assert.rejects(irq.next(), isCode('VFU_DISCONNECTED'));
    });
  });
});

describe('client: reset, features, migration', () => {
  test('reset, feature probes, device state, MIG_DATA streams between two servers', async () => {
    await withServer(async ({ dev, path }) => {
      await withServer(async ({ dev: dev2, path: path2 }) => {
        const src = await VfioUserClient.connect(path);
        const dst = await VfioUserClient.connect(path2, { maxDataXferSize: 4096 });
        await src.write(0, 0, u32(5));
        await src.reset();
        assert.equal(dev.scratch, 0);
        assert.equal(dev.resets, 1);
        const F = P.DeviceFeatureFlags;
        assert.equal(await src.probeFeature(P.DeviceFeature.MIGRATION, F.GET), true);
        assert.equal(await src.probeFeature(P.DeviceFeature.MIG_DEVICE_STATE, F.SET), true);
        assert.equal(await src.probeFeature(P.DeviceFeature.DMA_LOGGING_REPORT, F.GET), true);
        assert.equal(await src.probeFeature(P.DeviceFeature.MIGRATION, F.SET), false);
        assert.ok((await src.migrationFlags()) & 1n, 'STOP_COPY supported');
        await src.write(0, 0, u32(0xc0ffee));
        dev.buffer.fill(0x3c);
        const S = P.DeviceState;
        assert.equal(await src.setDeviceState(S.STOP_COPY), S.STOP_COPY);
        const chunks: Uint8Array[] = [];
        for await (const d of src.migDataStream(64)) chunks.push(d);
        assert.ok(chunks.length > 1, 'read in several chunks');
        const all = Buffer.concat(chunks);
        assert.equal(await dst.setDeviceState(S.RESUMING), S.RESUMING);
        await dst.migDataWrite(all);
        assert.equal(await dst.setDeviceState(S.RUNNING), S.RUNNING);
        assert.equal(dev2.scratch, 0xc0ffee);
        assert.equal(dev2.buffer[255], 0x3c);
        assert.equal(await src.setDeviceState(S.RUNNING), S.RUNNING);
        assert.equal(await src.getDeviceState(), S.RUNNING);
        src.close();
        dst.close();
      });
    });
  });
});

describe('client: disconnects and reconnects', () => {
  test('a server that dies fails pending requests with VFU_DISCONNECTED; nothing hangs or leaks', async () => {
    const fds0 = openFds();
    const srv = await serveChild('gpio');
    const c = await VfioUserClient.connect(srv.path);
    const irq = await c.enableIrqs(P.PciIrq.INTX, 1);
    const mem = new GuestMemory(1 << 16);
    await c.dmaMap(mem, 0);
    srv.child.kill('SIGSTOP');
    const pending: Promise<unknown>[] = [c.read(2, 1, 1), c.write(2, 0, Uint8Array.of(1)), c.deviceInfo()];
    const closed = once(c, 'close');
    const waitingIrq = irq.next();
    // the server hangs with our requests sent, then dies
    await waitFor(() => processState(srv.child.pid!) === 'T', 'server stopped');
    srv.child.kill('SIGKILL');
    for (const p of pending) await assert.rejects(within(p, 3000, 'pending request'), isCode('VFU_DISCONNECTED'));
    await assert.rejects(within(waitingIrq, 3000, 'irq wait'), isCode('VFU_DISCONNECTED'));
    await within(closed, 3000, 'close event');
    assert.equal(c.closed, true);
    await assert.rejects(c.read(2, 1, 1), isCode('VFU_DISCONNECTED'));
    await srv.stop();
    mem.free();
    await waitFor(() => openFds() === fds0, 'no fd leaked (all closed)');
  });

  test('reconnect to a restarted in-process server re-establishes maps and re-binds IRQ handles', async () => {
    const dev = new TestDevice();
    const path = sockPath('re');
    let server = new VfioUserServer(dev).listen(path);
    try {
      const c = await VfioUserClient.connect(path);
      const shared = new GuestMemory(1 << 16);
      const priv = new GuestMemory(1 << 16);
      await c.dmaMap(shared, 0x100000);
      await c.dmaMap(priv, 0x200000, { shared: false });
      const irq = await c.enableIrqs(P.PciIrq.INTX, 1);
      const other = await c.enableIrqs(P.PciIrq.ERR, 1);
      other.close(); // closed by the user: not re-enabled
      const events: number[] = [];
      irq.on('irq', (v) => events.push(v));
      const closed = once(c, 'close');
      server.close();
      await closed;
      assert.equal(irq.state, 'detached');
      assert.equal(dev.dma.count, 0);
      server = new VfioUserServer(dev).listen(path);
      const rebound = once(irq, 'rebound');
      const c2 = await c.reconnect({ waitMs: 2000 });
      const [who] = await rebound;
      assert.equal(who, c2);
      assert.equal(irq.state, 'active');
      assert.deepEqual(c2.irqs, [irq]);
      assert.equal(dev.dma.count, 2);
      assert.equal(dev.irqs.enabled(P.PciIrq.INTX, 0), true);
      assert.equal(dev.irqs.enabled(P.PciIrq.ERR, 0), false);
      // the old listener still hears the re-bound vector; next() works again
      await c2.write(0, 0x20, u32(0xffff));
      assert.equal(await within(irq.next(), 2000, 'INTx after reconnect'), 0);
      assert.deepEqual(events, [0]);
      // both kinds of maps work again
      dev.buffer.fill(0x5e);
      assert.equal(await deviceDma(c2, 1, 0x100000, 16), 0);
      assert.equal(await deviceDma(c2, 1, 0x200000, 16), 0);
      assert.equal(shared.bytes[15], 0x5e);
      assert.equal(priv.bytes[15], 0x5e);
      c2.close();
      shared.free();
      priv.free();
    } finally {
      server.close();
      dev.destroy();
    }
  });

  test('reconnect to a restarted `vfio-user serve gpio` process (killed with SIGKILL)', async () => {
    const path = sockPath('gpio-re');
    const start = async (): Promise<ChildProcess> => {
      const child = spawn(process.execPath, [CLI, 'serve', 'gpio', `--socket-path=${path}`, '-q'], { stdio: ['pipe', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      await waitFor(() => out.includes('"ready"'), 'server ready');
      return child;
    };
    let child = await start();
    try {
      const c = await VfioUserClient.connect(path);
      const irq = await c.enableIrqs(P.PciIrq.INTX, 1);
      child.kill('SIGKILL');
      await once(c, 'close');
      assert.equal(irq.state, 'detached');
      const reconnecting = c.reconnect({ waitMs: 10000 });
      child = await start();
      const c2 = await reconnecting;
      assert.equal(irq.state, 'active');
      // enable the change-of-state interrupt (read 0x2), change the inputs from the host side
      await c2.read(2, 2, 1);
      child.stdin!.write('inputs 0x0003\n');
      assert.equal(await within(irq.next(), 3000, 'gpio INTx'), 0);
      assert.deepEqual([...(await c2.read(2, 1, 1))], [3]);
      c2.close();
    } finally {
      child.kill('SIGTERM');
    }
  });
});
