/**
 * eventfdSignal and isEventfd: interrupt delivery to a peer's eventfd must never wait, whatever
 * the peer does to the fd (a full counter, O_NONBLOCK cleared, the flag toggled while we write).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { execFileSync, spawn } from 'node:child_process';
import { openSync, closeSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, isNativeError } from '../../src/native/index.js';
import { WORKER } from './helpers.js';

const COUNT = new URL('./fixtures/eventfd-count.js', import.meta.url).pathname;
import { fillEventfd, waitFor } from '../helpers.js';

const T = { timeout: 20000 };

/**
 * Sets the counter to the largest it holds (2^64 - 2): a blocking write of 1 would wait. The
 * counter must not be 0 (a blocking read would wait).
 */
function fill(fd: number): void {
  native.eventfdDrain(fd);
  fillEventfd(fd);
}

test('isEventfd tells eventfds from sockets, FIFOs, files and memfds; EBADF for a closed fd', T, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-efd-'));
  execFileSync('mkfifo', [join(dir, 'p')]);
  const fifo = openSync(join(dir, 'p'), 'r+');
  rmSync(dir, { recursive: true });
  const efd = native.eventfd(0, false);
  const [a, b] = native.socketpair();
  const mfd = native.memfdCreate('x');
  const nul = openSync('/dev/null', 'r');
  assert.equal(native.isEventfd(efd), true);
  for (const fd of [a, b, mfd, nul, fifo]) assert.equal(native.isEventfd(fd), false);
  assert.equal(native.isEventfd(-1), false);
  for (const fd of [efd, a, b, mfd]) native.close(fd);
  closeSync(nul);
  closeSync(fifo);
  assert.throws(() => native.isEventfd(efd), (e: unknown) => isNativeError(e) && e.code === 'EBADF');
});

test('eventfdSignal adds; a full counter returns false at once, blocking or not; errors throw', T, () => {
  const fd = native.eventfd(0, false);
  assert.equal(native.eventfdSignal(fd, 3), true);
  assert.equal(native.eventfdSignal(fd, 4), true);
  assert.equal(native.eventfdRead(fd), 7n);
  fill(fd);
  let t0 = performance.now();
  assert.equal(native.eventfdSignal(fd, 1), false, 'non-blocking and full');
  assert.ok(performance.now() - t0 < 1000, 'no wait (generous: a busy machine preempts us)');
  native.setNonBlocking(fd, false);
  for (let i = 0; i < 5; i++) {
    t0 = performance.now();
    assert.equal(native.eventfdSignal(fd, 1), false, 'blocking and full: cut short');
    const ms = performance.now() - t0;
    assert.ok(ms < 1000, `a blocked write took ${ms} ms`);
  }
  assert.equal(native.eventfdRead(fd), 0xfffffffffffffffen, 'nothing was added to the full counter');
  assert.equal(native.eventfdSignal(fd, 1), true, 'room again: added');
  assert.equal(native.eventfdRead(fd), 1n);
  native.close(fd);
  assert.throws(() => native.eventfdSignal(fd, 1), (e: unknown) => isNativeError(e) && e.code === 'EBADF');
  assert.throws(() => native.eventfdSignal(fd, 0), RangeError);
  // the timer's signal left the event loop working: a timer still fires
  return new Promise((resolve) => setTimeout(resolve, 1));
});

test('a peer toggling O_NONBLOCK while we signal: never stuck, and full/not full reported right', T, async () => {
  // the counter is never 0 here: our own read would block while the peer has cleared O_NONBLOCK
  const fd = native.eventfd(1, false);
  const shared = new Int32Array(new SharedArrayBuffer(8));
  const w = new Worker(WORKER, { workerData: { mode: 'toggle', fd, shared } });
  const exit = once(w, 'exit');
  const done = once(w, 'message');
  let worst = 0;
  let rounds = 0;
  try {
    const deadline = Date.now() + 10000;
    await waitFor(() => Atomics.load(shared, 1) !== 0, 'the toggling worker to start', 10000);
    // rounds while the peer toggles (it may be descheduled for a while on a busy machine)
    const first = Atomics.load(shared, 1);
    while (rounds < 400 || Atomics.load(shared, 1) - first < 2000) {
      assert.ok(Date.now() < deadline, 'timed out');
      const full = rounds % 2 === 0;
      if (full) fill(fd);
      else native.eventfdDrain(fd);
      const t0 = performance.now();
      const r = native.eventfdSignal(fd, 1);
      worst = Math.max(worst, performance.now() - t0);
      assert.equal(r, !full, `round ${rounds}`);
      rounds++;
    }
  } finally {
    Atomics.store(shared, 0, 1);
  }
  await done;
  await exit;
  native.close(fd);
  assert.ok(worst < 1000, `worst signal ${worst} ms in ${rounds} rounds`);
});

test('eventfdSignal in a worker thread uses its own timer', T, async () => {
  const w = new Worker(WORKER, { workerData: { mode: 'signal-full' } });
  const exit = once(w, 'exit'); // 'message' and 'exit' can come in the same tick
  const [msg] = (await once(w, 'message')) as [{ full: boolean; after: boolean; ms: number }];
  assert.equal(msg.full, false);
  assert.equal(msg.after, true);
  assert.ok(msg.ms < 1000, `${msg.ms} ms`);
  const [code] = (await exit) as [number];
  assert.equal(code, 0);
});

test('eventfdSignal adds exactly once when the guard timer fires as the write returns', T, async () => {
  // Pinned to one CPU beside a busy process, the signalling thread is preempted again and
  // again on its way out of write(2), and the 2 ms guard timer often expires meanwhile. The
  // handler used to jump out then as if the write had been cut short, and the interrupt was
  // written a second time (14-23 extra in 300,000 on this machine).
  const cpu = '0';
  const hog = spawn('taskset', ['-c', cpu, process.execPath, '-e', 'for (;;) {}'], { stdio: 'ignore' });
  try {
    await once(hog, 'spawn');
    const out = execFileSync('taskset', ['-c', cpu, process.execPath, COUNT, '300000'], {
      encoding: 'utf8',
      timeout: 15000,
    });
    const r = JSON.parse(out) as { sent: number; received: string };
    assert.equal(r.received, String(r.sent), 'every signal added once');
  } finally {
    hog.kill('SIGKILL');
  }
});
