// Two Node processes connected by a socketpair (the child gets its end as fd 3).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native, PROT_READ, PROT_WRITE } from '../../src/native/index.js';
import { collect, Conn, lastJson, spawnPeer, str, text } from './helpers.js';

const T = { timeout: 10000 };

function withPeer(mode: string, opts: { fdLimit?: number } = {}): { conn: Conn; fd: number; done: ReturnType<typeof collect> } {
  const [mine, theirs] = native.socketpair();
  const child = spawnPeer(mode, theirs, opts);
  native.close(theirs);
  return { conn: new Conn(mine), fd: mine, done: collect(child) };
}

test('a memfd shared over SCM_RIGHTS: both processes see each other\'s writes', T, async () => {
  const { conn, fd, done } = withPeer('memfd');
  const P = native.PAGE_SIZE;
  const mfd = native.memfdCreate('cross');
  native.ftruncate(mfd, 2 * P);
  const view = new Uint8Array(native.mmap(mfd, 0, 2 * P, PROT_READ | PROT_WRITE));
  await conn.sendJson({ cmd: 'memfd', size: 2 * P }, [mfd]);
  const ack = await conn.recvJson<{ nfds: number; cloexec: boolean; ino: string }>();
  assert.deepEqual(ack.value, { cmd: 'memfd', nfds: 1, cloexec: true, ino: String(native.fstat(mfd).ino) });
  assert.equal(str(view.subarray(0, 20)), 'written by the child');
  view.set(text('written by the parent'), P);
  await conn.sendJson({ off: P, len: 21 });
  const seen = await conn.recvJson<{ seen: string }>();
  assert.equal(seen.value.seen, 'written by the parent');
  conn.close();
  native.close(fd);
  native.munmap(view.buffer);
  native.close(mfd);
  const r = await done;
  assert.equal(r.code, 0, r.stderr);
});

test('an eventfd written in one process wakes the other process\'s poller', T, async () => {
  const { conn, fd, done } = withPeer('eventfd');
  const efd = native.eventfd(0, false);
  await conn.sendJson({ cmd: 'eventfd' }, [efd]);
  await conn.recvJson(); // child is polling it
  native.eventfdWrite(efd, 42);
  const res = await conn.recvJson<{ status: number; events: number; value: string }>();
  assert.deepEqual(res.value, { status: 0, events: native.POLL_READABLE, value: '42' });
  assert.equal(res.fds.length, 1);
  const theirs = res.fds[0]!;
  // reverse direction: the child writes an eventfd it created; our poller wakes
  const woke = new Promise<bigint>((resolve) => {
    const p = native.createPoller(theirs, () => {
      p.close();
      resolve(native.eventfdRead(theirs));
    });
    p.start(native.POLL_READABLE);
  });
  await conn.sendJson({ watching: true });
  assert.equal(await woke, 1234n);
  await conn.sendJson({ done: true });
  const r = await done;
  assert.equal(r.code, 0, r.stderr);
  conn.close();
  native.close(fd);
  native.close(efd);
  native.close(theirs);
});

test('fds stay with their own message across interleaved messages', T, async () => {
  const { conn, fd, done } = withPeer('interleave');
  const count = 40;
  await conn.sendJson({ count });
  const expected: Array<{ id: number; len: number; fdValues: string[] }> = [];
  for (let id = 0; id < count; id++) {
    const nfds = id % 3 === 0 ? 1 : id % 4 === 1 ? 3 : 0;
    const fds = Array.from({ length: nfds }, () => native.eventfd(id + 1, false));
    // some messages are large (split over several skbs and partially sent)
    const pad = 'x'.repeat(id % 7 === 2 ? 150000 + id : (id * 37) % 300);
    const payload = text(JSON.stringify({ id, pad }));
    await conn.sendMsg(payload, fds.length ? fds : null);
    for (const f of fds) native.close(f); // in-flight references keep them alive
    expected.push({ id, len: payload.length, fdValues: fds.map(() => String(id + 1)) });
  }
  const res = await conn.recvJson<{ results: typeof expected }>();
  assert.deepEqual(res.value.results, expected);
  conn.close();
  native.close(fd);
  const r = await done;
  assert.equal(r.code, 0, r.stderr);
});

test('MSG_CTRUNC (receiver out of fds) closes what arrived and throws ECTRUNC', T, async () => {
  const [mine, theirs] = native.socketpair();
  const child = spawnPeer('ectrunc', theirs, { fdLimit: 48 });
  native.close(theirs);
  const done = collect(child);
  const efd = native.eventfd(0, false);
  assert.equal(native.sendmsg(mine, [text('fds!')], new Array<number>(200).fill(efd)), 4);
  const r = await done;
  assert.equal(r.code, 0, r.stderr);
  const res = lastJson<{ code: string; errno: number; before: number; after: number; nfds: number }>(r.stdout);
  assert.equal(res.code, 'ECTRUNC');
  assert.equal(res.errno, 90); // EMSGSIZE
  assert.equal(res.nfds, 0);
  assert.equal(res.after, res.before, 'the fds that did arrive were closed');
  native.close(mine);
  native.close(efd);
});
