/**
 * NVMe admin commands: Identify, Get Log Page, Set/Get Features, queue creation and
 * deletion, Abort, Keep Alive, Doorbell Buffer Config, and Asynchronous Event Requests with
 * the events they complete with.
 */
import {
  CC, AdminOp, Status, DNR, Feature, LogPage, Identify, SQE_SIZE, NVME_VENDOR,
} from './constants.js';
import { u64 } from './dataptr.js';
import { toGuest } from '../guest.js';
import * as Id from './identify.js';
import { MQES } from './registers.js';
import { MDTS, defaultFeatures, newCq, type NvmeCore, type SubQueue, type Result } from './core.js';
import { post, flushIrqs, updateIntx, dataSegments } from './queues.js';
import { doorbellBufferConfig, shadowNewQueue } from './doorbells.js';

/** the temperature the SMART log reports (Kelvin) */
const TEMPERATURE = 310;

export async function admin(c: NvmeCore, sq: SubQueue, sqe: Uint8Array): Promise<Result | undefined> {
  const dv = new DataView(sqe.buffer, sqe.byteOffset, SQE_SIZE);
  const cdw10 = dv.getUint32(40, true);
  const cdw11 = dv.getUint32(44, true);
  const nsid = dv.getUint32(4, true);
  switch (sqe[0]) {
    case AdminOp.IDENTIFY:
      return identify(c, sq, sqe, nsid, cdw10);
    case AdminOp.GET_LOG_PAGE:
      return getLogPage(c, sq, sqe, cdw10, dv.getUint32(48, true), dv.getUint32(52, true), cdw11);
    case AdminOp.SET_FEATURES:
      return setFeatures(c, cdw10, cdw11);
    case AdminOp.GET_FEATURES:
      return getFeatures(c, cdw10, cdw11);
    case AdminOp.CREATE_CQ:
      return createCq(c, u64(sqe, 24), cdw10, cdw11);
    case AdminOp.CREATE_SQ:
      return createSq(c, u64(sqe, 24), cdw10, cdw11);
    case AdminOp.DELETE_SQ:
      return deleteSq(c, cdw10 & 0xffff);
    case AdminOp.DELETE_CQ:
      return deleteCq(c, cdw10 & 0xffff);
    case AdminOp.ABORT:
      return { status: Status.SUCCESS, dw0: 1 }; // commands complete at once: nothing to abort
    case AdminOp.ASYNC_EVENT: {
      if (c.aers.length >= 4) return { status: Status.AER_LIMIT_EXCEEDED | DNR };
      c.aers.push(dv.getUint16(2, true));
      queueMicrotask(() => deliverEvents(c));
      return undefined; // completes when an event happens
    }
    case AdminOp.KEEP_ALIVE:
      return { status: Status.SUCCESS };
    case AdminOp.DOORBELL_BUFFER_CONFIG:
      return c.shadowDoorbells ? doorbellBufferConfig(c, sqe) : { status: Status.INVALID_OPCODE | DNR };
    default:
      return { status: Status.INVALID_OPCODE | DNR };
  }
}

async function identify(c: NvmeCore, sq: SubQueue, sqe: Uint8Array, nsid: number, cdw10: number): Promise<Result> {
  const cns = cdw10 & 0xff;
  let data: Uint8Array;
  switch (cns) {
    case Identify.CONTROLLER:
      data = Id.identifyController({
        vendorId: NVME_VENDOR,
        subsystemVendorId: NVME_VENDOR,
        serial: c.serial,
        model: 'vfio-user NVMe (Node.js)',
        firmware: '0.1.0',
        cntlid: 1,
        mdts: MDTS,
        maxQueueEntries: MQES + 1,
        namespaces: Math.max(0, ...c.namespaces.keys()),
        subnqn: `nqn.2024-01.io.github.vfio-user:nvme:${c.serial}`,
        oacs: c.shadowDoorbells ? 1 << 8 : 0, // Doorbell Buffer Config
      });
      break;
    case Identify.NAMESPACE: {
      const ns = c.namespaces.get(nsid);
      if (!ns) {
        if (nsid === 0 || nsid === 0xffffffff) return { status: Status.INVALID_NAMESPACE | DNR };
        data = new Uint8Array(4096); // an inactive namespace: zeroes
      } else data = Id.identifyNamespace(ns);
      break;
    }
    case Identify.ACTIVE_NS_LIST:
      if (nsid >= 0xfffffffe) return { status: Status.INVALID_NAMESPACE | DNR };
      data = Id.activeNamespaceList([...c.namespaces.keys()], nsid);
      break;
    case Identify.NS_DESCRIPTORS: {
      const ns = c.namespaces.get(nsid);
      if (!ns) return { status: Status.INVALID_NAMESPACE | DNR };
      data = Id.namespaceDescriptors(ns);
      break;
    }
    default:
      return { status: Status.INVALID_FIELD | DNR };
  }
  await toGuest(c.dev.dma, await dataSegments(c, sq, sqe, 4096), data);
  return { status: Status.SUCCESS };
}

