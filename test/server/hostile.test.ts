/**
 * Hostile clients over a real socket, against an in-process server (TestDevice) and against
 * `vfio-user serve gpio` in a child process: lying sizes, bad indexes, bad DMA fds, DMA
 * outside the maps, fd floods, clients that vanish mid-request or never read, garbage. After
 * each, the server must still serve a well-behaved client and must not have leaked an fd.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { openSync, readdirSync, writeFileSync, constants as fsc } from 'node:fs';
import { native } from '../../src/native/index.js';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import { Connection, closeFds } from '../../src/transport/connection.js';
import { connectPath } from '../../src/transport/socket.js';
import { VfioUserError } from '../../src/errors.js';
import * as P from '../../src/protocol/index.js';
import { sockPath, serveChild, u32, u64, rd32, withServer, type ServerContext } from '../helpers.js';
import { RawPeer, frame, openFds, fdsBackTo, waitFor, concat, tick, type RawMessage } from '../transport/util.js';

const C = P.Command;
const PAGE = 4096;


function remoteErrno(e: unknown): number {
  assert.ok(e instanceof VfioUserError, `expected VfioUserError, got ${String(e)}`);
  assert.equal(e.code, 'VFU_REMOTE_ERROR', e.message);
  return e.errno;
}

/** withServer, then checks that the server serves a good client and leaked nothing after fn. */
async function withHostileClient(fn: (ctx: ServerContext) => Promise<void>): Promise<void> {
  await withServer(async (ctx) => {
    const { server, dev, path, ended } = ctx;
    // warm up (first-use allocations) and take the baseline between sessions
    const w = await VfioUserClient.connect(path);
    w.close();
    await waitFor(() => ended() === 1, 'warm-up end');
    const base = openFds();
    // nothing may escape the server's callbacks (it would kill a real server process)
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown): void => void uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onUncaught);
    try {
      await fn(ctx);
      await waitFor(() => server.session === undefined, 'hostile session gone');
      const before = ended();
      const c = await VfioUserClient.connect(path, { timeout: 3000 });
      await c.write(0, 0, u32(0x600df00d));
      assert.equal(rd32(await c.read(0, 0, 4)), 0x600df00d, 'a well-behaved client is served');
      c.close();
      await waitFor(() => ended() === before + 1, 'good client end');
      assert.equal(dev.dma.count, 0);
      await fdsBackTo(base, 'server fds after the hostile client');
      assert.deepEqual(uncaught, [], 'uncaught exceptions');
    } finally {
      process.off('uncaughtException', onUncaught);
      process.off('unhandledRejection', onUncaught);
    }
  });
}

/** A raw protocol client: Connection after VERSION (no twin socket). */
async function rawClient(path: string): Promise<Connection> {
  const conn = new Connection(connectPath(path));
  await conn.request(C.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} }));
  return conn;
}

/** A valid request payload for every command a client sends. */
function validPayloads(): [number, Uint8Array][] {
  return [
    [C.DMA_MAP, P.encodeDmaMapRequest({ flags: 3, offset: 0n, address: 0x100000n, size: 4096n })],
    [C.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 0, address: 0x100000n, size: 4096n })],
    [C.DEVICE_GET_INFO, P.encodeDeviceGetInfoRequest({})],
    [C.DEVICE_GET_REGION_INFO, P.encodeRegionInfoRequest({ index: 0 })],
    [C.DEVICE_GET_REGION_IO_FDS, P.encodeRegionIoFdsRequest({ argsz: 16, index: 0 })],
    [C.DEVICE_GET_IRQ_INFO, P.encodeIrqInfoRequest({ index: 2 })],
    [C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: P.SetIrqsFlags.DATA_BOOL | P.SetIrqsFlags.ACTION_MASK, index: 2, start: 0, count: 2, data: Uint8Array.of(1, 1) })],
    [C.REGION_READ, P.encodeRegionReadRequest({ offset: 0, region: 0, count: 4 })],
    [C.REGION_WRITE, P.encodeRegionWriteRequest({ offset: 0x100, region: 0, data: Uint8Array.of(1, 2, 3, 4) })],
    [C.REGION_WRITE_MULTI, P.encodeRegionWriteMultiRequest({ entries: [{ offset: 0x100, region: 0, data: Uint8Array.of(9) }] })],
    [C.DEVICE_FEATURE, P.encodeDeviceFeatureRequest({ flags: P.DeviceFeature.MIGRATION | P.DeviceFeatureFlags.GET })],
    [C.MIG_DATA_READ, P.encodeMigDataReadRequest({ size: 16 })],
    [C.MIG_DATA_WRITE, P.encodeMigDataWriteRequest({ data: Uint8Array.of(1, 2, 3) })],
  ];
}

