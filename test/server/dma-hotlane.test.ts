/**
 * The hot lane for DMA_MAP and DMA_UNMAP (Session.fastDma, issue 11: a guest
 * IOMMU sends both for every page of every I/O) answers exactly as the general path: the same
 * replies (payload bytes or errno) and the same map table after each of a series of good and
 * bad requests, with and without fds, sent over a real socket to a server with the hot lane
 * on and to one with it off, and no fd left behind. An unmap of a pinned map waits for the
 * pin on both.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Connection, closeFds } from '../../src/transport/connection.js';
import { connectPath } from '../../src/transport/socket.js';
import { VfioUserError } from '../../src/errors.js';
import * as P from '../../src/protocol/index.js';
import { openSync, writeFileSync } from 'node:fs';
import { native } from '../../src/native/index.js';
import { withServer, waitFor, delay, openFds, sockPath, type ServerContext } from '../helpers.js';
import { fdsBackTo } from '../transport/util.js';

const C = P.Command;
const PAGE = 4096;

function mapP(flags: number, address: bigint, size: bigint, argsz = 32, len = 32): Uint8Array {
  const b = new Uint8Array(len);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, argsz, true);
  dv.setUint32(4, flags, true);
  dv.setBigUint64(16, address, true);
  dv.setBigUint64(24, size, true);
  return b;
}

function unmapP(flags: number, address: bigint, size: bigint, argsz = 24): Uint8Array {
  const b = new Uint8Array(24);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, argsz, true);
  dv.setUint32(4, flags, true);
  dv.setBigUint64(8, address, true);
  dv.setBigUint64(16, size, true);
  return b;
}

/** fds sent with a request: a 64 KiB memfd, a 4 KiB one, a regular file (cannot be sealed), two */
type Fds = 'mem' | 'short' | 'file' | 'two' | undefined;

function mapF(fds: Fds, flags: number, address: bigint, size: bigint, offset = 0n): [number, Uint8Array, Fds] {
  const b = mapP(flags, address, size);
  new DataView(b.buffer).setBigUint64(8, offset, true);
  return [C.DMA_MAP, b, fds];
}

const M = 0x100000n;
const CASES: [number, Uint8Array, Fds?][] = [
  [C.DMA_MAP, mapP(3, M, 4096n)],
  [C.DMA_MAP, mapP(3, M, 4096n)], // EEXIST
  [C.DMA_MAP, mapP(3, M - 4096n, 8192n)], // overlaps from below
  [C.DMA_MAP, mapP(1, 2n * M, 8192n)],
  [C.DMA_MAP, mapP(2, 3n * M, 4096n)],
  [C.DMA_MAP, mapP(0, 4n * M, 4096n)], // no permission
  [C.DMA_MAP, mapP(4, 4n * M, 4096n)], // unknown flag
  [C.DMA_MAP, mapP(3, 4n * M + 0x800n, 4096n)], // unaligned address
  [C.DMA_MAP, mapP(3, 4n * M, 100n)], // unaligned size
  [C.DMA_MAP, mapP(3, 4n * M, 0n)],
  [C.DMA_MAP, mapP(3, 2n ** 64n - 4096n, 8192n)], // past 2^64
  [C.DMA_MAP, mapP(3, 2n ** 53n, 4096n)], // above 2^53: the general way on both
  [C.DMA_MAP, mapP(3, 5n * M, 4096n, 31)], // argsz too small
  [C.DMA_MAP, mapP(3, 5n * M, 4096n, 33)], // argsz past the payload
  [C.DMA_MAP, mapP(3, 5n * M, 4096n, 40, 40)], // a longer structure
  [C.DMA_MAP, mapP(3, 6n * M, 4096n)], // ENOSPC: maxDmaMaps is 5
  [C.DMA_UNMAP, unmapP(0, M, 4096n)],
  [C.DMA_UNMAP, unmapP(0, 9n * M, 4096n)], // covers no map: fine
  [C.DMA_UNMAP, unmapP(0, 2n * M, 4096n)], // cuts a map in two
  [C.DMA_UNMAP, unmapP(0, 2n * M + 4096n, 8192n)], // cuts it at the start
  [C.DMA_UNMAP, unmapP(0, 2n * M + 0x800n, 4096n)], // unaligned
  [C.DMA_UNMAP, unmapP(0, 2n * M, 0n)],
  [C.DMA_UNMAP, unmapP(0, 2n * M, 4096n, 23)], // argsz below the reply
  [C.DMA_UNMAP, unmapP(8, 2n * M, 4096n)], // unknown flag
  [C.DMA_UNMAP, unmapP(0, 2n * M, 2n * M, 100)], // both maps in the range; argsz larger than needed
  [C.DMA_MAP, mapP(3, 7n * M, 4096n)],
  [C.DMA_UNMAP, unmapP(2, 1n, 0n)], // ALL with an address
  [C.DMA_UNMAP, unmapP(2, 0n, 0n)], // ALL
  [C.DMA_UNMAP, unmapP(0, 2n ** 64n - 4096n, 8192n)],
  // with an fd: guest RAM shared
  mapF('mem', 3, M, 4096n),
  mapF('mem', 1, 2n * M, 8192n, 8192n), // the same file read-only: a second file entry
  mapF('mem', 3, 3n * M, 4096n, 4096n), // the same file again
  mapF('mem', 3, M, 4096n), // EEXIST: the fd is closed
  mapF('mem', 3, 4n * M, 4096n, 0x10000n), // past the end of the file
  mapF('short', 3, 4n * M, 8192n), // past the end of a short file
  mapF('mem', 3, 4n * M, 4096n, 0x800n), // unaligned offset: the general way on both
  mapF('mem', 3, 4n * M, 4096n, 2n ** 60n), // huge offset: the general way on both
  mapF('mem', 0, 4n * M, 4096n), // no permission
  mapF('mem', 8, 4n * M, 4096n), // unknown flag
  mapF('file', 3, 4n * M, 4096n), // cannot be sealed: EPERM
  mapF('two', 3, 4n * M, 4096n), // two fds
  [C.DMA_UNMAP, unmapP(0, 3n * M, 4096n), 'mem'], // an unmap with an fd: the general way, the fd closed
  [C.DMA_UNMAP, unmapP(0, M, 4096n)],
  mapF('mem', 3, M, 4096n, 0xf000n), // the last page, the file now idle and reused
  [C.DMA_UNMAP, unmapP(2, 0n, 0n)],
];

