import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { MsiState } from '../../../src/server/pci/index.js';
import { make, r8, r16, r32, w8, w16, w32, walkExt, walkStd, throwsCode } from './helpers.js';

test('capability chain (standard + extended) walked from raw bytes', () => {
  const cs = make({ size: 4096 });
  cs.defineBar(0, { size: 0x4000, kind: 'mem64' });
  const pm = cs.addPowerManagement();
  const msi = cs.addMsi({ vectors: 4, address64: true, perVectorMask: true });
  const msix = cs.addMsix({ tableSize: 16, tableBar: 0, tableOffset: 0x2000, pbaBar: 0, pbaOffset: 0x3000 });
  const exp = cs.addPciExpress({ flr: true });
  const vnd = cs.addVendorSpecific(new Uint8Array([0xde, 0xad, 0xbe]));
  const dsn = cs.addSerialNumber(0x0011223344556677n);
  const vsec = cs.addVendorSpecificExtended(0x1234, 2, new Uint8Array([9, 8, 7, 6]));

  assert.equal(pm, 0x40);
  for (const o of [pm, msi, msix, exp, vnd, dsn, vsec]) assert.equal(o % 4, 0);
  assert.deepEqual(walkStd(cs), [
    { id: 0x01, offset: pm },
    { id: 0x05, offset: msi },
    { id: 0x11, offset: msix },
    { id: 0x10, offset: exp },
    { id: 0x09, offset: vnd },
  ]);
  for (const c of walkStd(cs)) assert.ok(c.offset >= 0x40 && c.offset < 0x100);
  assert.equal(r8(cs, vnd + 2), 6, 'vendor cap length byte');
  assert.deepEqual([...cs.read(vnd + 3, 3)], [0xde, 0xad, 0xbe]);

  assert.deepEqual(walkExt(cs), [
    { id: 0x0003, version: 1, offset: 0x100 },
    { id: 0x000b, version: 1, offset: vsec },
  ]);
  assert.equal(r32(cs, dsn + 4), 0x44556677);
  assert.equal(r32(cs, dsn + 8), 0x00112233);
  assert.equal(r32(cs, vsec + 4), (0x1234 | (2 << 16) | (12 << 20)) >>> 0);
  assert.deepEqual([...cs.read(vsec + 8, 4)], [9, 8, 7, 6]);
  assert.equal(cs.findCapability(0x10), exp);
  assert.equal(cs.findCapability(0x0b, true), vsec);
  assert.equal(cs.capabilities().length, 7);

  // headers and pointers are read-only
  const snapshot = cs.read(0, 4096);
  for (const c of [...walkStd(cs)]) w16(cs, c.offset, 0xffff);
  for (const c of walkExt(cs)) w32(cs, c.offset, 0);
  w8(cs, 0x34, 0x80);
  w32(cs, vnd, 0xffffffff);
  w32(cs, vsec + 4, 0);
  assert.deepEqual(cs.read(0, 4096), snapshot);
});

test('extended space without extended caps reads 0 at 0x100; ext caps need 4096', () => {
  const cs = make({ size: 4096 });
  cs.addPciExpress();
  assert.equal(r32(cs, 0x100), 0);
  assert.deepEqual(walkExt(cs), []);
  throwsCode(() => make().addSerialNumber(1n), 'VFU_CONFIG_BAD_ARG');
});

test('standard capability space is bounded by 0x100', () => {
  const cs = make();
  cs.addVendorSpecific(new Uint8Array(150)); // 0x40..0xd9 -> next at 0xdc
  throwsCode(() => cs.addVendorSpecific(new Uint8Array(64)), 'VFU_CONFIG_NO_SPACE');
  const at = cs.addVendorSpecific(new Uint8Array(33)); // 36 bytes -> 0xdc..0xff
  assert.equal(at, 0xdc);
  throwsCode(() => cs.addVendorSpecific(new Uint8Array(0)), 'VFU_CONFIG_NO_SPACE');
  throwsCode(() => make().addVendorSpecific(new Uint8Array(253)), 'VFU_CONFIG_BAD_ARG');
  assert.equal(walkStd(cs).length, 2);
  throwsCode(() => cs.addPowerManagement(), 'VFU_CONFIG_NO_SPACE');
  const dup = make();
  dup.addMsi({ vectors: 1 });
  throwsCode(() => dup.addMsi({ vectors: 1 }), 'VFU_CONFIG_CONFLICT');
});

