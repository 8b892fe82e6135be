import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { native, isNativeError, type NativePoller } from '../../src/native/index.js';
import { collect, lastJson, loopTurn, spawnPeer, text } from './helpers.js';
import { waitFor } from '../helpers.js';

const T = { timeout: 10000 };

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function nextEvent(fd: number, events: number): Promise<{ status: number; events: number; poller: NativePoller }> {
  return new Promise((resolve) => {
    const poller = native.createPoller(fd, (status, ev) => {
      poller.stop();
      resolve({ status, events: ev, poller });
    });
    poller.start(events);
  });
}

test('an eventfd write wakes the poller', T, async () => {
  const fd = native.eventfd(0, false);
  const calls: Array<[number, number, bigint]> = [];
  const done = new Promise<void>((resolve) => {
    const p = native.createPoller(fd, (status, events) => {
      calls.push([status, events, native.eventfdRead(fd)]);
      if (calls.length === 2) {
        p.close();
        resolve();
      } else {
        setImmediate(() => native.eventfdWrite(fd, 9));
      }
    });
    p.start(native.POLL_READABLE);
  });
  await loopTurn();
  assert.equal(calls.length, 0, 'no callback before the write (a poll phase with the watcher registered has run)');
  native.eventfdWrite(fd, 4);
  await done;
  assert.deepEqual(calls, [
    [0, native.POLL_READABLE, 4n],
    [0, native.POLL_READABLE, 9n],
  ]);
  native.close(fd);
});

test('writable and disconnect events on a socket', T, async () => {
  const [a, b] = native.socketpair();
  const w = await nextEvent(a, native.POLL_WRITABLE);
  assert.equal(w.status, 0);
  assert.equal(w.events, native.POLL_WRITABLE);
  w.poller.close();
  native.close(b);
  const d = await nextEvent(a, native.POLL_READABLE | native.POLL_DISCONNECT);
  assert.equal(d.status, 0);
  assert.ok(d.events & native.POLL_DISCONNECT);
  d.poller.close();
  native.close(a);
});

test('poll error status (negative) when the socket has an error', T, async () => {
  const [a, b] = native.socketpair();
  native.sendmsg(a, [text('unread')], null);
  native.close(b); // closing with unread data resets a: POLLERR
  const r = await nextEvent(a, native.POLL_READABLE);
  assert.equal(r.status, -9); // UV_EBADF, as libuv reports POLLERR
  // the handle was stopped by libuv; it can be restarted or closed
  r.poller.close();
  native.close(a);
});

test('microtasks run right after the poll callback (before setImmediate)', T, async () => {
  const fd = native.eventfd(1, false);
  const order: string[] = [];
  await new Promise<void>((resolve) => {
    const p = native.createPoller(fd, () => {
      p.close();
      order.push('callback');
      void Promise.resolve().then(() => order.push('promise'));
      queueMicrotask(() => order.push('microtask'));
      process.nextTick(() => order.push('nextTick'));
      setImmediate(() => {
        order.push('immediate');
        resolve();
      });
    });
    p.start(native.POLL_READABLE);
  });
  assert.deepEqual(order, ['callback', 'nextTick', 'promise', 'microtask', 'immediate']);
  native.close(fd);
});

