/**
 * Field-by-field validation of the NVMe controller's migration state. A stream that passes
 * the CRC may still have been crafted: every value the controller would use is checked for
 * type and range here, before anything is applied.
 */
import { NvmeStatusError, Status } from './constants.js';

export function bad(why: string): never {
  throw new NvmeStatusError(Status.INTERNAL_ERROR, `nvme state: ${why}`);
}

/** A JSON document held in a string field. */
export function json(text: unknown, what: string): unknown {
  if (typeof text !== 'string') bad(`${what} is not a string`);
  try {
    return JSON.parse(text);
  } catch {
    return bad(`${what} is not valid JSON`);
  }
}

export function uint(v: unknown, max: number, what: string): number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= max ? v : bad(`${what}: bad value ${String(v)}`);
}

export function u32(v: unknown, what: string): number {
  return uint(v, 0xffffffff, what);
}

function bool(v: unknown, what: string): boolean {
  return typeof v === 'boolean' ? v : bad(`${what} must be a boolean`);
}

function record(v: unknown, what: string): Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : bad(`${what} must be an object`);
}

function list(v: unknown, max: number, what: string): unknown[] {
  if (!Array.isArray(v)) bad(`${what} must be an array`);
  if (v.length > max) bad(`${what} has ${v.length} entries (at most ${max})`);
  return v;
}

export interface Backlogged {
  sqid: number;
  cid: number;
  status: number;
  dw0: number;
}

/** Completions waiting for room in a CQ: at most one per slot of the queues feeding it. */
export function backlog(v: unknown, maxQueues: number, what: string): Backlogged[] {
  return list(v, (maxQueues + 1) * 65536, what).map((e, i) => {
    const r = record(e, `${what}[${i}]`);
    return {
      sqid: uint(r.sqid, maxQueues, `${what}[${i}].sqid`),
      cid: uint(r.cid, 0xffff, `${what}[${i}].cid`),
      status: uint(r.status, 0x7fff, `${what}[${i}].status`),
      dw0: u32(r.dw0, `${what}[${i}].dw0`),
    };
  });
}

export interface FeatureValues {
  arbitration: number;
  powerManagement: number;
  tempOver: number;
  tempUnder: number;
  errorRecovery: number;
  vwc: boolean;
  nsqa: number;
  ncqa: number;
  queuesSet: boolean;
  intCoalescing: number;
  ivConfig: Record<string, number>;
  asyncEventConfig: number;
  writeAtomicity: number;
}

/** Every feature present, typed and in range (queue counts within what this controller has). */
export function features(v: unknown, maxIoQueues: number): FeatureValues {
  const r = record(v, 'features');
  const ivConfig: Record<string, number> = {};
  const iv = record(r.ivConfig, 'features.ivConfig');
  const keys = Object.keys(iv);
  if (keys.length > maxIoQueues + 1) bad('features.ivConfig has too many vectors');
  for (const k of keys) {
    if (!/^(0|[1-9][0-9]{0,4})$/.test(k) || Number(k) > 2047) bad(`features.ivConfig: bad vector ${k}`);
    ivConfig[k] = u32(iv[k], `features.ivConfig[${k}]`);
  }
  return {
    arbitration: u32(r.arbitration, 'features.arbitration'),
    powerManagement: u32(r.powerManagement, 'features.powerManagement'),
    tempOver: uint(r.tempOver, 0xffff, 'features.tempOver'),
    tempUnder: uint(r.tempUnder, 0xffff, 'features.tempUnder'),
    errorRecovery: u32(r.errorRecovery, 'features.errorRecovery'),
    vwc: bool(r.vwc, 'features.vwc'),
    nsqa: uint(r.nsqa, maxIoQueues - 1, 'features.nsqa'),
    ncqa: uint(r.ncqa, maxIoQueues - 1, 'features.ncqa'),
    queuesSet: bool(r.queuesSet, 'features.queuesSet'),
    intCoalescing: uint(r.intCoalescing, 0xffff, 'features.intCoalescing'),
    ivConfig,
    asyncEventConfig: u32(r.asyncEventConfig, 'features.asyncEventConfig'),
    writeAtomicity: uint(r.writeAtomicity, 1, 'features.writeAtomicity'),
  };
}

export interface AsyncEvent {
  type: number;
  info: number;
  log: number;
}

/** Asynchronous events not yet reported (a handful at most: types 0-7). */
export function events(v: unknown): AsyncEvent[] {
  return list(v, 64, 'events').map((e, i) => {
    const r = record(e, `events[${i}]`);
    return { type: uint(r.type, 7, `events[${i}].type`), info: uint(r.info, 0xff, `events[${i}].info`), log: uint(r.log, 0xff, `events[${i}].log`) };
  });
}

/** Outstanding Asynchronous Event Request command ids (AERL + 1 at most). */
export function aers(v: unknown, max: number): number[] {
  return list(v, max, 'aers').map((c, i) => uint(c, 0xffff, `aers[${i}]`));
}

export interface SmartCounters {
  bytesRead: number;
  bytesWritten: number;
  readCommands: number;
  writeCommands: number;
}

export function smart(v: unknown): SmartCounters {
  const r = record(v, 'smart');
  const n = (k: keyof SmartCounters): number => uint(r[k], Number.MAX_SAFE_INTEGER, `smart.${k}`);
  return { bytesRead: n('bytesRead'), bytesWritten: n('bytesWritten'), readCommands: n('readCommands'), writeCommands: n('writeCommands') };
}

/** A hex string of exactly `bytes` bytes, or '' when there is none. */
export function hexBytes(v: unknown, bytes: number, what: string): Uint8Array | undefined {
  if (v === '') return undefined;
  if (typeof v !== 'string' || v.length !== bytes * 2 || !/^[0-9a-f]*$/.test(v)) bad(`${what} must be ${bytes} bytes of hex`);
  return Uint8Array.from(Buffer.from(v, 'hex'));
}
