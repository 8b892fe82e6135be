/**
 * The serving fast path (issue 15): after a reply the server waits for the next message in
 * native code, without a round through the event loop, unless the loop has work. Checked with
 * a client on another thread (so the server's thread really waits), with fds passing over the
 * socket, while the server's thread has its own timers and immediates to run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { PciDevice } from '../../src/server/device.js';
import { VfioUserServer } from '../../src/server/server.js';
import { sockPath, openFds, waitFor } from '../helpers.js';

interface Result {
  ok?: true;
  error?: string;
  reads: number;
  maps: number;
  ms: number;
}

function device(): { dev: PciDevice; regs: Uint32Array } {
  const dev = new PciDevice({ vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000, irqs: { intx: 1 } });
  const regs = new Uint32Array(64);
  dev.addRegion(0, {
    size: 256,
    access: {
      read: (offset, length) => new Uint8Array(regs.buffer, offset, length).slice(),
      write: (offset, data) => void new Uint8Array(regs.buffer).set(data, offset),
    },
  });
  return { dev, regs };
}

async function stream(fastPath: boolean): Promise<{ r: Result; ticks: number; immediates: number; fastWaits: number; maxMaps: number }> {
  const { dev } = device();
  const server = new VfioUserServer(dev, { fastPath });
  const path = sockPath('fast');
  server.listen(path);
  let fastWaits = 0;
  let maxMaps = 0;
  // the server thread's own work, which the fast path must not starve
  let ticks = 0;
  const interval = setInterval(() => {
    ticks++;
    maxMaps = Math.max(maxMaps, dev.dma.count);
    fastWaits = server.session?.conn.fastWaits ?? fastWaits;
  }, 5);
  let immediates = 0;
  let stop = false;
  const spin = (): void => {
    immediates++;
    if (!stop) setTimeout(() => setImmediate(spin), 1);
  };
  spin();
  const w = new Worker(new URL('./fixtures/stream-client.js', import.meta.url), { workerData: { path, rounds: 20, reads: 300 } });
  try {
    const r = await new Promise<Result>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    return { r, ticks, immediates, fastWaits, maxMaps };
  } finally {
    stop = true;
    clearInterval(interval);
    await w.terminate();
    server.close();
    dev.destroy();
  }
}

test('fast path on: requests and fds served, the thread keeps running its timers and immediates, no fd leaks', { timeout: 120000 }, async () => {
  const fds = openFds();
  const s = await stream(true);
  assert.equal(s.r.error, undefined, s.r.error);
  assert.equal(s.r.reads, 20 * 300);
  assert.equal(s.r.maps, 20);
  assert.ok(s.maxMaps >= 1, 'the device saw the maps (their fds came with the messages)');
  assert.ok(s.fastWaits > 0, 'messages were read after a fast-path wait');
  // about 1 tick per 5 ms and one immediate per ~1 ms were due; a starved loop would show few
  const expected = s.r.ms / 5;
  assert.ok(s.ticks >= expected / 10, `${s.ticks} interval ticks in ${s.r.ms.toFixed(0)} ms`);
  assert.ok(s.immediates >= s.r.ms / 1 / 20, `${s.immediates} immediates in ${s.r.ms.toFixed(0)} ms`);
  await waitFor(() => openFds() <= fds + 1, `fds back to ${fds} (+1)`);
});

test('fast path off: the same stream, every message through the event loop', { timeout: 120000 }, async () => {
  const s = await stream(false);
  assert.equal(s.r.error, undefined, s.r.error);
  assert.equal(s.r.reads, 20 * 300);
  assert.equal(s.fastWaits, 0);
});