function outcome(r: PromiseSettledResult<{ payload: Uint8Array }>): string {
  if (r.status === 'fulfilled') return Buffer.from(r.value.payload).toString('hex');
  const e = r.reason as unknown;
  assert.ok(e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR', String(e));
  return `errno ${e.errno}`;
}

async function raw(ctx: ServerContext, hot: boolean): Promise<Connection> {
  const conn = new Connection(connectPath(ctx.path));
  await conn.request(C.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} }));
  await waitFor(() => ctx.server.session !== undefined, 'session');
  ctx.server.session!.hotLane = hot;
  return conn;
}

async function run(hot: boolean): Promise<{ out: string[]; hotCommands: number }> {
  const base = openFds();
  const mem = native.memfdCreate('hot-lane');
  native.ftruncate(mem, 0x10000);
  const short = native.memfdCreate('hot-lane-short');
  native.ftruncate(short, PAGE);
  const file = sockPath('hot-lane-file');
  writeFileSync(file, new Uint8Array(0x10000));
  const plain = openSync(file, 'r+');
  const fdsOf = (f: Fds): number[] => (f === 'mem' ? [mem] : f === 'short' ? [short] : f === 'file' ? [plain] : f === 'two' ? [mem, short] : []);
  try {
    return await withServer(
      async (ctx) => {
        const conn = await raw(ctx, hot);
        const out: string[] = [];
        for (const [cmd, payload, fds] of CASES) {
          // the kernel gives the server its own copies of the fds; ours stay open
          const [r] = await Promise.allSettled([conn.request(cmd, payload, { fds: fdsOf(fds) })]);
          const maps = ctx.dev.dma.list().map((m) => `${m.iova.toString(16)}+${m.size.toString(16)}/${m.prot}${m.file ? `@${m.fileOffset.toString(16)}` : ''}`);
          out.push(`${P.commandName(cmd)}${fds ? ` (${fds})` : ''}: ${outcome(r)}; maps ${maps.join(' ')}; files ${ctx.dev.dma.fileCount}`);
        }
        const hotCommands = ctx.server.session!.hotCommands;
        conn.close();
        return { out, hotCommands };
      },
      { maxDmaMaps: 5 },
    );
  } finally {
    closeFds([mem, short, plain]);
    await fdsBackTo(base, `fds after the series (hot lane ${hot})`);
  }
}

test('the DMA hot lane gives the general path’s replies and map table for good and bad DMA_MAP/DMA_UNMAP', async () => {
  const general = await run(false);
  const hot = await run(true);
  assert.equal(general.hotCommands, 0);
  assert.ok(hot.hotCommands >= 20, `the hot lane took ${hot.hotCommands} of ${CASES.length}`);
  assert.deepEqual(hot.out, general.out);
  // the series means something: successes and each kind of failure
  const errnos = new Set(general.out.map((o) => /errno (\d+)/.exec(o)?.[1]).filter((x) => x));
  assert.deepEqual([...errnos].sort(), ['1', '17', '22', '28'].sort(), general.out.join('\n'));
  assert.match(String(general.out[24]), /^DMA_UNMAP: 180000000000000000002000000000000000200000000000; maps 500000\+1000\/3 20000000000000\+1000\/3; files 0$/, 'both maps in the range went, the request echoed with argsz 24');
});

test('the DMA hot lane: an unmap of a pinned map removes it at once and replies when the pin goes, as the general path', async () => {
  for (const hot of [true, false]) {
    await withServer(async (ctx) => {
      const conn = await raw(ctx, hot);
      await conn.request(C.DMA_MAP, mapP(3, M, BigInt(PAGE)));
      const pin = ctx.dev.dma.pin(Number(M), 16, false);
      let replied = false;
      const unmap = conn.request(C.DMA_UNMAP, unmapP(0, M, BigInt(PAGE)));
      void unmap.then(() => (replied = true));
      await waitFor(() => ctx.dev.dma.count === 0, 'the map removed at once');
      // a command behind it waits for it (order)
      const next = conn.request(C.DMA_MAP, mapP(3, 2n * M, BigInt(PAGE)));
      // proves a negative: time for a reply that should not come yet
      await delay(30);
      assert.equal(replied, false, `no reply while pinned (hot lane ${hot})`);
      assert.equal(ctx.dev.dma.count, 0, 'the map behind it waits too');
      pin.release();
      const r = await unmap;
      assert.equal(Buffer.from(r.payload).toString('hex'), Buffer.from(unmapP(0, M, BigInt(PAGE))).toString('hex'));
      await next;
      assert.equal(ctx.dev.dma.count, 1);
      assert.equal(ctx.server.session!.hotCommands > 0, hot);
      conn.close();
    });
  }
});
