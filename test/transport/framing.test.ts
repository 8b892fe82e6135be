/**
 * Framing: many messages per read, one message over many reads (every split point), a header
 * split across reads, messages larger than the initial read buffer, bad and oversized headers.
 */
import { test, describe, before } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import { Connection, type Message } from '../../src/transport/connection.js';
import { HEADER_SIZE, FLAG_NO_REPLY, FLAG_ERROR, MSG_TYPE_REPLY } from '../../src/protocol/header.js';
import { VfioUserError } from '../../src/errors.js';
import { RawPeer, frame, concat, tick, waitFor, openFds, fdsBackTo } from './util.js';

interface Rig {
  conn: Connection;
  peer: RawPeer;
  got: Message[];
  closes: (VfioUserError | undefined)[];
}

function rig(opts: ConstructorParameters<typeof Connection>[1] = {}): Rig {
  const [a, b] = native.socketpair();
  const got: Message[] = [];
  const closes: (VfioUserError | undefined)[] = [];
  const conn = new Connection(a, {
    fastPath,
    // a command's payload is a view valid only during the handler: keep a copy
    onCommand: (m) => got.push({ header: m.header, payload: m.payload.slice(), fds: [] }),
    onClose: (e) => closes.push(e),
    ...opts,
  });
  return { conn, peer: new RawPeer(b), got, closes };
}

function done(r: Rig): void {
  r.conn.close();
  r.peer.close();
}

/** distinct, checkable payloads */
function payloadOf(i: number, len: number): Uint8Array {
  return Uint8Array.from({ length: len }, (_, j) => (i * 31 + j * 7) & 0xff);
}

/** the server's fast path (native exchange: send and read in one call, waits in native code) or not */
let fastPath = false;

