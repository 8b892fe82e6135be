/**
 * fd ownership: fds received with SCM_RIGHTS belong to the message holding the last byte of
 * the read that brought them; a handler owns what it takes with takeFds(); everything else
 * (unclaimed, unowned, unexpected, too many) is closed. No fd may leak.
 */
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import { Connection, takeFds, closeFds, type Message } from '../../src/transport/connection.js';
import { FLAG_NO_REPLY, FLAG_ERROR, MSG_TYPE_REPLY } from '../../src/protocol/header.js';
import { VfioUserError } from '../../src/errors.js';
import { RawPeer, frame, concat, tick, waitFor, openFds, fdsBackTo, taggedFd, tagOf } from './util.js';

interface Got {
  msg: Message;
  fds: number[];
}

function rig(opts: ConstructorParameters<typeof Connection>[1] = {}, take = true) {
  const [a, b] = native.socketpair();
  const got: Got[] = [];
  const closes: (VfioUserError | undefined)[] = [];
  const conn = new Connection(a, {
    fastPath,
    onCommand: (m) => got.push({ msg: m, fds: take ? takeFds(m) : [...m.fds] }),
    onClose: (e) => closes.push(e),
    ...opts,
  });
  return { conn, peer: new RawPeer(b), got, closes };
}

/** sends a message with tagged fds (our copies closed right after) */
function sendTagged(peer: RawPeer, data: Uint8Array, tags: number[]): number {
  const fds = tags.map(taggedFd);
  try {
    return peer.send(data, fds);
  } finally {
    closeFds(fds);
  }
}

/** the server's fast path (native exchange: send and read in one call, waits in native code) or not */
let fastPath = false;