/** fds of another process */
function procFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

describe('hostile clients: in-process server', () => {
  test('short payloads for every command get error replies; the session keeps going', async () => {
    await withHostileClient(async ({ path }) => {
      const conn = await rawClient(path);
      for (const [cmd, payload] of validPayloads()) {
        for (let len = 0; len < payload.length; len++) {
          await assert.rejects(conn.request(cmd, payload.subarray(0, len)), (e) => remoteErrno(e) > 0, `${P.commandName(cmd)} with ${len} of ${payload.length} bytes`);
        }
      }
      // DEVICE_RESET takes no payload at all
      await assert.rejects(conn.request(C.DEVICE_RESET, Uint8Array.of(0)), (e) => remoteErrno(e) === 22);
      assert.equal(rd32((await conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 0, region: 0, count: 4 }))).payload.subarray(16)), 0);
      conn.close();
    });
  });

  test('argsz and count lies: every reply is an answer or an errno, never a hang or a crash', async () => {
    await withHostileClient(async ({ path, dev }) => {
      const conn = await rawClient(path);
      const lies = [0, 1, 8, 15, 16, 31, 0x7fffffff, 0x80000000, 0xffffffff];
      for (const [cmd, payload] of validPayloads()) {
        for (const v of lies) {
          for (const at of [0, 4, 8, 16]) {
            if (at + 4 > payload.length) continue;
            const p = payload.slice();
            new DataView(p.buffer).setUint32(at, v, true);
            try {
              await conn.request(cmd, p, { timeout: 3000 });
            } catch (e) {
              assert.ok(remoteErrno(e) > 0);
            }
          }
        }
      }
      // REGION_WRITE with a count larger than the data it carries
      const w = P.encodeRegionWriteRequest({ offset: 0x100, region: 0, data: Uint8Array.of(7, 7, 7, 7) });
      new DataView(w.buffer).setUint32(12, 64, true);
      await assert.rejects(conn.request(C.REGION_WRITE, w), (e) => remoteErrno(e) === 22);
      assert.equal(dev.buffer[0x10], 0);
      // and with a count smaller than the data: nothing written either
      const before = dev.buffer.slice();
      const w2 = P.encodeRegionWriteRequest({ offset: 0x100, region: 0, data: Uint8Array.of(0x39, 9, 9, 9, 9, 9, 9, 9) });
      new DataView(w2.buffer).setUint32(12, 4, true);
      await assert.rejects(conn.request(C.REGION_WRITE, w2), (e) => remoteErrno(e) === 22);
      assert.deepEqual(dev.buffer, before, 'nothing written');
      assert.equal(conn.isClosed, false);
      conn.close();
      await dev.dma.unmapAll();
    });
  });

  test('bad region and IRQ indexes', async () => {
    await withHostileClient(async ({ path }) => {
      const conn = await rawClient(path);
      for (const region of [3, 8, 10, 200, 0xffff, 0xffffffff]) {
        await assert.rejects(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 0, region, count: 4 })), (e) => remoteErrno(e) === 22, `read region ${region}`);
        await assert.rejects(conn.request(C.REGION_WRITE, P.encodeRegionWriteRequest({ offset: 0, region, data: u32(1) })), (e) => remoteErrno(e) === 22);
      }
      for (const index of [10, 200, 0xffffffff]) {
        await assert.rejects(conn.request(C.DEVICE_GET_REGION_INFO, P.encodeRegionInfoRequest({ index })), (e) => remoteErrno(e) === 22, `region info ${index}`);
        await assert.rejects(conn.request(C.DEVICE_GET_REGION_IO_FDS, P.encodeRegionIoFdsRequest({ argsz: 16, index })), (e) => remoteErrno(e) === 22);
      }
      for (const index of [5, 6, 0xffffffff]) {
        await assert.rejects(conn.request(C.DEVICE_GET_IRQ_INFO, P.encodeIrqInfoRequest({ index })), (e) => remoteErrno(e) === 22, `irq info ${index}`);
        const F = P.SetIrqsFlags;
        await assert.rejects(conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_NONE | F.ACTION_TRIGGER, index, start: 0, count: 1 })), (e) => remoteErrno(e) === 22);
      }
      // offsets past the end, and offset + count overflowing
      await assert.rejects(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 4096, region: 0, count: 1 })), (e) => remoteErrno(e) === 22);
      await assert.rejects(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: Number.MAX_SAFE_INTEGER, region: 0, count: 4 })), (e) => remoteErrno(e) === 22);
      await assert.rejects(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 0, region: 7, count: 0xffffffff })), (e) => remoteErrno(e) === 22);
      conn.close();
    });
  });

  test('DMA_MAP with bad fds and ranges: refused, nothing mapped, every fd closed', async () => {
    await withHostileClient(async ({ path, dev }) => {
      const conn = await rawClient(path);
      const map = (fd: number | undefined, o: { offset?: number; address?: number; size?: number; flags?: number } = {}): Promise<unknown> =>
        conn.request(
          C.DMA_MAP,
          P.encodeDmaMapRequest({ flags: o.flags ?? 3, offset: BigInt(o.offset ?? 0), address: BigInt(o.address ?? 0x100000), size: BigInt(o.size ?? PAGE) }),
          { fds: fd === undefined ? [] : [fd] },
        );
      const expectErr = async (fd: number | undefined, errno: number | undefined, o = {}, what = ''): Promise<void> => {
        await assert.rejects(map(fd, o), (e) => (errno === undefined ? remoteErrno(e) > 0 : remoteErrno(e) === errno), what);
        if (fd !== undefined) native.close(fd);
      };
      // a pipe (FIFO opened read-write so it does not block)
      const fifo = sockPath('fifo');
      execFileSync('mkfifo', [fifo]);
      await expectErr(openSync(fifo, fsc.O_RDWR | fsc.O_NONBLOCK), 22, {}, 'pipe');
      // a socket, an eventfd
      const [s1, s2] = native.socketpair();
      native.close(s2);
      await expectErr(s1, 22, {}, 'socket');
      await expectErr(native.eventfd(0, false), 22, {}, 'eventfd');
      // a file shorter than offset + size
      const short = native.memfdCreate('short');
      native.ftruncate(short, PAGE);
      await expectErr(native.dup(short), 22, { size: 2 * PAGE }, 'short file');
      await expectErr(native.dup(short), 22, { offset: PAGE, size: PAGE }, 'offset at end');
      // offset not page aligned, size 0, bad flags, iova overflow
      await expectErr(native.dup(short), 22, { offset: 1 }, 'unaligned offset');
      await expectErr(native.dup(short), 22, { size: 0 }, 'size 0');
      await expectErr(native.dup(short), 22, { flags: 4 }, 'bad flags');
      await expectErr(native.dup(short), 22, { flags: 0 }, 'no access');
      await expectErr(native.dup(short), 22, { address: 2 ** 64 - PAGE, size: 2 * PAGE }, 'iova past 2^64');
      // a read-only file mapped writable
      const ro = sockPath('ro');
      writeFileSync(ro, new Uint8Array(2 * PAGE));
      await expectErr(openSync(ro, 'r'), undefined, { flags: 3 }, 'read-only file, write access');
      // two fds
      const d1 = native.dup(short);
      const d2 = native.dup(short);
      await assert.rejects(conn.request(C.DMA_MAP, P.encodeDmaMapRequest({ flags: 3, offset: 0n, address: 0x100000n, size: BigInt(PAGE) }), { fds: [d1, d2] }), (e) => remoteErrno(e) === 22);
      closeFds([d1, d2]);
      assert.equal(dev.dma.count, 0, 'nothing mapped');
      // overlapping maps: EEXIST
      await map(short, { address: 0x100000 }); // the server maps its own copy of the fd
      const d3 = native.dup(short);
      await expectErr(d3, 17, { address: 0x100000 }, 'same range');
      native.ftruncate(short, 4 * PAGE);
      await expectErr(native.dup(short), 17, { address: 0x100000 - PAGE, size: 2 * PAGE }, 'overlapping the start');
      await expectErr(undefined, 17, { address: 0x100000, size: PAGE }, 'message-only map over it');
      assert.equal(dev.dma.count, 1);
      // unmap ranges: covering nothing is fine, unaligned or wrapping past 2^64 is not
      await conn.request(C.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 0, address: 0x200000n, size: 2n * BigInt(PAGE) }));
      assert.equal(dev.dma.count, 1);
      await assert.rejects(conn.request(C.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 0, address: 0x100000n, size: 100n })), (e) => remoteErrno(e) === 22);
      await assert.rejects(conn.request(C.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 0, address: 0x100000n, size: 0n })), (e) => remoteErrno(e) === 22);
      await assert.rejects(conn.request(C.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 0, address: 2n ** 64n - 4096n, size: 8192n })), (e) => remoteErrno(e) === 22);
      assert.equal(dev.dma.count, 1);
      await assert.rejects(conn.request(C.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 2, address: 0x100000n, size: 0n })), (e) => remoteErrno(e) === 22);
      native.close(short);
      conn.close();
    });
  });

  test('device DMA outside the maps gets EFAULT and touches nothing', async () => {
    await withHostileClient(async ({ path, dev }) => {
      const c = await VfioUserClient.connect(path);
      const mem = new GuestMemory(16 * PAGE);
      for (let i = 0; i < mem.size; i++) mem.bytes[i] = (i * 13) & 0xff;
      const before = mem.bytes.slice();
      // two maps with a one-page hole between them, the second read-only
      await c.dmaMap(mem, 0x100000, { offset: 0, size: 4 * PAGE });
      await c.dmaMap(mem, 0x100000 + 5 * PAGE, { offset: 5 * PAGE, size: 4 * PAGE, prot: 1 });
      dev.buffer.fill(0xee);
      const dma = async (addr: number, len: number, cmd: number): Promise<number> => {
        await c.write(0, 0x08, u64(addr));
        await c.write(0, 0x10, u32(len));
        await c.write(0, 0x14, u32(cmd));
        return rd32(await c.read(0, 0x18, 4));
      };
      const cases: [number, number][] = [
        [0x100000 - 16, 32], // straddles the start
        [0x100000 + 4 * PAGE - 16, 32], // runs into the hole
        [0x100000 + 4 * PAGE, 16], // inside the hole
        [0x100000 + 9 * PAGE - 8, 16], // runs off the end
        [0x100000 + 5 * PAGE, 16], // read-only map: a device write is refused
        [0, 16],
        [2 ** 53 - 8, 16],
      ];
      for (const [addr, len] of cases) {
        assert.equal(await dma(addr, len, 1), 14, `device write at 0x${addr.toString(16)}+${len}`);
        assert.equal(await dma(addr, len, 3), 14, `device fill at 0x${addr.toString(16)}+${len}`);
      }
      assert.deepEqual(mem.bytes, before, 'guest memory unchanged');
      // reads outside fail too and leave the device buffer alone
      assert.equal(await dma(0x100000 + 4 * PAGE - 8, 16, 2), 14);
      assert.ok(dev.buffer.every((b) => b === 0xee));
      // and a legal access right at the edges works
      assert.equal(await dma(0x100000 + 4 * PAGE - 16, 16, 1), 0);
      assert.equal(mem.bytes[4 * PAGE - 1], 0xee);
      assert.equal(mem.bytes[4 * PAGE], before[4 * PAGE]);
      c.close();
      await waitFor(() => dev.dma.count === 0, 'unmapped at disconnect');
      mem.free();
    });
  });

  test('fd floods: many fds per message and many messages with fds are all closed', async () => {
    await withHostileClient(async ({ path, server, dev }) => {
      const conn = await rawClient(path);
      const pool = Array.from({ length: 16 }, () => native.eventfd(0, false));
      // 300 requests, each carrying 16 fds the command does not want
      const reqs: Promise<unknown>[] = [];
      for (let i = 0; i < 300; i++) {
        reqs.push(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 0, region: 0, count: 4 }), { fds: pool }));
      }
      await Promise.all(reqs);
      // fds on commands that refuse them
      await assert.rejects(conn.request(C.DEVICE_GET_INFO, P.encodeDeviceGetInfoRequest({}), { fds: pool }).then(() => {
        throw new VfioUserError('VFU_REMOTE_ERROR', 'accepted', 22);
      }), () => true);
      const F = P.SetIrqsFlags;
      await assert.rejects(conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_NONE | F.ACTION_TRIGGER, index: 2, start: 0, count: 1 }), { fds: pool.slice(0, 1) }), (e) => remoteErrno(e) === 22);
      assert.equal(server.session !== undefined, true);
      // more fds than max_msg_fds (16): the session is dropped
      const many = Array.from({ length: 40 }, () => native.eventfd(0, false));
      await assert.rejects(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 0, region: 0, count: 4 }), { fds: many }), (e) => e instanceof VfioUserError && e.code === 'VFU_DISCONNECTED');
      closeFds(many);
      closeFds(pool);
      assert.equal(dev.irqs.enabled(2, 0), false);
    });
  });

  test('SET_IRQS with mismatched fd counts is refused and the fds are closed', async () => {
    await withHostileClient(async ({ path, dev }) => {
      const conn = await rawClient(path);
      const F = P.SetIrqsFlags;
      const ev = (n: number): number[] => Array.from({ length: n }, () => native.eventfd(0, false));
      const set = (count: number, fds: number[], start = 0, flags = F.DATA_EVENTFD | F.ACTION_TRIGGER): Promise<unknown> =>
        conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags, index: P.PciIrq.MSIX, start, count }), { fds });
      for (const [count, n, start] of [
        [4, 2, 0],
        [1, 3, 0],
        [8, 9, 0],
        [2, 2, 7],
        [0, 1, 0],
      ] as const) {
        const fds = ev(n);
        await assert.rejects(set(count, fds, start), (e) => remoteErrno(e) === 22, `count ${count} with ${n} fds from ${start}`);
        closeFds(fds);
      }
      const fds = ev(2);
      await assert.rejects(set(2, fds, 0, F.DATA_NONE | F.ACTION_TRIGGER), (e) => remoteErrno(e) === 22, 'fds without DATA_EVENTFD');
      closeFds(fds);
      assert.equal(dev.irqs.enabled(P.PciIrq.MSIX, 0), false);
      // a good one, then the client goes: the server closes them
      const good = ev(8);
      await set(8, good);
      closeFds(good);
      assert.equal(dev.irqs.enabled(P.PciIrq.MSIX, 7), true);
      conn.close();
    });
  });

  test('a client vanishing mid-request: async handler pending', async () => {
    await withHostileClient(async ({ path, dev, server }) => {
      const peer = new RawPeer(connectPath(path));
      await peer.sendAll(frame({ msgId: 1, command: C.VERSION }, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} })));
      assert.equal((await peer.recv())?.header.msgId, 1);
      // the async register (timer), more commands queued behind it, then gone
      const reqs = [
        frame({ msgId: 2, command: C.REGION_READ }, P.encodeRegionReadRequest({ offset: 0x800, region: 0, count: 4 })),
        frame({ msgId: 3, command: C.REGION_WRITE }, P.encodeRegionWriteRequest({ offset: 0x800, region: 0, data: u32(0) })),
        frame({ msgId: 4, command: C.REGION_READ }, P.encodeRegionReadRequest({ offset: 0, region: 9, count: 4 })),
        frame({ msgId: 5, command: C.REGION_READ }, P.encodeRegionReadRequest({ offset: 0, region: 200, count: 4 })),
      ];
      await peer.sendAll(concat(...reqs));
      peer.close();
      // the server reads the requests and the hang-up in one go: the async read is dispatched,
      // the commands queued behind it are dropped with the session (the client is gone)
      await waitFor(() => server.session === undefined, 'session end');
      assert.equal(dev.asyncCounter, 1, 'the async read ran, the write queued behind it did not');
    });
  });

  test('a client vanishing while the device waits for its DMA_READ/DMA_WRITE replies (main and twin socket)', async () => {
    for (const twin of [false, true]) {
      await withHostileClient(async ({ path, dev, server }) => {
        const c = await VfioUserClient.connect(path, { twinSocket: twin });
        const mem = new GuestMemory(16 * PAGE);
        await c.dmaMap(mem, 0x10000, { shared: false });
        // a raw view of the server's DMA traffic: stop answering by closing everything mid-DMA
        dev.dmaResult = 0;
        await c.write(0, 0x08, u64(0x10000));
        await c.write(0, 0x10, u32(256));
        const w = c.write(0, 0x14, u32(2)).catch((e) => e);
        c.close();
        assert.ok((await w) instanceof VfioUserError);
        await waitFor(() => server.session === undefined, 'session end');
        await waitFor(() => dev.dmaResult !== 0, 'the device DMA failed');
        mem.free();
      });
    }
  });

  test('a client that never answers DMA messages, then hangs up: the session ends, the device gets an error', async () => {
    await withHostileClient(async ({ path, dev, server }) => {
      const conn = await rawClient(path);
      const mem = new GuestMemory(PAGE);
      await conn.request(C.DMA_MAP, P.encodeDmaMapRequest({ flags: 3, offset: 0n, address: 0x10000n, size: BigInt(PAGE) }));
      await conn.request(C.REGION_WRITE, P.encodeRegionWriteRequest({ offset: 0x08, region: 0, data: u64(0x10000) }));
      await conn.request(C.REGION_WRITE, P.encodeRegionWriteRequest({ offset: 0x10, region: 0, data: u32(64) }));
      // the device now sends DMA_WRITE to us (we have no onCommand: we answer ENOSYS)
      await conn.request(C.REGION_WRITE, P.encodeRegionWriteRequest({ offset: 0x14, region: 0, data: u32(1) }));
      assert.equal(dev.dmaResult, 38, 'ENOSYS from the client reaches the device');
      // now one we never answer: a raw peer
      conn.close();
      await waitFor(() => server.session === undefined, 'session end');
      mem.free();
    });
  });

  test('a client flooding commands while the device waits on its unanswered DMA: dropped, memory bounded', async () => {
    await withHostileClient(async ({ path, server }) => {
      // a client that swallows the server's DMA_WRITE (never replies) and keeps sending
      const conn = new Connection(connectPath(path), { onCommand: () => {} });
      await conn.request(C.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} }));
      await conn.request(C.DMA_MAP, P.encodeDmaMapRequest({ flags: 3, offset: 0n, address: 0x10000n, size: BigInt(PAGE) }));
      await conn.request(C.REGION_WRITE, P.encodeRegionWriteRequest({ offset: 0x08, region: 0, data: u64(0x10000) }));
      await conn.request(C.REGION_WRITE, P.encodeRegionWriteRequest({ offset: 0x10, region: 0, data: u32(64) }));
      conn.post(C.REGION_WRITE, P.encodeRegionWriteRequest({ offset: 0x14, region: 0, data: u32(1) })); // device DMA: pending
      const closed = new Promise((r) => (conn.onClose = r));
      const read = P.encodeRegionReadRequest({ offset: 0, region: 0, count: 4 });
      for (let i = 0; i < 6000 && !conn.isClosed; i++) conn.post(C.REGION_READ, read);
      await closed;
      await waitFor(() => server.session === undefined, 'flooding session dropped');
    });
  });

  test('a client that never reads its replies: no crash, bounded memory, next client served', async () => {
    await withHostileClient(async ({ path, server }) => {
      const peer = new RawPeer(connectPath(path));
      await peer.sendAll(frame({ msgId: 1, command: C.VERSION }, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} })));
      // 40 x 200 reads of 4 KiB: ~32 MiB of replies nobody reads
      const req = frame({ msgId: 2, command: C.REGION_READ }, P.encodeRegionReadRequest({ offset: 0, region: 0, count: 4096 }));
      const burst = concat(...Array.from({ length: 200 }, () => req));
      let sent = 0;
      for (let i = 0; i < 40; i++) {
        const n = peer.send(burst);
        if (n < 0) break;
        sent += n;
        await tick(); // the server reads in between
      }
      assert.ok(sent > 0);
      // the server stops reading this client past its high-water mark (4 MiB of replies queued)...
      const queued = (): number => server.session?.conn.queuedBytes ?? 0;
      await waitFor(() => queued() > 4 * 1024 * 1024, 'the reply queue at the high-water mark');
      await tick();
      await tick();
      // ...and its reply queue stays near it
      assert.ok(queued() < 6 * 1024 * 1024, `server queued ${queued()} bytes of replies`);
      peer.close();
    });
  });

  test('garbage, short and huge headers: the server drops the session itself, then serves on', async () => {
    const streams: [string, Uint8Array][] = [
      ['garbage', Uint8Array.from({ length: 200 }, (_, i) => (i * 97 + 13) & 0xff)],
      ['size 8', frame({ command: C.VERSION, size: 8 })],
      ['size 0', frame({ command: C.VERSION, size: 0 })],
      ['size 4 GiB - 1', frame({ command: C.VERSION, size: 0xffffffff })],
      ['size past the largest message', frame({ command: C.REGION_READ, size: 16 + 1048576 + 4096 + 1 })],
      ['unknown flag', frame({ command: C.VERSION, flags: 0x40 })],
      ['a reply nobody asked for', frame({ command: C.VERSION, flags: 1 })],
    ];
    for (const [what, bytes] of streams) {
      await withHostileClient(async ({ path, ended }) => {
        const before = ended();
        const peer = new RawPeer(connectPath(path));
        const fd = native.eventfd(0, false);
        peer.send(bytes, [fd]);
        native.close(fd);
        // our end stays open: only the server can end the session (an error reply at most, then EOF)
        const next = (): Promise<RawMessage | undefined> => peer.recv(10000).catch((e: unknown) => assert.fail(`${what}: not dropped (${String(e)})`));
        for (let m = await next(); m !== undefined; m = await next()) assert.notEqual(m.header.error, 0, `${what}: only an error reply`);
        await waitFor(() => ended() === before + 1, `${what}: session end`);
        peer.close();
      });
    }
  });

  test('an unknown command gets an error reply; a partial header after it waits for the rest until the client goes', async () => {
    await withHostileClient(async ({ path, ended }) => {
      const before = ended();
      const peer = new RawPeer(connectPath(path));
      peer.send(concat(frame({ msgId: 1, command: C.VERSION }, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} })), frame({ msgId: 2, command: 77 }), new Uint8Array(7)));
      assert.equal((await peer.recv())?.header.msgId, 1);
      const r = await peer.recv();
      assert.equal(r?.header.msgId, 2);
      assert.notEqual(r.header.error, 0, 'an error reply');
      // the 7 bytes were read with the rest: the session waits for the other 9 of the header
      assert.equal(ended(), before, 'still connected');
      assert.ok(peer.nothingQueued(), 'nothing more from the server');
      peer.close();
      await waitFor(() => ended() === before + 1, 'session end after the client went');
    });
  });

  test('an invalid request sent just before vanishing (error reply to a gone peer) does not take the server down', async () => {
    await withHostileClient(async ({ path, ended }) => {
      for (let i = 0; i < 20; i++) {
        const before = ended();
        const peer = new RawPeer(connectPath(path));
        peer.send(frame({ msgId: 1, command: C.VERSION }, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} })));
        assert.equal((await peer.recv())?.header.msgId, 1);
        // the first thing the server writes after this is an error reply (or a reply), to nobody
        const bad = frame({ msgId: 2, command: C.REGION_READ }, P.encodeRegionReadRequest({ offset: 0, region: 200, count: 4 }));
        const good = frame({ msgId: 3, command: C.REGION_READ }, P.encodeRegionReadRequest({ offset: 0, region: 0, count: 4 }));
        peer.send(i % 2 ? bad : concat(good, bad));
        peer.close();
        await waitFor(() => ended() === before + 1, 'session end');
      }
    });
  });
});

