import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigSpace, ConfigSpaceError } from '../../../src/server/pci/index.js';
import { make, r16, r32, w16, w32, walkExt, walkStd, throwsCode } from './helpers.js';
import { flipBits } from '../../helpers.js';

function fullDevice(): ConfigSpace {
  const cs = make({ size: 4096 });
  cs.defineBar(0, { size: 0x4000, kind: 'mem64', prefetchable: true });
  cs.defineBar(2, { size: 0x1000, kind: 'mem32' });
  cs.defineBar(3, { size: 64, kind: 'io' });
  cs.defineRom(0x8000);
  cs.addPowerManagement({ d1: true, d2: true });
  cs.addMsi({ vectors: 8, address64: true, perVectorMask: true });
  cs.addMsix({ tableSize: 8, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 0x800 });
  cs.addPciExpress({ flr: true });
  cs.addVendorSpecific(new Uint8Array([1, 2, 3, 4, 5]));
  cs.addSerialNumber(0xdeadbeefcafef00dn);
  cs.addVendorSpecificExtended(7, 1, new Uint8Array(16).fill(0x5a));
  return cs;
}

function program(cs: ConfigSpace): void {
  w16(cs, 0x04, 0x0407);
  w32(cs, 0x10, 0xfe000000);
  w32(cs, 0x14, 0x2);
  w32(cs, 0x18, 0xfebf0000);
  w32(cs, 0x1c, 0xc000);
  w32(cs, 0x30, 0xfeb80001);
  cs.write(0x3c, new Uint8Array([11]));
  const pm = cs.findCapability(0x01);
  w16(cs, pm + 4, 2);
  const msi = cs.findCapability(0x05);
  w32(cs, msi + 4, 0xfee00000);
  w16(cs, msi + 12, 0x33);
  w32(cs, msi + 16, 0x5);
  w16(cs, msi + 2, 0x31);
  cs.setMsiPending(1, true);
  w16(cs, cs.findCapability(0x11) + 2, 0x8000);
}

test('reset restores power-on values, keeps definitions, emits nothing', () => {
  const cs = fullDevice();
  const pristine = cs.read(0, 4096);
  program(cs);
  cs.setInterruptStatus(true);
  assert.notDeepEqual(cs.read(0, 4096), pristine);
  let events = 0;
  for (const k of ['onCommand', 'onBarProgrammed', 'onRomProgrammed', 'onMsi', 'onMsix', 'onPowerState', 'onFlr'] as const) {
    (cs.events as Record<string, unknown>)[k] = () => events++;
  }
  cs.reset();
  assert.equal(events, 0);
  assert.deepEqual(cs.read(0, 4096), pristine);
  assert.equal(cs.barAddress(0), 0n);
  assert.equal(cs.msi()!.enabled, false);
  assert.equal(walkStd(cs).length, 5);
  assert.equal(walkExt(cs).length, 2);
  // definitions survive: sizing still works, and reprogramming reports again
  w32(cs, 0x18, 0xffffffff);
  assert.equal(r32(cs, 0x18), 0xfffff000);
  w32(cs, 0x18, 0xfebf0000);
  assert.equal(events, 1, 'BAR2 programmed again after reset');
});

test('save/load round trip, including mid-sizing BAR state', () => {
  const a = fullDevice();
  program(a);
  w32(a, 0x10, 0xffffffff); // guest is in the middle of sizing BAR0
  const blob = a.save();
  const b = fullDevice();
  const ev: [number, bigint][] = [];
  b.events.onBarProgrammed = (i, x) => ev.push([i, x]);
  b.load(blob);
  assert.deepEqual(b.read(0, 4096), a.read(0, 4096));
  assert.deepEqual(b.save(), blob);
  assert.deepEqual(b.msi(), a.msi());
  assert.deepEqual(b.msix(), a.msix());
  assert.equal(b.powerState(), 2);
  assert.deepEqual(ev, [], 'load is silent');
  w32(b, 0x10, 0xfe000000); // restore after sizing: same address as before -> no event
  assert.deepEqual(ev, []);
  assert.equal(b.barAddress(0), 0x2_fe00_0000n);
  w32(b, 0x10, 0xfd000000);
  assert.deepEqual(ev, [[0, 0x2_fd00_0000n]]);
});

test('load validates size, ids and layout', () => {
  const blob = fullDevice().save();
  throwsCode(() => make().load(blob), 'VFU_CONFIG_BAD_STATE');
  throwsCode(() => make({ size: 4096, deviceId: 0x1111 }).load(blob), 'VFU_CONFIG_BAD_STATE');
  const other = make({ size: 4096 });
  other.defineBar(0, { size: 0x4000, kind: 'mem64', prefetchable: true });
  throwsCode(() => other.load(blob), 'VFU_CONFIG_BAD_STATE');
  throwsCode(() => fullDevice().load(blob.subarray(0, 100)), 'VFU_CONFIG_BAD_STATE');
  throwsCode(() => fullDevice().load(new Uint8Array(3)), 'VFU_CONFIG_BAD_STATE');
  const bad = blob.slice();
  flipBits(bad, 16, 0xff); // vendor id in the raw bytes
  throwsCode(() => fullDevice().load(bad), 'VFU_CONFIG_BAD_STATE');
});

