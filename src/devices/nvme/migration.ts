/**
 * NVMe migration: stopping and resuming the controller, and its state (registers, queues,
 * features, events, namespace identity, doorbells); a loaded state is checked whole before
 * any of it is applied. The image itself is shared by source and destination.
 */
import { encodeState, decodeState } from '../../server/state.js';
import * as Check from './state-check.js';
import { DOORBELL_BASE, CC, CSTS, Status, NvmeStatusError } from './constants.js';
import { MQES } from './registers.js';
import { newCq, type NvmeCore, type Features } from './core.js';
import { runSq, flushIrqs, updateIntx } from './queues.js';
import { startPolling, restoreShadows } from './doorbells.js';
import { deliverEvents } from './admin.js';

/** Migration state changes: the device runs only in RUNNING and PRE_COPY. */
export function setRunning(c: NvmeCore, on: boolean): void {
  if (on === c.running) return;
  c.running = on;
  if (!on) return;
  // catch up with doorbells written while stopped, and interrupts held back
  for (const sq of c.sqs) if (sq && sq.head !== sq.tail) void runSq(c, sq);
  for (const cq of c.cqs) if (cq && cq.head !== cq.tail && cq.ien) cq.irqPending = true;
  flushIrqs(c);
  updateIntx(c);
  deliverEvents(c);
  if (c.dbbuf) c.poller.kick(); // shadows written while stopped
}

/** Stops fetching and waits until nothing is in flight. */
export async function quiesce(c: NvmeCore): Promise<void> {
  c.running = false;
  if (c.inflight > 0) await new Promise<void>((r) => c.idleWaiters.push(r));
}

export async function saveState(c: NvmeCore): Promise<Uint8Array> {
  await quiesce(c);
  const ns = [...c.namespaces.values()].map((n) => ({ nsid: n.nsid, blocks: n.blocks, lbaSize: n.lbaSize, nguid: hex(n.nguid) }));
  return encodeState('nvme', 1, {
    cc: c.regs.cc,
    csts: c.regs.csts,
    aqa: c.regs.aqa,
    asq: c.regs.asq,
    acq: c.regs.acq,
    intms: c.regs.intms,
    sqs: JSON.stringify(c.sqs.map((q) => q && { id: q.id, base: q.base, size: q.size, head: q.head, tail: q.tail, cqid: q.cqid, prio: q.prio })),
    cqs: JSON.stringify(c.cqs.map((q) => q && { id: q.id, base: q.base, size: q.size, head: q.head, tail: q.tail, phase: q.phase, iv: q.iv, ien: q.ien, backlog: q.backlog })),
    features: JSON.stringify(c.features),
    aers: JSON.stringify(c.aers),
    events: JSON.stringify(c.events),
    maskedEventTypes: c.maskedEventTypes,
    errorCount: c.errorCount,
    smart: JSON.stringify(c.smart),
    namespaces: JSON.stringify(ns),
    doorbells: c.bar0.memory ? hex(c.bar0.memory.subarray(DOORBELL_BASE, DOORBELL_BASE + 0x1000)) : '',
    dbbuf: c.dbbuf ? JSON.stringify({ dbs: c.dbbuf.dbs, eis: c.dbbuf.eis }) : '',
  });
}

