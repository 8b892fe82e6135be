/**
 * DMA by message on a real socket, with the client played byte for byte: the one-message
 * paths of the DMA controller (a read or write to one map without an fd) over the
 * ClientDmaMessenger, against replies that are errors, short, for another address, or never
 * come (hang-up); requests of one job leaving together; interrupts kept behind writes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import * as P from '../../src/protocol/index.js';
import { MSG_TYPE_REPLY, FLAG_ERROR } from '../../src/protocol/header.js';
import { Connection } from '../../src/transport/connection.js';
import { DmaController, DmaError } from '../../src/server/dma.js';
import { ClientDmaMessenger } from '../../src/server/dma-messenger.js';
import { VfioUserError } from '../../src/errors.js';
import { RawPeer, frame, tick, fdsBackTo, openFds, type RawMessage } from '../transport/util.js';

const BASE = 0x100000;

/** A controller whose only map (64 KiB at BASE, no fd) is reached through `peer`. */
function rig(readWindow = Infinity) {
  const [a, b] = native.socketpair();
  const conn = new Connection(a, {});
  const peer = new RawPeer(b);
  const dma = new DmaController();
  dma.map(BASE, 0x10000, 3, undefined, 0);
  dma.setMessenger(new ClientDmaMessenger({ conn, maxTransfer: 4096, layout: 'spec', timeoutMs: 10000, readWindow }));
  const close = (): void => {
    dma.setMessenger(undefined);
    conn.close();
    peer.close();
  };
  return { conn, peer, dma, close };
}

function readReply(q: RawMessage, data: Uint8Array, address?: bigint): Uint8Array {
  const req = P.decodeDmaReadRequest(q.payload);
  return frame({ msgId: q.header.msgId, command: P.Command.DMA_READ, flags: MSG_TYPE_REPLY }, P.encodeDmaReadReply({ address: address ?? req.address, data }));
}

function writeReply(q: RawMessage): Uint8Array {
  const req = P.decodeDmaWriteRequest(q.payload, 'spec');
  return frame({ msgId: q.header.msgId, command: P.Command.DMA_WRITE, flags: MSG_TYPE_REPLY }, P.encodeDmaWriteReply({ address: req.address, count: req.count }));
}

function errorReply(q: RawMessage, errno: number): Uint8Array {
  return frame({ msgId: q.header.msgId, command: q.header.command, flags: MSG_TYPE_REPLY | FLAG_ERROR, error: errno });
}

/** The map can be removed: nothing pins it any more. */
async function unpinned(dma: DmaController): Promise<void> {
  await dma.unmap(BASE, 0x10000);
  dma.map(BASE, 0x10000, 3, undefined, 0);
}

test('one-message reads: the reply bytes come back; a wrong address, a short reply or an error reply fail it and unpin the map', async () => {
  const base = openFds();
  const { peer, dma, close } = rig();
  // good
  let p = dma.read(BASE + 0x40, 64);
  let q = (await peer.recv())!;
  assert.equal(q.header.command, P.Command.DMA_READ);
  assert.deepEqual(P.decodeDmaReadRequest(q.payload), { address: BigInt(BASE + 0x40), count: 64 });
  peer.send(readReply(q, new Uint8Array(64).fill(9)));
  const got = await p;
  assert.equal(got.length, 64);
  assert.ok(got.every((x) => x === 9));
  await unpinned(dma);
  // a reply for another address
  p = dma.read(BASE, 16);
  q = (await peer.recv())!;
  peer.send(readReply(q, new Uint8Array(16), BigInt(BASE + 16)));
  await assert.rejects(p, (e) => e instanceof DmaError && e.errno === 5);
  await unpinned(dma);
  // short: 8 bytes for 16
  p = dma.read(BASE, 16);
  q = (await peer.recv())!;
  peer.send(readReply(q, new Uint8Array(8)));
  await assert.rejects(p);
  await unpinned(dma);
  // an error reply
  p = dma.read(BASE, 16);
  q = (await peer.recv())!;
  peer.send(errorReply(q, 14));
  await assert.rejects(p, (e) => e instanceof VfioUserError && e.errno === 14);
  await unpinned(dma);
  close();
  await fdsBackTo(base);
});

test('one-message reads within a window: a failed reply frees its share of the window', async () => {
  const { peer, dma, close } = rig(4096);
  const a = dma.read(BASE, 4096);
  const b = dma.read(BASE + 4096, 4096); // waits: the window holds one
  const qa = (await peer.recv())!;
  await tick();
  assert.equal(peer.drainNow(), 0, 'the second waits for the window');
  peer.send(errorReply(qa, 5));
  await assert.rejects(a);
  const qb = (await peer.recv())!;
  assert.deepEqual(P.decodeDmaReadRequest(qb.payload), { address: BigInt(BASE + 4096), count: 4096 });
  peer.send(readReply(qb, new Uint8Array(4096).fill(1)));
  assert.equal((await b)[4095], 1);
  close();
});

test('requests made in one job go out together at its end (Connection.cork), in order', async () => {
  const { peer, dma, close } = rig();
  const ps = [dma.read(BASE, 64), dma.write(BASE + 0x1000, new Uint8Array(16).fill(3)), dma.read(BASE + 0x2000, 64)];
  assert.equal(peer.drainNow(), 0, 'nothing is sent while the job runs');
  await tick();
  const qs = [(await peer.recv())!, (await peer.recv())!, (await peer.recv())!];
  assert.deepEqual(
    qs.map((q) => q.header.command),
    [P.Command.DMA_READ, P.Command.DMA_WRITE, P.Command.DMA_READ],
  );
  peer.send(readReply(qs[0]!, new Uint8Array(64)));
  peer.send(writeReply(qs[1]!));
  peer.send(readReply(qs[2]!, new Uint8Array(64)));
  await Promise.all(ps);
  close();
});

test('one-message writes: an interrupt waits for the reply, also when it is an error; a hang-up fails what is pending', async () => {
  const base = openFds();
  const { peer, dma, close } = rig();
  const order: string[] = [];
  let w = dma.write(BASE + 0x100, new Uint8Array(16));
  dma.writeOrder.after(() => order.push('irq 1'));
  const q = (await peer.recv())!;
  assert.equal(q.header.command, P.Command.DMA_WRITE);
  await tick();
  assert.equal(order.length, 0, 'no interrupt before the write is answered');
  peer.send(errorReply(q, 14));
  await assert.rejects(w, (e) => e instanceof VfioUserError && e.errno === 14);
  assert.deepEqual(order, ['irq 1']);
  assert.equal(dma.writeOrder.pending, false);
  await unpinned(dma);
  // the client hangs up with a write and a read pending
  w = dma.write(BASE, new Uint8Array(16));
  const r = dma.read(BASE, 16);
  dma.writeOrder.after(() => order.push('irq 2'));
  await peer.recv();
  await peer.recv();
  peer.close();
  await assert.rejects(w, (e) => e instanceof VfioUserError && e.code === 'VFU_DISCONNECTED');
  await assert.rejects(r, (e) => e instanceof VfioUserError && e.code === 'VFU_DISCONNECTED');
  assert.equal(dma.writeOrder.pending, false);
  await unpinned(dma);
  close();
  await fdsBackTo(base);
});
