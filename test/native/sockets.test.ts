import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, isNativeError, PROT_READ, PROT_WRITE, type NativeError } from '../../src/native/index.js';
import { countFds, fdFlags, isCloexec, O_NONBLOCK, str, text } from './helpers.js';

const T = { timeout: 10000 };
const fdsOut = new Int32Array(1 + native.SCM_MAX_FD);

function pair(): [number, number] {
  return native.socketpair();
}

function closeAll(...fds: number[]): void {
  for (const fd of fds) native.close(fd);
}

function expectErrno(fn: () => unknown, code: string, syscall?: string): NativeError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(isNativeError(caught), `expected a NativeError ${code}, got ${String(caught)}`);
  const e = caught;
  assert.equal(e.code, code);
  if (syscall) assert.equal(e.syscall, syscall);
  return e;
}

test('constants', T, () => {
  assert.equal(native.SCM_MAX_FD, 253);
  assert.equal(native.POLL_READABLE, 1);
  assert.equal(native.POLL_WRITABLE, 2);
  assert.equal(native.POLL_DISCONNECT, 4);
  assert.ok(native.PAGE_SIZE >= 4096 && (native.PAGE_SIZE & (native.PAGE_SIZE - 1)) === 0);
});

test('socketpair fds are CLOEXEC and non-blocking', T, () => {
  const [a, b] = pair();
  for (const fd of [a, b]) {
    assert.ok(isCloexec(fd));
    assert.ok(fdFlags(fd) & O_NONBLOCK);
  }
  closeAll(a, b);
});

test('errors carry errno, code, syscall and a "syscall: strerror" message', T, () => {
  const [a, b] = pair();
  closeAll(a, b);
  const e = expectErrno(() => native.close(a), 'EBADF', 'close');
  assert.ok(e instanceof Error);
  assert.equal(e.errno, 9);
  assert.equal(e.message, 'close: Bad file descriptor');
  expectErrno(() => native.recvmsg(a, new Uint8Array(4), 0, 4, fdsOut), 'EBADF', 'recvmsg');
  expectErrno(() => native.sendmsg(a, [new Uint8Array(4)], null), 'EBADF', 'sendmsg');
  expectErrno(() => native.dup(a), 'EBADF', 'dup');
});

test('send and receive data with an eventfd and a memfd', T, () => {
  const [a, b] = pair();
  const efd = native.eventfd(0, false);
  const mfd = native.memfdCreate('pass');
  native.ftruncate(mfd, native.PAGE_SIZE);
  const n = native.sendmsg(a, [text('hello')], [efd, mfd]);
  assert.equal(n, 5);
  const buf = new Uint8Array(32);
  assert.equal(native.recvmsg(b, buf, 0, buf.length, fdsOut), 5);
  assert.equal(str(buf.subarray(0, 5)), 'hello');
  assert.equal(fdsOut[0], 2);
  const [efd2, mfd2] = [fdsOut[1]!, fdsOut[2]!];
  assert.notEqual(efd2, efd);
  assert.notEqual(mfd2, mfd);
  assert.ok(isCloexec(efd2), 'received eventfd is CLOEXEC');
  assert.ok(isCloexec(mfd2), 'received memfd is CLOEXEC');

  // the received eventfd is the same object
  assert.equal(native.eventfdWrite(efd2, 3), true);
  assert.equal(native.eventfdRead(efd), 3n);
  // the received memfd is the same file, and mappings share memory
  const s1 = native.fstat(mfd);
  const s2 = native.fstat(mfd2);
  assert.equal(s1.ino, s2.ino);
  assert.equal(s1.dev, s2.dev);
  const m1 = native.mmap(mfd, 0, native.PAGE_SIZE, PROT_READ | PROT_WRITE);
  const m2 = native.mmap(mfd2, 0, native.PAGE_SIZE, PROT_READ | PROT_WRITE);
  new Uint8Array(m1)[100] = 0xab;
  assert.equal(new Uint8Array(m2)[100], 0xab);
  native.munmap(m1);
  native.munmap(m2);

  // the next recvmsg reports no fds
  native.sendmsg(a, [text('x')], null);
  assert.equal(native.recvmsg(b, buf, 0, buf.length, fdsOut), 1);
  assert.equal(fdsOut[0], 0);
  closeAll(a, b, efd, mfd, efd2, mfd2);
});

