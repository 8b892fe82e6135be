import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigSpace } from '../../../src/server/pci/index.js';
import { make, r8, r16, r32, w8, w16, w32, throwsCode } from './helpers.js';

test('header defaults', () => {
  const cs = new ConfigSpace({
    vendorId: 0x8086,
    deviceId: 0x1234,
    subsystemVendorId: 0x1af4,
    subsystemId: 0x1100,
    classCode: 0x020000,
    revision: 0x42,
    interruptPin: 2,
  });
  assert.equal(cs.size, 256);
  assert.equal(r16(cs, 0x00), 0x8086);
  assert.equal(r16(cs, 0x02), 0x1234);
  assert.equal(r16(cs, 0x04), 0);
  assert.equal(r16(cs, 0x06), 0, 'no caps -> no cap-list bit');
  assert.equal(r8(cs, 0x08), 0x42);
  assert.equal(r32(cs, 0x08) >>> 8, 0x020000);
  assert.equal(r8(cs, 0x0e), 0, 'type-0 single function');
  assert.equal(r16(cs, 0x2c), 0x1af4);
  assert.equal(r16(cs, 0x2e), 0x1100);
  assert.equal(r8(cs, 0x34), 0);
  assert.equal(r8(cs, 0x3d), 2);
  for (let i = 0; i < 6; i++) assert.equal(r32(cs, 0x10 + 4 * i), 0);
  assert.equal(r32(cs, 0x30), 0);
  assert.equal(cs.readUint(0, 4), 0x12348086);
  assert.equal(cs.readUint(2, 2), 0x1234);
  assert.equal(cs.readUint(0x3d, 1), 2);
  assert.equal(make().read(0x3d, 1)[0], 1, 'default pin INTA');
  assert.equal(make({ size: 4096 }).size, 4096);
});

