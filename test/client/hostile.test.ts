/**
 * The client against hostile servers: fake servers written here (native listen/accept and a
 * Connection in raw mode, plus raw sendmsg for broken framing) answer with bad replies. The
 * client must reject with typed errors, never crash, never hang, and not leak fds.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import { VfioUserError } from '../../src/errors.js';
import * as P from '../../src/protocol/index.js';
import { HEADER_SIZE, MSG_TYPE_REPLY, MSG_TYPE_COMMAND, FLAG_ERROR, type Header } from '../../src/protocol/header.js';
import { native, PROT_READ } from '../../src/native/index.js';
import { Connection, takeFds, closeFds, type Message } from '../../src/transport/connection.js';
import { Listener } from '../../src/transport/socket.js';
import { sockPath, openFds, waitFor } from '../helpers.js';
import { isCode, within } from './util.js';

function frame(h: Partial<Header> & { command: number }, payload: Uint8Array = new Uint8Array(0), size?: number): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE + payload.length);
  P.encodeHeader(b, 0, {
    msgId: h.msgId ?? 0,
    command: h.command,
    size: size ?? b.length,
    flags: h.flags ?? MSG_TYPE_REPLY,
    error: h.error ?? 0,
  });
  b.set(payload, HEADER_SIZE);
  return b;
}

interface Side {
  conn: Connection;
  /** writes bytes (any framing) with optional fds */
  raw(bytes: Uint8Array, fds?: number[]): void;
  /** a well-formed reply header for msg, payload as given */
  reply(msg: Message, payload?: Uint8Array, over?: Partial<Header>, fds?: number[]): void;
  /** sends a server-to-client command; its reply comes back to onReply */
  command(id: number, command: number, payload: Uint8Array): void;
  replies: Message[];
}

type Handler = (m: Message, s: Side) => boolean | void;

const GOOD_CAPS: P.VersionCapabilities = { maxMsgFds: 8, maxDataXferSize: 1048576, writeMultiple: true };

/** A fake server: VERSION is answered correctly unless the handler handles it (returns true). */
function fakeServer(handler: Handler): { path: string; sides: Side[]; close(): void } {
  const path = sockPath('hostile');
  const sides: Side[] = [];
  const listener = new Listener(path, (fd) => {
    const raw: Side['raw'] = (bytes, fds) => {
      native.sendmsg(fd, [bytes], fds ?? null);
    };
    const side: Side = {
      replies: [],
      raw,
      reply: (m, payload = new Uint8Array(0), over = {}, fds) => raw(frame({ msgId: m.header.msgId, command: m.header.command, ...over }, payload), fds),
      command: (id, command, payload) => raw(frame({ msgId: id, command, flags: MSG_TYPE_COMMAND }, payload)),
      // onRaw runs only when a message arrives, after side is assigned
      conn: new Connection(fd, {
        maxMessageSize: 1 << 24,
        onRaw: (m) => {
          takeFds(m).forEach((x) => native.close(x));
          if ((m.header.flags & 0xf) === MSG_TYPE_REPLY) {
            side.replies.push(m);
            return;
          }
          if (handler(m, side)) return;
          if (m.header.command === P.Command.VERSION) side.reply(m, P.encodeVersionReply({ major: 0, minor: 0, capabilities: GOOD_CAPS }));
        },
      }),
    };
    sides.push(side);
  });
  return {
    path,
    sides,
    close: () => {
      listener.close();
      for (const s of sides) s.conn.close();
    },
  };
}

/** runs fn against a fake server and checks that no fd leaked */
async function hostile(handler: Handler, fn: (path: string, sides: Side[]) => Promise<void>): Promise<void> {
  const fds0 = openFds();
  const f = fakeServer(handler);
  try {
    await fn(f.path, f.sides);
  } finally {
    f.close();
  }
  await waitFor(() => openFds() <= fds0, 'no fd leaked (all closed)');
}

function causeCode(e: unknown): string | undefined {
  return ((e as Error).cause as { code?: string } | undefined)?.code;
}