test('hooks: overlapping portion, read modification, handled writes', () => {
  const cs = make();
  const pm = cs.addPowerManagement();
  const vnd = cs.addVendorSpecific(new Uint8Array(8));
  const reads: [number, number][] = [];
  const writes: [number, number[]][] = [];
  let counter = 0;
  cs.hook(
    { offset: vnd + 4, length: 4 },
    {
      read(off, data) {
        reads.push([off, data.length]);
        for (let i = 0; i < data.length; i++) data[i] = ((counter >>> (8 * (off - vnd - 4 + i))) & 0xff);
      },
      write(off, data) {
        writes.push([off, [...data]]);
        return true;
      },
    },
  );
  counter = 0x44332211;
  assert.equal(r32(cs, vnd + 4), 0x44332211);
  assert.equal(cs.readUint(vnd + 4, 4), 0x44332211);
  assert.equal(cs.readUint(vnd + 6, 2), 0x4433);
  assert.deepEqual([...cs.read(vnd + 2, 4)], [11, 0, 0x11, 0x22], 'only the overlap is passed to the hook');
  assert.deepEqual(reads.at(-1), [vnd + 4, 2]);
  assert.equal(cs.readUint(0, 2), 0x1af4, 'non-overlapping fast path unaffected');
  cs.write(vnd + 2, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
  assert.deepEqual(writes, [[vnd + 4, [3, 4, 5, 6]]]);

  // a write hook returning false lets the default apply; true skips it for its bytes only
  let handled = false;
  const seen: number[][] = [];
  cs.hook({ offset: 0x04, length: 1 }, { write: (_o, d) => (seen.push([...d]), handled) });
  w16(cs, 0x04, 0x0006);
  assert.equal(r16(cs, 0x04), 0x0006);
  handled = true;
  w16(cs, 0x04, 0x0401);
  assert.equal(r16(cs, 0x04), 0x0406, 'byte 0x04 skipped, byte 0x05 applied');
  assert.deepEqual(seen, [[0x06], [0x01]]);
  void pm;
  throwsCode(() => cs.hook({ offset: 250, length: 10 }, {}), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.hook({ offset: 0, length: 0 }, {}), 'VFU_CONFIG_RANGE');
});

/** Small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('randomized writes never change read-only bytes and only throw VFU_CONFIG_RANGE', () => {
  for (const seed of [1, 2, 3, 4]) {
    const rand = rng(seed);
    const cs = fullDevice();
    let flrs = 0;
    cs.events.onFlr = () => {
      flrs++;
      cs.reset();
    };
    const ro = cs.read(0, 4096);
    // writable/RW1C bytes: learn by construction from the layout we know
    const mutable = new Set<number>();
    const add = (o: number, n: number) => {
      for (let i = 0; i < n; i++) mutable.add(o + i);
    };
    add(0x04, 4); // command + status (RW1C)
    add(0x0c, 1); // cache line (latency timer is RO 0 on PCIe)
    add(0x10, 16); // BAR0..3
    add(0x30, 4);
    add(0x3c, 1);
    const pm = cs.findCapability(0x01);
    add(pm + 4, 2);
    const msi = cs.findCapability(0x05);
    add(msi + 2, 2);
    add(msi + 4, 8);
    add(msi + 12, 2);
    add(msi + 16, 1); // mask: 8 vectors
    const msix = cs.findCapability(0x11);
    add(msix + 3, 1);
    const exp = cs.findCapability(0x10);
    add(exp + 8, 4); // devctl + devsta
    add(exp + 0x10, 1); // link control low byte
    for (let n = 0; n < 20000; n++) {
      const len = 1 + Math.floor(rand() * (rand() < 0.9 ? 4 : 64));
      const off = Math.floor(rand() * (4096 + 8)) - 4;
      const data = new Uint8Array(len);
      for (let i = 0; i < len; i++) data[i] = rand() < 0.3 ? 0xff : Math.floor(rand() * 256);
      try {
        if (rand() < 0.5) cs.write(off, data);
        else cs.read(off, len);
        assert.ok(off >= 0 && off + len <= 4096, `access ${off}+${len} should have thrown`);
      } catch (e) {
        if (!(e instanceof ConfigSpaceError) || e.code !== 'VFU_CONFIG_RANGE') throw e;
        assert.ok(off < 0 || off + len > 4096, `in-range access ${off}+${len} threw`);
      }
    }
    const now = cs.read(0, 4096);
    for (let i = 0; i < 4096; i++) {
      if (!mutable.has(i)) assert.equal(now[i], ro[i], `seed ${seed}: RO byte 0x${i.toString(16)} changed`);
    }
    // RO bits inside mutable registers
    assert.equal(r16(cs, 0x04) & ~0x0547, 0);
    assert.equal(r16(cs, 0x06) & 0x06ff, 0x0010);
    assert.equal(r32(cs, 0x10) & 0xf, 0xc);
    assert.equal(r32(cs, 0x1c) & 0x3, 0x1);
    assert.equal(r16(cs, msi + 2) & 0x1ce, 0x186);
    assert.equal(r16(cs, exp + 8) & 0x8000, 0);
    assert.ok(walkStd(cs).length === 5 && walkExt(cs).length === 2);
    assert.ok(flrs > 0, 'FLR was exercised');
  }
});
