/**
 * Reply matching, NO_REPLY, timeouts, hang-up and close(), and backpressure.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import { Connection, closeFds, type Message } from '../../src/transport/connection.js';
import { FLAG_NO_REPLY, FLAG_ERROR, MSG_TYPE_REPLY, HEADER_SIZE } from '../../src/protocol/header.js';
import { VfioUserError } from '../../src/errors.js';
import { RawPeer, frame, tick, waitFor, openFds, fdsBackTo, taggedFd, tagOf, concat } from './util.js';

function isErr(code: string, errno?: number) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof VfioUserError, `expected VfioUserError, got ${String(e)}`);
    assert.equal(e.code, code);
    if (errno !== undefined) assert.equal(e.errno, errno);
    return true;
  };
}

function pair(opts: ConstructorParameters<typeof Connection>[1] = {}) {
  const [a, b] = native.socketpair();
  const closes: (VfioUserError | undefined)[] = [];
  const conn = new Connection(a, { onClose: (e) => closes.push(e), ...opts });
  return { conn, peer: new RawPeer(b), closes };
}

describe('transport: reply matching', () => {
  test('out-of-order replies resolve the right requests', async () => {
    const base = openFds();
    const { conn, peer } = pair();
    const ps = Array.from({ length: 20 }, (_, i) => conn.request(9, Uint8Array.of(i)));
    const reqs = [];
    for (let i = 0; i < 20; i++) reqs.push((await peer.recv())!);
    assert.equal(conn.inFlight, 20);
    // answer in reverse order, echoing the request byte
    const replies = reqs.reverse().map((q) => frame({ msgId: q.header.msgId, command: 9, flags: MSG_TYPE_REPLY }, Uint8Array.of(q.payload[0]! + 100)));
    peer.send(concat(...replies));
    const got = await Promise.all(ps);
    got.forEach((m, i) => assert.equal(m.payload[0], i + 100));
    assert.equal(conn.inFlight, 0);
    conn.close();
    peer.close();
    await fdsBackTo(base);
  });

  test('a reply with an unknown id fails the connection with VFU_PROTOCOL; pending requests get VFU_DISCONNECTED', async () => {
    const { conn, peer, closes } = pair();
    const p = conn.request(9, null);
    const q = (await peer.recv())!;
    peer.send(frame({ msgId: (q.header.msgId + 1) & 0xffff, command: 9, flags: MSG_TYPE_REPLY }));
    await assert.rejects(p, isErr('VFU_DISCONNECTED'));
    assert.equal(closes.length, 1);
    assert.equal(closes[0]?.code, 'VFU_PROTOCOL');
    peer.close();
  });

  test('a reply with the right id but another command is a protocol failure too', async () => {
    const { conn, peer, closes } = pair();
    const p = conn.request(9, null);
    const q = (await peer.recv())!;
    peer.send(frame({ msgId: q.header.msgId, command: 10, flags: MSG_TYPE_REPLY }));
    await assert.rejects(p, isErr('VFU_DISCONNECTED'));
    assert.equal(closes[0]?.code, 'VFU_PROTOCOL');
    peer.close();
  });

  test('a second reply to an answered request is a protocol failure', async () => {
    const { conn, peer, closes } = pair();
    const p = conn.request(9, null);
    const q = (await peer.recv())!;
    const rep = frame({ msgId: q.header.msgId, command: 9, flags: MSG_TYPE_REPLY });
    peer.send(concat(rep, rep));
    await p;
    await waitFor(() => closes.length === 1, 'close');
    assert.equal(closes[0]?.code, 'VFU_PROTOCOL');
    peer.close();
  });

  test('an error reply rejects with VFU_REMOTE_ERROR carrying the errno; the connection stays up', async () => {
    const { conn, peer } = pair();
    const p = conn.request(9, null);
    const q = (await peer.recv())!;
    peer.send(frame({ msgId: q.header.msgId, command: 9, flags: MSG_TYPE_REPLY | FLAG_ERROR, error: 14 }));
    await assert.rejects(p, isErr('VFU_REMOTE_ERROR', 14));
    assert.equal(conn.isClosed, false);
    const p2 = conn.request(9, null);
    const q2 = (await peer.recv())!;
    peer.send(frame({ msgId: q2.header.msgId, command: 9, flags: MSG_TYPE_REPLY }));
    await p2;
    conn.close();
    peer.close();
  });

  test('timeout: VFU_TIMEOUT, and the late reply (with fds) is swallowed by the tombstone, not a protocol failure', async () => {
    const base = openFds();
    const { conn, peer, closes } = pair();
    const p = conn.request(9, null, { timeout: 30, expectFds: true });
    const q = (await peer.recv())!;
    await assert.rejects(p, isErr('VFU_TIMEOUT'));
    const fd = taggedFd(3);
    peer.send(frame({ msgId: q.header.msgId, command: 9, flags: MSG_TYPE_REPLY }, Uint8Array.of(1)), [fd]);
    native.close(fd);
    await tick();
    await tick();
    assert.equal(conn.isClosed, false);
    assert.deepEqual(closes, []);
    assert.equal(conn.inFlight, 0, 'tombstone consumed');
    // a second late reply to the same id is now unmatched
    const p2 = conn.request(9, null, { timeout: 1000 });
    const q2 = (await peer.recv())!;
    peer.send(frame({ msgId: q2.header.msgId, command: 9, flags: MSG_TYPE_REPLY }));
    await p2;
    conn.close();
    peer.close();
    await fdsBackTo(base);
  });

  test('a late error reply after a timeout is swallowed too', async () => {
    const { conn, peer, closes } = pair();
    const p = conn.request(9, null, { timeout: 20 });
    const q = (await peer.recv())!;
    await assert.rejects(p, isErr('VFU_TIMEOUT'));
    peer.send(frame({ msgId: q.header.msgId, command: 9, flags: MSG_TYPE_REPLY | FLAG_ERROR, error: 5 }));
    await tick();
    await tick();
    assert.deepEqual(closes, []);
    conn.close();
    peer.close();
  });

  test('timed-out ids are not reused while their tombstone stands', async () => {
    // a tombstone that outlives the test: on a loaded machine 65,535 round trips can take longer
    // than the default 60 s, and an expired tombstone frees the id (the last request then waits)
    const { conn, peer } = pair({ tombstoneMs: 3_600_000 });
    const p = conn.request(9, null, { timeout: 10 });
    const q = await peer.recv();
    assert.ok(q, 'the request arrived');
    await assert.rejects(p, isErr('VFU_TIMEOUT'));
    const seen = new Set<number>();
    for (let i = 0; i < 0x10000 - 1; i++) {
      void conn.request(9, null).catch(() => {});
    }
    for (let i = 0; i < 0x10000 - 1; i++) seen.add((await peer.recv())!.header.msgId);
    assert.equal(seen.has(q.header.msgId), false);
    await assert.rejects(conn.request(9, null, { timeout: 5000 }), isErr('VFU_BUSY'));
    conn.close();
    peer.close();
  });

  test('a silent peer: timed-out ids are freed (at most maxTombstones kept), so ids never run out', async () => {
    const [a, b] = native.socketpair();
    const closes: (VfioUserError | undefined)[] = [];
    const conn = new Connection(a, { onClose: (e) => closes.push(e) });
    // the peer reads every request and answers none (until the last one)
    const got: Message[] = [];
    const peer = new Connection(b, { onRaw: (m) => void got.push({ header: m.header, payload: new Uint8Array(0), fds: [] }) });
    const total = 14 * 5000; // more timed-out requests than there are ids
    for (let batch = 0; batch < 14; batch++) {
      const ps = Array.from({ length: 5000 }, () => conn.request(9, null, { timeout: 1 }));
      for (const r of await Promise.allSettled(ps)) {
        assert.equal(r.status, 'rejected');
        assert.equal((r.reason as VfioUserError).code, 'VFU_TIMEOUT', 'never VFU_BUSY');
      }
    }
    assert.ok(conn.tombstones <= 4096, `${conn.tombstones} tombstones`);
    assert.ok(conn.inFlight <= 4096);
    await waitFor(() => got.length === total, 'the peer read every request', 10000);
    // a fresh request still gets an id and its reply
    const p = conn.request(9, null, { timeout: 5000 });
    await waitFor(() => got.length === total + 1, 'the fresh request');
    const q = got[total]!;
    peer.send({ msgId: q.header.msgId, command: 9, size: 0, flags: MSG_TYPE_REPLY, error: 0 }, null);
    await p;
    assert.deepEqual(closes, []);
    conn.close();
    peer.close();
  });

  test('tombstones expire after tombstoneMs; a late reply before that is still swallowed', async () => {
    // two connections, so that neither half races the clock: a late reply within the default
    // 60 s is swallowed (a tombstoneMs of 200 ms ran out first on a busy machine)...
    {
      const { conn, peer, closes } = pair();
      const ps = Array.from({ length: 10 }, () => conn.request(9, null, { timeout: 1 }));
      for (const p of ps) await assert.rejects(p, isErr('VFU_TIMEOUT'));
      const qs = [];
      for (let i = 0; i < 10; i++) qs.push((await peer.recv())!);
      assert.equal(conn.tombstones, 10);
      peer.send(frame({ msgId: qs[0]!.header.msgId, command: 9, flags: MSG_TYPE_REPLY }));
      await waitFor(() => conn.tombstones === 9, 'the late reply consumed its tombstone');
      assert.deepEqual(closes, []);
      conn.close();
      peer.close();
    }
    // ...and tombstones expire after tombstoneMs
    {
      const { conn, peer, closes } = pair({ tombstoneMs: 50 });
      const ps = Array.from({ length: 10 }, () => conn.request(9, null, { timeout: 1 }));
      for (const p of ps) await assert.rejects(p, isErr('VFU_TIMEOUT'));
      await waitFor(() => conn.tombstones === 0, 'tombstones expired', 3000);
      assert.equal(conn.inFlight, 0);
      assert.deepEqual(closes, []);
      conn.close();
      peer.close();
    }
  });

  test('requests and replies between two Connections, with NO_REPLY posts in between', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const handled: number[] = [];
    const server = new Connection(b, {
      onCommand: (m: Message, c) => {
        handled.push(m.header.msgId);
        // reply() and replyError() to a NO_REPLY command send nothing
        c.reply(m.header, m.payload);
        if (m.header.flags & FLAG_NO_REPLY) c.replyError(m.header, 22);
      },
    });
    const client = new Connection(a);
    const r1 = client.request(9, Uint8Array.of(1));
    client.post(9, Uint8Array.of(2));
    client.post(9, Uint8Array.of(3));
    const r2 = client.request(9, Uint8Array.of(4));
    assert.deepEqual([...(await r1).payload], [1]);
    assert.deepEqual([...(await r2).payload], [4]);
    assert.equal(handled.length, 4);
    assert.equal(client.isClosed, false, 'no stray reply to a post reached the client');
    client.close();
    await waitFor(() => server.isClosed, 'server sees hang-up');
    await fdsBackTo(base);
  });

  test('NO_REPLY: nothing at all comes back on the wire', async () => {
    const [a, b] = native.socketpair();
    const server = new Connection(b, { onCommand: (m, c) => c.reply(m.header, Uint8Array.of(9)) });
    const peer = new RawPeer(a);
    peer.send(frame({ msgId: 1, command: 9, flags: FLAG_NO_REPLY }));
    peer.send(frame({ msgId: 2, command: 9 }));
    const m = (await peer.recv())!;
    assert.equal(m.header.msgId, 2, 'only the reply to the command without NO_REPLY');
    await tick();
    assert.equal(peer.nothingQueued(), true);
    server.close();
    peer.close();
  });
});

describe('transport: hang-up and close', () => {
  test('peer hang-up: onClose exactly once with no error, every pending request rejects VFU_DISCONNECTED', async () => {
    const base = openFds();
    let closes = 0;
    const [a, b] = native.socketpair();
    const conn = new Connection(a, { onClose: (e) => (closes++, assert.equal(e, undefined)) });
    const ps = [conn.request(9, null), conn.request(10, null, { timeout: 5000 }), conn.request(11, null)];
    native.close(b);
    for (const p of ps) await assert.rejects(p, isErr('VFU_DISCONNECTED'));
    await tick();
    await tick();
    conn.close();
    conn.close();
    assert.equal(closes, 1);
    assert.equal(conn.inFlight, 0);
    assert.throws(() => conn.send({ msgId: 0, command: 9, size: 0, flags: 0, error: 0 }, null), isErr('VFU_DISCONNECTED'));
    await assert.rejects(conn.request(9, null), isErr('VFU_DISCONNECTED'));
    assert.equal(conn.reply({ msgId: 0, command: 9, size: 16, flags: 0, error: 0 }, null), true, 'reply on a closed connection is a no-op');
    await fdsBackTo(base);
  });

  test('peer sends commands and hangs up with our data unread: its commands still run, then a clean close', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const seen: number[] = [];
    const closes: unknown[] = [];
    const conn = new Connection(a, { onCommand: (m) => seen.push(m.header.msgId), onClose: (e) => closes.push(e) });
    const peer = new RawPeer(b);
    conn.post(9, new Uint8Array(100)); // the peer never reads this: its close resets the connection
    const fd = taggedFd(1);
    peer.send(concat(...[1, 2, 3].map((i) => frame({ msgId: i, command: 9, flags: FLAG_NO_REPLY }))));
    peer.send(frame({ msgId: 4, command: 9, flags: FLAG_NO_REPLY }), [fd]);
    native.close(fd);
    peer.close();
    await waitFor(() => closes.length === 1, 'close');
    assert.deepEqual(seen, [1, 2, 3, 4], 'commands sent before the hang-up are dispatched');
    assert.deepEqual(closes, [undefined], 'a reset by the peer is a hang-up, not an error');
    await fdsBackTo(base);
  });

  test('close() is idempotent, reports once, rejects pending, and closes the fd', async () => {
    const base = openFds();
    const closes: unknown[] = [];
    const [a, b] = native.socketpair();
    const conn = new Connection(a, { onClose: (e) => closes.push(e) });
    const peer = new RawPeer(b);
    const p = conn.request(9, null);
    conn.close();
    conn.close();
    await assert.rejects(p, isErr('VFU_DISCONNECTED'));
    assert.deepEqual(closes, [undefined]);
    assert.equal(await peer.recv().then((m) => m?.header.command), 9, 'the request went out before close');
    assert.equal(await peer.recv(), undefined, 'then EOF');
    peer.close();
    await fdsBackTo(base);
  });

  test('close() from inside onCommand stops dispatching the rest of the read', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const seen: number[] = [];
    let closes = 0;
    const conn = new Connection(a, {
      onCommand: (m, c) => {
        seen.push(m.header.msgId);
        if (m.header.msgId === 2) c.close();
        assert.equal(c, conn);
      },
      onClose: () => closes++,
    });
    const peer = new RawPeer(b);
    const fd = taggedFd(1);
    peer.send(concat(...[1, 2, 3, 4].map((i) => frame({ msgId: i, command: 9, flags: FLAG_NO_REPLY }))));
    peer.send(frame({ msgId: 5, command: 9, flags: FLAG_NO_REPLY }), [fd]);
    await waitFor(() => closes === 1, 'close');
    await tick();
    assert.deepEqual(seen, [1, 2]);
    native.close(fd);
    peer.close();
    await fdsBackTo(base);
  });

  test('hang-up while a reply is expected and replies are queued: every fd is released', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const conn = new Connection(a, { highWaterMark: 1 });
    const peer = new RawPeer(b);
    // fill the socket so later sends queue (with dup'd fds)
    const chunk = new Uint8Array(65536);
    while (conn.queuedBytes === 0) conn.send({ msgId: 0, command: 9, size: 0, flags: FLAG_NO_REPLY, error: 0 }, chunk);
    const fd = taggedFd(2);
    conn.send({ msgId: 0, command: 9, size: 0, flags: FLAG_NO_REPLY, error: 0 }, null, [fd]);
    native.close(fd);
    const p = conn.request(9, null);
    peer.close();
    await assert.rejects(p, isErr('VFU_DISCONNECTED'));
    assert.equal(conn.queuedBytes, 0);
    await conn.drained(); // resolves at once on a closed connection
    await fdsBackTo(base);
  });
});

describe('transport: backpressure', () => {
  test('send returns false past highWaterMark when the peer does not read; drained() resolves once it reads; queued fds survive', async () => {
    const base = openFds();
    const [a, b] = native.socketpair();
    const hwm = 256 * 1024;
    const conn = new Connection(a, { highWaterMark: hwm });
    const peer = new RawPeer(b);
    const payload = new Uint8Array(32768);
    let sent = 0;
    let ok = true;
    let fdMsgAt = -1;
    const tags: number[] = [];
    while (ok) {
      payload.fill(sent & 0xff);
      let fds: number[] | undefined;
      if (conn.queuedBytes > 0 && sent % 5 === 0) {
        // attach an fd to a message that is queued (not written): the queue must own a dup
        fds = [taggedFd(sent + 1)];
        tags.push(sent + 1);
        if (fdMsgAt < 0) fdMsgAt = sent;
      }
      ok = conn.send({ msgId: sent & 0xffff, command: 9, size: 0, flags: FLAG_NO_REPLY, error: 0 }, payload, fds);
      if (fds) closeFds(fds); // ours: the queue keeps its own copy
      sent++;
      assert.ok(sent < 10000, 'send never reported backpressure');
    }
    assert.ok(conn.queuedBytes > hwm, `queued ${conn.queuedBytes} past ${hwm}`);
    assert.ok(tags.length > 0, 'some fds were queued');
    let drained = false;
    const d = conn.drained().then(() => (drained = true));
    await tick();
    await tick();
    assert.equal(drained, false, 'not drained while the peer does not read');
    // the peer reads everything
    const got: { id: number; first: number; len: number; fds: number[] }[] = [];
    while (got.length < sent) {
      const m = await peer.recv();
      assert.ok(m, 'EOF too early');
      got.push({ id: m.header.msgId, first: m.payload[0]!, len: m.payload.length, fds: m.fds });
    }
    await d;
    assert.equal(conn.queuedBytes, 0);
    got.forEach((g, i) => {
      assert.equal(g.id, i & 0xffff);
      assert.equal(g.first, i & 0xff);
      assert.equal(g.len, 32768);
    });
    const fdTags = got.flatMap((g) => g.fds.map(tagOf));
    assert.deepEqual(fdTags, tags, 'every queued fd arrived, in order');
    // and each with its own message
    got.forEach((g, i) => {
      if (g.fds.length) assert.equal(tagOf(g.fds[0]!), i + 1);
    });
    for (const g of got) closeFds(g.fds);
    assert.equal(conn.send({ msgId: 1, command: 9, size: 0, flags: FLAG_NO_REPLY, error: 0 }, payload), true, 'below the mark again');
    conn.close();
    peer.close();
    await fdsBackTo(base);
  });

  test('a request sent while the queue is full is delivered and its reply matched', async () => {
    const [a, b] = native.socketpair();
    const conn = new Connection(a, { highWaterMark: 1024 });
    const peer = new RawPeer(b);
    const big = new Uint8Array(65536);
    while (conn.queuedBytes === 0) conn.post(10, big);
    const p = conn.request(9, Uint8Array.of(42));
    for (;;) {
      const m = (await peer.recv())!;
      if (m.header.command === 9) {
        assert.deepEqual([...m.payload], [42]);
        peer.send(frame({ msgId: m.header.msgId, command: 9, flags: MSG_TYPE_REPLY }, Uint8Array.of(43)));
        break;
      }
    }
    assert.deepEqual([...(await p).payload], [43]);
    conn.close();
    peer.close();
  });

  test('a message written partly before the queue keeps framing intact for the next ones', async () => {
    const [a, b] = native.socketpair();
    const conn = new Connection(a);
    const peer = new RawPeer(b);
    // messages bigger than the socket buffer are always written in parts
    const sizes = [700000, 3, 500000, 0, 1];
    sizes.forEach((n, i) => conn.post(9, new Uint8Array(n).fill(i + 1)));
    for (let i = 0; i < sizes.length; i++) {
      const m = (await peer.recv())!;
      assert.equal(m.header.size, HEADER_SIZE + sizes[i]!);
      if (sizes[i]) assert.equal(m.payload[sizes[i]! - 1], i + 1);
    }
    await conn.drained();
    conn.close();
    peer.close();
  });
});

