import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native, isNativeError, PROT_READ, PROT_WRITE } from '../../src/native/index.js';
import { collect, isCloexec, lastJson, spawnPeer, str, text } from './helpers.js';
import { cpuMs } from '../helpers.js';

const T = { timeout: 10000 };
const RW = PROT_READ | PROT_WRITE;

function expectErrno(fn: () => unknown, code: string, syscall: string): void {
  assert.throws(fn, (e: unknown) => isNativeError(e) && e.code === code && e.syscall === syscall);
}

test('memfd: CLOEXEC, ftruncate and fstat', T, () => {
  const fd = native.memfdCreate('vfio-user-test');
  assert.ok(isCloexec(fd));
  assert.equal(native.fstat(fd).size, 0);
  native.ftruncate(fd, 3 * native.PAGE_SIZE);
  const st = native.fstat(fd);
  assert.equal(st.size, 3 * native.PAGE_SIZE);
  assert.equal(typeof st.dev, 'bigint');
  assert.equal(typeof st.ino, 'bigint');
  assert.equal(st.mode & 0o170000, 0o100000, 'a regular file');
  native.ftruncate(fd, 2 ** 40); // sparse: sizes beyond 2^32 work
  assert.equal(native.fstat(fd).size, 2 ** 40);
  native.close(fd);
  expectErrno(() => native.memfdCreate('x'.repeat(300)), 'EINVAL', 'memfd_create');
  expectErrno(() => native.fstat(fd), 'EBADF', 'fstat');
});

test('fstatInto: the size, device and inode of fstat, without an object', T, () => {
  const fd = native.memfdCreate('vfio-user-test');
  native.ftruncate(fd, 2 ** 40 + native.PAGE_SIZE);
  const out = new Float64Array(5).fill(-1);
  native.fstatInto(fd, out);
  const st = native.fstat(fd);
  assert.equal(out[0], 2 ** 40 + native.PAGE_SIZE);
  assert.equal((BigInt(out[1]!) << 32n) | BigInt(out[2]!), st.dev);
  assert.equal((BigInt(out[3]!) << 32n) | BigInt(out[4]!), st.ino);
  assert.ok(out.every((x) => Number.isSafeInteger(x) && x >= 0));
  assert.throws(() => native.fstatInto(fd, new Float64Array(4)), TypeError);
  // @ts-expect-error: a Uint32Array is refused at run time too
  assert.throws(() => native.fstatInto(fd, new Uint32Array(10)), TypeError);
  native.close(fd);
  expectErrno(() => native.fstatInto(fd, out), 'EBADF', 'fstat');
});

test('two mappings of one memfd share memory; offsets select pages', T, () => {
  const fd = native.memfdCreate('share');
  const P = native.PAGE_SIZE;
  native.ftruncate(fd, 2 * P);
  const whole = native.mmap(fd, 0, 2 * P, RW);
  const second = native.mmap(fd, P, P, RW);
  const ro = native.mmap(fd, 0, P, PROT_READ);
  assert.ok(whole instanceof ArrayBuffer);
  assert.equal(whole.byteLength, 2 * P);
  const w = new Uint8Array(whole);
  w.set(text('page one'), 0);
  w.set(text('page two'), P);
  assert.equal(str(new Uint8Array(second, 0, 8)), 'page two');
  assert.equal(str(new Uint8Array(ro, 0, 8)), 'page one');
  new Uint8Array(second)[0] = 0x50; // 'P'
  assert.equal(w[P], 0x50);
  native.munmap(whole);
  native.munmap(second);
  native.munmap(ro);
  native.close(fd);
});