test('the callback gets the poller as this; start/stop/close/ref/unref semantics', T, async () => {
  const fd = native.eventfd(1, false);
  let thisIsPoller = false;
  let n = 0;
  const p = native.createPoller(fd, function (this: unknown) {
    thisIsPoller = this === p;
    n++;
    p.stop();
  });
  p.stop(); // stop before start is fine
  p.unref();
  p.ref();
  p.start(native.POLL_READABLE);
  p.start(native.POLL_READABLE | native.POLL_WRITABLE); // change events while started
  // the callback (the fd is writable at once); stopped in it, the always-writable fd must not
  // call again in the next poll phase
  await waitFor(() => n > 0, 'the first callback');
  await loopTurn();
  assert.ok(thisIsPoller);
  assert.equal(n, 1);
  p.start(0); // same as stop
  p.close();
  p.close(); // idempotent
  p.stop(); // no-op after close
  p.ref();
  p.unref();
  assert.throws(() => p.start(native.POLL_READABLE), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_STATE');
  assert.throws(() => p.start(8), RangeError);
  const proto = Object.getPrototypeOf(p) as { start: (this: unknown, ev: number) => void; constructor: new () => unknown };
  // V8's receiver check ("Illegal invocation") or ours (ERR_INVALID_THIS)
  assert.throws(() => proto.start.call({}, 1), TypeError);
  assert.throws(() => proto.start.call(Object.create(proto), 1), TypeError);
  assert.throws(() => new proto.constructor(), TypeError);
  native.close(fd);
});

test('createPoller errors', T, () => {
  const fd = native.eventfd(0, false);
  native.close(fd);
  assert.throws(() => native.createPoller(fd, () => {}), (e: unknown) => isNativeError(e) && e.code === 'EBADF' && e.syscall === 'uv_poll_init');
  const fd2 = native.eventfd(0, false);
  const p = native.createPoller(fd2, () => {});
  p.start(native.POLL_READABLE);
  // libuv allows one active poll handle per fd per loop
  assert.throws(() => native.createPoller(fd2, () => {}), (e: unknown) => isNativeError(e) && e.code === 'EEXIST');
  p.close();
  native.close(fd2);
});

function fires(fd: number): Promise<void> {
  return new Promise((resolve) => {
    const p = native.createPoller(fd, () => {
      native.eventfdDrain(fd);
      p.close();
      resolve();
    });
    p.start(native.POLL_READABLE);
  });
}

test('closing, stopping or collecting another poller on the same fd does not disarm the started one', T, async () => {
  const fd = native.eventfd(0, false);
  const idle = native.createPoller(fd, () => {});
  const garbage = Array.from({ length: 50 }, () => new WeakRef(native.createPoller(fd, () => {})));
  const woke = fires(fd);
  // only one poller per fd may be started
  assert.throws(() => idle.start(native.POLL_READABLE), (e: unknown) => isNativeError(e) && e.code === 'EEXIST' && e.syscall === 'uv_poll_start');
  await loopTurn(); // the started watcher is in epoll: a stop or close elsewhere could now disarm it
  idle.stop();
  idle.close();
  await waitFor(() => (gc(), garbage.every((r) => r.deref() === undefined)), 'the garbage pollers collected');
  await loopTurn(); // their handles closed
  native.eventfdWrite(fd, 1);
  await woke;
  native.close(fd);
});

test('a stale poller for a reused fd number does not break the new one', T, async () => {
  const old = native.eventfd(0, false);
  let stale: NativePoller | null = native.createPoller(old, () => {});
  stale.start(native.POLL_READABLE);
  stale.stop(); // must stop before closing the fd, otherwise createPoller on the new fd fails with EEXIST
  native.close(old);
  const fd = native.eventfd(0, false);
  assert.equal(fd, old, 'the kernel reuses the lowest free fd number');
  const woke = fires(fd);
  await loopTurn(); // the new watcher is in epoll: closing the stale one could now disarm it
  stale.close();
  stale = null;
  native.eventfdWrite(fd, 1);
  await woke;
  native.close(fd);
});

test('pollers are collectable when idle and kept alive while started', T, async () => {
  const fd = native.eventfd(0, false);
  let fired = 0;
  const make = (): WeakRef<NativePoller> => new WeakRef(native.createPoller(fd, () => fired++));
  const idle = make();
  const fd2 = native.dup(fd);
  const started = ((): WeakRef<NativePoller> => {
    const p = native.createPoller(fd2, () => {});
    p.start(native.POLL_READABLE);
    return new WeakRef(p);
  })();
  await waitFor(() => (gc(), idle.deref() === undefined), 'an idle poller is garbage collected');
  gc();
  assert.ok(started.deref(), 'a started poller stays alive (collected with the idle one otherwise)');
  started.deref()?.stop(); // (no local may hold it: it must become collectable)
  await waitFor(() => (gc(), started.deref() === undefined), 'a stopped poller collected');
  assert.equal(fired, 0);
  native.close(fd);
  native.close(fd2);
});

test('many pollers created and dropped (GC closes their handles)', T, async () => {
  const fd = native.eventfd(0, false);
  const dropped = Array.from({ length: 2000 }, () => new WeakRef(native.createPoller(fd, () => {})));
  await waitFor(() => (gc(), dropped.every((r) => r.deref() === undefined)), 'the dropped pollers collected');
  await loopTurn(); // their handles closed
  // the fd can be polled again: no stale handle is left started on it
  native.eventfdWrite(fd, 1);
  const r = await nextEvent(fd, native.POLL_READABLE);
  r.poller.close();
  native.close(fd);
});

test('an exception thrown by a poll callback reaches uncaughtException', T, async () => {
  const r = await collect(spawnPeer('uncaught-handled'));
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(lastJson(r.stdout), { caught: 'boom from poll callback', alive: true });
});

test('an unhandled exception from a poll callback terminates the process', T, async () => {
  const r = await collect(spawnPeer('uncaught-unhandled'));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /boom from poll callback/);
});

test('an unref()ed poller does not keep the process alive', T, async () => {
  const r = await collect(spawnPeer('unref'));
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(lastJson(r.stdout), { exited: true });
});
