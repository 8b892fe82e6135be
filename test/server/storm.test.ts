/**
 * Map storms (issue 10): 65,535 maps of one sparse file at offsets 1 GiB apart, and other
 * layouts the spec allows, against a server in a child process: created in seconds, torn down
 * in under a second, memory bounded; a client asking for more address space than the limit
 * gets an error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { native } from '../../src/native/index.js';
import { VfioUserClient } from '../../src/client/client.js';
import { Connection } from '../../src/transport/connection.js';
import { connectPath } from '../../src/transport/socket.js';
import { VfioUserError } from '../../src/errors.js';
import * as P from '../../src/protocol/index.js';
import { serveChild, processCpuMs } from '../helpers.js';

const C = P.Command;
const GiB = 2 ** 30;

function status(pid: number): { rssMiB: number; vmGiB: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)![1]);
  return { rssMiB: kb('VmRSS') / 1024, vmGiB: kb('VmSize') / 1024 / 1024 };
}

test('65,535 maps of one sparse memfd, 1 GiB apart: created in seconds, torn down in under a second, memory bounded', { timeout: 120000 }, async (t) => {
  const srv = await serveChild('null', ['-q']);
  const fd = native.memfdCreate('storm');
  try {
    native.ftruncate(fd, 65536 * GiB); // 64 TiB, all holes
    const conn = new Connection(connectPath(srv.path));
    await conn.request(C.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} }));
    const before = status(srv.child.pid!);
    const map = (i: number, size = 4096n): Promise<unknown> =>
      conn.request(C.DMA_MAP, P.encodeDmaMapRequest({ flags: 3, offset: BigInt(i) * BigInt(GiB), address: BigInt(i) * 0x10000n, size }), { fds: [fd] });
    const t0 = performance.now();
    const c0 = processCpuMs(srv.child.pid!);
    for (let i = 0; i < 65535; i += 512) {
      const batch: Promise<unknown>[] = [];
      for (let j = i; j < Math.min(i + 512, 65535); j++) batch.push(map(j));
      await Promise.all(batch);
    }
    const tMap = performance.now() - t0;
    const cMap = processCpuMs(srv.child.pid!) - c0;
    const after = status(srv.child.pid!);
    await assert.rejects(map(65535), (e) => e instanceof VfioUserError && e.errno === 28, 'ENOSPC past max maps');
    // memory: no mapping per map (the old code made a 1 GiB one each, and ran a GC for each)
    assert.ok(after.vmGiB - before.vmGiB < 64, `address space grew by ${(after.vmGiB - before.vmGiB).toFixed(1)} GiB`);
    assert.ok(after.rssMiB - before.rssMiB < 256, `RSS grew by ${(after.rssMiB - before.rssMiB).toFixed(0)} MiB`);
    // teardown: the client leaves; the next client is served once the server has unmapped all
    const t1 = performance.now();
    const c1 = processCpuMs(srv.child.pid!);
    conn.close();
    const next = await VfioUserClient.connect(srv.path, { timeout: 30000 });
    const tDown = performance.now() - t1;
    const cDown = processCpuMs(srv.child.pid!) - c1;
    next.close();
    // the server's CPU time decides (the machine may be busy); wall-clock bounds only catch hangs
    t.diagnostic(`65,535 maps over the protocol: ${tMap.toFixed(0)} ms (server CPU ${cMap} ms); teardown + next session: ${tDown.toFixed(0)} ms (server CPU ${cDown} ms)`);
    assert.ok(cMap < 15000 && tMap < 60000, `65,535 maps took ${tMap.toFixed(0)} ms, ${cMap} ms of server CPU`);
    assert.ok(cDown < 1000 && tDown < 10000, `teardown took ${tDown.toFixed(0)} ms, ${cDown} ms of server CPU`);
  } finally {
    native.close(fd);
    assert.equal(await srv.stop(), 0);
  }
});

test('a client asking for more address space than --max-dma-bytes gets ENOSPC, and room again after unmapping', async () => {
  const srv = await serveChild('null', ['-q', '--max-dma-bytes=64G', '--max-dma-maps=100']);
  const fd = native.memfdCreate('storm');
  try {
    native.ftruncate(fd, 1024 * GiB);
    const conn = new Connection(connectPath(srv.path));
    await conn.request(C.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} }));
    const map = (i: number, shared = true): Promise<unknown> =>
      conn.request(C.DMA_MAP, P.encodeDmaMapRequest({ flags: 3, offset: shared ? BigInt(i) * BigInt(GiB) : 0n, address: BigInt(i) * BigInt(GiB), size: BigInt(GiB) }), { fds: shared ? [fd] : [] });
    for (let i = 0; i < 63; i++) await map(i);
    await map(63, false); // message-only maps count too
    await assert.rejects(map(64), (e) => e instanceof VfioUserError && e.errno === 28);
    await assert.rejects(map(64, false), (e) => e instanceof VfioUserError && e.errno === 28);
    await conn.request(C.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 0, address: 0n, size: 2n * BigInt(GiB) }));
    await map(64);
    await map(65);
    await assert.rejects(map(66), (e) => e instanceof VfioUserError && e.errno === 28);
    conn.close();
  } finally {
    native.close(fd);
    assert.equal(await srv.stop(), 0);
  }
});
