/**
 * The data structures an NVMe controller returns: Identify Controller, Identify Namespace,
 * the active namespace list, namespace identification descriptors, and the log pages
 * (error information, SMART / health, firmware slot information).
 */
import type { Namespace } from './namespace.js';

export interface ControllerIdentity {
  vendorId: number;
  subsystemVendorId: number;
  serial: string;
  model: string;
  firmware: string;
  cntlid: number;
  /** max data transfer size as a power of two of the minimum page size */
  mdts: number;
  maxQueueEntries: number;
  namespaces: number;
  subnqn: string;
  oacs: number;
}

function ascii(buf: Uint8Array, off: number, len: number, s: string): void {
  for (let i = 0; i < len; i++) buf[off + i] = i < s.length ? s.charCodeAt(i) & 0x7f : 0x20;
}

export function identifyController(c: ControllerIdentity): Uint8Array {
  const b = new Uint8Array(4096);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, c.vendorId, true);
  dv.setUint16(2, c.subsystemVendorId, true);
  ascii(b, 4, 20, c.serial);
  ascii(b, 24, 40, c.model);
  ascii(b, 64, 8, c.firmware);
  b[72] = 6; // RAB
  b[73] = 0x4e; // IEEE OUI (arbitrary)
  b[74] = 0x58;
  b[75] = 0x00;
  b[77] = c.mdts;
  dv.setUint16(78, c.cntlid, true);
  dv.setUint32(80, 0x00010400, true); // VER 1.4
  dv.setUint32(92, 1 << 8, true); // OAES: namespace attribute notices
  b[111] = 1; // CNTRLTYPE: I/O controller
  dv.setUint16(256, c.oacs, true);
  b[258] = 3; // ACL: 4 concurrent aborts
  b[259] = 3; // AERL: 4 outstanding AERs
  b[260] = 0x03; // FRMW: 1 slot, slot 1 read-only
  b[261] = 0x04; // LPA: extended data for Get Log Page
  b[262] = 63; // ELPE: 64 error log entries
  b[263] = 0; // NPSS: one power state
  dv.setUint16(266, 343, true); // WCTEMP 70 C
  dv.setUint16(268, 373, true); // CCTEMP 100 C
  b[512] = 0x66; // SQES 64 bytes
  b[513] = 0x44; // CQES 16 bytes
  dv.setUint16(514, c.maxQueueEntries, true); // MAXCMD
  dv.setUint32(516, c.namespaces, true); // NN
  dv.setUint16(520, 0x0c, true); // ONCS: Dataset Management, Write Zeroes
  b[525] = 0x07; // VWC present; Flush with NSID FFFFFFFFh supported
  dv.setUint32(536, 0x1, true); // SGLS: SGLs supported (no alignment), data blocks / segments
  ascii(b, 768, 256, '');
  b.fill(0, 768, 1024);
  for (let i = 0; i < c.subnqn.length && i < 255; i++) b[768 + i] = c.subnqn.charCodeAt(i);
  // power state 0: 25 W, entry/exit latency 0
  dv.setUint16(2048, 2500, true);
  return b;
}

export function identifyNamespace(ns: Namespace): Uint8Array {
  const b = new Uint8Array(4096);
  const dv = new DataView(b.buffer);
  const n = BigInt(ns.blocks);
  dv.setBigUint64(0, n, true); // NSZE
  dv.setBigUint64(8, n, true); // NCAP
  dv.setBigUint64(16, n, true); // NUSE
  b[24] = 0; // NSFEAT
  b[25] = 0; // NLBAF: one format
  b[26] = 0; // FLBAS: format 0, no metadata
  b[33] = 0x09; // DLFEAT: deallocated blocks read as zeroes; Write Zeroes may deallocate
  b.set(ns.nguid, 104);
  b.set(ns.eui64, 120);
  dv.setUint32(128, ns.lbaShift << 16, true); // LBAF0: LBADS, no metadata, best performance
  return b;
}

export function activeNamespaceList(nsids: number[], after: number): Uint8Array {
  const b = new Uint8Array(4096);
  const dv = new DataView(b.buffer);
  let i = 0;
  for (const id of nsids.filter((x) => x > after).sort((a, c) => a - c)) {
    if (i >= 1024) break;
    dv.setUint32(4 * i++, id, true);
  }
  return b;
}

export function namespaceDescriptors(ns: Namespace): Uint8Array {
  const b = new Uint8Array(4096);
  let p = 0;
  const put = (type: number, data: Uint8Array): void => {
    b[p] = type;
    b[p + 1] = data.length;
    b.set(data, p + 4);
    p += 4 + data.length;
  };
  put(1, ns.eui64);
  put(2, ns.nguid);
  put(3, ns.uuid);
  return b;
}

export interface ErrorLogEntry {
  count: number;
  sqid: number;
  cid: number;
  status: number;
  lba: bigint;
  nsid: number;
}

export function errorLog(entries: ErrorLogEntry[]): Uint8Array {
  const b = new Uint8Array(64 * 64);
  const dv = new DataView(b.buffer);
  entries.slice(-64).reverse().forEach((e, i) => {
    const o = i * 64;
    dv.setBigUint64(o, BigInt(e.count), true);
    dv.setUint16(o + 8, e.sqid, true);
    dv.setUint16(o + 10, e.cid, true);
    dv.setUint16(o + 12, e.status << 1, true);
    dv.setUint16(o + 14, 0xffff, true); // parameter error location: n/a
    dv.setBigUint64(o + 16, e.lba, true);
    dv.setUint32(o + 24, e.nsid, true);
  });
  return b;
}

export interface SmartCounters {
  criticalWarning: number;
  temperature: number;
  bytesRead: number;
  bytesWritten: number;
  readCommands: number;
  writeCommands: number;
  powerCycles: number;
  powerOnSeconds: number;
  unsafeShutdowns: number;
  errors: number;
}

export function smartLog(s: SmartCounters): Uint8Array {
  const b = new Uint8Array(512);
  const dv = new DataView(b.buffer);
  b[0] = s.criticalWarning;
  dv.setUint16(1, s.temperature, true);
  b[3] = 100; // available spare
  b[4] = 10; // threshold
  b[5] = 0; // percentage used
  const units = (bytes: number): bigint => BigInt(Math.ceil(bytes / 512 / 1000)); // thousands of 512-byte units
  dv.setBigUint64(32, units(s.bytesRead), true);
  dv.setBigUint64(48, units(s.bytesWritten), true);
  dv.setBigUint64(64, BigInt(s.readCommands), true);
  dv.setBigUint64(80, BigInt(s.writeCommands), true);
  dv.setBigUint64(112, BigInt(s.powerCycles), true);
  dv.setBigUint64(128, BigInt(Math.floor(s.powerOnSeconds / 3600)), true);
  dv.setBigUint64(144, BigInt(s.unsafeShutdowns), true);
  dv.setBigUint64(176, BigInt(s.errors), true);
  dv.setUint16(200, s.temperature, true); // temperature sensor 1
  return b;
}

export function firmwareSlotLog(firmware: string): Uint8Array {
  const b = new Uint8Array(512);
  b[0] = 0x01; // active slot 1
  ascii(b, 8, 8, firmware);
  return b;
}
