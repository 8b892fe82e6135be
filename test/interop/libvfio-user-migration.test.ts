/**
 * Interop (issue #6): our client migrates libvfio-user's migratable `server` sample between
 * two of its processes. Needs VFU_LIBVFIO_USER_SAMPLES (the directory holding the built
 * samples); reported as skipped without it.
 *
 * Observed behaviour of that sample that the test works with:
 *  - it arms a timer from BAR0 when it runs again, so BAR0 must hold a future time first;
 *  - its destination accepts exactly BAR1 + BAR0 bytes, and its pre-copy data is resent in
 *    stop-copy, so the migration runs without pre-copy (--no-precopy);
 *  - it refuses DEVICE_RESET in STOP.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { VfioUserClient } from '../../src/client/client.js';
import { migrate } from '../../src/client/migrate.js';
import { sockPath, waitFor } from '../helpers.js';

const samples = process.env.VFU_LIBVFIO_USER_SAMPLES;

async function startSample(path: string): Promise<ChildProcess> {
  const child = spawn(join(samples!, 'server'), ['-v', path], { stdio: ['ignore', 'ignore', 'pipe'] });
  await waitFor(() => existsSync(path), 'the libvfio-user server sample listening', 5000);
  return child;
}

test('our client migrates libvfio-user sample server state between two of its processes', { skip: samples ? false : 'VFU_LIBVFIO_USER_SAMPLES not set', timeout: 60000 }, async () => {
  const pa = sockPath('lvu-src');
  const pb = sockPath('lvu-dst');
  const a = await startSample(pa);
  const b = await startSample(pb);
  try {
    const src = await VfioUserClient.connect(pa, { timeout: 10000 });
    const dst = await VfioUserClient.connect(pb, { timeout: 10000 });
    const t = Buffer.alloc(8);
    t.writeBigInt64LE(BigInt(Math.floor(Date.now() / 1000) + 60));
    await src.write(0, 0, t);
    const pattern = Buffer.alloc(16384).map((_, i) => (i * 7 + 3) & 0xff);
    await src.write(1, 0, pattern);
    assert.ok((await src.migrationFlags()) & 1n, 'the sample supports STOP_COPY');
    const r = await migrate(src, dst, { noPrecopy: true });
    assert.equal(r.stopCopyBytes, 16384 + 8, 'BAR1 and BAR0');
    assert.equal(await dst.getDeviceState(), 2, 'destination RUNNING');
    assert.ok(Buffer.from(await dst.read(1, 0, 16384)).equals(pattern), 'BAR1 arrived');
    src.close();
    dst.close();
  } finally {
    a.kill('SIGKILL');
    b.kill('SIGKILL');
  }
});

test('DMA_UNMAP with GET_DIRTY_BITMAP against libvfio-user sample server', { skip: samples ? false : 'VFU_LIBVFIO_USER_SAMPLES not set', timeout: 60000 }, async () => {
  const { GuestMemory } = await import('../../src/client/client.js');
  const p = sockPath('lvu-dirty');
  const s = await startSample(p);
  try {
    const c = await VfioUserClient.connect(p, { timeout: 10000 });
    const mem = new GuestMemory(1 << 16);
    await c.dmaMap(mem, 0x10000);
    await c.dmaLoggingStart(4096, [{ iova: 0x10000, length: 1 << 16 }]);
    const bm = await c.dmaUnmapDirty(0x10000, 1 << 16, 4096);
    assert.equal(bm.length, 8, '16 pages in one u64 word, as the library expects');
    assert.equal(c.dmaMaps.length, 0);
    c.close();
    mem.free();
  } finally {
    s.kill('SIGKILL');
  }
});
