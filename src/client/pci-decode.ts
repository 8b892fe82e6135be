/**
 * Decodes a raw PCI config space (as read from a server) into IDs, BARs and capabilities,
 * for `vfio-user info` and for tests. Pure functions; every pointer is bounds-checked and
 * capability loops are cut.
 */

export interface DecodedCapability {
  offset: number;
  id: number;
  name: string;
  extended: boolean;
  /** decoded fields worth showing */
  fields: Record<string, string | number | boolean>;
}

export interface DecodedConfig {
  vendorId: number;
  deviceId: number;
  command: number;
  status: number;
  revision: number;
  classCode: number;
  headerType: number;
  subsystemVendorId: number;
  subsystemId: number;
  interruptPin: number;
  interruptLine: number;
  bars: { index: number; raw: number; kind: 'mem32' | 'mem64' | 'io' | 'none'; prefetchable: boolean }[];
  romRaw: number;
  capabilities: DecodedCapability[];
}

const CAP_NAMES: Record<number, string> = {
  0x01: 'Power Management',
  0x05: 'MSI',
  0x09: 'Vendor Specific',
  0x10: 'Express',
  0x11: 'MSI-X',
  0x12: 'SATA',
  0x13: 'PCI Advanced Features',
};
const EXT_CAP_NAMES: Record<number, string> = {
  0x0001: 'Advanced Error Reporting',
  0x0003: 'Device Serial Number',
  0x000b: 'Vendor Specific Information',
  0x0010: 'SR-IOV',
};

function u8(b: Uint8Array, o: number): number {
  return b[o] ?? 0; // past the end of a short blob: reads as 0 (decodeConfig is lenient)
}
function u16(b: Uint8Array, o: number): number {
  return u8(b, o) | (u8(b, o + 1) << 8);
}
function u32(b: Uint8Array, o: number): number {
  return (u16(b, o) | (u16(b, o + 2) << 16)) >>> 0;
}

export function decodeConfig(cfg: Uint8Array): DecodedConfig {
  const bars: DecodedConfig['bars'] = [];
  for (let i = 0; i < 6; i++) {
    const raw = u32(cfg, 0x10 + i * 4);
    if (raw === 0) {
      bars.push({ index: i, raw, kind: 'none', prefetchable: false });
      continue;
    }
    if (raw & 1) {
      bars.push({ index: i, raw, kind: 'io', prefetchable: false });
      continue;
    }
    const type = (raw >> 1) & 3;
    bars.push({ index: i, raw, kind: type === 2 ? 'mem64' : 'mem32', prefetchable: (raw & 8) !== 0 });
    if (type === 2) {
      i++;
      if (i < 6) bars.push({ index: i, raw: u32(cfg, 0x10 + i * 4), kind: 'none', prefetchable: false });
    }
  }
  const caps: DecodedCapability[] = [];
  const status = u16(cfg, 6);
  if (status & 0x10) {
    const seen = new Set<number>();
    let p = u8(cfg, 0x34) & 0xfc;
    while (p >= 0x40 && p + 2 <= Math.min(cfg.length, 256) && !seen.has(p) && caps.length < 48) {
      seen.add(p);
      const id = u8(cfg, p);
      caps.push({ offset: p, id, name: CAP_NAMES[id] ?? `Capability 0x${id.toString(16)}`, extended: false, fields: capFields(cfg, p, id) });
      p = u8(cfg, p + 1) & 0xfc;
    }
  }
  if (cfg.length > 256) {
    const seen = new Set<number>();
    let p = 0x100;
    while (p >= 0x100 && p + 4 <= cfg.length && !seen.has(p) && caps.length < 96) {
      seen.add(p);
      const hdr = u32(cfg, p);
      if (hdr === 0 || hdr === 0xffffffff) break;
      const id = hdr & 0xffff;
      const fields: Record<string, string | number | boolean> = { version: (hdr >>> 16) & 0xf };
      if (id === 0x0003) fields.serial = (BigInt(u32(cfg, p + 8)) << 32n | BigInt(u32(cfg, p + 4))).toString(16).padStart(16, '0');
      if (id === 0x000b) {
        const h = u32(cfg, p + 4);
        fields.vsecId = h & 0xffff;
        fields.vsecRev = (h >>> 16) & 0xf;
        fields.length = h >>> 20;
      }
      caps.push({ offset: p, id, name: EXT_CAP_NAMES[id] ?? `Extended Capability 0x${id.toString(16)}`, extended: true, fields });
      p = (hdr >>> 20) & 0xffc;
    }
  }
  return {
    vendorId: u16(cfg, 0),
    deviceId: u16(cfg, 2),
    command: u16(cfg, 4),
    status,
    revision: u8(cfg, 8),
    classCode: (u8(cfg, 0xb) << 16) | (u8(cfg, 0xa) << 8) | u8(cfg, 9),
    headerType: u8(cfg, 0xe),
    subsystemVendorId: u16(cfg, 0x2c),
    subsystemId: u16(cfg, 0x2e),
    interruptPin: u8(cfg, 0x3d),
    interruptLine: u8(cfg, 0x3c),
    bars,
    romRaw: u32(cfg, 0x30),
    capabilities: caps,
  };
}

function capFields(cfg: Uint8Array, p: number, id: number): Record<string, string | number | boolean> {
  switch (id) {
    case 0x01: {
      const pmc = u16(cfg, p + 2);
      const pmcsr = u16(cfg, p + 4);
      return { version: pmc & 7, d1: (pmc & 0x200) !== 0, d2: (pmc & 0x400) !== 0, powerState: `D${pmcsr & 3}`, noSoftReset: (pmcsr & 8) !== 0 };
    }
    case 0x05: {
      const ctl = u16(cfg, p + 2);
      return {
        enabled: (ctl & 1) !== 0,
        count: `${1 << ((ctl >> 4) & 7)}/${1 << ((ctl >> 1) & 7)}`,
        address64: (ctl & 0x80) !== 0,
        perVectorMask: (ctl & 0x100) !== 0,
      };
    }
    case 0x11: {
      const ctl = u16(cfg, p + 2);
      const table = u32(cfg, p + 4);
      const pba = u32(cfg, p + 8);
      return {
        enabled: (ctl & 0x8000) !== 0,
        functionMask: (ctl & 0x4000) !== 0,
        count: (ctl & 0x7ff) + 1,
        table: `BAR=${table & 7} offset=0x${((table & ~7) >>> 0).toString(16).padStart(8, '0')}`,
        pba: `BAR=${pba & 7} offset=0x${((pba & ~7) >>> 0).toString(16).padStart(8, '0')}`,
      };
    }
    case 0x10: {
      const caps = u16(cfg, p + 2);
      const devcap = u32(cfg, p + 4);
      const types: Record<number, string> = { 0: 'Endpoint', 1: 'Legacy Endpoint', 9: 'Root Complex Integrated Endpoint' };
      return {
        version: caps & 0xf,
        type: types[(caps >> 4) & 0xf] ?? `type ${(caps >> 4) & 0xf}`,
        maxPayload: 128 << (devcap & 7),
        flr: (devcap & (1 << 28)) !== 0,
      };
    }
    case 0x09:
      return { length: u8(cfg, p + 2) };
    default:
      return {};
  }
}
