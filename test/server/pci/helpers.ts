/* Shared test helpers: raw little-endian accessors and a capability-chain walker that only
 * looks at bytes read through the public read() API (as a guest would). */
import assert from 'node:assert/strict';
import { ConfigSpace, ConfigSpaceError, type ConfigSpaceOptions } from '../../../src/server/pci/index.js';
import { byteAt, le16, le32 } from '../../../src/bytes.js';

export const BASE: ConfigSpaceOptions = { vendorId: 0x1af4, deviceId: 0x10ff, classCode: 0x010802, revision: 3 };

export function make(extra: Partial<ConfigSpaceOptions> = {}): ConfigSpace {
  return new ConfigSpace({ ...BASE, ...extra });
}

export function r8(cs: ConfigSpace, o: number): number {
  return byteAt(cs.read(o, 1), 0);
}
export function r16(cs: ConfigSpace, o: number): number {
  return le16(cs.read(o, 2), 0);
}
export function r32(cs: ConfigSpace, o: number): number {
  return le32(cs.read(o, 4), 0);
}
export function le(v: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (v >>> (8 * i)) & 0xff;
  return b;
}
export function w8(cs: ConfigSpace, o: number, v: number): void {
  cs.write(o, le(v, 1));
}
export function w16(cs: ConfigSpace, o: number, v: number): void {
  cs.write(o, le(v, 2));
}
export function w32(cs: ConfigSpace, o: number, v: number): void {
  cs.write(o, le(v, 4));
}

export interface WalkedCap {
  id: number;
  offset: number;
}

/** Walks the standard list from 0x34 like Linux's pci_find_capability (with a loop guard). */
export function walkStd(cs: ConfigSpace): WalkedCap[] {
  const out: WalkedCap[] = [];
  if ((r16(cs, 0x06) & 0x10) === 0) return out;
  let p = r8(cs, 0x34) & ~3;
  let ttl = 48;
  while (p >= 0x40 && ttl-- > 0) {
    const id = r8(cs, p);
    if (id === 0xff) break;
    out.push({ id, offset: p });
    p = r8(cs, p + 1) & ~3;
  }
  assert.ok(ttl > 0, 'capability list loops');
  return out;
}

/** Walks the extended list from 0x100 like Linux's pci_find_next_ext_capability. */
export function walkExt(cs: ConfigSpace): (WalkedCap & { version: number })[] {
  const out: (WalkedCap & { version: number })[] = [];
  if (cs.size < 4096) return out;
  let p = 0x100;
  let ttl = (4096 - 256) / 8;
  let hdr = r32(cs, p);
  if (hdr === 0 || hdr === 0xffffffff) return out;
  while (ttl-- > 0) {
    out.push({ id: hdr & 0xffff, version: (hdr >>> 16) & 0xf, offset: p });
    p = hdr >>> 20;
    if (p < 0x100) break;
    hdr = r32(cs, p);
  }
  assert.ok(ttl > 0, 'extended capability list loops');
  return out;
}

export function throwsCode(fn: () => unknown, code: string): void {
  assert.throws(fn, (e: unknown) => e instanceof ConfigSpaceError && e.code === code);
}
