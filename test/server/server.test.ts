/**
 * The server over a real socket, driven by our client: every command and capability.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import { decodeConfig } from '../../src/client/pci-decode.js';
import { VfioUserError } from '../../src/errors.js';
import * as P from '../../src/protocol/index.js';
import { native } from '../../src/native/index.js';
import { Connection, closeFds } from '../../src/transport/connection.js';
import { TestDevice } from './testdev.js';
import { sockPath, delay, u32, u64, rd32, withServer, waitFor } from '../helpers.js';


function remoteErrno(e: unknown): number {
  assert.ok(e instanceof VfioUserError, `expected VfioUserError, got ${String(e)}`);
  assert.equal(e.code, 'VFU_REMOTE_ERROR');
  return e.errno;
}

describe('server: negotiation', () => {
  test('QEMU-style 0.0 proposal gets 0.0 and the advertised capabilities', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path, { twinSocket: false });
      assert.deepEqual(c.version, { major: 0, minor: 0 });
      assert.equal(c.serverCaps.maxDataXferSize, 1048576);
      assert.equal(c.serverCaps.maxMsgFds, 16);
      assert.equal(c.serverCaps.maxDmaMaps, 65535);
      assert.equal(c.serverCaps.pgsizes, 4096n);
      assert.equal(c.serverCaps.writeMultiple, true);
      assert.ok(c.serverCaps.migration, 'migration capability for a migratable device');
      assert.equal(c.twinSocket, false);
      c.close();
    });
  });

  test('a client proposing a higher minor gets our minor', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path, { minor: 7 });
      assert.deepEqual(c.version, { major: 0, minor: 0 });
      c.close();
    });
  });

  test('twin socket is set up when the client supports it', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path, { twinSocket: true });
      assert.equal(c.twinSocket, true);
      c.close();
    });
  });

  test('commands before VERSION are refused, and a second VERSION too', async () => {
    await withServer(async ({ path }) => {
      const { Connection } = await import('../../src/transport/connection.js');
      const { connectPath } = await import('../../src/transport/socket.js');
      const conn = new Connection(connectPath(path));
      await assert.rejects(conn.request(P.Command.DEVICE_GET_INFO, P.encodeDeviceGetInfoRequest({})), (e) => remoteErrno(e) === 22);
      await conn.request(P.Command.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} }));
      await assert.rejects(
        conn.request(P.Command.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} })),
        (e) => remoteErrno(e) === 22,
      );
      await assert.rejects(
        new Connection(connectPath(path)).request(P.Command.VERSION, P.encodeVersionRequest({ major: 1, minor: 0, capabilities: {} })),
        (e) => e instanceof VfioUserError,
      );
      conn.close();
    });
  });

  test('a client max_data_xfer_size below 512 bytes is refused at VERSION (0 used to mean endless 0-byte DMA)', async () => {
    await withServer(async ({ path, ended }) => {
      for (const [i, size] of [0, 1, 511].entries()) {
        const conn = new Connection(native.connect(path));
        await assert.rejects(
          conn.request(P.Command.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: { maxDataXferSize: size } })),
          (e) => remoteErrno(e) === 22,
          `max_data_xfer_size ${size}`,
        );
        // the same connection may try again with a usable value
        // libvfio-user's sample client proposes 1024: accepted
        await conn.request(P.Command.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: { maxDataXferSize: 1024 } }));
        conn.close();
        await waitFor(() => ended() === i + 1, 'session ended'); // the next connection is served, not queued
      }
    });
  });
});

describe('server: device description', () => {
  let server: VfioUserServer;
  let dev: TestDevice;
  let c: VfioUserClient;
  const path = sockPath('desc');
  before(async () => {
    dev = new TestDevice();
    server = new VfioUserServer(dev);
    server.listen(path);
    c = await VfioUserClient.connect(path);
  });
  after(() => {
    c.close();
    server.close();
    dev.destroy();
  });

  test('DEVICE_GET_INFO', async () => {
    const di = await c.deviceInfo();
    assert.equal(di.numRegions, 10);
    assert.equal(di.numIrqs, 5);
    assert.ok(di.flags & P.DeviceInfoFlags.PCI);
    assert.ok(di.flags & P.DeviceInfoFlags.RESET);
  });

  test('GET_REGION_INFO: trapped, shared with sparse areas, typed, config, absent', async () => {
    const r0 = await c.regionInfo(0);
    assert.equal(r0.size, 4096);
    assert.ok(r0.readable && r0.writable && !r0.mappable);
    const r1 = await c.regionInfo(1);
    assert.equal(r1.size, 16384);
    assert.ok(r1.mappable);
    assert.deepEqual(r1.sparseAreas, [
      { offset: 0, size: 4096 },
      { offset: 8192, size: 4096 },
    ]);
    const r9 = await c.regionInfo(9);
    assert.deepEqual(r9.type, { type: 0x8086, subtype: 1 });
    const cfg = await c.regionInfo(7);
    assert.equal(cfg.size, 4096);
    const r4 = await c.regionInfo(4);
    assert.equal(r4.size, 0);
    await assert.rejects(c.regionInfo(10), (e) => remoteErrno(e) === 22);
  });

  test('GET_REGION_INFO with a small argsz returns the needed size', async () => {
    const m = await c.conn.request(P.Command.DEVICE_GET_REGION_INFO, P.encodeRegionInfoRequest({ argsz: 32, index: 1 }), { expectFds: true });
    assert.equal(m.fds.length, 0, 'no fd with a truncated reply');
    const info = P.decodeRegionInfoReply(m.payload);
    assert.ok(info.argsz > 32);
    assert.ok(info.truncated);
    // as QEMU asks first (argsz 32): no CAPS flag without the caps, no MMAP flag without the fd
    assert.equal(info.flags & P.RegionInfoFlags.CAPS, 0, 'no CAPS flag in a short reply');
    assert.equal(info.capOffset, 0);
    assert.equal(info.flags & P.RegionInfoFlags.MMAP, 0, 'no MMAP flag without the fd');
    // then with the size the reply asked for: everything, and the fd
    const full = await c.conn.request(P.Command.DEVICE_GET_REGION_INFO, P.encodeRegionInfoRequest({ argsz: info.argsz, index: 1 }), { expectFds: true });
    const fi = P.decodeRegionInfoReply(full.payload);
    assert.equal(full.fds.length, 1);
    assert.ok(fi.flags & P.RegionInfoFlags.MMAP && fi.flags & P.RegionInfoFlags.CAPS);
    assert.ok(fi.capOffset >= 32 && fi.capOffset < fi.argsz);
    closeFds(full.fds);
  });

  test('mmap of sparse areas shares memory with the device', async () => {
    const mr = await c.mapRegion(1);
    assert.equal(mr.areas.length, 2);
    mr.areas[0]!.bytes[10] = 0x42;
    assert.equal(dev.regions.get(1)!.memory![10], 0x42);
    dev.regions.get(1)!.memory![8192 + 5] = 0x99;
    assert.equal(mr.areas[1]!.bytes[5], 0x99);
    // the trapped page in between is reachable by message
    const v = await c.read(1, 4096, 1);
    assert.equal(v[0], 0x77);
    mr.unmap();
    assert.equal(mr.areas[0]!.bytes.length, 0, 'views are detached after unmap');
  });

  test('GET_IRQ_INFO reports counts and flags', async () => {
    const expect = [1, 4, 8, 1, 1];
    for (let i = 0; i < 5; i++) {
      const ii = await c.irqInfo(i);
      assert.equal(ii.count, expect[i]);
      assert.ok(ii.flags & P.IrqInfoFlags.EVENTFD);
      assert.ok(ii.flags & P.IrqInfoFlags.MASKABLE);
    }
    assert.ok((await c.irqInfo(0)).flags & P.IrqInfoFlags.AUTOMASKED);
    await assert.rejects(c.irqInfo(5), (e) => remoteErrno(e) === 22);
  });

  test('config space: IDs, capabilities, BAR sizing of a 64-bit prefetchable BAR', async () => {
    const cfg = decodeConfig(await c.read(7, 0, 4096));
    assert.equal(cfg.vendorId, 0x1af4);
    assert.equal(cfg.deviceId, 0x10ff);
    assert.equal(cfg.classCode, 0x058000);
    const names = cfg.capabilities.map((x) => x.name);
    for (const n of ['Power Management', 'MSI', 'MSI-X', 'Express', 'Vendor Specific', 'Device Serial Number']) assert.ok(names.includes(n), n);
    await c.write(7, 0x18, u32(0xffffffff));
    await c.write(7, 0x1c, u32(0xffffffff));
    const lo = rd32(await c.read(7, 0x18, 4));
    const hi = rd32(await c.read(7, 0x1c, 4));
    assert.equal(lo, (0xffffe000 | 0xc) >>> 0, 'size 8K, 64-bit, prefetchable');
    assert.equal(hi, 0xffffffff);
    // read-only vendor id
    await c.write(7, 0, u32(0));
    assert.equal(rd32(await c.read(7, 0, 4)), 0x10ff1af4);
  });
});

describe('server: region access', () => {
  test('read, write, posted writes, WRITE_MULTI, chunking, ordering of async handlers', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      await c.write(0, 0, u32(0xdeadbeef));
      assert.equal(dev.scratch, 0xdeadbeef);
      assert.equal(rd32(await c.read(0, 0, 4)), 0xdeadbeef);
      // posted writes are processed in order before a later read
      for (let i = 0; i < 100; i++) await c.write(0, 0, u32(i), { posted: true });
      assert.equal(rd32(await c.read(0, 0, 4)), 99);
      await c.writeMulti([
        { region: 0, offset: 0x100, data: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) },
        { region: 0, offset: 0x108, data: Uint8Array.of(9) },
      ]);
      assert.deepEqual([...dev.buffer.subarray(0, 9)], [1, 2, 3, 4, 5, 6, 7, 8, 9]);
      // async handler: a write then reads, pipelined, stay in order
      const [, r1, r2] = await Promise.all([c.write(0, 0x800, u32(0)), c.read(0, 0x800, 4), c.read(0, 0x800, 4)]);
      assert.equal(rd32(r1), 101);
      assert.equal(rd32(r2), 102);
      // device-specific region
      assert.deepEqual([...(await c.read(9, 0, 3))], [0x5a, 0x5a, 0x5a]);
      c.close();
    });
  });

  test('max_data_xfer_size is honoured and the client chunks', async () => {
    await withServer(
      async ({ dev, path }) => {
        const c = await VfioUserClient.connect(path);
        assert.equal(c.maxDataXferSize, 64);
        const data = new Uint8Array(256).map((_, i) => i);
        await c.write(0, 0x100, data);
        assert.deepEqual(dev.buffer, data);
        assert.deepEqual(await c.read(0, 0x100, 256), data);
        // a single oversized request is refused
        await assert.rejects(
          c.conn.request(P.Command.REGION_READ, P.encodeRegionReadRequest({ offset: 0x100, region: 0, count: 128 })),
          (e) => remoteErrno(e) === 22,
        );
        c.close();
      },
      { maxDataXferSize: 64 },
    );
  });

  test('bad accesses get errors and the server keeps serving', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path);
      await assert.rejects(c.read(0, 4094, 4), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.read(3, 0, 4), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.read(200, 0, 4), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.read(7, 4095, 2), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.write(9, 0, u32(1)), (e) => remoteErrno(e) === 22, 'region 9 has no write handler');
      assert.equal(rd32(await c.read(0, 0, 4)), 0);
      c.close();
    });
  });
});

describe('server: interrupts', () => {
  test('eventfd triggers, masking with pending delivery, disable, client trigger', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      // enable MSI-X in config space so the table does not mask vectors
      const cfg = decodeConfig(await c.read(7, 0, 256));
      const msix = cfg.capabilities.find((x) => x.name === 'MSI-X')!;
      await c.write(7, msix.offset + 2, Uint8Array.of(0x07, 0x80));
      const irq = await c.enableIrqs(P.PciIrq.MSIX, 8);
      await c.write(0, 0x20, u32(3));
      assert.equal(await irq.next(), 3);
      // masked: becomes pending, delivered on unmask
      await c.maskIrq(P.PciIrq.MSIX, 5);
      await c.write(0, 0x20, u32(5));
      assert.equal(dev.irqs.isPending(P.PciIrq.MSIX, 5), true);
      // the PBA shows it
      const pba = await c.read(2, 4096, 8);
      assert.equal(pba[0]! & (1 << 5), 1 << 5);
      await c.unmaskIrq(P.PciIrq.MSIX, 5);
      assert.equal(await irq.next(), 5);
      assert.equal(dev.irqs.isPending(P.PciIrq.MSIX, 5), false);
      // the client can trigger a vector itself (DATA_BOOL)
      await c.setIrqs(P.PciIrq.MSIX, P.SetIrqsFlags.DATA_BOOL | P.SetIrqsFlags.ACTION_TRIGGER, 0, 2, Uint8Array.of(0, 1));
      assert.equal(await irq.next(), 1);
      // disable all
      await c.disableIrqs(P.PciIrq.MSIX);
      assert.equal(dev.irqs.enabled(P.PciIrq.MSIX, 3), false);
      c.close();
    });
  });

  test('MSI per-vector mask in config space: masked vectors pend (pending bit shown) and fire on unmask', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const cfg = decodeConfig(await c.read(7, 0, 256));
      const msi = cfg.capabilities.find((x) => x.name === 'MSI')!;
      // 64-bit MSI with per-vector masking: control +2, mask at +0x10, pending at +0x14
      await c.write(7, msi.offset + 2, Uint8Array.of(0x21, 0x01)); // enable, 4 vectors (MME=2)
      await c.write(7, msi.offset + 0x10, u32(0b0010)); // mask vector 1
      const irq = await c.enableIrqs(P.PciIrq.MSI, 4);
      dev.trigger(P.PciIrq.MSI, 1);
      assert.equal(dev.irqs.isPending(P.PciIrq.MSI, 1), true);
      assert.equal(rd32(await c.read(7, msi.offset + 0x14, 4)), 0b0010, 'pending bit visible in config space');
      dev.trigger(P.PciIrq.MSI, 2);
      assert.equal(await irq.next(), 2, 'unmasked vectors fire');
      await c.write(7, msi.offset + 0x10, u32(0));
      assert.equal(await irq.next(), 1, 'delivered on unmask');
      assert.equal(rd32(await c.read(7, msi.offset + 0x14, 4)), 0);
      c.close();
    });
  });

  test('MSI-X table driven by the client: entry masks gate delivery, the PBA shows pending, unmask delivers', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const cfg = decodeConfig(await c.read(7, 0, 256));
      const msix = cfg.capabilities.find((x) => x.name === 'MSI-X')!;
      await c.write(7, msix.offset + 2, Uint8Array.of(0x07, 0x80)); // enable
      const irq = await c.enableIrqs(P.PciIrq.MSIX, 8);
      // the table (BAR2 at 0, 16 bytes per entry): program and unmask entry 6 only
      await c.write(2, 6 * 16 + 12, u32(0));
      dev.trigger(P.PciIrq.MSIX, 6);
      assert.equal(await irq.next(), 6);
      dev.trigger(P.PciIrq.MSIX, 5); // entry 5 still has its reset mask bit
      assert.equal(dev.irqs.isPending(P.PciIrq.MSIX, 5), true);
      assert.equal((await c.read(2, 4096, 1))[0]! & (1 << 5), 1 << 5, 'PBA bit 5');
      await c.write(2, 5 * 16 + 12, u32(0));
      assert.equal(await irq.next(), 5, 'delivered when the entry is unmasked');
      assert.equal((await c.read(2, 4096, 1))[0]! & (1 << 5), 0);
      // the function mask holds everything back
      await c.write(7, msix.offset + 2, Uint8Array.of(0x07, 0xc0));
      dev.trigger(P.PciIrq.MSIX, 6);
      assert.equal(dev.irqs.isPending(P.PciIrq.MSIX, 6), true);
      await c.write(7, msix.offset + 2, Uint8Array.of(0x07, 0x80));
      assert.equal(await irq.next(), 6);
      c.close();
    });
  });

  test('INTx is automasked and redelivered at unmask while the level is high; the client trigger is a loopback', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const irq = await c.enableIrqs(P.PciIrq.INTX, 1);
      dev.setIrqLevel(true);
      assert.equal(await irq.next(), 0);
      assert.equal(dev.irqs.isMasked(0, 0), true, 'automasked after delivery');
      // SET_IRQS TRIGGER from the client (DATA_NONE, DATA_BOOL [1]) signals even while masked
      const timeout = (what: string): Promise<never> => new Promise((_, rej) => setTimeout(() => rej(new Error(`${what}: no interrupt`)), 3000).unref());
      await c.triggerIrq(P.PciIrq.INTX, 0);
      assert.equal(await Promise.race([irq.next(), timeout('DATA_NONE')]), 0);
      await c.setIrqs(P.PciIrq.INTX, P.SetIrqsFlags.DATA_BOOL | P.SetIrqsFlags.ACTION_TRIGGER, 0, 1, Uint8Array.of(1));
      assert.equal(await Promise.race([irq.next(), timeout('DATA_BOOL')]), 0);
      assert.equal(dev.irqs.isMasked(0, 0), true, 'still masked');
      assert.equal(dev.irqs.isPending(0, 0), false);
      await c.unmaskIrq(P.PciIrq.INTX, 0);
      assert.equal(await irq.next(), 0, 'level still high: delivered again');
      dev.setIrqLevel(false);
      await c.unmaskIrq(P.PciIrq.INTX, 0);
      c.close();
    });
  });

  test('invalid SET_IRQS requests are refused and their fds closed', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path);
      const F = P.SetIrqsFlags;
      await assert.rejects(c.setIrqs(P.PciIrq.MSIX, F.DATA_NONE | F.ACTION_TRIGGER, 6, 4), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.setIrqs(9, F.DATA_NONE | F.ACTION_TRIGGER, 0, 1), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.setIrqs(P.PciIrq.ERR, F.DATA_NONE | F.ACTION_TRIGGER, 0, 2), (e) => remoteErrno(e) === 22);
      const fd = native.eventfd(0, false);
      await assert.rejects(c.setIrqs(P.PciIrq.MSIX, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 2, undefined, [fd]), (e) => remoteErrno(e) === 22);
      native.close(fd);
      c.close();
    });
  });
});

describe('server: DMA', () => {
  test('shared memory: device reads and writes guest memory; EEXIST; unmap; unmap all', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const mem = new GuestMemory(1 << 20);
      await c.dmaMap(mem, 0x100000, { offset: 0, size: 0x80000 });
      await c.dmaMap(mem, 0x200000, { offset: 0x80000, size: 0x80000 });
      assert.equal(dev.dma.count, 2);
      assert.equal(dev.dma.fileCount, 1, 'one mapping for one file');
      await assert.rejects(c.dmaMap(mem, 0x100000 + 4096, { offset: 0, size: 4096 }), (e) => remoteErrno(e) === 17);
      await assert.rejects(c.dmaMap(mem, 0x300100, { offset: 0, size: 4096 }), (e) => remoteErrno(e) === 22, 'iova not page-aligned');
      await assert.rejects(c.dmaMap(mem, 0x300000, { offset: 0, size: 100 }), (e) => remoteErrno(e) === 22, 'size not page-aligned');
      // device writes 16 bytes to 0x200010 (guest offset 0x80010)
      dev.buffer.set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
      await c.write(0, 0x08, u64(0x200010));
      await c.write(0, 0x10, u32(16));
      await c.write(0, 0x14, u32(1));
      assert.equal(rd32(await c.read(0, 0x18, 4)), 0);
      assert.deepEqual([...mem.bytes.subarray(0x80010, 0x80020)], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
      // device reads guest memory
      mem.bytes.set([9, 9, 9], 0x1000);
      await c.write(0, 0x08, u64(0x101000));
      await c.write(0, 0x10, u32(3));
      await c.write(0, 0x14, u32(2));
      assert.deepEqual([...dev.buffer.subarray(0, 3)], [9, 9, 9]);
      // outside the maps: EFAULT, nothing touched
      await c.write(0, 0x08, u64(0x17fff0));
      await c.write(0, 0x10, u32(64));
      await c.write(0, 0x14, u32(1));
      assert.equal(rd32(await c.read(0, 0x18, 4)), 14);
      // VFIO type1 unmap semantics: cutting a map in two is refused, covering none is fine
      await assert.rejects(c.dmaUnmap(0x100000, 0x1000), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.dmaUnmap(0x0, 0x140000), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.dmaUnmap(0x140000, 0x100000), (e) => remoteErrno(e) === 22, "the end of one map and the start of the next");
      assert.equal(dev.dma.count, 2);
      await c.dmaUnmap(0x100000, 0x80000);
      await c.dmaUnmap(0x100000, 0x80000);
      assert.equal(dev.dma.count, 1);
      await c.dmaUnmapAll();
      assert.equal(dev.dma.count, 0);
      assert.equal(dev.dma.fileCount, 0);
      c.close();
      mem.free();
    });
  });

  test('vIOMMU switch as QEMU does it: range unmaps, 64-bit IOVAs, and the old addresses are refused after', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const mem = new GuestMemory(1 << 20);
      const dma = async (addr: number | bigint, len: number, cmd: number): Promise<number> => {
        await c.write(0, 0x08, u64(addr));
        await c.write(0, 0x10, u32(len));
        await c.write(0, 0x14, u32(cmd));
        return rd32(await c.read(0, 0x18, 4));
      };
      // no IOMMU: guest RAM is mapped at its physical addresses, in pieces (like QEMU's sections)
      await c.dmaMap(mem, 0, { offset: 0, size: 0xa0000 });
      await c.dmaMap(mem, 0xc0000, { offset: 0xc0000, size: 0x40000 });
      dev.buffer.fill(0x11, 0, 16);
      assert.equal(await dma(0x5000, 16, 1), 0, 'the device reaches guest page 5 before the switch');
      assert.equal(mem.bytes[0x5000], 0x11);
      // the guest turns its IOMMU on: QEMU unmaps big ranges covering several maps, or none
      await c.dmaUnmap(0, 0xfee00000);
      await c.dmaUnmap(0xfef00000n, 2n ** 64n - 0xfef00000n);
      assert.equal(dev.dma.count, 0, 'every map inside the ranges is gone');
      assert.equal(c.dmaMaps.length, 0, 'and the client forgot them too');
      // then maps only what the guest's driver set up, at IOVAs anywhere in 64 bits
      const hi = 0xffffffff01100000n;
      await c.dmaMap(mem, hi, { offset: 0x8000, size: 0x2000 });
      await c.dmaMap(mem, 2n ** 64n - 0x1000n, { offset: 0xa000, size: 0x1000, shared: false }); // ends at 2^64, by messages
      assert.equal(dev.dma.count, 2);
      // isolation: what was reachable before the switch is refused now, and nothing is written
      mem.bytes.fill(0, 0x5000, 0x5010);
      dev.buffer.fill(0x22, 0, 16);
      assert.equal(await dma(0x5000, 16, 1), 14, 'EFAULT: page 5 is no longer mapped');
      assert.equal(mem.bytes[0x5000], 0, 'nothing written');
      assert.equal(await dma(hi - 0x1000n, 16, 2), 14, 'nor the page below the new map');
      // the new maps work at full 64-bit addresses, byte offsets included, across a page
      assert.equal(await dma(hi + 0x0ff8n, 16, 1), 0);
      assert.deepEqual([...mem.bytes.subarray(0x8ff8, 0x9008)], new Array(16).fill(0x22));
      mem.bytes.set([1, 2, 3], 0xa007);
      assert.equal(await dma(2n ** 64n - 0x1000n + 7n, 3, 2), 0, 'DMA_READ at the top of the address space');
      assert.deepEqual([...dev.buffer.subarray(0, 3)], [1, 2, 3]);
      assert.equal(await dma(2n ** 64n - 3n, 4, 2), 14, 'past 2^64: refused');
      // a range that would cut a map in two is refused and removes nothing
      await assert.rejects(c.dmaUnmap(hi, 0x1000), (e) => remoteErrno(e) === 22);
      assert.equal(dev.dma.count, 2);
      await c.dmaUnmap(hi - 0x100000n, 0x200000n);
      assert.equal(dev.dma.count, 1);
      await c.dmaUnmapAll();
      c.close();
      mem.free();
    });
  });

  test('memory without an fd is reached with DMA_READ/DMA_WRITE messages (twin socket and main socket)', async () => {
    for (const twin of [true, false]) {
      await withServer(async ({ dev, path }) => {
        const c = await VfioUserClient.connect(path, { twinSocket: twin });
        assert.equal(c.twinSocket, twin);
        const mem = new GuestMemory(1 << 16);
        await c.dmaMap(mem, 0x10000, { shared: false });
        dev.buffer.fill(0x3c);
        await c.write(0, 0x08, u64(0x10100));
        await c.write(0, 0x10, u32(200));
        await c.write(0, 0x14, u32(1));
        assert.equal(rd32(await c.read(0, 0x18, 4)), 0);
        assert.equal(mem.bytes[0x100], 0x3c);
        assert.equal(mem.bytes[0x100 + 199], 0x3c);
        assert.equal(mem.bytes[0x100 + 200], 0);
        mem.bytes.fill(0x11, 0x2000, 0x2000 + 50);
        await c.write(0, 0x08, u64(0x12000));
        await c.write(0, 0x10, u32(50));
        await c.write(0, 0x14, u32(2));
        assert.equal(dev.buffer[49], 0x11);
        c.close();
        mem.free();
      });
    }
  });

  test('dirty page logging: start, report with bit replication, stop', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const mem = new GuestMemory(1 << 20);
      await c.dmaMap(mem, 0x100000);
      await c.dmaLoggingStart(4096, [{ iova: 0x100000, length: 1 << 20 }]);
      // device writes pages 2 and 5 through views
      await c.write(0, 0x08, u64(0x102000));
      await c.write(0, 0x10, u32(10));
      await c.write(0, 0x14, u32(3));
      await c.write(0, 0x08, u64(0x105ff0));
      await c.write(0, 0x10, u32(0x20));
      await c.write(0, 0x14, u32(3));
      const bm = await c.dmaLoggingReport(0x100000, 1 << 20, 4096);
      assert.equal(bm.length, 32);
      assert.equal(bm[0], (1 << 2) | (1 << 5) | (1 << 6));
      // reported bits are cleared
      const again = await c.dmaLoggingReport(0x100000, 1 << 20, 4096);
      assert.equal(again[0], 0);
      // a coarser page size folds pages
      await c.write(0, 0x14, u32(3));
      const coarse = await c.dmaLoggingReport(0x100000, 1 << 20, 16384);
      assert.equal(coarse[0], 0b10, "pages 5 and 6 fold into 16K page 1");
      // DMA_UNMAP with GET_DIRTY_BITMAP (libvfio-user's form): the region's bitmap, then the unmap
      await c.write(0, 0x08, u64(0x101000));
      await c.write(0, 0x10, u32(1));
      await c.write(0, 0x14, u32(3));
      const mem2 = new GuestMemory(1 << 16);
      await c.dmaMap(mem2, 0x300000);
      await assert.rejects(c.dmaUnmapDirty(0x300000, 1 << 16, 4096), (e) => remoteErrno(e) === 22, 'outside the logged range');
      const unmapped = await c.dmaUnmapDirty(0x100000, 1 << 20, 4096);
      assert.equal(unmapped.length, 32, '256 pages in u64 words');
      assert.equal(unmapped[0], 0b10, 'page 1 dirty');
      assert.equal(dev.dma.regionAt(0x100000), undefined, 'and unmapped');
      await c.dmaLoggingStop();
      await assert.rejects(c.dmaUnmapDirty(0x300000, 1 << 16, 4096), (e) => remoteErrno(e) === 22, 'logging stopped');
      mem2.free();
      await assert.rejects(c.dmaLoggingReport(0x100000, 4096, 4096), (e) => remoteErrno(e) === 22);
      assert.equal(dev.dma.loggingActive, false);
      c.close();
      mem.free();
    });
  });
});

describe('server: reset, features, migration', () => {
  test('DEVICE_RESET and FLR reset the device', async () => {
    await withServer(async ({ dev, path }) => {
      const c = await VfioUserClient.connect(path);
      await c.write(0, 0, u32(5));
      await c.reset();
      assert.equal(dev.scratch, 0);
      assert.equal(dev.resets, 1);
      const cfg = decodeConfig(await c.read(7, 0, 256));
      const exp = cfg.capabilities.find((x) => x.name === 'Express')!;
      await c.write(7, exp.offset + 8, Uint8Array.of(0x00, 0x80)); // device control: initiate FLR
      assert.equal(dev.resets, 2);
      c.close();
    });
  });

  test('DEVICE_FEATURE probe/get/set and clear errors', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path);
      const F = P.DeviceFeatureFlags;
      assert.equal(await c.probeFeature(P.DeviceFeature.MIGRATION, F.GET), true);
      assert.equal(await c.probeFeature(P.DeviceFeature.MIGRATION, F.SET), false);
      assert.equal(await c.probeFeature(P.DeviceFeature.DMA_LOGGING_START, F.SET), true);
      assert.equal(await c.probeFeature(3, F.GET), false);
      assert.equal((await c.migrationFlags()) & 5n, 5n);
      assert.equal(await c.getDeviceState(), P.DeviceState.RUNNING);
      c.close();
    });
  });

  test('migration state machine: arcs, complex paths, refused arcs, ERROR only left by reset', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path);
      const S = P.DeviceState;
      assert.equal(await c.setDeviceState(S.STOP), S.STOP);
      // in STOP a (next) client may give the device memory before resuming it; in STOP_COPY not
      const mem = new GuestMemory(4096);
      await c.dmaMap(mem, 0);
      await c.dmaUnmap(0, 4096);
      assert.equal(await c.setDeviceState(S.RUNNING), S.RUNNING);
      assert.equal(await c.setDeviceState(S.STOP_COPY), S.STOP_COPY, 'RUNNING -> STOP -> STOP_COPY');
      await assert.rejects(c.dmaMap(mem, 0), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.setDeviceState(S.PRE_COPY), (e) => remoteErrno(e) === 22);
      assert.equal(await c.setDeviceState(S.RUNNING), S.RUNNING);
      assert.equal(await c.setDeviceState(S.PRE_COPY), S.PRE_COPY);
      assert.equal(await c.setDeviceState(S.RESUMING), S.RESUMING, 'PRE_COPY -> RUNNING -> STOP -> RESUMING');
      await assert.rejects(c.migDataWrite(Uint8Array.of(1, 2, 3)), (e) => remoteErrno(e) === 22, 'garbage is refused as it arrives');
      await assert.rejects(c.setDeviceState(S.STOP), (e) => remoteErrno(e) === 22, 'and the device stays in ERROR');
      assert.equal(await c.getDeviceState(), S.ERROR);
      await assert.rejects(c.setDeviceState(S.RUNNING), (e) => remoteErrno(e) === 22);
      await assert.rejects(c.setDeviceState(S.RUNNING_P2P), (e) => remoteErrno(e) === 22);
      await c.reset();
      assert.equal(await c.getDeviceState(), S.RUNNING);
      c.close();
      mem.free();
    });
  });
});

describe('server: sessions', () => {
  test('disconnect unmaps DMA and closes IRQ fds, keeps state, accepts the next client', async () => {
    await withServer(async ({ server: s, dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const mem = new GuestMemory(1 << 16);
      await c.dmaMap(mem, 0);
      await c.enableIrqs(P.PciIrq.MSIX, 8);
      await c.write(0, 0, u32(1234));
      const gone = new Promise((r) => s.once('disconnect', r));
      c.close();
      await gone;
      assert.equal(dev.dma.count, 0);
      assert.equal(dev.irqs.enabled(P.PciIrq.MSIX, 0), false);
      const c2 = await VfioUserClient.connect(path);
      assert.equal(rd32(await c2.read(0, 0, 4)), 1234, 'device state kept');
      c2.close();
      mem.free();
    });
  });

  test('a second client gets EBUSY at its VERSION while one is served', async () => {
    await withServer(async ({ path }) => {
      const c = await VfioUserClient.connect(path);
      await assert.rejects(
        VfioUserClient.connect(path, { timeout: 2000 }),
        (e) => e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR' && e.errno === 16 && /serving another client \(EBUSY\)/.test(e.message),
      );
      assert.equal(rd32(await c.read(0, 0, 4)), 0, 'the first client is still served');
      c.close();
    });
  });

  test('a client that connects while the previous one is torn down is served when teardown ends', async () => {
    await withServer(async ({ server: s, dev, path }) => {
      const c = await VfioUserClient.connect(path);
      const mem = new GuestMemory(1 << 16);
      await c.dmaMap(mem, 0);
      // hold the teardown: a DMA pin keeps the unmap waiting
      const pin = dev.dma.pin(0, 4096, false);
      c.close();
      await new Promise<void>((r) => {
        const poll = (): void => (s.serving ? void setImmediate(poll) : r());
        poll();
      });
      const next = VfioUserClient.connect(path, { timeout: 5000 });
      let connected = false;
      void next.then(() => (connected = true), () => undefined);
      // proves a negative (no event marks a client as queued): time for a wrong VERSION reply to arrive
      await delay(50);
      assert.equal(connected, false, 'not served while the previous client is torn down');
      pin.release();
      const c2 = await next;
      assert.equal(dev.dma.count, 0, "the new client does not see the old client's maps");
      await c2.write(0, 0, u32(5));
      assert.equal(dev.scratch, 5);
      c2.close();
      mem.free();
    });
  });

  test('a client that does not complete VERSION in time is disconnected', async () => {
    await withServer(
      async ({ path }) => {
        const fd = native.connect(path);
        const t0 = Date.now();
        let gone = false;
        const conn = new Connection(fd, { onClose: () => (gone = true) });
        // a byte every 50 ms: never a whole header
        for (let i = 0; i < 40 && !gone; i++) {
          try {
            native.send(fd, Uint8Array.of(0), 0, 1);
          } catch {
            gone = true;
          }
          await delay(50);
        }
        assert.ok(gone, 'the server hung up');
        assert.ok(Date.now() - t0 < 1500, 'within the handshake timeout');
        conn.close();
        // and the next client is served
        const c = await VfioUserClient.connect(path);
        c.close();
      },
      { handshakeTimeoutMs: 300 },
    );
  });

  test('serves an inherited fd (--fd convention)', async () => {
    const dev = new TestDevice();
    const server = new VfioUserServer(dev);
    const [a, b] = native.socketpair();
    server.serveFd(a);
    const c = await VfioUserClient.connect({ fd: b });
    await c.write(0, 0, u32(7));
    assert.equal(dev.scratch, 7);
    const gone = once(server, 'disconnect');
    c.close();
    await gone;
    server.close();
    dev.destroy();
  });
});