test('power management: PMCSR state, unsupported states, no_soft_reset, PME status RW1C', () => {
  const cs = make();
  const pm = cs.addPowerManagement({ d1: true, noSoftReset: true, pmeSupport: 0x19 });
  const states: number[] = [];
  cs.events.onPowerState = (d) => states.push(d);
  assert.equal(r16(cs, pm + 2), 0x0003 | 0x0200 | (0x19 << 11), 'PM 1.2, D1, PME support');
  assert.equal(r16(cs, pm + 4), 0x0008, 'D0 + No_Soft_Reset');
  w16(cs, pm + 4, 0x0003);
  assert.equal(cs.powerState(), 3);
  assert.equal(r16(cs, pm + 4), 0x000b);
  w16(cs, pm + 4, 0x0002); // D2 unsupported: discarded
  assert.equal(cs.powerState(), 3);
  w16(cs, pm + 4, 0x0001);
  assert.equal(cs.powerState(), 1);
  w16(cs, pm + 4, 0x0000);
  assert.deepEqual(states, [3, 1, 0]);
  w16(cs, pm + 4, 0x7e00 | 0x0100);
  assert.equal(r16(cs, pm + 4), 0x0108, 'PME_En RW, data select/scale RO, no_soft_reset RO');
  cs.poke(pm + 5, new Uint8Array([0x81]));
  assert.equal(r16(cs, pm + 4) & 0x8000, 0x8000);
  w16(cs, pm + 4, 0x0100);
  assert.equal(r16(cs, pm + 4) & 0x8000, 0x8000, 'writing 0 keeps PME_Status');
  w16(cs, pm + 4, 0x8100);
  assert.equal(r16(cs, pm + 4), 0x0108, 'writing 1 clears PME_Status');
  // without PME support PME_En is hardwired 0
  const plain = make();
  const p2 = plain.addPowerManagement();
  w16(plain, p2 + 4, 0xffff);
  assert.equal(r16(plain, p2 + 4), 0x0003);
});

test('MSI 32-bit without masking', () => {
  const cs = make();
  const o = cs.addMsi({ vectors: 8 });
  const ev: MsiState[] = [];
  cs.events.onMsi = (s) => ev.push(s);
  assert.equal(r16(cs, o + 2), 3 << 1, 'MMC=3, 32-bit, no mask');
  w32(cs, o + 4, 0xfee0100f);
  assert.equal(r32(cs, o + 4), 0xfee0100c, 'address bits 1:0 RO');
  w16(cs, o + 8, 0x4041);
  w16(cs, o + 2, 0x0071); // MME 7 > MMC 3: clamped
  assert.equal(r16(cs, o + 2), 0x0037);
  const s = cs.msi()!;
  assert.equal(s.enabled, true);
  assert.equal(s.vectorsEnabled, 8);
  assert.equal(s.vectorsCapable, 8);
  assert.equal(s.address, 0xfee0100cn);
  assert.equal(s.data, 0x4041);
  assert.equal(s.maskBits, 0);
  assert.equal(ev.length, 3);
  assert.deepEqual(ev.at(-1), s);
  assert.deepEqual(cs.msiMessage(5), { address: 0xfee0100cn, data: 0x4045 });
  assert.equal(cs.msiMessage(8), null);
  w16(cs, o + 2, 0x0037);
  assert.equal(ev.length, 3, 'no change, no event');
  assert.equal(r16(cs, o + 10), 0, 'bytes past a 10-byte cap are RO padding');
  throwsCode(() => cs.setMsiPending(0, true), 'VFU_CONFIG_BAD_ARG');
});

test('MSI 64-bit with per-vector masking and pending', () => {
  const cs = make();
  const o = cs.addMsi({ vectors: 4, address64: true, perVectorMask: true });
  assert.equal(r16(cs, o + 2), (2 << 1) | 0x80 | 0x100);
  w32(cs, o + 4, 0xfee00000);
  w32(cs, o + 8, 0x1);
  w16(cs, o + 12, 0x0020);
  w32(cs, o + 16, 0xffffffff);
  assert.equal(r32(cs, o + 16), 0xf, 'only implemented vectors maskable');
  w32(cs, o + 20, 0xffffffff);
  assert.equal(r32(cs, o + 20), 0, 'pending RO to the driver');
  cs.setMsiPending(2, true);
  assert.equal(r32(cs, o + 20), 0x4);
  w16(cs, o + 2, 0x0021);
  const s = cs.msi()!;
  assert.equal(s.address, 0x1_fee0_0000n);
  assert.equal(s.data, 0x20);
  assert.equal(s.vectorsEnabled, 4);
  assert.equal(s.maskBits, 0xf);
  assert.equal(s.pendingBits, 0x4);
  cs.setMsiPending(2, false);
  assert.equal(cs.msi()!.pendingBits, 0);
  throwsCode(() => cs.setMsiPending(4, true), 'VFU_CONFIG_BAD_ARG');
  const m32 = make();
  const o32 = m32.addMsi({ vectors: 32, perVectorMask: true });
  w32(m32, o32 + 12, 0xffffffff);
  assert.equal(r32(m32, o32 + 12), 0xffffffff);
  assert.equal(r16(m32, o32 + 10), 0, 'reserved word after data');
});

