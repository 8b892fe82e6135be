/**
 * NVMe doorbells: trapped MMIO writes, the mmap'ed doorbell page (polled), and the shadow
 * doorbells with their EventIdx buffer (Doorbell Buffer Config), polled while I/O flows and
 * armed before the poller sleeps.
 */
import { DOORBELL_BASE, CSTS, Status, DNR } from './constants.js';
import { u64 } from './dataptr.js';
import { DoorbellBuffers, DoorbellTracker } from './shadow.js';
import { runSq, cqHeadMoved, cqFull, sqTailFromShadow, cqHeadFromShadow } from './queues.js';
import type { NvmeCore, SubQueue, CompQueue, Result } from './core.js';

/**
 * A doorbell write (MMIO, or a change found on the mmap'ed page). On a queue with a shadow
 * doorbell the written value is only a kick: the shadow is read instead (see shadow.ts).
 */
export function doorbell(c: NvmeCore, off: number, value: number): void {
  if (!(c.regs.csts & CSTS.RDY)) return;
  const idx = (off - DOORBELL_BASE) >> 2;
  const qid = idx >> 1;
  if (idx & 1) {
    const cq = c.cqs[qid];
    if (!cq || value >= cq.size) return; // invalid doorbell: ignored
    if (cq.db) {
      const shadow = c.readShadow(idx);
      if (shadow === undefined || !cqHeadFromShadow(cq, shadow)) return kick(c);
    } else cq.head = value;
    cqHeadMoved(c, cq);
  } else {
    const sq = c.sqs[qid];
    if (!sq || value >= sq.size) return;
    if (sq.db) {
      const shadow = c.readShadow(idx);
      if (shadow === undefined || !sqTailFromShadow(sq, shadow)) return kick(c);
    } else sq.tail = value;
    if (c.running) void runSq(c, sq);
  }
  kick(c);
}

function kick(c: NvmeCore): void {
  if (c.dbbuf) c.poller.kick();
}

/** (re)starts the poller at enable: asleep until a doorbell, or on a slow timer in mmap mode */
export function startPolling(c: NvmeCore): void {
  const mem = c.bar0.memory;
  if (mem) {
    c.mmapDoorbells = new Uint32Array(mem.buffer, mem.byteOffset + DOORBELL_BASE, 2 * (c.maxIoQueues + 1));
    c.mmapDoorbells.fill(0);
    c.lastDoorbells = new Uint32Array(c.mmapDoorbells.length);
  }
  c.poller.start();
  if (mem) c.poller.kick();
}

/** One poll: the mmap doorbell page, then the shadow doorbells. True when something moved. */
export function scanDoorbells(c: NvmeCore): boolean {
  if (!(c.regs.csts & CSTS.RDY) || !c.running) return false;
  let moved = false;
  const dbs = c.mmapDoorbells;
  const last = c.lastDoorbells;
  if (dbs && last) {
    for (let i = 0; i < dbs.length; i++) {
      const v = dbs[i]!;
      if (v !== last[i]) {
        last[i] = v;
        moved = true;
        doorbell(c, DOORBELL_BASE + 4 * i, v);
      }
    }
  }
  if (c.dbbuf) moved = scanShadows(c) || moved;
  return moved;
}

/** Applies every shadow doorbell that changed. */
function scanShadows(c: NvmeCore): boolean {
  const db = c.shadowViews()?.db;
  if (!db) return false;
  let moved = false;
  // CQ heads first: they free room for the SQs
  for (const cq of c.cqs) {
    if (cq?.db && cqHeadFromShadow(cq, Atomics.load(db, 2 * cq.id + 1))) {
      moved = true;
      cqHeadMoved(c, cq);
    }
  }
  for (const sq of c.sqs) {
    if (!sq?.db || !sqTailFromShadow(sq, Atomics.load(db, 2 * sq.id))) continue;
    moved = true;
    if (c.running) void runSq(c, sq);
  }
  return moved;
}