test('sendmsg gathers Buffers, Uint8Array subarrays, DataViews and other typed arrays', T, () => {
  const [a, b] = pair();
  const backing = new Uint8Array([0, 1, 2, 3, 4, 5, 6, 7]);
  const u16 = new Uint16Array([0x0201]);
  const n = native.sendmsg(a, [Buffer.from('ab'), backing.subarray(2, 4), new DataView(backing.buffer, 5, 2), u16, new Uint8Array(0)], undefined);
  assert.equal(n, 8);
  const buf = new Uint8Array(16);
  assert.equal(native.recvmsg(b, buf, 0, 16, fdsOut), 8);
  assert.deepEqual([...buf.subarray(0, 8)], [0x61, 0x62, 2, 3, 5, 6, 1, 2]);
  closeAll(a, b);
});

test('sendmsg reads every array element before it takes a buffer pointer', T, () => {
  const [a, b] = pair();
  const first = new Uint8Array([1, 2, 3, 4]);
  const second = new Uint8Array([5, 6]);
  const bufs: Uint8Array[] = [first];
  // reading element 1 runs JS that detaches element 0's memory: a pointer taken before would
  // now point into freed memory; taken after, element 0 is an empty view
  Object.defineProperty(bufs, 1, {
    enumerable: true,
    get: () => {
      structuredClone(first.buffer, { transfer: [first.buffer] });
      return second;
    },
  });
  assert.equal(native.sendmsg(a, bufs, null), 2);
  assert.equal(first.byteLength, 0, 'the getter detached element 0');
  const buf = new Uint8Array(16);
  assert.equal(native.recvmsg(b, buf, 0, 16, fdsOut), 2);
  assert.deepEqual([...buf.subarray(0, 2)], [5, 6]);
  closeAll(a, b);
});

test('EAGAIN: recvmsg returns -1 when empty, sendmsg returns -1 when full', T, () => {
  const [a, b] = pair();
  fdsOut[0] = 99;
  assert.equal(native.recvmsg(b, new Uint8Array(8), 0, 8, fdsOut), -1);
  assert.equal(fdsOut[0], 0);
  const chunk = new Uint8Array(65536);
  let total = 0;
  let r = 0;
  for (let i = 0; i < 10000 && (r = native.sendmsg(a, [chunk], null)) > 0; i++) total += r;
  assert.equal(r, -1);
  assert.ok(total > 0);
  // drain everything the peer got
  const rb = new Uint8Array(65536);
  let got = 0;
  for (;;) {
    const n = native.recvmsg(b, rb, 0, rb.length, fdsOut);
    if (n === -1) break;
    got += n;
  }
  assert.equal(got, total);
  closeAll(a, b);
});

test('partial reads and reads at an offset', T, () => {
  const [a, b] = pair();
  native.sendmsg(a, [text('0123456789')], null);
  const buf = new Uint8Array(16).fill(0x2e);
  assert.equal(native.recvmsg(b, buf, 0, 3, fdsOut), 3);
  assert.equal(native.recvmsg(b, buf, 5, 4, fdsOut), 4);
  assert.equal(native.recvmsg(b, buf, 12, 4, fdsOut), 3);
  assert.equal(str(buf), '012..3456...789.');
  assert.equal(native.recvmsg(b, buf, 0, 16, fdsOut), -1);
  closeAll(a, b);
});

test('fds arrive with the first byte of the message that carried them', T, () => {
  const [a, b] = pair();
  const efd = native.eventfd(0, false);
  native.sendmsg(a, [text('abcdef')], [efd]);
  const buf = new Uint8Array(8);
  assert.equal(native.recvmsg(b, buf, 0, 2, fdsOut), 2);
  assert.equal(fdsOut[0], 1);
  const got = fdsOut[1]!;
  assert.equal(native.recvmsg(b, buf, 2, 4, fdsOut), 4);
  assert.equal(fdsOut[0], 0);
  closeAll(a, b, efd, got);
});

test('EOF and EPIPE', T, () => {
  const [a, b] = pair();
  native.sendmsg(a, [text('last')], null);
  native.close(a);
  const buf = new Uint8Array(8);
  assert.equal(native.recvmsg(b, buf, 0, 8, fdsOut), 4);
  assert.equal(native.recvmsg(b, buf, 0, 8, fdsOut), 0);
  assert.equal(native.recvmsg(b, buf, 0, 8, fdsOut), 0);
  // writing to a closed peer fails with EPIPE (MSG_NOSIGNAL: no SIGPIPE)
  expectErrno(() => native.sendmsg(b, [text('x')], null), 'EPIPE', 'sendmsg');
  native.close(b);
});

