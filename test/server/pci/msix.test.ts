import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MsixTable } from '../../../src/server/pci/index.js';
import { le, make, w16, throwsCode } from './helpers.js';
import { le32 } from '../../../src/bytes.js';
import { flipBits } from '../../helpers.js';

function rd32(t: MsixTable, o: number): number {
  return le32(t.readTable(o, 4), 0);
}

test('MsixTable sizes and reset state', () => {
  const t = new MsixTable(65);
  assert.equal(t.tableSize, 65 * 16);
  assert.equal(t.pbaSize, 16);
  for (let v = 0; v < 65; v++) {
    assert.deepEqual(t.entry(v), { address: 0n, data: 0, masked: true });
    assert.equal(t.isMasked(v), true);
  }
  assert.equal(rd32(t, 12), 1);
  throwsCode(() => new MsixTable(0), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => new MsixTable(2049), 'VFU_CONFIG_BAD_ARG');
  assert.equal(new MsixTable(64).pbaSize, 8);
});

test('MsixTable entry writes, validation, out-of-range', () => {
  const t = new MsixTable(4);
  t.writeTable(16, le(0xfee01000, 4));
  t.writeTable(20, le(0x2, 4));
  t.writeTable(24, le(0x4031, 4));
  t.writeTable(28, le(0xfffffffe, 4));
  assert.deepEqual(t.entry(1), { address: 0x2_fee0_1000n, data: 0x4031, masked: false });
  assert.equal(rd32(t, 28), 0, 'reserved vector-control bits read 0');
  // qword write of address
  const q = new Uint8Array(8);
  new DataView(q.buffer).setBigUint64(0, 0x1234_5678_9abc_def0n, true);
  t.writeTable(32, q);
  assert.equal(t.entry(2).address, 0x1234_5678_9abc_def0n);
  // invalid accesses ignored
  t.writeTable(33, le(0xffffffff, 4));
  t.writeTable(36, q); // qword not qword-aligned
  t.writeTable(40, le(0xff, 2));
  t.writeTable(64, le(0xffffffff, 4)); // past the table
  t.writeTable(-4, le(0xffffffff, 4));
  assert.equal(t.entry(2).address, 0x1234_5678_9abc_def0n);
  assert.equal(t.entry(2).data, 0);
  assert.deepEqual([...t.readTable(60, 8)], [1, 0, 0, 0, 0, 0, 0, 0], 'bytes past the end read 0');
  assert.deepEqual([...t.readTable(1000, 4)], [0, 0, 0, 0]);
  assert.deepEqual([...t.readTable(14, 4)], [0, 0, 0, 0x10], 'unaligned read spanning entries');
  assert.deepEqual([...t.readTable(-2, 4)], [0, 0, 0, 0]);
  assert.equal(t.readTable(17, 3).length, 3);
  throwsCode(() => t.entry(4), 'VFU_CONFIG_RANGE');
});

test('MsixTable masking, pending and onUnmask (vector and function level)', () => {
  const t = new MsixTable(8);
  const fired: number[] = [];
  t.onUnmask = (v) => {
    fired.push(v);
    t.setPending(v, false);
  };
  assert.equal(t.signal(3), false, 'disabled -> pending');
  assert.equal(t.pending(3), true);
  assert.deepEqual([...t.readPba(0, 8)], [0x08, 0, 0, 0, 0, 0, 0, 0]);
  t.setFunctionState(true, true);
  assert.deepEqual(fired, [], 'function mask still set');
  t.writeTable(3 * 16 + 12, le(0, 4)); // unmask vector 3, function still masked
  assert.deepEqual(fired, []);
  assert.equal(t.isMasked(3), true);
  t.setFunctionState(true, false);
  assert.deepEqual(fired, [3], 'function unmask delivers pending vector');
  assert.equal(t.pending(3), false);
  assert.equal(t.signal(3), true, 'unmasked -> deliver now');
  assert.equal(t.signal(4), false, 'vector 4 still masked');
  t.writeTable(4 * 16 + 12, le(1, 4)); // still masked: nothing
  assert.deepEqual(fired, [3]);
  t.writeTable(4 * 16 + 8, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0])); // qword data+ctrl: unmask
  assert.deepEqual(fired, [3, 4]);
  assert.equal(t.pending(4), false);
  // PBA is read-only
  t.setPending(7, true);
  assert.deepEqual([...t.readPba(0, 1)], [0x80]);
  t.writeTable(0, le(0, 4));
  assert.equal(t.pending(7), true);
  assert.deepEqual([...t.readPba(4, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
  t.reset();
  assert.equal(t.pending(7), false);
  assert.equal(t.entry(3).masked, true);
  assert.deepEqual(t.functionState(), { enabled: false, functionMask: false });
});

test('MsixTable fed from ConfigSpace.events.onMsix', () => {
  const cs = make();
  cs.defineBar(0, { size: 0x1000, kind: 'mem32' });
  const o = cs.addMsix({ tableSize: 2, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 });
  const t = new MsixTable(2);
  cs.events.onMsix = (s) => t.setFunctionState(s.enabled, s.functionMask);
  const fired: number[] = [];
  t.onUnmask = (v) => fired.push(v);
  t.writeTable(12, le(0, 4));
  t.setPending(0, true);
  w16(cs, o + 2, 0xc000);
  assert.deepEqual(fired, []);
  w16(cs, o + 2, 0x8000);
  assert.deepEqual(fired, [0]);
});

test('MsixTable save/load', () => {
  const t = new MsixTable(3);
  t.writeTable(16, le(0xfee00000, 4));
  t.writeTable(24, le(77, 4));
  t.writeTable(28, le(0, 4));
  t.setPending(2, true);
  t.setFunctionState(true, true);
  const blob = t.save();
  const u = new MsixTable(3);
  u.load(blob);
  assert.deepEqual(u.entry(1), { address: 0xfee00000n, data: 77, masked: false });
  assert.equal(u.pending(2), true);
  assert.deepEqual(u.functionState(), { enabled: true, functionMask: true });
  assert.deepEqual(u.save(), blob);
  throwsCode(() => new MsixTable(4).load(blob), 'VFU_CONFIG_BAD_STATE');
  throwsCode(() => u.load(blob.subarray(0, 10)), 'VFU_CONFIG_BAD_STATE');
  const bad = blob.slice();
  flipBits(bad, 0, 1);
  throwsCode(() => u.load(bad), 'VFU_CONFIG_BAD_STATE');
});
