import { test } from 'node:test';
import assert from 'node:assert/strict';
import { make, r32, w32, w8, throwsCode } from './helpers.js';

/** Linux-style sizing: save, write all-ones, read, restore. */
function size32(cs: ReturnType<typeof make>, off: number): number {
  const orig = r32(cs, off);
  w32(cs, off, 0xffffffff);
  const sz = r32(cs, off);
  w32(cs, off, orig);
  return sz;
}

test('mem32 BAR: sizing, type bits, programming, events', () => {
  const cs = make();
  const ev: [number, bigint][] = [];
  cs.events.onBarProgrammed = (i, a) => ev.push([i, a]);
  cs.defineBar(0, { size: 0x1000, kind: 'mem32' });
  assert.equal(r32(cs, 0x10), 0);
  assert.equal(size32(cs, 0x10), 0xfffff000);
  assert.equal(r32(cs, 0x10), 0, 'restored');
  assert.deepEqual(ev, [], 'sizing and its restore are not reported');
  w32(cs, 0x10, 0xfebf1234);
  assert.equal(r32(cs, 0x10), 0xfebf1000, 'low address bits read 0');
  assert.equal(cs.barAddress(0), 0xfebf1000n);
  assert.deepEqual(ev, [[0, 0xfebf1000n]]);
  w32(cs, 0x10, 0xfebf1000);
  assert.equal(ev.length, 1, 'same address: no event');
  w8(cs, 0x11, 0x20); // byte write
  assert.equal(cs.barAddress(0), 0xfebf2000n);
  assert.deepEqual(ev[1], [0, 0xfebf2000n]);
  assert.deepEqual(cs.bar(0), { size: 0x1000n, kind: 'mem32', prefetchable: false });
});

test('prefetchable mem32 BAR keeps bit 3', () => {
  const cs = make();
  cs.defineBar(2, { size: 1 << 20, kind: 'mem32', prefetchable: true });
  assert.equal(r32(cs, 0x18), 0x8);
  assert.equal(size32(cs, 0x18), 0xfff00008);
  w32(cs, 0x18, 0);
  assert.equal(r32(cs, 0x18), 0x8);
});

test('mem64 BAR: both dwords size and program', () => {
  const cs = make();
  const ev: [number, bigint][] = [];
  cs.events.onBarProgrammed = (i, a) => ev.push([i, a]);
  cs.defineBar(0, { size: 0x4000, kind: 'mem64', prefetchable: true });
  assert.equal(r32(cs, 0x10), 0x0c, '64-bit + prefetchable');
  assert.equal(size32(cs, 0x10), 0xffffc00c);
  assert.equal(size32(cs, 0x14), 0xffffffff, 'high dword: all address bits writable');
  assert.deepEqual(ev, []);
  w32(cs, 0x10, 0x80000000);
  w32(cs, 0x14, 0x1);
  assert.equal(cs.barAddress(0), 0x1_8000_0000n);
  assert.deepEqual(ev.at(-1), [0, 0x1_8000_0000n]);
  assert.equal(cs.barAddress(1), 0n, 'upper half has no address of its own');
  assert.equal(cs.bar(1), null);
  throwsCode(() => cs.defineBar(1, { size: 16, kind: 'mem32' }), 'VFU_CONFIG_CONFLICT');

  // > 4 GiB BAR: low dword has no writable address bits
  const big = make();
  big.defineBar(2, { size: 1n << 34n, kind: 'mem64' });
  assert.equal(size32(big, 0x18), 0x00000004);
  assert.equal(size32(big, 0x1c), 0xfffffffc);
  w32(big, 0x1c, 0x8);
  assert.equal(big.barAddress(2), 0x8_0000_0000n);
});

test('io BAR: bit 0 set, 4-byte granularity', () => {
  const cs = make();
  cs.defineBar(4, { size: 32, kind: 'io' });
  assert.equal(r32(cs, 0x20), 0x1);
  assert.equal(size32(cs, 0x20), 0xffffffe1);
  w32(cs, 0x20, 0xc05f);
  assert.equal(r32(cs, 0x20), 0xc041);
  assert.equal(cs.barAddress(4), 0xc040n);
  const small = make();
  small.defineBar(5, { size: 4, kind: 'io' });
  assert.equal(size32(small, 0x24), 0xfffffffd);
});

test('unimplemented BARs read 0 and ignore writes', () => {
  const cs = make();
  cs.defineBar(1, { size: 4096, kind: 'mem32' });
  for (const i of [0, 2, 3, 4, 5]) {
    assert.equal(size32(cs, 0x10 + 4 * i), 0, `BAR${i}`);
    w32(cs, 0x10 + 4 * i, 0x12345678);
    assert.equal(r32(cs, 0x10 + 4 * i), 0);
    assert.equal(cs.barAddress(i), 0n);
  }
});

test('ROM BAR: size mask, enable bit, events', () => {
  const cs = make();
  const ev: [bigint, boolean][] = [];
  cs.events.onRomProgrammed = (a, e) => ev.push([a, e]);
  assert.equal(size32(cs, 0x30), 0, 'no ROM -> reads 0');
  cs.defineRom(0x10000);
  assert.equal(cs.romSize, 0x10000);
  // Linux sizes the ROM with ~PCI_ROM_ADDRESS_ENABLE
  w32(cs, 0x30, 0xfffff800);
  assert.equal(r32(cs, 0x30), 0xffff0000);
  w32(cs, 0x30, 0);
  assert.deepEqual(ev, []);
  assert.equal(size32(cs, 0x30), 0xffff0001);
  w32(cs, 0x30, 0xfeb00000);
  assert.deepEqual(ev, [[0xfeb00000n, false]]);
  w32(cs, 0x30, 0xfeb00001);
  assert.deepEqual(ev[1], [0xfeb00000n, true]);
  assert.deepEqual(cs.romAddress(), { address: 0xfeb00000n, enabled: true });
  w32(cs, 0x30, 0xfeb0fffe);
  assert.equal(r32(cs, 0x30), 0xfeb00000, 'bits below the size and reserved bits read 0');
  throwsCode(() => cs.defineRom(0x10000), 'VFU_CONFIG_CONFLICT');
  throwsCode(() => make().defineRom(1024), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => make().defineRom(3000), 'VFU_CONFIG_BAD_ARG');
});

test('defineBar validation', () => {
  const cs = make();
  throwsCode(() => cs.defineBar(6, { size: 16, kind: 'mem32' }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => cs.defineBar(0, { size: 3000, kind: 'mem32' }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => cs.defineBar(0, { size: 8, kind: 'mem32' }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => cs.defineBar(0, { size: 512, kind: 'io' }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => cs.defineBar(0, { size: 2, kind: 'io' }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => cs.defineBar(0, { size: 16, kind: 'io', prefetchable: true }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => cs.defineBar(5, { size: 4096, kind: 'mem64' }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => cs.defineBar(0, { size: 4096, kind: 'bogus' as 'io' }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => cs.defineBar(0, { size: 1.5, kind: 'mem32' }), 'VFU_CONFIG_BAD_ARG');
  cs.defineBar(3, { size: 4096, kind: 'mem32' });
  throwsCode(() => cs.defineBar(3, { size: 4096, kind: 'mem32' }), 'VFU_CONFIG_CONFLICT');
  throwsCode(() => cs.defineBar(2, { size: 4096, kind: 'mem64' }), 'VFU_CONFIG_CONFLICT');
});