test('munmap detaches the buffer: views read as empty, and it is idempotent', T, () => {
  const fd = native.memfdCreate('detach');
  native.ftruncate(fd, native.PAGE_SIZE);
  const ab = native.mmap(fd, 0, native.PAGE_SIZE, RW);
  const view = new Uint8Array(ab);
  const dv = new DataView(ab);
  view[0] = 1;
  native.munmap(ab);
  assert.equal(ab.byteLength, 0);
  assert.equal(view.length, 0);
  assert.equal(view[0], undefined);
  assert.equal(view[100], undefined);
  view[0] = 5; // ignored, no crash
  assert.equal(view[0], undefined);
  assert.throws(() => dv.getUint8(0), TypeError);
  native.munmap(ab); // idempotent
  native.munmap(ab);
  // the memory was really unmapped and the file is intact
  const again = new Uint8Array(native.mmap(fd, 0, native.PAGE_SIZE, RW));
  assert.equal(again[0], 1);
  native.munmap(again.buffer);
  native.close(fd);
});

test('mmap argument validation', T, () => {
  const fd = native.memfdCreate('args');
  const P = native.PAGE_SIZE;
  native.ftruncate(fd, P);
  expectErrno(() => native.mmap(fd, 1, P, RW), 'EINVAL', 'mmap');
  expectErrno(() => native.mmap(fd, P / 2, P, RW), 'EINVAL', 'mmap');
  expectErrno(() => native.mmap(fd, 0, 0, RW), 'EINVAL', 'mmap');
  expectErrno(() => native.mmap(fd, 0, 2 ** 32, RW), 'EINVAL', 'mmap');
  expectErrno(() => native.mmap(fd, 0, P, 0), 'EINVAL', 'mmap');
  expectErrno(() => native.mmap(fd, 0, P, PROT_WRITE), 'EINVAL', 'mmap');
  expectErrno(() => native.mmap(fd, 0, P, 4 | PROT_READ), 'EINVAL', 'mmap');
  expectErrno(() => native.mmap(-1, 0, P, RW), 'EBADF', 'mmap');
  assert.throws(() => native.mmap(fd, -P, P, RW), RangeError);
  assert.throws(() => native.mmap(fd, 0, 1.5, RW), RangeError);
  native.close(fd);
  expectErrno(() => native.mmap(fd, 0, P, RW), 'EBADF', 'mmap');
});

test('a large (1 GiB, sparse) mapping', T, () => {
  const fd = native.memfdCreate('big');
  native.ftruncate(fd, 2 ** 30);
  const ab = native.mmap(fd, 0, 2 ** 30, RW);
  const v = new Uint8Array(ab);
  v[2 ** 30 - 1] = 9;
  assert.equal(v[2 ** 30 - 1], 9);
  native.munmap(ab);
  native.close(fd);
});

test('mappings dropped without munmap are reclaimed by GC', T, async () => {
  const r = await collect(spawnPeer('gc-mmap', undefined, { nodeArgs: ['--expose-gc'] }));
  assert.equal(r.code, 0, r.stderr);
  const { base, peak, after } = lastJson<{ base: number; peak: number; after: number }>(r.stdout);
  // without reclamation there would be ~1000 extra VMAs
  assert.ok(peak - base < 400, `peak ${peak} vs base ${base}`);
  assert.ok(after - base < 100, `after ${after} vs base ${base}`);
});

test('eventfd: counter, EAGAIN, semaphore mode, overflow', T, () => {
  const fd = native.eventfd(5, false);
  assert.ok(isCloexec(fd));
  assert.equal(native.eventfdRead(fd), 5n);
  assert.equal(native.eventfdRead(fd), 0n, 'zero: EAGAIN');
  assert.equal(native.eventfdDrain(fd), false);
  assert.equal(native.eventfdWrite(fd, 2), true);
  assert.equal(native.eventfdWrite(fd, 40n), true);
  assert.equal(native.eventfdRead(fd), 42n);
  assert.equal(native.eventfdWrite(fd, 1), true);
  assert.equal(native.eventfdDrain(fd), true);
  assert.equal(native.eventfdDrain(fd), false, 'drained');
  // the counter saturates at 2^64 - 2: further writes report EAGAIN as false
  let writes = 0;
  while (native.eventfdWrite(fd, 2 ** 53)) writes++;
  assert.equal(writes, 2047);
  assert.equal(native.eventfdRead(fd), 2047n * 2n ** 53n);
  native.close(fd);

  const sem = native.eventfd(2, true);
  assert.equal(native.eventfdRead(sem), 1n);
  assert.equal(native.eventfdRead(sem), 1n);
  assert.equal(native.eventfdRead(sem), 0n);
  native.close(sem);
  expectErrno(() => native.eventfdRead(sem), 'EBADF', 'read');
  expectErrno(() => native.eventfdWrite(sem, 1), 'EBADF', 'write');
  expectErrno(() => native.eventfdDrain(sem), 'EBADF', 'read');
});