for (const fast of [false, true]) describe(`transport: fd ownership${fast ? ' (fast path)' : ''}`, () => {
  before(() => {
    fastPath = fast;
  });

  test('messages with and without fds interleaved in one burst: each fd arrives with its own message', async () => {
    const base = openFds();
    const r = rig();
    const plan: number[][] = [];
    for (let i = 0; i < 60; i++) {
      const tags = i % 3 === 0 ? [] : Array.from({ length: 1 + (i % 4) }, (_, k) => 1 + i * 4 + k);
      plan.push(tags);
      const m = frame({ msgId: i, command: 8, flags: FLAG_NO_REPLY }, new Uint8Array(8 + (i % 13)).fill(i));
      assert.equal(sendTagged(r.peer, m, tags), m.length);
    }
    await waitFor(() => r.got.length === 60, '60 messages');
    r.got.forEach((g, i) => {
      assert.equal(g.msg.header.msgId, i);
      assert.deepEqual(g.fds.map(tagOf), plan[i], `fds of message ${i}`);
    });
    for (const g of r.got) closeFds(g.fds);
    r.conn.close();
    r.peer.close();
    await fdsBackTo(base);
  });

  test('a message split over two writes with its fds on the first part keeps them', async () => {
    const base = openFds();
    const r = rig();
    const a = frame({ msgId: 1, command: 8, flags: FLAG_NO_REPLY }, new Uint8Array(30));
    const b = frame({ msgId: 2, command: 8, flags: FLAG_NO_REPLY }, new Uint8Array(30));
    // A whole and the first 5 bytes of B go together with B's fds: the read ends inside B
    sendTagged(r.peer, concat(a, b.subarray(0, 5)), [3, 4]);
    await tick();
    await tick();
    sendTagged(r.peer, b.subarray(5, 20), []);
    await tick();
    r.peer.send(b.subarray(20));
    await waitFor(() => r.got.length === 2, 'two messages');
    assert.deepEqual(r.got[0]!.fds, []);
    assert.deepEqual(r.got[1]!.fds.map(tagOf), [3, 4]);
    closeFds(r.got[1]!.fds);
    r.conn.close();
    r.peer.close();
    await fdsBackTo(base);
  });

  test('many fds in one message arrive in order', async () => {
    const base = openFds();
    const r = rig({ maxFdsPerMessage: 253 });
    const tags = Array.from({ length: 253 }, (_, i) => i + 1);
    sendTagged(r.peer, frame({ command: 8, flags: FLAG_NO_REPLY }, new Uint8Array(4)), tags);
    await waitFor(() => r.got.length === 1, 'message');
    assert.deepEqual(r.got[0]!.fds.map(tagOf), tags);
    closeFds(r.got[0]!.fds);
    r.conn.close();
    r.peer.close();
    await fdsBackTo(base);
  });

  test('fds the handler does not take are closed when it returns; taken ones stay open', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const kept: number[] = [];
    const seen: number[][] = [];
    const conn = new Connection(a, {
      onCommand: (m) => {
        seen.push([...m.fds]);
        if (m.header.msgId % 2 === 0) kept.push(...takeFds(m));
      },
    });
    const peer = new RawPeer(b);
    for (let i = 0; i < 10; i++) sendTagged(peer, frame({ msgId: i, command: 8, flags: FLAG_NO_REPLY }), [i + 1, i + 20]);
    await waitFor(() => seen.length === 10, '10 messages');
    assert.equal(kept.length, 10);
    for (const fd of kept) assert.ok(tagOf(fd) > 0, 'taken fd still open');
    // the 10 unclaimed fds are closed: only the kept ones (and the two sockets) remain
    await fdsBackTo(base + 2 + kept.length);
    closeFds(kept);
    conn.close();
    peer.close();
    await fdsBackTo(base);
  });

  test('fds taken asynchronously (after an await) were already closed: the handler must take them synchronously', async () => {
    const base = openFds();
    const r = rig({}, false);
    sendTagged(r.peer, frame({ command: 8, flags: FLAG_NO_REPLY }), [5]);
    await waitFor(() => r.got.length === 1, 'message');
    await tick();
    assert.deepEqual(r.got[0]!.msg.fds, [], 'the transport took them back');
    r.conn.close();
    r.peer.close();
    await fdsBackTo(base);
  });

  test('fds with a partial message at hang-up belong to no message and are closed', async () => {
    const base = openFds();
    const r = rig();
    const m = frame({ command: 8, flags: FLAG_NO_REPLY }, new Uint8Array(100));
    sendTagged(r.peer, m.subarray(0, 40), [1, 2, 3]);
    await tick();
    await tick();
    r.peer.close();
    await waitFor(() => r.closes.length === 1, 'close');
    assert.equal(r.got.length, 0);
    await fdsBackTo(base);
  });

  test('fds with a partial message at local close() are closed', async () => {
    const base = openFds();
    const r = rig();
    const m = frame({ command: 8, flags: FLAG_NO_REPLY }, new Uint8Array(100));
    sendTagged(r.peer, m.subarray(0, 40), [1, 2, 3]);
    await tick();
    await tick();
    r.conn.close();
    r.peer.close();
    await fdsBackTo(base);
  });

  test('more fds than maxFdsPerMessage: connection fails with VFU_TOO_MANY_FDS and every fd is closed', async () => {
    const base = openFds();
    const r = rig({ maxFdsPerMessage: 4 });
    sendTagged(r.peer, frame({ msgId: 1, command: 8, flags: FLAG_NO_REPLY }), [1, 2, 3, 4]);
    sendTagged(r.peer, frame({ msgId: 2, command: 8, flags: FLAG_NO_REPLY }), [5, 6, 7, 8, 9]);
    // queued behind: must not be dispatched, and its fds must be closed too
    sendTagged(r.peer, frame({ msgId: 3, command: 8, flags: FLAG_NO_REPLY }), [10]);
    await waitFor(() => r.closes.length === 1, 'close');
    assert.equal(r.closes[0]?.code, 'VFU_TOO_MANY_FDS');
    assert.equal(r.got.length, 1, 'only the first message');
    closeFds(r.got[0]!.fds);
    assert.equal(await r.peer.recv(), undefined, 'peer sees EOF');
    r.peer.close();
    await fdsBackTo(base);
  });

  test('maxFdsPerMessage 0 refuses any fd', async () => {
    const base = openFds();
    const r = rig({ maxFdsPerMessage: 0 });
    sendTagged(r.peer, frame({ msgId: 1, command: 8, flags: FLAG_NO_REPLY }), [1]);
    await waitFor(() => r.closes.length === 1, 'close');
    assert.equal(r.closes[0]?.code, 'VFU_TOO_MANY_FDS');
    r.peer.close();
    await fdsBackTo(base);
  });

  test('a command to a connection without onCommand: its fds are closed and ENOSYS is replied', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const conn = new Connection(a);
    const peer = new RawPeer(b);
    sendTagged(peer, frame({ msgId: 77, command: 8 }), [1, 2]);
    const rep = await peer.recv();
    assert.equal(rep?.header.msgId, 77);
    assert.equal(rep?.header.flags, MSG_TYPE_REPLY | FLAG_ERROR);
    assert.equal(rep?.header.error, 38);
    // and nothing for NO_REPLY
    sendTagged(peer, frame({ msgId: 78, command: 8, flags: FLAG_NO_REPLY }), [3]);
    await tick();
    await tick();
    assert.equal(peer.nothingQueued(), true);
    conn.close();
    peer.close();
    await fdsBackTo(base);
  });

  test('fds in a reply are closed unless the request asked for them (expectFds)', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const conn = new Connection(a);
    const peer = new RawPeer(b);
    const p1 = conn.request(5, null);
    const p2 = conn.request(5, null, { expectFds: true });
    const q1 = (await peer.recv())!;
    const q2 = (await peer.recv())!;
    sendTagged(peer, frame({ msgId: q1.header.msgId, command: 5, flags: MSG_TYPE_REPLY }), [1, 2]);
    sendTagged(peer, frame({ msgId: q2.header.msgId, command: 5, flags: MSG_TYPE_REPLY }), [3, 4]);
    assert.deepEqual((await p1).fds, []);
    const m2 = await p2;
    assert.deepEqual(m2.fds.map(tagOf), [3, 4]);
    closeFds(m2.fds);
    // an error reply's fds are closed even when expected
    const p3 = conn.request(5, null, { expectFds: true });
    const q3 = (await peer.recv())!;
    sendTagged(peer, frame({ msgId: q3.header.msgId, command: 5, flags: MSG_TYPE_REPLY | FLAG_ERROR, error: 22 }), [5]);
    await assert.rejects(p3, (e) => e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR' && e.errno === 22);
    conn.close();
    peer.close();
    await fdsBackTo(base);
  });

  test('raw mode: every message goes to onRaw; untaken fds are closed', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const seen: Got[] = [];
    const conn = new Connection(a, { onRaw: (m) => seen.push({ msg: m, fds: m.header.msgId === 1 ? takeFds(m) : [] }) });
    const peer = new RawPeer(b);
    sendTagged(peer, frame({ msgId: 1, command: 2 }), [1]);
    sendTagged(peer, frame({ msgId: 2, command: 2, flags: MSG_TYPE_REPLY }), [2]);
    sendTagged(peer, frame({ msgId: 3, command: 2, flags: MSG_TYPE_REPLY | FLAG_ERROR, error: 5 }), [3]);
    await waitFor(() => seen.length === 3, 'three raw messages');
    assert.deepEqual(seen[0]!.fds.map(tagOf), [1]);
    assert.equal(conn.isClosed, false, 'unmatched replies are fine in raw mode');
    closeFds(seen[0]!.fds);
    conn.close();
    peer.close();
    await fdsBackTo(base);
  });
});