for (const fast of [false, true]) describe(`transport: framing${fast ? ' (fast path)' : ''}`, () => {
  before(() => {
    fastPath = fast;
  });

  test('many messages in one write are each delivered, in order, with their own payload', async () => {
    const base = openFds();
    const r = rig();
    const msgs = Array.from({ length: 200 }, (_, i) => frame({ msgId: i, command: 9, flags: FLAG_NO_REPLY }, payloadOf(i, i % 37)));
    assert.equal(r.peer.send(concat(...msgs)), msgs.reduce((n, m) => n + m.length, 0));
    await waitFor(() => r.got.length === 200, '200 messages');
    r.got.forEach((m, i) => {
      assert.equal(m.header.msgId, i);
      assert.equal(m.header.size, HEADER_SIZE + (i % 37));
      assert.deepEqual(m.payload, payloadOf(i, i % 37));
    });
    assert.deepEqual(r.closes, []);
    done(r);
    await fdsBackTo(base);
  });

  test('one message split at every byte boundary (two writes), header splits included', async () => {
    const r = rig();
    const msg = frame({ msgId: 7, command: 10, flags: FLAG_NO_REPLY }, payloadOf(7, 40));
    for (let cut = 1; cut < msg.length; cut++) {
      r.peer.send(msg.subarray(0, cut));
      await tick();
      await tick();
      assert.equal(r.got.length, cut - 1, `nothing delivered from a partial message (cut ${cut})`);
      r.peer.send(msg.subarray(cut));
      await waitFor(() => r.got.length === cut, `message cut at ${cut}`);
      assert.deepEqual(r.got[cut - 1]!.payload, payloadOf(7, 40));
    }
    assert.deepEqual(r.closes, []);
    done(r);
  });

  test('one message delivered one byte per read', async () => {
    const r = rig();
    const a = frame({ msgId: 1, command: 10, flags: FLAG_NO_REPLY }, payloadOf(1, 300));
    const b = frame({ msgId: 2, command: 10, flags: FLAG_NO_REPLY }, payloadOf(2, 3));
    const both = concat(a, b);
    for (let i = 0; i < both.length; i++) {
      r.peer.send(both.subarray(i, i + 1));
      if (i % 7 === 0) await tick();
    }
    await waitFor(() => r.got.length === 2, 'two messages');
    assert.deepEqual(r.got[0]!.payload, payloadOf(1, 300));
    assert.deepEqual(r.got[1]!.payload, payloadOf(2, 3));
    done(r);
  });

  test('random splits of a long stream of mixed-size messages (reads crossing message ends)', async () => {
    const r = rig();
    const sizes = Array.from({ length: 60 }, (_, i) => (i * 7919) % 3000);
    const msgs = sizes.map((n, i) => frame({ msgId: i, command: 9, flags: FLAG_NO_REPLY }, payloadOf(i, n)));
    const stream = concat(...msgs);
    let off = 0;
    let k = 1;
    while (off < stream.length) {
      const n = Math.min(stream.length - off, (k * 2654435761) % 1500 + 1);
      k++;
      await r.peer.sendAll(stream.subarray(off, off + n));
      off += n;
      if (k % 3 === 0) await tick();
    }
    await waitFor(() => r.got.length === msgs.length, 'all messages');
    r.got.forEach((m, i) => assert.deepEqual(m.payload, payloadOf(i, sizes[i]!), `message ${i}`));
    done(r);
  });

  test('messages larger than the initial 64 KiB read buffer, and the buffer grows only as needed', async () => {
    const r = rig();
    const big = frame({ msgId: 1, command: 10, flags: FLAG_NO_REPLY }, payloadOf(3, 300000));
    const small = frame({ msgId: 2, command: 10, flags: FLAG_NO_REPLY }, payloadOf(4, 5));
    const stream = concat(small, big, small, big);
    await r.peer.sendAll(stream);
    await waitFor(() => r.got.length === 4, 'four messages');
    assert.deepEqual(r.got[1]!.payload, payloadOf(3, 300000));
    assert.deepEqual(r.got[3]!.payload, payloadOf(3, 300000));
    assert.deepEqual(r.got[2]!.payload, payloadOf(4, 5));
    done(r);
  });

  test('a message of exactly maxMessageSize is accepted; one byte more is VFU_MESSAGE_TOO_LARGE and closes', async () => {
    const base = openFds();
    const max = 70000;
    const r = rig({ maxMessageSize: max });
    await r.peer.sendAll(frame({ msgId: 1, command: 10, flags: FLAG_NO_REPLY }, payloadOf(1, max - HEADER_SIZE)));
    await waitFor(() => r.got.length === 1, 'max-size message');
    // only the header of the oversized one: the connection must not wait for the body
    r.peer.send(frame({ msgId: 2, command: 10, size: max + 1 }));
    await waitFor(() => r.closes.length === 1, 'close');
    assert.equal(r.closes[0]?.code, 'VFU_MESSAGE_TOO_LARGE');
    assert.equal(r.conn.isClosed, true);
    assert.equal(await r.peer.recv(), undefined, 'peer sees EOF');
    r.peer.close();
    await fdsBackTo(base);
  });

  test('a huge header size (4 GiB - 1) fails at once without allocating', async () => {
    const r = rig();
    r.peer.send(frame({ command: 9, size: 0xffffffff }));
    await waitFor(() => r.closes.length === 1, 'close');
    assert.equal(r.closes[0]?.code, 'VFU_MESSAGE_TOO_LARGE');
    r.peer.close();
  });

  for (const size of [0, 1, 15]) {
    test(`a header with size ${size} (< 16) is VFU_PROTOCOL and closes; nothing is dispatched`, async () => {
      const r = rig();
      r.peer.send(concat(frame({ command: 9, size }), new Uint8Array(64)));
      await waitFor(() => r.closes.length === 1, 'close');
      assert.equal(r.closes[0]?.code, 'VFU_PROTOCOL');
      assert.equal(r.got.length, 0);
      r.peer.close();
    });
  }

  test('a command with an unknown type, reserved flags, the ERROR bit or an error field gets EINVAL; the connection goes on', async () => {
    const cases: { flags: number; error?: number }[] = [
      { flags: 2 },
      { flags: 0xf },
      { flags: 1 << 6 },
      { flags: 0x80000000 },
      { flags: FLAG_ERROR },
      { flags: 0, error: 5 },
    ];
    const r = rig();
    let id = 100;
    for (const c of cases) {
      r.peer.send(frame({ msgId: ++id, command: 9, flags: c.flags, error: c.error ?? 0 }, payloadOf(1, 8)));
      const rep = await r.peer.recv();
      assert.equal(rep?.header.msgId, id, `answered: flags 0x${c.flags.toString(16)}`);
      assert.equal(rep?.header.flags, MSG_TYPE_REPLY | FLAG_ERROR);
      assert.equal(rep?.header.error, 22);
    }
    // nothing reached the command handler, and the connection still works
    assert.equal(r.got.length, 0);
    assert.equal(r.closes.length, 0);
    r.peer.send(frame({ msgId: 1, command: 9, flags: FLAG_NO_REPLY }, payloadOf(2, 4)));
    await waitFor(() => r.got.length === 1, 'a good command after the bad ones');
    // a bad one with NO_REPLY is dropped without an answer
    r.peer.send(frame({ msgId: 2, command: 9, flags: FLAG_NO_REPLY | (1 << 7) }));
    await tick();
    await tick();
    assert.equal(r.peer.nothingQueued(), true);
    assert.equal(r.got.length, 1);
    done(r);
  });

  test('reserved flag bits in a reply are ignored', async () => {
    const r = rig();
    const p = r.conn.request(9, null);
    const q = await r.peer.recv();
    r.peer.send(frame({ msgId: q!.header.msgId, command: 9, flags: MSG_TYPE_REPLY | (1 << 9) }, payloadOf(3, 4)));
    const rep = await p;
    assert.deepEqual(rep.payload, payloadOf(3, 4));
    done(r);
  });

  test('oversized send throws VFU_MESSAGE_TOO_LARGE and leaves the connection usable', async () => {
    const r = rig({ maxMessageSize: 1000 });
    assert.throws(
      () => r.conn.send({ msgId: 1, command: 9, size: 0, flags: 0, error: 0 }, new Uint8Array(1000 - HEADER_SIZE + 1)),
      (e) => e instanceof VfioUserError && e.code === 'VFU_MESSAGE_TOO_LARGE',
    );
    assert.equal(r.conn.isClosed, false);
    assert.equal(r.peer.nothingQueued(), true, 'nothing of the oversized message was written');
    assert.equal(r.conn.send({ msgId: 2, command: 9, size: 0, flags: MSG_TYPE_REPLY, error: 0 }, new Uint8Array(1000 - HEADER_SIZE)), true);
    const m = await r.peer.recv();
    assert.equal(m?.header.msgId, 2);
    assert.equal(m?.header.size, 1000);
    done(r);
  });

  test('a partial message followed by hang-up: onClose once, clean, nothing dispatched', async () => {
    const r = rig();
    r.peer.send(frame({ command: 9, flags: FLAG_NO_REPLY }, payloadOf(1, 100)).subarray(0, 50));
    r.peer.close();
    await waitFor(() => r.closes.length === 1, 'close');
    await tick();
    assert.deepEqual(r.closes, [undefined]);
    assert.equal(r.got.length, 0);
  });
});