const T = 3000; // no test may wait longer than this for a settle

describe('hostile server: negotiation', () => {
  const cases: [string, Handler, (e: unknown) => boolean][] = [
    ['a reply with the wrong id', (m, s) => (s.reply(m, P.encodeVersionReply({ major: 0, minor: 0, capabilities: {} }), { msgId: m.header.msgId + 1 }), true), (e) => isCode('VFU_DISCONNECTED')(e) && causeCode(e) === 'VFU_PROTOCOL'],
    ['a reply for another command', (m, s) => (s.reply(m, new Uint8Array(0), { command: P.Command.DMA_MAP }), true), (e) => isCode('VFU_DISCONNECTED')(e) && causeCode(e) === 'VFU_PROTOCOL'],
    ['a truncated VERSION payload', (m, s) => (s.reply(m, Uint8Array.of(0)), true), isCode('VFU_PROTOCOL')],
    ['capabilities that are not JSON', (m, s) => (s.reply(m, Uint8Array.of(0, 0, 0, 0, 0x7b, 0x7b, 0)), true), isCode('VFU_PROTOCOL')],
    ['a major version 1', (m, s) => (s.reply(m, P.encodeVersionReply({ major: 1, minor: 0, capabilities: {} })), true), isCode('VFU_PROTOCOL')],
    ['a larger minor than proposed', (m, s) => (s.reply(m, P.encodeVersionReply({ major: 0, minor: 9, capabilities: {} })), true), isCode('VFU_PROTOCOL')],
    ['twin socket without an fd', (m, s) => (s.reply(m, P.encodeVersionReply({ major: 0, minor: 0, capabilities: { twinSocket: { supported: true, fdIndex: 0 } } })), true), isCode('VFU_PROTOCOL')],
    // found by the client fuzz target: a non-pollable fd threw a raw native error
    ['a twin socket fd that is a memfd', (m, s) => {
      const fd = native.memfdCreate('not-a-socket');
      s.reply(m, P.encodeVersionReply({ major: 0, minor: 0, capabilities: { twinSocket: { supported: true, fdIndex: 0 } } }), {}, [fd]);
      native.close(fd);
      return true;
    }, isCode('VFU_PROTOCOL')],
    ['max_data_xfer_size 0', (m, s) => (s.reply(m, P.encodeVersionReply({ major: 0, minor: 0, capabilities: { maxDataXferSize: 0 } })), true), isCode('VFU_PROTOCOL')],
    ['an error reply', (m, s) => (s.reply(m, undefined, { flags: MSG_TYPE_REPLY | FLAG_ERROR, error: 95 }), true), isCode('VFU_REMOTE_ERROR', 95)],
    ['a header announcing 4 GiB', (m, s) => (s.raw(frame({ msgId: m.header.msgId, command: 1 }, new Uint8Array(0), 0xffffffff)), true), (e) => isCode('VFU_DISCONNECTED')(e) && causeCode(e) === 'VFU_MESSAGE_TOO_LARGE'],
    ['garbage bytes (a 4 GiB size)', (_m, s) => (s.raw(new Uint8Array(64).fill(0xee)), true), (e) => isCode('VFU_DISCONNECTED')(e) && causeCode(e) === 'VFU_MESSAGE_TOO_LARGE'],
    ['a hang-up mid-reply', (m, s) => {
      const full = frame({ msgId: m.header.msgId, command: 1 }, P.encodeVersionReply({ major: 0, minor: 0, capabilities: GOOD_CAPS }));
      s.raw(full.subarray(0, 20));
      setTimeout(() => s.conn.close(), 20);
      return true;
    }, isCode('VFU_DISCONNECTED')],
    ['a hang-up before any reply', (_m, s) => (s.conn.close(), true), isCode('VFU_DISCONNECTED')],
  ];
  for (const [name, handler, check] of cases) {
    test(name, async () => {
      await hostile(handler, async (path) => {
        await assert.rejects(within(VfioUserClient.connect(path, { twinSocket: true }), T, name), check);
      });
    });
  }

  test('a twin-socket fd_index out of range, with stray fds: rejected and every fd closed', async () => {
    await hostile(
      (m, s) => {
        const [a, b] = native.socketpair();
        const e = native.eventfd(0, false);
        s.reply(m, P.encodeVersionReply({ major: 0, minor: 0, capabilities: { twinSocket: { supported: true, fdIndex: 5 } } }), {}, [a, e]);
        native.close(a);
        native.close(b);
        native.close(e);
        return true;
      },
      async (path) => {
        await assert.rejects(within(VfioUserClient.connect(path), T, 'connect'), isCode('VFU_PROTOCOL'));
      },
    );
  });

  test('a server that never answers VERSION: the negotiation timeout', async () => {
    await hostile(
      () => true,
      async (path) => {
        const t0 = Date.now();
        await assert.rejects(within(VfioUserClient.connect(path, { negotiateTimeout: 200 }), T, 'connect'), isCode('VFU_TIMEOUT'));
        assert.ok(Date.now() - t0 >= 190);
      },
    );
  });
});