describe('hostile clients: vfio-user serve gpio (child process)', () => {
  test('garbage, fd floods, vanishing clients: the child keeps serving and its fd count returns', async () => {
    const s = await serveChild('gpio', ['--quiet']);
    try {
      const pid = s.child.pid!;
      const good = async (): Promise<void> => {
        const c = await VfioUserClient.connect(s.path, { timeout: 3000 });
        const info = await c.deviceInfo();
        assert.ok(info.numRegions >= 3);
        await c.write(2, 0, Uint8Array.of(0x5a));
        assert.equal((await c.read(2, 0, 1))[0], 0x5a);
        c.close();
        await s.waitEvent('disconnect');
      };
      await good();
      const base = procFds(pid);
      // fd flood: many messages with 16 fds each, then too many fds in one
      const conn = await rawClient(s.path);
      await s.waitEvent('connect');
      const pool = Array.from({ length: 16 }, () => native.eventfd(0, false));
      const reqs: Promise<unknown>[] = [];
      for (let i = 0; i < 200; i++) reqs.push(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 1, region: 2, count: 1 }), { fds: pool }));
      await Promise.all(reqs);
      const F = P.SetIrqsFlags;
      for (const n of [0, 2, 5]) {
        const fds = Array.from({ length: n }, () => native.eventfd(0, false));
        await assert.rejects(conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_EVENTFD | F.ACTION_TRIGGER, index: 0, start: 0, count: n === 0 ? 2 : 1 }), { fds }), (e) => remoteErrno(e) === 22);
        closeFds(fds);
      }
      // bad DMA fds
      const [a, b] = native.socketpair();
      await assert.rejects(conn.request(C.DMA_MAP, P.encodeDmaMapRequest({ flags: 3, offset: 0n, address: 0n, size: 4096n }), { fds: [a] }), (e) => remoteErrno(e) === 22);
      closeFds([a, b]);
      const many = Array.from({ length: 30 }, () => native.eventfd(0, false));
      await assert.rejects(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 1, region: 2, count: 1 }), { fds: many }), (e) => e instanceof VfioUserError && e.code === 'VFU_DISCONNECTED');
      closeFds(many);
      closeFds(pool);
      await s.waitEvent('disconnect');
      await good();
      // garbage, a huge header, a vanishing client with requests in flight
      for (const bytes of [Uint8Array.from({ length: 100 }, (_, i) => i * 7), frame({ command: C.VERSION, size: 0xfffffff0 }), frame({ command: C.VERSION, size: 3 })]) {
        const p = new RawPeer(connectPath(s.path));
        p.send(bytes);
        // our end stays open: the child drops us (an error reply at most, then EOF)
        for (let m = await p.recv(5000); m !== undefined; m = await p.recv(5000)) assert.notEqual(m.header.error, 0, 'only an error reply');
        await s.waitEvent('disconnect');
        p.close();
      }
      const p = new RawPeer(connectPath(s.path));
      p.send(
        concat(
          frame({ msgId: 1, command: C.VERSION }, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} })),
          ...Array.from({ length: 500 }, (_, i) => frame({ msgId: i + 2, command: C.REGION_READ }, P.encodeRegionReadRequest({ offset: 0, region: i % 2 ? 2 : 200, count: 1 }))),
        ),
      );
      p.close();
      await s.waitEvent('disconnect');
      await good();
      await waitFor(() => procFds(pid) <= base, 'child fd count back to baseline');
      assert.equal(procFds(pid), base, 'child fd count back to baseline');
      assert.equal(s.child.exitCode, null, 'child still running');
    } finally {
      assert.equal(await s.stop(), 0, `clean exit; stderr: ${s.stderr()}`);
    }
  });
});
