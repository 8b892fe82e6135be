/**
 * native.exchange (native/fastpath.c), the fast path's round trip in one call: sends the
 * staged bytes, reads, and when asked waits like waitReadable (never past the moment the
 * event loop has work) and reads. The waits run in a child process whose event loop holds only
 * what each scenario sets up (fixtures/exchange-child.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { native } from '../../src/native/index.js';

const OUT_AT = 2048;
const I = { SENT: 254, WAITED: 255, FD: 256, OUT_LEN: 257, OFFSET: 258, LENGTH: 259, WAIT: 260, RESULT: 261 };

interface Call {
  r: number;
  sent: number;
}

function call(io: ArrayBuffer, buf: Uint8Array, fd: number, out: Uint8Array, offset = 0): Call {
  const v = new Int32Array(io, 0, OUT_AT / 4);
  new Uint8Array(io, OUT_AT).set(out);
  v[I.FD] = fd;
  v[I.OUT_LEN] = out.length;
  v[I.OFFSET] = offset;
  v[I.LENGTH] = buf.length - offset;
  v[I.WAIT] = -1;
  native.exchange(io, buf.buffer);
  return { r: v[I.RESULT]!, sent: v[I.SENT]! };
}

function drain(fd: number): number[] {
  const got: number[] = [];
  const b = new Uint8Array(65536);
  for (let n; (n = native.recvmsg(fd, b, 0, b.length, new Int32Array(1 + native.SCM_MAX_FD))) > 0; ) got.push(...b.subarray(0, n));
  return got;
}

test('exchange: sends the staged bytes, then reads what is queued; -1 when nothing is', () => {
  const [a, b] = native.socketpair();
  try {
    const io = new ArrayBuffer(OUT_AT + 64);
    const buf = new Uint8Array(32);
    native.send(b, Uint8Array.of(7, 8), 0, 2);
    assert.deepEqual(call(io, buf, a, Uint8Array.of(1, 2, 3, 4, 5), 4), { r: 2, sent: 5 });
    assert.deepEqual([...buf.subarray(4, 6)], [7, 8], 'read at the offset');
    assert.deepEqual(drain(b), [1, 2, 3, 4, 5]);
    assert.deepEqual(call(io, buf, a, new Uint8Array(0)), { r: -1, sent: 0 }, 'nothing to send, nothing to read');
    assert.deepEqual(call(io, buf, a, Uint8Array.of(6)), { r: -1, sent: 1 });
    assert.deepEqual(drain(b), [6]);
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('exchange: a short send reads nothing (-2) and says how much went; a send to a closed peer throws (syscall send)', () => {
  const [a, b] = native.socketpair();
  const big = 1 << 20;
  const io = new ArrayBuffer(OUT_AT + big);
  const buf = new Uint8Array(32);
  native.send(b, Uint8Array.of(1), 0, 1);
  const c = call(io, buf, a, new Uint8Array(big).fill(3));
  assert.equal(c.r, -2, 'nothing read after a short send');
  assert.ok(c.sent > 0 && c.sent < big, `sent ${c.sent} of ${big}`);
  assert.deepEqual(call(io, buf, a, new Uint8Array(0)), { r: 1, sent: 0 }, 'the queued byte is still there');
  native.close(b);
  assert.throws(
    () => call(io, buf, a, Uint8Array.of(1)),
    (e: Error & { code?: string; syscall?: string }) => e.syscall === 'send' && (e.code === 'EPIPE' || e.code === 'ECONNRESET'),
  );
  native.close(a);
});

test('exchange without buf reads into io itself (where the transport keeps its first receive buffer)', () => {
  const [a, b] = native.socketpair();
  try {
    const io = new ArrayBuffer(OUT_AT + 64);
    const v = new Int32Array(io, 0, OUT_AT / 4);
    native.send(b, Uint8Array.of(5, 6, 7), 0, 3);
    v[I.FD] = a;
    v[I.OUT_LEN] = 0;
    v[I.OFFSET] = OUT_AT + 32;
    v[I.LENGTH] = 32;
    v[I.WAIT] = -1;
    native.exchange(io);
    assert.equal(v[I.RESULT], 3);
    assert.deepEqual([...new Uint8Array(io, OUT_AT + 32, 3)], [5, 6, 7]);
    v[I.LENGTH] = 33;
    assert.throws(() => native.exchange(io), RangeError, 'past the end of io');
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('exchange: bad arguments throw', () => {
  const [a, b] = native.socketpair();
  try {
    const io = new ArrayBuffer(OUT_AT + 16);
    const buf = new Uint8Array(8);
    const ex = (...x: unknown[]): void => (native.exchange as (...y: unknown[]) => void).apply(native, x);
    assert.throws(() => ex(new ArrayBuffer(100), buf.buffer), TypeError, 'io too small');
    assert.throws(() => ex(new Uint8Array(io), buf.buffer), TypeError, 'a view, not an ArrayBuffer');
    assert.throws(() => ex('io'), TypeError);
    assert.throws(() => ex(io, 'buf'), TypeError);
    assert.throws(() => call(io, buf, a, new Uint8Array(0), 8), RangeError, 'no room to read');
    assert.throws(() => call(io, buf, a, new Uint8Array(17)), RangeError, 'outLen past io');
    assert.throws(() => call(io, buf, -1, new Uint8Array(0)), RangeError, 'negative fd');
    const gone = structuredClone(buf.buffer, { transfer: [buf.buffer] });
    assert.equal(gone.byteLength, 8);
    assert.throws(() => call(io, buf, a, new Uint8Array(0)), TypeError, 'a detached buffer');
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('exchange with a wait: timers, segments, fds, a peer that closes, a signal', { timeout: 60000 }, () => {
  const child = spawnSync(process.execPath, [new URL('./fixtures/exchange-child.js', import.meta.url).pathname], { encoding: 'utf8', timeout: 50000 });
  assert.equal(child.status, 0, child.stderr);
  const got = new Map<string, { r: number; waited: number; ms: number; data: number[]; fds: number[]; fdOk: number[] }>();
  for (const line of child.stdout.split('\n').filter(Boolean)) {
    const m = JSON.parse(line) as { name: string; r: number; waited: number; ms: number; data: number[]; fds: number[]; fdOk: number[] };
    got.set(m.name, m);
  }
  const at = (name: string) => {
    const m = got.get(name);
    assert.ok(m, `no result for ${name}: ${child.stdout} ${child.stderr}`);
    return m;
  };
  assert.ok(got.has('done'), child.stdout);
  const timer = at('a timer due in 40 ms');
  assert.deepEqual([timer.r, timer.waited], [-1, 0], 'back to the loop for its timer');
  assert.ok(timer.ms >= 20 && timer.ms < 4000, `waited ${timer.ms} ms for a 40 ms timer`);
  const spun = at('a timer, spinning first');
  assert.deepEqual([spun.r, spun.waited], [-1, 0], 'spun 200 µs, slept, back to the loop for its timer');
  assert.ok(spun.ms >= 15 && spun.ms < 4000, `waited ${spun.ms} ms for a 30 ms timer`);
  const s1 = at('split: first segment');
  assert.equal(s1.waited, 1, 'slept, then read');
  assert.deepEqual(s1.data, [1, 2, 3]);
  assert.deepEqual(at('split: second segment').data, [4, 5, 6, 7, 8]);
  const fd = at('an fd arrives while waiting');
  assert.deepEqual([fd.r, fd.data, fd.fds.length, fd.fdOk], [1, [9], 1, [4242]], 'the byte and its fd (the memfd of 4242 bytes)');
  const closed = at('the peer closes while waiting');
  assert.deepEqual([closed.r, closed.waited], [0, 1], 'woken by the hang-up: EOF');
  const sig = at('a signal while waiting');
  assert.deepEqual([sig.r, sig.waited], [-1, 0], 'back to the loop');
  assert.ok(sig.ms >= 50 && sig.ms < 8000, `woken after ${sig.ms} ms`);
  assert.equal(at('the signal handler ran').r, 1);
});