test('eventfd: counters above 2^53 are written and read exactly (bigint)', T, () => {
  const fd = native.eventfd(0, false);
  for (const v of [2n ** 53n + 1n, 0xfffffffffffffffen, 2n ** 64n - 2n ** 11n - 1n]) {
    assert.equal(native.eventfdWrite(fd, v), true);
    assert.equal(native.eventfdRead(fd), v, `write/read ${v}`);
    assert.equal(native.eventfdSignal(fd, v), true);
    assert.equal(native.eventfdRead(fd), v, `signal/read ${v}`);
  }
  // sums too: 2^53 + 1 as two writes, one of them a number
  assert.equal(native.eventfdWrite(fd, 2 ** 53), true);
  assert.equal(native.eventfdSignal(fd, 1n), true);
  assert.equal(native.eventfdRead(fd), 2n ** 53n + 1n);
  // the full counter refuses one more, exactly at the boundary
  assert.equal(native.eventfdWrite(fd, 0xfffffffffffffffdn), true);
  assert.equal(native.eventfdWrite(fd, 2n), false);
  assert.equal(native.eventfdSignal(fd, 2n), false);
  assert.equal(native.eventfdWrite(fd, 1n), true);
  assert.equal(native.eventfdRead(fd), 0xfffffffffffffffen);
  // out of range: 2^64 - 1 (the kernel's EINVAL), beyond 64 bits, negative, unsafe numbers, 0 for a signal
  for (const bad of [2n ** 64n - 1n, 2n ** 64n, -1n, -1, 2 ** 53 + 2, 1.5]) {
    assert.throws(() => native.eventfdWrite(fd, bad), RangeError, `write ${bad}`);
    assert.throws(() => native.eventfdSignal(fd, bad), RangeError, `signal ${bad}`);
  }
  assert.throws(() => native.eventfdSignal(fd, 0n), RangeError);
  assert.throws(() => Reflect.apply(Reflect.get(native, 'eventfdWrite'), native, [fd, '1']), TypeError);
  assert.equal(native.eventfdRead(fd), 0n, 'nothing was written by a refused value');
  native.close(fd);
});

test('thousands of mappings: no GC per mapping, munmap stays fast (stacked 2 MiB mappings used to share one registry bucket)', { timeout: 60000 }, async () => {
  const { PerformanceObserver } = await import('node:perf_hooks');
  const fd = native.memfdCreate('vfio-user-test');
  native.ftruncate(fd, 2 ** 40); // sparse
  let gcs = 0;
  const obs = new PerformanceObserver((list) => (gcs += list.getEntries().length));
  obs.observe({ entryTypes: ['gc'] });
  const bufs: ArrayBuffer[] = [];
  const t0 = cpuMs();
  for (let i = 0; i < 32768; i++) bufs.push(native.mmap(fd, i * 2 ** 21, 2 ** 21, RW));
  const tMap = cpuMs() - t0;
  await new Promise((r) => setImmediate(r)); // GC entries are delivered asynchronously
  const t1 = cpuMs();
  for (const b of bufs) native.munmap(b);
  const tUnmap = cpuMs() - t1;
  await new Promise((r) => setImmediate(r));
  obs.disconnect();
  native.close(fd);
  assert.ok(gcs < 20, `${gcs} GCs for 64 GiB of mappings (V8 counted each as external memory)`);
  assert.ok(tMap < 10000, `32,768 mmaps took ${tMap} ms of CPU`);
  assert.ok(tUnmap < 1000, `32,768 munmaps took ${tUnmap} ms of CPU`);
});