describe('hostile server: replies to commands', () => {
  /** a server that answers one command with `bad`, and everything else sensibly */
  function answering(bad: (m: Message, s: Side) => void): Handler {
    return (m, s) => {
      if (m.header.command === P.Command.VERSION) return false;
      if (m.header.command === P.Command.DEVICE_GET_INFO && m.payload.length === 8 && new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(4, true) === 0x600d) {
        return true;
      }
      if (m.header.command === P.Command.DEVICE_RESET) {
        s.reply(m);
        return true;
      }
      bad(m, s);
      return true;
    };
  }

  const regionRead = (tamper: (b: Uint8Array, dv: DataView) => Uint8Array): ((m: Message, s: Side) => void) => (m, s) => {
    const req = P.decodeRegionReadRequest(m.payload);
    const b = P.encodeRegionReadReply({ offset: req.offset, region: req.region, data: new Uint8Array(req.count) });
    s.reply(m, tamper(b, new DataView(b.buffer)));
  };

  const cases: [string, (m: Message, s: Side) => void, (c: VfioUserClient) => Promise<unknown>, (e: unknown) => boolean][] = [
    ['REGION_READ: truncated payload', regionRead((b) => b.subarray(0, 10)), (c) => c.read(0, 0, 4), isCode('VFU_PROTOCOL')],
    ['REGION_READ: count larger than the data (oversized count)', regionRead((b, dv) => (dv.setUint32(12, 0x7fffffff, true), b)), (c) => c.read(0, 0, 4), isCode('VFU_PROTOCOL')],
    ['REGION_READ: fewer bytes than asked', regionRead((b, dv) => (dv.setUint32(12, 2, true), b.subarray(0, 18))), (c) => c.read(0, 0, 4), isCode('VFU_PROTOCOL')],
    ['REGION_READ: another region echoed', regionRead((b, dv) => (dv.setUint32(8, 5, true), b)), (c) => c.read(0, 0, 4), isCode('VFU_PROTOCOL')],
    ['REGION_WRITE: wrong count', (m, s) => s.reply(m, P.encodeRegionWriteReply({ offset: 0, region: 0, count: 1 })), (c) => c.write(0, 0, new Uint8Array(4)), isCode('VFU_PROTOCOL')],
    ['REGION_WRITE_MULTI: wrong wr_cnt', (m, s) => s.reply(m, P.encodeRegionWriteMultiReply({ wrCnt: 99 })), (c) => c.writeMulti([{ region: 0, offset: 0, data: Uint8Array.of(1) }]), isCode('VFU_PROTOCOL')],
    ['DEVICE_GET_INFO: a million regions', (m, s) => s.reply(m, P.encodeDeviceGetInfoReply({ flags: 3, numRegions: 1e6, numIrqs: 5 })), (c) => c.deviceInfo(), isCode('VFU_PROTOCOL')],
    ['DEVICE_GET_INFO: empty payload', (m, s) => s.reply(m), (c) => c.deviceInfo(), isCode('VFU_PROTOCOL')],
    ['GET_REGION_INFO: argsz keeps growing to 4 GiB', (m, s) => {
      const b = P.encodeRegionInfoReply({ flags: 0, index: 0, size: 0n, offset: 0n, caps: [] });
      new DataView(b.buffer).setUint32(0, 0xffffffff, true);
      s.reply(m, b);
    }, (c) => c.regionInfo(0), isCode('VFU_PROTOCOL')],
    ['GET_REGION_INFO: a capability pointer outside the reply, with an fd attached', (m, s) => {
      const b = P.encodeRegionInfoReply({ flags: 0xf, index: 1, size: 4096n, offset: 0n, caps: [] });
      const dv = new DataView(b.buffer);
      dv.setUint32(4, 0xf | 8, true); // CAPS flag
      dv.setUint32(12, 0x1000, true);
      const fd = native.memfdCreate('hostile');
      s.reply(m, b, {}, [fd]);
      native.close(fd);
    }, (c) => c.regionInfo(1), isCode('VFU_PROTOCOL')],
    ['GET_REGION_INFO: the wrong region', (m, s) => s.reply(m, P.encodeRegionInfoReply({ flags: 0, index: 3, size: 0n, offset: 0n, caps: [] })), (c) => c.regionInfo(1), isCode('VFU_PROTOCOL')],
    ['mmap: a sparse area beyond the region', (m, s) => {
      const fd = native.memfdCreate('hostile');
      native.ftruncate(fd, 4096);
      s.reply(m, P.encodeRegionInfoReply({ flags: 7, index: 1, size: 4096n, offset: 0n, caps: [{ kind: 'sparse-mmap', version: 1, areas: [{ offset: 0x10000n, size: 4096n }] }] }), {}, [fd]);
      native.close(fd);
    }, (c) => c.mapRegion(1), isCode('VFU_PROTOCOL')],
    ['GET_IRQ_INFO: another index', (m, s) => s.reply(m, P.encodeIrqInfoReply({ flags: 1, index: 4, count: 1 })), (c) => c.irqInfo(0), isCode('VFU_PROTOCOL')],
    ['MIG_DATA_READ: more than asked', (m, s) => s.reply(m, P.encodeMigDataReadReply({ data: new Uint8Array(100) })), (c) => c.migDataRead(10), isCode('VFU_PROTOCOL')],
    ['DEVICE_FEATURE: truncated', (m, s) => s.reply(m, Uint8Array.of(1, 2)), (c) => c.getDeviceState(), isCode('VFU_PROTOCOL')],
    ['DMA_LOGGING_REPORT: a bitmap too short', (m, s) => {
      const req = P.decodeDeviceFeatureRequest(m.payload);
      const r = P.decodeFeatureDmaLoggingReportRequest(req.data);
      const ok = P.encodeDeviceFeatureReply({ flags: req.flags, data: P.encodeFeatureDmaLoggingReportReply({ ...r, bitmap: new Uint8Array(32) }) });
      s.reply(m, ok.subarray(0, ok.length - 31)); // the bitmap cut to 1 byte
    }, (c) => c.dmaLoggingReport(0, 1 << 20, 4096), isCode('VFU_PROTOCOL')],
    ['an error reply with errno', (m, s) => s.reply(m, undefined, { flags: MSG_TYPE_REPLY | FLAG_ERROR, error: 16 }), (c) => c.reset().then(() => c.read(0, 0, 4)), isCode('VFU_REMOTE_ERROR', 16)],
    ['a reply carrying fds nobody asked for', (m, s) => {
      const fds = [native.eventfd(0, false), native.eventfd(0, false), native.memfdCreate('x')];
      s.reply(m, P.encodeRegionWriteReply({ offset: 0, region: 0, count: 4 }), {}, fds);
      closeFds(fds);
    }, (c) => c.write(0, 0, new Uint8Array(4)).then(() => {
      throw new VfioUserError('VFU_PROTOCOL', 'fine: succeeded, fds dropped');
    }), isCode('VFU_PROTOCOL')],
  ];
  for (const [name, bad, call, check] of cases) {
    test(name, async () => {
      await hostile(answering(bad), async (path) => {
        const c = await VfioUserClient.connect(path, { timeout: 2000 });
        await assert.rejects(within(call(c), T, name), check);
        // the connection survives a bad payload: the next request still gets its answer
        assert.equal(c.closed, false);
        const probe = c.conn.request(P.Command.DEVICE_GET_INFO, Uint8Array.of(8, 0, 0, 0, 0x0d, 0x60, 0, 0), { timeout: 100 });
        await assert.rejects(probe, isCode('VFU_TIMEOUT'));
        c.close();
      });
    });
  }

  test('a reply to a request never sent, and a reply of a framing-level error, fail the connection cleanly', async () => {
    await hostile(
      (m, s) => {
        if (m.header.command === P.Command.VERSION) return false;
        s.reply(m, new Uint8Array(0), { msgId: 0x4242 });
        return true;
      },
      async (path) => {
        const c = await VfioUserClient.connect(path);
        const closed = new Promise((r) => c.once('close', r));
        await assert.rejects(within(c.reset(), T, 'reset'), (e) => isCode('VFU_DISCONNECTED')(e) && causeCode(e) === 'VFU_PROTOCOL');
        await closed;
        assert.equal(c.closeError?.code, 'VFU_PROTOCOL');
      },
    );
  });

  test('a server that never replies: requests time out, late replies are absorbed, the session goes on', async () => {
    const held: { m: Message; s: Side }[] = [];
    await hostile(
      (m, s) => {
        if (m.header.command === P.Command.VERSION) return false;
        if (m.header.command === P.Command.DEVICE_RESET && held.length < 3) {
          held.push({ m, s });
          return true;
        }
        s.reply(m);
        return true;
      },
      async (path) => {
        const c = await VfioUserClient.connect(path, { timeout: 100 });
        const t0 = Date.now();
        const rs = await Promise.allSettled([c.reset(), c.reset(), c.reset()]);
        assert.ok(Date.now() - t0 < 1000);
        for (const r of rs) assert.ok(r.status === 'rejected' && isCode('VFU_TIMEOUT')(r.reason));
        // the late replies arrive, before the next reply on the same socket, and must not break the connection
        assert.equal(held.length, 3);
        for (const { m, s } of held) s.reply(m);
        await c.reset();
        assert.equal(c.closed, false);
        c.close();
      },
    );
  });

  test('the server dies with many requests in flight: all fail with VFU_DISCONNECTED, none hangs', async () => {
    await hostile(
      (m, s) => {
        if (m.header.command === P.Command.VERSION) return false;
        if (m.header.command === P.Command.REGION_READ && P.decodeRegionReadRequest(m.payload).offset === 999) setTimeout(() => s.conn.close(), 20);
        return true;
      },
      async (path) => {
        const c = await VfioUserClient.connect(path);
        const ps: Promise<unknown>[] = [];
        for (let i = 0; i < 200; i++) ps.push(c.read(0, i, 4));
        ps.push(c.read(0, 999, 4));
        const rs = await within(Promise.allSettled(ps), T, 'in-flight requests');
        for (const r of rs) assert.ok(r.status === 'rejected' && isCode('VFU_DISCONNECTED')(r.reason));
        assert.equal(c.closed, true);
      },
    );
  });
});

