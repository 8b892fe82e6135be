/**
 * An error reply's reason: the spec's error replies carry only the header, but a peer that
 * adds a short printable text gets it shown in the error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import { Connection } from '../../src/transport/connection.js';
import { FLAG_ERROR, MSG_TYPE_REPLY } from '../../src/protocol/header.js';
import { VfioUserError } from '../../src/errors.js';
import { RawPeer, frame } from './util.js';

function isErr(code: string, errno?: number) {
  return (e: unknown): boolean => e instanceof VfioUserError && e.code === code && (errno === undefined || e.errno === errno);
}

function pair() {
  const [a, b] = native.socketpair();
  return { conn: new Connection(a, {}), peer: new RawPeer(b) };
}

test('an error reply shows the reason a peer sent as printable text, and nothing else', async () => {
  const { conn, peer } = pair();
  const p = conn.request(9, Uint8Array.of(1, 2, 3));
  const q = (await peer.recv())!;
  peer.send(frame({ msgId: q.header.msgId, command: 9, flags: MSG_TYPE_REPLY | FLAG_ERROR, error: 22 }, new TextEncoder().encode('no such region')));
  await assert.rejects(p, (e) => isErr('VFU_REMOTE_ERROR', 22)(e) && (e as Error).message === 'peer failed the request: EINVAL (no such region)');
  // no reason (as the spec's error replies), or one that is not printable text: none shown
  for (const payload of [new Uint8Array(0), Uint8Array.of(0xff, 0, 7)]) {
    const p2 = conn.request(9, null);
    const q2 = (await peer.recv())!;
    peer.send(frame({ msgId: q2.header.msgId, command: 9, flags: MSG_TYPE_REPLY | FLAG_ERROR, error: 14 }, payload));
    await assert.rejects(p2, (e) => (e as Error).message === 'peer failed the request: EFAULT');
  }
  conn.close();
  peer.close();
});