async function getLogPage(c: NvmeCore, sq: SubQueue, sqe: Uint8Array, cdw10: number, lpol: number, lpou: number, cdw11: number): Promise<Result> {
  const lid = cdw10 & 0xff;
  const rae = (cdw10 >> 15) & 1;
  const numd = (((cdw10 >>> 16) | ((cdw11 & 0xffff) << 16)) >>> 0) + 1; // unsigned: NUMDU can set bit 31
  const len = numd * 4;
  const offset = lpol + lpou * 2 ** 32;
  if (offset % 4) return { status: Status.INVALID_FIELD | DNR };
  // a guest-chosen length: never larger than a transfer may be (MDTS)
  if (len > 4096 * 2 ** MDTS) return { status: Status.INVALID_FIELD | DNR };
  let page: Uint8Array;
  switch (lid) {
    case LogPage.ERROR:
      page = Id.errorLog(c.errors);
      if (!rae) c.maskedEventTypes &= ~1;
      break;
    case LogPage.SMART: {
      page = Id.smartLog({
        criticalWarning: criticalWarning(c),
        temperature: TEMPERATURE,
        ...c.smart,
        powerCycles: 1,
        powerOnSeconds: (Date.now() - c.started) / 1000,
        unsafeShutdowns: 0,
        errors: c.errorCount,
      });
      if (!rae) c.maskedEventTypes &= ~2;
      break;
    }
    case LogPage.FIRMWARE_SLOT:
      page = Id.firmwareSlotLog('0.1.0');
      break;
    default:
      return { status: Status.INVALID_LOG_PAGE | DNR };
  }
  if (offset > page.length) return { status: Status.INVALID_FIELD | DNR };
  const out = new Uint8Array(len);
  out.set(page.subarray(offset, offset + len));
  await toGuest(c.dev.dma, await dataSegments(c, sq, sqe, len), out);
  queueMicrotask(() => deliverEvents(c));
  return { status: Status.SUCCESS };
}

function criticalWarning(c: NvmeCore): number {
  const f = c.features;
  return TEMPERATURE >= f.tempOver || TEMPERATURE <= f.tempUnder ? 0x02 : 0;
}