test('constructor validates options', () => {
  throwsCode(() => make({ vendorId: 0x10000 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => make({ vendorId: 0xffff }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => make({ classCode: 0x1000000 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => make({ size: 512 as 256 }), 'VFU_CONFIG_BAD_ARG');
  throwsCode(() => make({ interruptPin: 5 as 1 }), 'VFU_CONFIG_BAD_ARG');
});

test('read-only header fields ignore writes', () => {
  const cs = make({ subsystemVendorId: 0x1111, subsystemId: 0x2222 });
  const before = cs.read(0, 64);
  for (const o of [0x00, 0x08, 0x0c, 0x28, 0x2c, 0x34, 0x38, 0x3c]) w32(cs, o, 0xffffffff);
  const after = cs.read(0, 64);
  const rw = new Set([0x04, 0x05, 0x0c, 0x0d, 0x3c]); // command, cache line, latency, int line
  for (let i = 0; i < 64; i++) if (!rw.has(i)) assert.equal(after[i], before[i], `byte 0x${i.toString(16)}`);
  assert.equal(r8(cs, 0x0c), 0xff, 'cache line size RW');
  assert.equal(r8(cs, 0x0d), 0xff, 'latency timer RW on conventional PCI');
  assert.equal(r8(cs, 0x3c), 0xff, 'interrupt line RW');
  assert.equal(r8(cs, 0x3d), 1, 'interrupt pin RO');
  assert.equal(r8(cs, 0x0e), 0);
  assert.equal(r8(cs, 0x0f), 0, 'BIST RO 0');
  const pcie = make({ size: 4096 });
  w8(pcie, 0x0d, 0x40);
  assert.equal(r8(pcie, 0x0d), 0, 'latency timer hardwired 0 on PCIe');
});

test('command register: implemented bits only, events', () => {
  const cs = make();
  const cmds: [number, number][] = [];
  const intx: boolean[] = [];
  cs.events.onCommand = (v, o) => cmds.push([v, o]);
  cs.events.onIntxDisable = (d) => intx.push(d);
  w16(cs, 0x04, 0xffff);
  assert.equal(r16(cs, 0x04), 0x0547, 'IO|MEM|MASTER|PARITY|SERR|INTX_DISABLE');
  assert.deepEqual(cmds, [[0x0547, 0]]);
  assert.deepEqual(intx, [true]);
  w16(cs, 0x04, 0x0547);
  assert.equal(cmds.length, 1, 'no event without change');
  w8(cs, 0x05, 0x00); // byte write to the high half
  assert.equal(r16(cs, 0x04), 0x0047);
  assert.deepEqual(cmds[1], [0x0047, 0x0547]);
  assert.deepEqual(intx, [true, false]);
  assert.equal(cs.command(), 0x0047);
});

test('status register: cap-list RO, RW1C error bits, device-driven interrupt status', () => {
  const cs = make();
  cs.addPowerManagement();
  assert.equal(r16(cs, 0x06) & 0x10, 0x10, 'cap list bit');
  // device raises error bits (bypassing masks)
  cs.poke(0x06, new Uint8Array([0x10, 0xf9]));
  assert.equal(r16(cs, 0x06), 0xf910);
  w16(cs, 0x06, 0x0000);
  assert.equal(r16(cs, 0x06), 0xf910, 'writing 0 clears nothing');
  w16(cs, 0x06, 0x2000 | 0x0010 | 0x0008);
  assert.equal(r16(cs, 0x06), 0xd910, 'only received master abort cleared; cap bit stays');
  // one 32-bit write covering command and status: each byte follows its own rule
  w32(cs, 0x04, 0x8100_0006);
  assert.equal(r16(cs, 0x04), 0x0006);
  assert.equal(r16(cs, 0x06), 0x5810);
  cs.setInterruptStatus(true);
  assert.equal(r16(cs, 0x06) & 0x08, 0x08);
  w16(cs, 0x06, 0xffff);
  assert.equal(r16(cs, 0x06), 0x0018, 'all RW1C cleared, interrupt status + cap list remain');
  cs.setInterruptStatus(false);
  assert.equal(r16(cs, 0x06), 0x0010);
  w16(cs, 0x06, 0x0008);
  assert.equal(r16(cs, 0x06), 0x0010, 'interrupt status not writable');
});

test('unaligned and spanning accesses', () => {
  const cs = make({ subsystemVendorId: 0xabcd, subsystemId: 0x1234 });
  assert.deepEqual([...cs.read(0x01, 3)], [0x1a, 0xff, 0x10]);
  assert.equal(cs.readUint(0x2d, 2), 0x34ab);
  assert.equal(cs.readUint(0x2d, 4), (0x12 << 16) | (0x34 << 8) | 0xab | (0x00 << 24));
  // 3-byte write at 0x3b..0x3d: reserved 0x3b RO, line RW, pin RO
  cs.write(0x3b, new Uint8Array([0xaa, 0x0b, 0x04]));
  assert.deepEqual([...cs.read(0x3b, 3)], [0x00, 0x0b, 0x01]);
  // 8-byte write across cache line, latency, header type, BIST, BAR0
  cs.write(0x0c, new Uint8Array([0x10, 0x20, 0x80, 0xff, 1, 2, 3, 4]));
  assert.deepEqual([...cs.read(0x0c, 8)], [0x10, 0x20, 0, 0, 0, 0, 0, 0]);
  // the whole space in one go
  assert.equal(cs.read(0, 256).length, 256);
  cs.write(0, new Uint8Array(256).fill(0xff));
  assert.equal(r16(cs, 0x00), 0x1af4);
  assert.equal(cs.read(0, 0).length, 0);
  cs.write(256, new Uint8Array(0));
});

test('out-of-range accesses throw ConfigSpaceError VFU_CONFIG_RANGE', () => {
  const cs = make();
  throwsCode(() => cs.read(256, 1), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.read(255, 2), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.read(-1, 1), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.read(1.5, 1), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.read(0, -1), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.read(Number.NaN, 1), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.readUint(254, 4), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.readUint(0, 3 as 4), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.write(253, new Uint8Array(4)), 'VFU_CONFIG_RANGE');
  throwsCode(() => cs.write(0x1000, new Uint8Array(1)), 'VFU_CONFIG_RANGE');
  throwsCode(() => make({ size: 4096 }).read(4095, 2), 'VFU_CONFIG_RANGE');
  assert.equal(make({ size: 4096 }).read(4095, 1).length, 1);
});
