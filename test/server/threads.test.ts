/**
 * Several devices in one process, each on its own worker thread (DeviceThreads, issue 15):
 * they serve at once, a busy one does not stall another, one that throws or whose worker dies
 * is reported and restarted while the others go on, one left down is reported, and close()
 * stops them all and removes their sockets.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { DeviceThreads, type DeviceThread } from '../../src/server/threads.js';
import { VfioUserClient } from '../../src/client/client.js';
import { sockPath, openFds } from '../helpers.js';

const MODULE = new URL('./fixtures/thread-device.js', import.meta.url);
const T = { timeout: 120000 };

function u32(v: number): Uint8Array {
  return new Uint8Array(new Uint32Array([v]).buffer);
}

async function reg(c: VfioUserClient, i: number): Promise<number> {
  const b = await c.read(0, i * 4, 4);
  return new DataView(b.buffer, b.byteOffset).getUint32(0, true);
}

/** Resolves with the next emission of event for this device. */
function next(host: DeviceThreads, event: string, name: string, timeoutMs = 30000, match: (rest: unknown[]) => boolean = () => true): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} for ${name}`)), timeoutMs);
    const on = (th: DeviceThread, ...rest: unknown[]): void => {
      if (th.name !== name || !match(rest)) return;
      host.off(event, on);
      clearTimeout(t);
      resolve(rest);
    };
    host.on(event, on);
  });
}

test('two devices on two threads serve at once; events, logs and messages cross; close() removes the sockets', T, async (t) => {
  const fds = openFds();
  const host = new DeviceThreads();
  const rss0 = process.memoryUsage().rss;
  const a = await host.add({ name: 'a', module: MODULE, options: { id: 1 }, socketPath: sockPath('a') });
  const rss1 = process.memoryUsage().rss;
  const b = await host.add({ name: 'b', module: MODULE.pathname, options: { id: 2 }, socketPath: sockPath('b') });
  const rss2 = process.memoryUsage().rss;
  t.diagnostic(`RSS: ${(rss0 / 2 ** 20).toFixed(1)} MiB, +${((rss1 - rss0) / 2 ** 20).toFixed(1)} MiB with 1 device thread, +${((rss2 - rss1) / 2 ** 20).toFixed(1)} MiB with the 2nd`);
  assert.equal(a.state, 'running');
  const ca = await VfioUserClient.connect(a.socketPath);
  const cb = await VfioUserClient.connect(b.socketPath);
  const ta = await reg(ca, 1);
  const tb = await reg(cb, 1);
  assert.notEqual(ta, 0, 'served off the main thread');
  assert.notEqual(ta, tb, 'each device on its own thread');
  assert.equal(await reg(ca, 2), 1);
  assert.equal(await reg(cb, 2), 2);
  await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? ca : cb).write(0, 8, u32(i))));
  const log = next(host, 'log', 'a');
  await ca.write(0, 0, u32(7));
  assert.deepEqual(await log, ['info', 'command 7']);
  const echo = next(host, 'event', 'b');
  b.post({ hello: [1, 2] });
  assert.deepEqual(await echo, ['echo', { data: { hello: [1, 2] } }]);
  await host.close();
  assert.equal(a.state, 'stopped');
  assert.ok(!existsSync(a.socketPath) && !existsSync(b.socketPath), 'sockets removed');
  await assert.rejects(reg(ca, 0), 'the client was disconnected');
  await assert.rejects(reg(cb, 0));
  ca.close();
  cb.close();
  assert.ok(openFds() <= fds + 2, `fds ${fds} before, ${openFds()} after`);
});

test('a busy device does not stall another', T, async () => {
  const host = new DeviceThreads();
  try {
    const a = await host.add({ name: 'busy', module: MODULE, options: { busyMs: 1500 }, socketPath: sockPath('busy') });
    const b = await host.add({ name: 'other', module: MODULE, socketPath: sockPath('other') });
    const ca = await VfioUserClient.connect(a.socketPath);
    const cb = await VfioUserClient.connect(b.socketPath);
    // the device's own 'busy' event (its 'connect' event for ca may come first)
    const looping = next(host, 'event', 'busy', 30000, (rest) => rest[0] === 'busy');
    const busy = ca.write(0, 0, u32(3));
    assert.deepEqual(await looping, ['busy', {}], 'device a is in its loop now');
    const t0 = performance.now();
    for (let i = 0; i < 50; i++) await reg(cb, 2);
    const ms = performance.now() - t0;
    const busyDone = await Promise.race([busy.then(() => true), Promise.resolve(false)]);
    assert.equal(busyDone, false, 'device a still busy while b answered 50 reads');
    assert.ok(ms < 1400, `50 reads of device b took ${ms.toFixed(0)} ms while device a was busy`);
    await busy;
    ca.close();
    cb.close();
  } finally {
    await host.close();
  }
});

for (const [what, cmd, expect] of [
  ['a device that throws from a timer', 1, /device bug on its thread/],
  ['a device whose worker exits', 2, /code 3/],
  ['an unhandled rejection in a device', 4, /a rejection nobody handles/],
] as const) {
  test(`${what}: reported and restarted; the other device keeps serving`, T, async () => {
    const host = new DeviceThreads();
    try {
      const a = await host.add({ name: 'bad', module: MODULE, socketPath: sockPath('bad') });
      const b = await host.add({ name: 'good', module: MODULE, options: { id: 9 }, socketPath: sockPath('good') });
      const ca = await VfioUserClient.connect(a.socketPath);
      const cb = await VfioUserClient.connect(b.socketPath);
      const thread0 = await reg(ca, 1);
      const exit = next(host, 'exit', 'bad');
      const restarted = next(host, 'ready', 'bad');
      await ca.write(0, 0, u32(cmd));
      const [info] = (await exit) as [{ code: number; error: string }];
      assert.match(info.error, expect);
      if (cmd === 2) assert.equal(info.code, 3);
      assert.equal(await reg(cb, 2), 9, 'the other device serves meanwhile');
      await assert.rejects(reg(ca, 1), 'the client of the dead worker was disconnected');
      ca.close();
      await restarted;
      assert.equal(a.state, 'running');
      assert.equal(a.restarts, 1);
      const ca2 = await VfioUserClient.connect(a.socketPath);
      const thread1 = await reg(ca2, 1);
      assert.notEqual(thread1, thread0, 'served by a new worker');
      assert.equal(await reg(cb, 2), 9);
      ca2.close();
      cb.close();
    } finally {
      await host.close();
    }
  });
}

test('restart: false (or too many deaths): the device is reported failed, left down, its socket removed', T, async () => {
  const host = new DeviceThreads();
  try {
    const a = await host.add({ name: 'once', module: MODULE, socketPath: sockPath('once'), restart: false });
    const ca = await VfioUserClient.connect(a.socketPath);
    const failed = next(host, 'failed', 'once');
    await ca.write(0, 0, u32(1));
    const [err] = (await failed) as [string];
    assert.match(err, /device bug/);
    assert.equal(a.state, 'failed');
    assert.ok(!existsSync(a.socketPath));
    ca.close();
    const b = await host.add({ name: 'twice', module: MODULE, socketPath: sockPath('twice'), restart: { max: 1, windowMs: 60000 } });
    const f2 = next(host, 'failed', 'twice');
    for (let i = 0; i < 2; i++) {
      // the second death is the last: no ready follows it (a waiter would time out later)
      const ready = i === 0 ? next(host, 'ready', 'twice') : undefined;
      const c = await VfioUserClient.connect(b.socketPath);
      await c.write(0, 0, u32(2));
      c.close();
      await ready;
    }
    await f2;
    assert.equal(b.restarts, 1);
  } finally {
    await host.close();
  }
});

test('a device that cannot start: add() rejects, nothing is left behind', T, async () => {
  const host = new DeviceThreads();
  const path = sockPath('nostart');
  await assert.rejects(host.add({ name: 'x', module: MODULE, options: { failAtStart: true }, socketPath: path }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'VFU_DEVICE_FAILED');
    assert.match(e.message, /this device cannot start/);
    return true;
  });
  assert.ok(!existsSync(path));
  await assert.rejects(host.add({ name: 'y', module: new URL('./fixtures/no-such-device.js', import.meta.url), socketPath: sockPath('y') }), /Cannot find module|ERR_MODULE_NOT_FOUND/);
  await assert.rejects(host.add({ name: 'z', module: MODULE, export: 'nothing', socketPath: sockPath('z') }), /not a device factory/);
  assert.equal(host.devices.length, 0);
  await host.close();
});