test('MSI-X capability: control writable bits, RO table/PBA locations', () => {
  const cs = make();
  cs.defineBar(2, { size: 0x2000, kind: 'mem32' });
  cs.defineBar(4, { size: 0x1000, kind: 'mem32' });
  const o = cs.addMsix({ tableSize: 64, tableBar: 2, tableOffset: 0x1000, pbaBar: 4, pbaOffset: 0x800 });
  const ev: { enabled: boolean; functionMask: boolean }[] = [];
  cs.events.onMsix = (s) => ev.push(s);
  assert.equal(r16(cs, o + 2), 63);
  assert.equal(r32(cs, o + 4), 0x1002);
  assert.equal(r32(cs, o + 8), 0x804);
  w16(cs, o + 2, 0xffff);
  assert.equal(r16(cs, o + 2), 0xc000 | 63);
  assert.deepEqual(ev, [{ enabled: true, functionMask: true }]);
  w8(cs, o + 3, 0x80);
  assert.deepEqual(ev[1], { enabled: true, functionMask: false });
  w32(cs, o + 4, 0);
  w32(cs, o + 8, 0);
  assert.equal(r32(cs, o + 4), 0x1002);
  assert.equal(r32(cs, o + 8), 0x804);
  assert.deepEqual(cs.msix(), {
    enabled: true,
    functionMask: false,
    tableSize: 64,
    tableBar: 2,
    tableOffset: 0x1000,
    pbaBar: 4,
    pbaOffset: 0x800,
  });
  const bad = make();
  bad.defineBar(0, { size: 0x1000, kind: 'mem32' });
  bad.defineBar(1, { size: 16, kind: 'io' });
  const base = { tableSize: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 };
  throwsCode(() => bad.addMsix({ ...base, tableSize: 0 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => bad.addMsix({ ...base, tableSize: 2049 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => bad.addMsix({ ...base, tableBar: 3 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => bad.addMsix({ ...base, tableBar: 1 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => bad.addMsix({ ...base, tableOffset: 4 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => bad.addMsix({ ...base, tableOffset: 0xff8 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => bad.addMsix({ ...base, pbaOffset: 0x20 }), 'VFU_CONFIG_BAD_ARG');
});

test('PCI Express capability: layout, devctl/devsta, FLR', () => {
  const cs = make({ size: 4096 });
  const o = cs.addPciExpress({ flr: true, maxPayload: 256, linkSpeed: 3, linkWidth: 4 });
  assert.equal(r16(cs, o + 2), 0x0002, 'v2 endpoint');
  const devcap = r32(cs, o + 4);
  assert.equal(devcap & 7, 1, 'MPS 256');
  assert.ok(devcap & 0x10000000, 'FLR capable');
  assert.equal(r16(cs, o + 8), 0x2810, 'default devctl');
  assert.equal(r32(cs, o + 0x0c) & 0x3ff, 3 | (4 << 4), 'link cap speed/width');
  assert.equal(r16(cs, o + 0x12) & 0x3ff, 3 | (4 << 4), 'link status');
  assert.equal(r32(cs, o + 0x2c), 0b1110, 'supported speeds vector');
  assert.equal(r32(cs, o + 0x24), 0, 'devcap2 present, zero');
  assert.equal(walkStd(cs).find((c) => c.id === 0x10)?.offset, o);
  // next cap must leave room for the 0x3c-byte v2 structure
  const after = cs.addVendorSpecific(new Uint8Array(1));
  assert.ok(after >= o + 0x3c);

  w16(cs, o + 8, 0x7fff);
  assert.equal(r16(cs, o + 8), 0x78ff, 'writable devctl fields');
  let flrs = 0;
  cs.events.onFlr = () => {
    flrs++;
    cs.reset();
  };
  w16(cs, o + 8, 0x8000 | 0x000f);
  assert.equal(flrs, 1);
  assert.equal(r16(cs, o + 8), 0x2810, 'reset by the handler; FLR bit reads 0');
  w8(cs, o + 9, 0x80);
  assert.equal(flrs, 2);
  assert.equal(r16(cs, o + 8) & 0x8000, 0);

  cs.poke(o + 0x0a, new Uint8Array([0x3f, 0]));
  w16(cs, o + 0x0a, 0x0005);
  assert.equal(r16(cs, o + 0x0a), 0x003a, 'devsta RW1C bits 0-3, others RO');
  w16(cs, o + 0x10, 0xffff);
  assert.equal(r16(cs, o + 0x10), 0x00cb, 'link control writable subset');

  const noflr = make({ size: 4096 });
  const o2 = noflr.addPciExpress({ deviceType: 'rc-integrated' });
  let f = 0;
  noflr.events.onFlr = () => f++;
  w16(noflr, o2 + 8, 0x8000);
  assert.equal(f, 0, 'FLR not advertised -> bit is RO 0');
  assert.equal(r16(noflr, o2 + 2), 0x0092, 'RCiEP type 9');
  assert.equal(r32(noflr, o2 + 0x0c), 0, 'no link registers for RCiEP');
  const leg = make({ size: 4096 });
  const o3 = leg.addPciExpress({ deviceType: 'legacy-endpoint' });
  assert.equal(r16(leg, o3 + 2), 0x0012, 'legacy endpoint type 1');
  throwsCode(() => make().addPciExpress({ maxPayload: 100 }), 'VFU_CONFIG_BAD_ARG');
});