test('ECONNRESET when the peer closes with unread data', T, () => {
  const [a, b] = pair();
  native.sendmsg(a, [text('unread')], null);
  native.close(b);
  expectErrno(() => native.recvmsg(a, new Uint8Array(8), 0, 8, fdsOut), 'ECONNRESET', 'recvmsg');
  native.close(a);
});

test('SCM_MAX_FD: 253 fds pass, 254 are rejected with EINVAL', T, () => {
  const [a, b] = pair();
  const efd = native.eventfd(0, false);
  const before = countFds();
  const many = new Array<number>(253).fill(efd);
  assert.equal(native.sendmsg(a, [text('m')], many), 1);
  assert.equal(native.recvmsg(b, new Uint8Array(4), 0, 4, fdsOut), 1);
  assert.equal(fdsOut[0], 253);
  const got = Array.from(fdsOut.subarray(1, 254));
  assert.equal(new Set(got).size, 253);
  for (const fd of got) native.close(fd);
  assert.equal(countFds(), before);
  const e = expectErrno(() => native.sendmsg(a, [text('m')], new Array<number>(254).fill(efd)), 'EINVAL', 'sendmsg');
  assert.equal(e.errno, 22);
  // fds without data would be silently dropped by a stream socket: rejected
  expectErrno(() => native.sendmsg(a, [], [efd]), 'EINVAL', 'sendmsg');
  expectErrno(() => native.sendmsg(a, [new Uint8Array(0)], [efd]), 'EINVAL', 'sendmsg');
  closeAll(a, b, efd);
});

test('sending a closed fd fails with EBADF', T, () => {
  const [a, b] = pair();
  const efd = native.eventfd(0, false);
  native.close(efd);
  expectErrno(() => native.sendmsg(a, [text('m')], [efd]), 'EBADF', 'sendmsg');
  closeAll(a, b);
});