describe('hostile server: server-to-client commands', () => {
  test('DMA_READ/DMA_WRITE are bounds-checked and answered in the spec layout; others get ENOSYS', async () => {
    let side!: Side;
    let maps = 0;
    await hostile(
      (m, s) => {
        side = s;
        if (m.header.command === P.Command.DMA_MAP) maps++;
        return false;
      },
      async (path) => {
        const c = await VfioUserClient.connect(path, { maxDataXferSize: 65536 });
        const mem = new GuestMemory(8192);
        const ro = new GuestMemory(4096);
        await new Promise((r) => setImmediate(r));
        // DMA_MAP without a reply from our fake: record the maps by hand through the public API
        const mapped = Promise.all([c.dmaMap(mem, 0x10000, { shared: false }), c.dmaMap(ro, 0x20000, { shared: false, prot: PROT_READ })]);
        await waitFor(() => maps === 2, 'both DMA_MAPs received');
        // answer the two DMA_MAPs
        for (const id of [1, 2]) side.raw(frame({ msgId: id, command: P.Command.DMA_MAP }));
        await within(mapped, T, 'maps');
        mem.bytes.set([1, 2, 3, 4], 0x100);
        const errors: unknown[] = [];
        c.on('dma-error', (e) => errors.push(e));
        side.command(100, P.Command.DMA_READ, P.encodeDmaReadRequest({ address: 0x10100n, count: 4 }));
        side.command(101, P.Command.DMA_WRITE, P.encodeDmaWriteRequest({ address: 0x11ffcn, data: Uint8Array.of(9, 8, 7, 6) }));
        side.command(102, P.Command.DMA_READ, P.encodeDmaReadRequest({ address: 0x11ffen, count: 4 })); // crosses the end
        side.command(103, P.Command.DMA_WRITE, P.encodeDmaWriteRequest({ address: 0x20000n, data: Uint8Array.of(1) })); // read-only
        side.command(104, P.Command.DMA_READ, P.encodeDmaReadRequest({ address: 0x10000n, count: 1 << 30 })); // oversized
        side.command(105, P.Command.DMA_READ, P.encodeDmaReadRequest({ address: 0xffffffffffffff00n, count: 512 })); // wraps
        side.command(106, P.Command.DMA_WRITE, Uint8Array.of(1, 2, 3)); // truncated
        side.command(107, P.Command.DEVICE_RESET, new Uint8Array(0)); // not a server-to-client command
        const w = new Uint8Array(16);
        new DataView(w.buffer).setBigUint64(0, 0x10000n, true);
        new DataView(w.buffer).setBigUint64(8, 0xffffffffn, true);
        side.command(108, P.Command.DMA_WRITE, w); // count says 4 GiB, no data
        await waitFor(() => side.replies.length >= 9, 'the 9 replies');
        const byId = new Map(side.replies.map((r) => [r.header.msgId, r]));
        const r100 = byId.get(100)!;
        assert.equal(r100.header.flags & FLAG_ERROR, 0);
        const rd = P.decodeDmaReadReply(r100.payload, 4, 'spec');
        assert.deepEqual([...rd.data], [1, 2, 3, 4]);
        assert.equal(r100.payload.length, 16 + 4, 'spec layout: u64 count, data at 16');
        assert.equal(byId.get(101)!.header.flags & FLAG_ERROR, 0);
        assert.deepEqual(P.decodeDmaWriteReply(byId.get(101)!.payload), { address: 0x11ffcn, count: 4 });
        assert.equal(byId.get(101)!.payload.length, 16, 'u64 count, as libvfio-user reads it');
        assert.deepEqual([...mem.bytes.subarray(0x1ffc, 0x2000)], [9, 8, 7, 6]);
        const errno = (id: number): number => {
          const r = byId.get(id)!;
          assert.ok(r.header.flags & FLAG_ERROR, `reply ${id} is an error`);
          return r.header.error;
        };
        assert.equal(errno(102), 14);
        assert.equal(errno(103), 14);
        assert.equal(ro.bytes[0], 0);
        assert.equal(errno(104), 22);
        assert.equal(errno(105), 14);
        assert.ok(errno(106) > 0);
        assert.equal(errno(107), 38);
        assert.ok(errno(108) > 0);
        assert.ok(errors.length >= 5);
        assert.equal(c.closed, false);
        c.close();
        mem.free();
        ro.free();
      },
    );
  });
});