function publishEventIdx(ei: Uint32Array, slot: number, t: DoorbellTracker, v: number): void {
  if (t.eventIdx === v) return;
  t.eventIdx = v;
  Atomics.store(ei, slot, v);
}

/**
 * Before the poller sleeps: EventIdx values that make the host ring on its next SQ entry
 * (and on a CQ head move when an SQ waits for room or INTx needs the head), then the
 * shadows again: an entry written before the host could see the new EventIdx is found here.
 */
export function armEventIdx(c: NvmeCore): boolean {
  if (!c.dbbuf || !(c.regs.csts & CSTS.RDY) || !c.running) return false;
  const ei = c.shadowViews()?.ei;
  if (!ei) return false;
  const intx = !c.msixEnabled();
  for (const cq of c.cqs) {
    if (!cq?.db) continue;
    const waiting = intx || cq.backlog.length > 0 || cqFull(cq, 0);
    publishEventIdx(ei, 2 * cq.id + 1, cq.db, waiting ? cq.head : (cq.head + cq.size - 1) % cq.size);
  }
  for (const sq of c.sqs) if (sq?.db) publishEventIdx(ei, 2 * sq.id, sq.db, sq.tail);
  // Atomics.store then Atomics.load: the host's store-fence-load pairs with ours
  return scanShadows(c);
}

/** Doorbell Buffer Config (0x7C): PRP1 the shadow doorbells, PRP2 the EventIdx buffer. */
export function doorbellBufferConfig(c: NvmeCore, sqe: Uint8Array): Result {
  const dbs = u64(sqe, 24);
  const eis = u64(sqe, 32);
  const slots = 2 * (c.maxIoQueues + 1);
  const why = DoorbellBuffers.check(c.dev.dma, dbs, eis, slots, c.regs.pageSize);
  if (why) {
    c.log(`Doorbell Buffer Config refused: ${why}`);
    return { status: (why.includes('aligned') || why.includes('overlap') ? Status.INVALID_FIELD : Status.DATA_TRANSFER_ERROR) | DNR };
  }
  const b = new DoorbellBuffers(c.dev.dma, dbs, eis, slots);
  c.dbbuf = b;
  // existing I/O queues start from their current values, and the host rings for the next
  // entry; the admin queue keeps its MMIO doorbells (hosts do not shadow it)
  const db = b.shadowView();
  const ei = b.eventIdxView();
  for (const sq of c.sqs) if (sq?.id) attachShadow(sq, 2 * sq.id, sq.tail, db, ei);
  for (const cq of c.cqs) if (cq?.id) attachShadow(cq, 2 * cq.id + 1, cq.head, db, ei);
  return { status: Status.SUCCESS };
}

function attachShadow(q: SubQueue | CompQueue, slot: number, value: number, db: Uint32Array, ei: Uint32Array): void {
  Atomics.store(db, slot, value);
  Atomics.store(ei, slot, value);
  q.db = new DoorbellTracker(value);
  q.db.eventIdx = value;
}

/** a queue created while shadows are on: its slots start at 0 */
export function shadowNewQueue(c: NvmeCore, q: SubQueue | CompQueue, slot: number): void {
  const v = c.shadowViews();
  if (v) attachShadow(q, slot, 0, v.db, v.ei);
}

/**
 * Shadow doorbells after a migration (optional field: older sources have none). The queues
 * carry the values applied so far; the next scan applies whatever the host wrote since.
 */
export function restoreShadows(c: NvmeCore, b: { dbs: number; eis: number } | undefined): void {
  c.dbbuf = undefined;
  if (!b) return;
  c.dbbuf = new DoorbellBuffers(c.dev.dma, b.dbs, b.eis, 2 * (c.maxIoQueues + 1));
  for (const q of c.sqs) if (q?.id) q.db = new DoorbellTracker(q.tail);
  for (const q of c.cqs) if (q?.id) q.db = new DoorbellTracker(q.head);
}