test('listen, connect and accept on a path', T, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-native-'));
  try {
    const path = join(dir, 'sock');
    const lfd = native.listen(path, 4);
    assert.ok(isCloexec(lfd));
    assert.ok(fdFlags(lfd) & O_NONBLOCK);
    assert.equal(native.accept(lfd), -1);
    expectErrno(() => native.listen(path, 4), 'EADDRINUSE', 'bind');

    const c = native.connect(path);
    assert.ok(isCloexec(c));
    assert.ok(fdFlags(c) & O_NONBLOCK, 'connected fd is non-blocking');
    const s = native.accept(lfd);
    assert.ok(s >= 0);
    assert.ok(isCloexec(s));
    assert.ok(fdFlags(s) & O_NONBLOCK);
    assert.equal(native.accept(lfd), -1);

    const efd = native.eventfd(0, false);
    assert.equal(native.sendmsg(c, [text('ping')], [efd]), 4);
    const buf = new Uint8Array(8);
    assert.equal(native.recvmsg(s, buf, 0, 8, fdsOut), 4);
    assert.equal(str(buf.subarray(0, 4)), 'ping');
    assert.equal(fdsOut[0], 1);
    native.close(fdsOut[1]!);
    assert.equal(native.sendmsg(s, [text('pong')], null), 4);
    assert.equal(native.recvmsg(c, buf, 0, 8, fdsOut), 4);
    assert.equal(str(buf.subarray(0, 4)), 'pong');
    closeAll(c, s, lfd, efd);

    expectErrno(() => native.connect(join(dir, 'missing')), 'ENOENT', 'connect');
    expectErrno(() => native.connect(path), 'ECONNREFUSED', 'connect'); // listener closed, file left behind
    expectErrno(() => native.listen(join(dir, 'x'.repeat(120)), 1), 'ENAMETOOLONG', 'bind');
    expectErrno(() => native.connect('/' + 'y'.repeat(107)), 'ENAMETOOLONG', 'connect');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('abstract-namespace socket (leading NUL)', T, () => {
  const name = `\0vfio-user-native-test-${process.pid}`;
  const lfd = native.listen(name, 1);
  const c = native.connect(name);
  const s = native.accept(lfd);
  assert.equal(native.sendmsg(c, [text('x')], null), 1);
  assert.equal(native.recvmsg(s, new Uint8Array(1), 0, 1, fdsOut), 1);
  closeAll(c, s, lfd);
});

test('dup, setNonBlocking and setCloexec', T, () => {
  const [a, b] = pair();
  const d = native.dup(a);
  assert.ok(isCloexec(d));
  assert.equal(native.fstat(d).ino, native.fstat(a).ino);
  native.setCloexec(d, false);
  assert.ok(!isCloexec(d));
  native.setCloexec(d, true);
  assert.ok(isCloexec(d));
  native.setNonBlocking(d, false);
  assert.equal(fdFlags(a) & O_NONBLOCK, 0, 'file status flags are shared with the dup');
  native.setNonBlocking(d, true);
  assert.ok(fdFlags(a) & O_NONBLOCK);
  expectErrno(() => native.setNonBlocking(-1, true), 'EBADF', 'fcntl');
  closeAll(a, b, d);
});

test('bad arguments throw typed errors', T, () => {
  const [a, b] = pair();
  const buf = new Uint8Array(8);
  const type = (fn: () => unknown): void => assert.throws(fn, (e: NodeJS.ErrnoException) => e instanceof TypeError && e.code === 'ERR_INVALID_ARG_TYPE');
  const range = (fn: () => unknown): void => assert.throws(fn, (e: NodeJS.ErrnoException) => e instanceof RangeError && e.code === 'ERR_OUT_OF_RANGE');
  // the addon's own argument checks, reached with values its types do not allow
  const call = (name: string, ...args: unknown[]): unknown => Reflect.apply(Reflect.get(native, name), native, args);

  type(() => call('close', '3'));
  type(() => call('close'));
  range(() => native.close(1.5));
  range(() => native.close(2 ** 40));
  type(() => call('sendmsg', a, 'nope', null));
  type(() => call('sendmsg', a, [buf, 'x'], null));
  type(() => call('sendmsg', a, [new ArrayBuffer(4)], null));
  type(() => call('sendmsg', a, [buf], 5));
  type(() => call('sendmsg', a, [buf], ['x']));
  range(() => native.sendmsg(a, new Array<Uint8Array>(65).fill(buf), null));
  type(() => call('recvmsg', b, 'buf', 0, 1, fdsOut));
  range(() => native.recvmsg(b, buf, 9, 1, fdsOut));
  range(() => native.recvmsg(b, buf, 4, 5, fdsOut));
  range(() => native.recvmsg(b, buf, 0, 0, fdsOut));
  range(() => native.recvmsg(b, buf, -1, 1, fdsOut));
  type(() => native.recvmsg(b, buf, 0, 8, new Int32Array(253)));
  type(() => call('recvmsg', b, buf, 0, 8, new Uint32Array(254)));
  type(() => call('setNonBlocking', a, 1));
  type(() => call('setCloexec', a));
  type(() => call('listen', 42, 1));
  type(() => call('connect', null));
  type(() => call('memfdCreate', 1));
  range(() => native.ftruncate(a, -1));
  range(() => native.ftruncate(a, 2 ** 54));
  type(() => call('eventfd', 0, 'no'));
  range(() => native.eventfd(-1, false));
  type(() => call('createPoller', a, 'not a function'));
  type(() => call('munmap', new Uint8Array(4)));
  type(() => native.munmap(new ArrayBuffer(4)));
  // nothing was sent or received by the failed calls
  assert.equal(native.recvmsg(b, buf, 0, 8, fdsOut), -1);
  closeAll(a, b);
});

test('no fd leaks: 1000 socketpairs and 1000 fd-passing round trips', T, () => {
  const before = countFds();
  for (let i = 0; i < 1000; i++) {
    const [a, b] = pair();
    closeAll(a, b);
  }
  assert.equal(countFds(), before);

  const [a, b] = pair();
  const efd = native.eventfd(0, false);
  const mfd = native.memfdCreate('leak');
  const data = [text('hdr!'), text('payload')];
  const buf = new Uint8Array(64);
  const mid = countFds();
  for (let i = 0; i < 1000; i++) {
    assert.equal(native.sendmsg(a, data, [efd, mfd]), 11);
    assert.equal(native.recvmsg(b, buf, 0, buf.length, fdsOut), 11);
    assert.equal(fdsOut[0], 2);
    native.close(fdsOut[1]!);
    native.close(fdsOut[2]!);
  }
  assert.equal(countFds(), mid);
  closeAll(a, b, efd, mfd);
  assert.equal(countFds(), before);
});