export function loadState(c: NvmeCore, data: Uint8Array): void {
  const s = decodeState<Record<string, unknown>>(data, 'nvme', 1, {
    cc: 'number', csts: 'number', aqa: 'number', asq: 'number', acq: 'number', intms: 'number',
    sqs: 'string', cqs: 'string', features: 'string', aers: 'string', events: 'string',
    maskedEventTypes: 'number', errorCount: 'number', smart: 'string', namespaces: 'string', doorbells: 'string',
  });
  const { json, uint, u32 } = Check;
  // validate everything before applying anything
  const nsList = json(s.namespaces, 'namespaces');
  if (!Array.isArray(nsList)) Check.bad('namespaces must be an array');
  if (nsList.length !== c.namespaces.size) Check.bad('namespace count differs');
  for (const n of nsList as { nsid?: unknown; blocks?: unknown; lbaSize?: unknown; nguid?: unknown }[]) {
    const mine = typeof n?.nsid === 'number' ? c.namespaces.get(n.nsid) : undefined;
    if (!mine || mine.blocks !== n.blocks || mine.lbaSize !== n.lbaSize || hex(mine.nguid) !== n.nguid) Check.bad(`namespace ${String(n?.nsid)} differs on this side`);
  }
  const queues = (text: unknown, what: string): (Record<string, unknown> | null)[] => {
    const v = json(text, what);
    if (!Array.isArray(v) || v.length > c.maxIoQueues + 1) Check.bad(`${what} must be an array of at most ${c.maxIoQueues + 1}`);
    return v.map((q, i) => (q === null ? null : typeof q === 'object' && !Array.isArray(q) ? (q as Record<string, unknown>) : Check.bad(`${what}[${i}]`)));
  };
  const sqs = queues(s.sqs, 'sqs').map((q, i) => {
    if (!q) return undefined;
    if (q.id !== i) Check.bad(`SQ ${i} has id ${String(q.id)}`);
    const size = uint(q.size, MQES + 1, `SQ ${i} size`);
    if (size < 2) Check.bad(`SQ ${i} size ${size}`);
    return { id: i, base: uint(q.base, Number.MAX_SAFE_INTEGER, `SQ ${i} base`), size, head: uint(q.head, size - 1, `SQ ${i} head`), tail: uint(q.tail, size - 1, `SQ ${i} tail`), cqid: uint(q.cqid, c.maxIoQueues, `SQ ${i} cqid`), prio: uint(q.prio, 3, `SQ ${i} prio`), active: false };
  });
  const cqs = queues(s.cqs, 'cqs').map((q, i) => {
    if (!q) return undefined;
    if (q.id !== i) Check.bad(`CQ ${i} has id ${String(q.id)}`);
    const size = uint(q.size, MQES + 1, `CQ ${i} size`);
    if (size < 2) Check.bad(`CQ ${i} size ${size}`);
    if (typeof q.ien !== 'boolean') Check.bad(`CQ ${i} ien`);
    const cq = newCq(i, uint(q.base, Number.MAX_SAFE_INTEGER, `CQ ${i} base`), size, uint(q.iv, 2047, `CQ ${i} iv`), q.ien);
    cq.head = uint(q.head, size - 1, `CQ ${i} head`);
    cq.tail = uint(q.tail, size - 1, `CQ ${i} tail`);
    cq.phase = uint(q.phase, 1, `CQ ${i} phase`);
    cq.backlog = Check.backlog(q.backlog, c.maxIoQueues, `CQ ${i} backlog`);
    return cq;
  });
  for (const sq of sqs) if (sq && !cqs[sq.cqid]) Check.bad(`SQ ${sq.id} feeds CQ ${sq.cqid}, which does not exist`);
  const features: Features = Check.features(json(s.features, 'features'), c.maxIoQueues);
  const aers = Check.aers(json(s.aers, 'aers'), 4);
  const events = Check.events(json(s.events, 'events'));
  const smart = Check.smart(json(s.smart, 'smart'));
  const regs = { cc: u32(s.cc, 'cc'), csts: u32(s.csts, 'csts'), aqa: u32(s.aqa, 'aqa'), asq: uint(s.asq, Number.MAX_SAFE_INTEGER, 'asq'), acq: uint(s.acq, Number.MAX_SAFE_INTEGER, 'acq'), intms: u32(s.intms, 'intms') };
  const maskedEventTypes = uint(s.maskedEventTypes, 0xff, 'maskedEventTypes');
  const errorCount = uint(s.errorCount, Number.MAX_SAFE_INTEGER, 'errorCount');
  const doorbells = Check.hexBytes(s.doorbells, 0x1000, 'doorbells');
  const shadows = parseShadows(s.dbbuf);
  // apply
  c.generation++;
  c.regs.cc = regs.cc;
  c.regs.csts = regs.csts;
  c.regs.aqa = regs.aqa;
  c.regs.asq = regs.asq;
  c.regs.acq = regs.acq;
  c.regs.intms = regs.intms;
  c.regs.pageSize = 4096 * 2 ** ((c.regs.cc >> CC.MPS_SHIFT) & 0xf);
  c.sqs = sqs;
  c.cqs = cqs;
  c.features = features;
  c.aers = aers;
  c.events = events;
  c.maskedEventTypes = maskedEventTypes;
  c.errorCount = errorCount;
  c.smart = smart;
  if (c.bar0.memory && doorbells) c.bar0.memory.set(doorbells, DOORBELL_BASE);
  c.poller.stop();
  restoreShadows(c, shadows);
  if (c.regs.csts & CSTS.RDY) startPolling(c);
  if (c.lastDoorbells && c.bar0.memory) {
    // the doorbell values carried over are already reflected in the queues
    c.lastDoorbells.set(new Uint32Array(c.bar0.memory.buffer, c.bar0.memory.byteOffset + DOORBELL_BASE, c.lastDoorbells.length));
  }
}

/** the optional dbbuf field of the migration state */
function parseShadows(v: unknown): { dbs: number; eis: number } | undefined {
  if (v === undefined || v === '') return undefined;
  let d: { dbs?: unknown; eis?: unknown } | undefined;
  try {
    d = typeof v === 'string' ? (JSON.parse(v) as typeof d) : undefined;
  } catch {
    d = undefined;
  }
  const addr = (a: unknown): number => (typeof a === 'number' && Number.isSafeInteger(a) && a > 0 && a % 4096 === 0 ? a : 0);
  const dbs = addr(d?.dbs);
  const eis = addr(d?.eis);
  if (!dbs || !eis) throw new NvmeStatusError(Status.INTERNAL_ERROR, 'nvme state: bad doorbell buffers');
  return { dbs, eis };
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}