function setFeatures(c: NvmeCore, cdw10: number, cdw11: number): Result {
  const fid = cdw10 & 0xff;
  if (cdw10 & (1 << 31)) return { status: Status.FEATURE_NOT_SAVEABLE | DNR };
  const f = c.features;
  switch (fid) {
    case Feature.ARBITRATION:
      f.arbitration = cdw11;
      return { status: Status.SUCCESS };
    case Feature.POWER_MANAGEMENT:
      if ((cdw11 & 0x1f) !== 0) return { status: Status.INVALID_FIELD | DNR }; // power state 0 only
      f.powerManagement = cdw11 & 0xff;
      return { status: Status.SUCCESS };
    case Feature.TEMPERATURE_THRESHOLD: {
      const sel = (cdw11 >> 16) & 0xf;
      const thsel = (cdw11 >> 20) & 3;
      if (sel !== 0 && sel !== 1 || thsel > 1) return { status: Status.INVALID_FIELD | DNR };
      if (sel === 0) {
        const before = criticalWarning(c);
        if (thsel === 0) f.tempOver = cdw11 & 0xffff;
        else f.tempUnder = cdw11 & 0xffff;
        if (!before && criticalWarning(c)) asyncEvent(c, 1, 0x01, LogPage.SMART); // SMART: temperature threshold
      }
      return { status: Status.SUCCESS };
    }
    case Feature.ERROR_RECOVERY:
      f.errorRecovery = cdw11 & 0x1ffff;
      return { status: Status.SUCCESS };
    case Feature.VOLATILE_WRITE_CACHE: {
      const was = f.vwc;
      f.vwc = (cdw11 & 1) === 1;
      if (was && !f.vwc) for (const ns of c.namespaces.values()) ns.backend.flush();
      return { status: Status.SUCCESS };
    }
    case Feature.NUMBER_OF_QUEUES: {
      const nsqr = cdw11 & 0xffff;
      const ncqr = cdw11 >>> 16;
      if (nsqr === 0xffff || ncqr === 0xffff) return { status: Status.INVALID_FIELD | DNR };
      if (f.queuesSet && c.sqs.length > 1) return { status: Status.COMMAND_SEQUENCE_ERROR | DNR };
      f.nsqa = Math.min(nsqr, c.maxIoQueues - 1);
      f.ncqa = Math.min(ncqr, c.maxIoQueues - 1);
      f.queuesSet = true;
      return { status: Status.SUCCESS, dw0: (f.nsqa | (f.ncqa << 16)) >>> 0 };
    }
    case Feature.INTERRUPT_COALESCING:
      f.intCoalescing = cdw11 & 0xffff;
      return { status: Status.SUCCESS };
    case Feature.INTERRUPT_VECTOR_CONFIG: {
      const iv = cdw11 & 0xffff;
      if (iv > c.maxIoQueues) return { status: Status.INVALID_FIELD | DNR };
      f.ivConfig[iv] = (cdw11 >> 16) & 1;
      return { status: Status.SUCCESS };
    }
    case Feature.WRITE_ATOMICITY:
      f.writeAtomicity = cdw11 & 1;
      return { status: Status.SUCCESS };
    case Feature.ASYNC_EVENT_CONFIG:
      f.asyncEventConfig = cdw11 & 0x1ff;
      return { status: Status.SUCCESS };
    default:
      return { status: Status.INVALID_FIELD | DNR };
  }
}

function getFeatures(c: NvmeCore, cdw10: number, cdw11: number): Result {
  const fid = cdw10 & 0xff;
  const sel = (cdw10 >> 8) & 7;
  const f = sel === 1 ? defaultFeatures(c.maxIoQueues) : c.features;
  if (sel === 3) {
    // supported capabilities: every feature here is changeable, none saveable
    return Object.values(Feature).includes(fid as never) ? { status: Status.SUCCESS, dw0: 0x4 } : { status: Status.INVALID_FIELD | DNR };
  }
  if (sel > 3) return { status: Status.INVALID_FIELD | DNR };
  switch (fid) {
    case Feature.ARBITRATION: return { status: Status.SUCCESS, dw0: f.arbitration };
    case Feature.POWER_MANAGEMENT: return { status: Status.SUCCESS, dw0: f.powerManagement };
    case Feature.TEMPERATURE_THRESHOLD: {
      const thsel = (cdw11 >> 20) & 3;
      const tsel = (cdw11 >> 16) & 0xf;
      if (tsel > 1 || thsel > 1) return { status: Status.INVALID_FIELD | DNR };
      const v = tsel === 1 ? (thsel === 0 ? 0xffff : 0) : thsel === 0 ? f.tempOver : f.tempUnder;
      return { status: Status.SUCCESS, dw0: v };
    }
    case Feature.ERROR_RECOVERY: return { status: Status.SUCCESS, dw0: f.errorRecovery };
    case Feature.VOLATILE_WRITE_CACHE: return { status: Status.SUCCESS, dw0: f.vwc ? 1 : 0 };
    case Feature.NUMBER_OF_QUEUES: return { status: Status.SUCCESS, dw0: (f.nsqa | (f.ncqa << 16)) >>> 0 };
    case Feature.INTERRUPT_COALESCING: return { status: Status.SUCCESS, dw0: f.intCoalescing };
    case Feature.INTERRUPT_VECTOR_CONFIG: {
      const iv = cdw11 & 0xffff;
      if (iv > c.maxIoQueues) return { status: Status.INVALID_FIELD | DNR };
      return { status: Status.SUCCESS, dw0: iv | ((f.ivConfig[iv] ?? 0) << 16) };
    }
    case Feature.WRITE_ATOMICITY: return { status: Status.SUCCESS, dw0: f.writeAtomicity };
    case Feature.ASYNC_EVENT_CONFIG: return { status: Status.SUCCESS, dw0: f.asyncEventConfig };
    default: return { status: Status.INVALID_FIELD | DNR };
  }
}

