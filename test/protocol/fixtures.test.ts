import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as P from '../../src/protocol/index.js';
import { FIXTURES } from './fixture-table.js';
import { toHex } from './helpers.js';

test('every command has request and reply fixtures', () => {
  for (const c of P.ALL_COMMANDS) {
    for (const direction of ['request', 'reply'] as const) {
      assert.ok(
        FIXTURES.some((f) => f.command === c && f.direction === direction && f.only !== 'decode'),
        `missing two-way ${direction} fixture for ${P.commandName(c)}`,
      );
    }
  }
});

for (const f of FIXTURES) {
  test(`fixture: ${f.name}`, () => {
    if (f.only !== 'encode') {
      const decoded = f.decode
        ? f.decode(f.bytes)
        : f.direction === 'request'
          ? P.decodeRequest(f.command, f.bytes).msg
          : P.decodeReply(f.command, f.bytes).msg;
      assert.deepStrictEqual(decoded, f.msg, 'bytes -> decode');
    }
    if (f.only !== 'decode') {
      const encoded = f.encode
        ? f.encode()
        : f.direction === 'request'
          ? P.encodeRequest(f.command, f.msg as never)
          : P.encodeReply(f.command, f.msg as never);
      assert.equal(toHex(encoded), toHex(f.bytes), 'msg -> encode');
    }
  });
}

test('decoded data fields are zero-copy views of the payload', () => {
  const buf = new Uint8Array(64);
  const payload = buf.subarray(8, 8 + 20);
  payload.set([0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4]);
  const w = P.decodeRegionWriteRequest(payload);
  assert.equal(w.data.buffer, buf.buffer);
  assert.equal(w.data.byteOffset, 8 + 16);
  assert.deepStrictEqual(Array.from(w.data), [1, 2, 3, 4]);
});
