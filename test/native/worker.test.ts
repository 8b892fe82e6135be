import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageChannel, Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { native, PROT_READ, PROT_WRITE } from '../../src/native/index.js';
import { WORKER } from './helpers.js';
import { waitFor } from '../helpers.js';

const T = { timeout: 10000 };

interface Started {
  w: Worker;
  /** Subscribed at once: 'message'/'error' and 'exit' can be emitted in the same tick. */
  message: Promise<unknown[]>;
  error: Promise<unknown[]>;
  exit: Promise<unknown[]>;
}

function start(mode: string): Started {
  const w = new Worker(WORKER, { workerData: { mode } });
  const exit = new Promise<unknown[]>((resolve) => w.once('exit', (code: number) => resolve([code])));
  const s = { w, message: once(w, 'message'), error: once(w, 'error'), exit };
  // once() rejects on 'error' while waiting for 'message': tests await what they expect
  for (const p of [s.message, s.error]) p.catch(() => {});
  return s;
}

test('the addon works in a worker thread', T, async () => {
  const w = start('basic');
  const [msg] = (await w.message) as [Record<string, unknown>];
  assert.deepEqual(msg, { sent: 2, n: 2, nfds: 2, shared: 77, woke: { status: 0, value: 5n }, errCode: 'EBADF' });
  const [code] = (await w.exit) as [number];
  assert.equal(code, 0);
});

test('several workers use the addon concurrently', T, async () => {
  const ws = [start('basic'), start('basic'), start('basic')];
  const codes = await Promise.all(
    ws.map(async (w) => {
      const [msg] = (await w.message) as [{ shared: number }];
      assert.equal(msg.shared, 77);
      return ((await w.exit) as [number])[0];
    }),
  );
  assert.deepEqual(codes, [0, 0, 0]);
});

test('terminating a worker with active pollers and live mappings is clean', T, async () => {
  for (let i = 0; i < 3; i++) {
    const { w, message, exit } = start('hang');
    const msgs: unknown[] = [];
    w.on('message', (m) => msgs.push(m));
    let exited = false;
    void exit.then(() => (exited = true));
    const [msg] = (await message) as [string];
    assert.equal(msg, 'ready');
    await waitFor(() => msgs.includes('alive') || exited, 'the worker to report alive or exit');
    assert.equal(exited, false, 'a started (ref\'d) poller keeps the worker alive');
    const code = await w.terminate();
    assert.equal(code, 1);
    await exit;
  }
  // the main thread's addon instance is unaffected
  const [a, b] = native.socketpair();
  native.close(a);
  native.close(b);
});

test('a worker exits by itself when its poller is unref()ed; env teardown closes it', T, async () => {
  const w = start('unref-exit');
  const [msg] = (await w.message) as [string];
  assert.equal(msg, 'done');
  const [code] = (await w.exit) as [number];
  assert.equal(code, 0);
});

test('an exception in a worker poll callback becomes the worker error event', T, async () => {
  const w = start('throw');
  const [err] = (await w.error) as [Error];
  assert.equal(err.message, 'boom in worker');
  const [code] = (await w.exit) as [number];
  assert.equal(code, 1);
});

test('an mmapped buffer posted to another thread arrives as a copy (documented on mmap)', T, async () => {
  const fd = native.memfdCreate('posted');
  native.ftruncate(fd, native.PAGE_SIZE);
  const ab = native.mmap(fd, 0, native.PAGE_SIZE, PROT_READ | PROT_WRITE);
  new Uint8Array(ab)[0] = 7;
  const { port1, port2 } = new MessageChannel();
  try {
    for (const transfer of [[], [ab]]) {
      const got = once(port2, 'message');
      port1.postMessage(ab, transfer);
      const [copy] = (await got) as [ArrayBuffer];
      assert.equal(copy.byteLength, native.PAGE_SIZE);
      assert.equal(new Uint8Array(copy)[0], 7, 'the bytes at posting time');
      new Uint8Array(copy)[0] = 9;
      assert.equal(ab.byteLength, native.PAGE_SIZE, `not detached (transfer list: ${transfer.length})`);
      assert.equal(new Uint8Array(ab)[0], 7, 'a store into the copy does not reach the mapping');
    }
  } finally {
    port1.close();
    native.munmap(ab);
    native.close(fd);
  }
});