function createCq(c: NvmeCore, base: number, cdw10: number, cdw11: number): Result {
  const qid = cdw10 & 0xffff;
  const size = (cdw10 >>> 16) + 1;
  const pc = cdw11 & 1;
  const ien = (cdw11 & 2) !== 0;
  const iv = cdw11 >>> 16;
  if (qid === 0 || qid > c.maxIoQueues || c.cqs[qid]) return { status: Status.INVALID_QID | DNR };
  if (size < 2 || size > MQES + 1) return { status: Status.INVALID_QUEUE_SIZE | DNR };
  if (!pc) return { status: Status.INVALID_FIELD | DNR }; // CAP.CQR: physically contiguous only
  if (base % c.regs.pageSize) return { status: Status.INVALID_PRP_OFFSET | DNR };
  if (iv > c.maxIoQueues || (!c.msixEnabled() && iv !== 0 && ien)) return { status: Status.INVALID_INTERRUPT_VECTOR | DNR };
  if (((c.regs.cc >> CC.IOCQES_SHIFT) & 0xf) !== 4) return { status: Status.INVALID_FIELD | DNR };
  const cq = newCq(qid, base, size, iv, ien);
  c.cqs[qid] = cq;
  shadowNewQueue(c, cq, 2 * qid + 1);
  return { status: Status.SUCCESS };
}

function createSq(c: NvmeCore, base: number, cdw10: number, cdw11: number): Result {
  const qid = cdw10 & 0xffff;
  const size = (cdw10 >>> 16) + 1;
  const pc = cdw11 & 1;
  const cqid = cdw11 >>> 16;
  if (qid === 0 || qid > c.maxIoQueues || c.sqs[qid]) return { status: Status.INVALID_QID | DNR };
  if (cqid === 0 || !c.cqs[cqid]) return { status: Status.CQ_INVALID | DNR };
  if (size < 2 || size > MQES + 1) return { status: Status.INVALID_QUEUE_SIZE | DNR };
  if (!pc) return { status: Status.INVALID_FIELD | DNR };
  if (base % c.regs.pageSize) return { status: Status.INVALID_PRP_OFFSET | DNR };
  if (((c.regs.cc >> CC.IOSQES_SHIFT) & 0xf) !== 6) return { status: Status.INVALID_FIELD | DNR };
  const sq: SubQueue = { id: qid, base, size, head: 0, tail: 0, cqid, prio: (cdw11 >> 1) & 3, active: false };
  c.sqs[qid] = sq;
  shadowNewQueue(c, sq, 2 * qid);
  return { status: Status.SUCCESS };
}

function deleteSq(c: NvmeCore, qid: number): Result {
  if (qid === 0 || !c.sqs[qid]) return { status: Status.INVALID_QID | DNR };
  c.sqs[qid] = undefined; // a command being executed on it completes nowhere
  return { status: Status.SUCCESS };
}

function deleteCq(c: NvmeCore, qid: number): Result {
  if (qid === 0 || !c.cqs[qid]) return { status: Status.INVALID_QID | DNR };
  if (c.sqs.some((s) => s && s.cqid === qid)) return { status: Status.INVALID_QUEUE_DELETION | DNR };
  c.cqs[qid] = undefined;
  updateIntx(c);
  return { status: Status.SUCCESS };
}

// asynchronous events

function asyncEvent(c: NvmeCore, type: number, info: number, log: number): void {
  // SMART/health events are reported only when enabled in Async Event Configuration
  if (type === 1 && !(c.features.asyncEventConfig & 0x02)) return;
  c.events.push({ type, info, log });
  deliverEvents(c);
}

export function deliverEvents(c: NvmeCore): void {
  const acq = c.cqs[0];
  if (!acq || !c.running) return;
  while (c.aers.length) {
    const i = c.events.findIndex((e) => !(c.maskedEventTypes & (1 << e.type)));
    if (i < 0) break;
    const e = c.events.splice(i, 1)[0]!;
    c.maskedEventTypes |= 1 << e.type; // until the host reads the log page
    const cid = c.aers.shift()!;
    const sqe = new Uint8Array(SQE_SIZE);
    sqe[2] = cid & 0xff;
    sqe[3] = cid >> 8;
    post(c, acq, 0, sqe, { status: Status.SUCCESS, dw0: e.type | (e.info << 8) | (e.log << 16) });
  }
  flushIrqs(c);
}
