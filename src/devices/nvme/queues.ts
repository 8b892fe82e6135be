/**
 * NVMe queues: fetching and executing an SQ's commands in order, posting completions to its
 * CQ (with a backlog for asynchronous ones that do not fit), interrupts (MSI-X per CQ with
 * interrupt coalescing, INTx level otherwise), and the data pointers of a command.
 */
import { IrqIndex } from '../../server/irq.js';
import { DmaError } from '../../server/dma.js';
import { Status, DNR, SQE_SIZE, CQE_SIZE, NvmeStatusError } from './constants.js';
import { prpSegments, sglSegments, u64, type Segment } from './dataptr.js';
import { guestRead } from '../guest.js';
import type { NvmeCore, SubQueue, CompQueue, Result } from './core.js';

export function cqFull(cq: CompQueue, extra: number): boolean {
  const used = (cq.tail - cq.head + cq.size) % cq.size;
  return used + cq.reserved + extra >= cq.size - 1;
}

/** commands one SQ runs in a row without yielding the event loop (round robin between SQs) */
export const SQ_BURST = 32;

/**
 * SQ entries fetched with one DMA_READ at most, when the queue is not in shared memory: the
 * entries between head and tail (up to the end of the ring) come in one message and one
 * round trip, not one each.
 */
export const SQE_BATCH = 32;

/**
 * The entry at the SQ's head: a copy of its view when shared. When it can only be read by
 * message, the entries after it up to the tail come along (their bytes follow in the same
 * array), and the read waits a microtask first, so that the doorbells that came in the same
 * socket read as the one that started this fetch are all counted in.
 */
function fetchSqes(c: NvmeCore, sq: SubQueue): Uint8Array | Promise<Uint8Array> {
  const dma = c.dev.dma;
  const at = sq.base + sq.head * SQE_SIZE;
  const v = dma.tryView(at, SQE_SIZE, false);
  if (v) return v.slice();
  if (!dma.onlyByMessage(at, SQE_SIZE)) return guestRead(dma, at, SQE_SIZE);
  return Promise.resolve().then(() => {
    // up to the tail, or the end of the ring when the tail has wrapped
    const n = sq.tail === sq.head ? 1 : Math.min(SQE_BATCH, (sq.tail > sq.head ? sq.tail : sq.size) - sq.head);
    return dma.read(at, (n > 1 && dma.onlyByMessage(at, n * SQE_SIZE) ? n : 1) * SQE_SIZE);
  });
}

/**
 * Fetches and executes the commands of one SQ, in order, until it is empty or its CQ is full.
 * With shared guest memory an I/O command runs synchronously, from the call that found it (a
 * doorbell, a shadow scan; not a chain of promise hops per command: the completion and its
 * interrupt go out at once); after SQ_BURST commands in a row the queue yields a turn, so the other
 * queues and the socket are served in between.
 */
export async function runSq(c: NvmeCore, sq: SubQueue): Promise<void> {
  if (sq.active) return;
  sq.active = true;
  const gen = c.generation;
  c.inflight++;
  let burst = 0;
  // entries fetched by message beyond the head (from queue index aheadAt): they are the
  // controller's until it moves the head past them, so they stay valid while this run lasts
  let ahead: Uint8Array | undefined;
  let aheadAt = -1;
  try {
    while (c.running && gen === c.generation && c.sqs[sq.id] === sq && sq.head !== sq.tail) {
      if (burst === SQ_BURST) {
        burst = 0;
        flushIrqs(c);
        await new Promise<void>((r) => setImmediate(r));
        continue; // everything is checked again
      }
      const cq = c.cqs[sq.cqid];
      if (!cq) break;
      if (cq.db && cqFull(cq, 0)) {
        // the host may have consumed entries without ringing: look at its shadow head
        const s = c.readShadow(2 * cq.id + 1);
        if (s !== undefined && cqHeadFromShadow(cq, s)) cqHeadMoved(c, cq);
      }
      if (cq.backlog.length || cqFull(cq, 0)) break; // resumed by the CQ head doorbell
      let sqe: Uint8Array;
      if (ahead !== undefined && aheadAt === sq.head) {
        sqe = ahead.subarray(0, SQE_SIZE);
        ahead = ahead.length > SQE_SIZE ? ahead.subarray(SQE_SIZE) : undefined;
        aheadAt = (aheadAt + 1) % sq.size;
      } else {
        const head = sq.head;
        try {
          const got = fetchSqes(c, sq);
          sqe = got instanceof Uint8Array ? got : await got;
        } catch (e) {
          // (not when the queue went meanwhile: the fetch by message waits a microtask)
          if (gen === c.generation && c.sqs[sq.id] === sq) c.fatal(`cannot fetch SQ ${sq.id} entry ${head}: ${(e as Error).message}`);
          break;
        }
        if (gen !== c.generation || c.sqs[sq.id] !== sq) break;
        if (sqe.length > SQE_SIZE) {
          ahead = sqe.subarray(SQE_SIZE);
          aheadAt = (head + 1) % sq.size;
          sqe = sqe.subarray(0, SQE_SIZE);
        } else ahead = undefined;
      }
      sq.head = (sq.head + 1) % sq.size;
      cq.reserved++;
      let res: Result | undefined;
      try {
        const r = c.execute(sq, sqe);
        if (r instanceof Promise && sq.id !== 0) {
          // an I/O command waiting for messages (its data by DMA_READ, a PRP list) runs beside
          // the next ones: its completion is posted when it is done, in whatever order
          overlap(c, sq, cq, sqe, r, gen);
          burst++;
          continue;
        }
        res = r instanceof Promise ? await r : r;
      } finally {
        cq.reserved--;
      }
      if (gen !== c.generation || c.sqs[sq.id] !== sq) break;
      c.counters.commands++;
      if (res) post(c, cq, sq.id, sqe, res);
      burst++;
    }
  } finally {
    sq.active = false;
    flushIrqs(c);
    c.settled();
  }
}

/**
 * Completes an I/O command that runs beside the SQ's next ones, when it is done (execute()
 * settles with a status, never rejects); its CQ entry stays reserved until then. Dropped, as
 * runSq drops a result, when the controller was reset or the SQ deleted meanwhile.
 */
function overlap(c: NvmeCore, sq: SubQueue, cq: CompQueue, sqe: Uint8Array, r: Promise<Result | undefined>, gen: number): void {
  cq.reserved++; // runSq's own reservation ends when it goes on
  c.inflight++;
  void r
    .then((res) => {
      cq.reserved--;
      if (gen !== c.generation || c.sqs[sq.id] !== sq || c.cqs[cq.id] !== cq) return;
      c.counters.commands++;
      if (res) post(c, cq, sq.id, sqe, res);
      flushIrqsSoon(c); // completions of one socket read share a message and an interrupt
    })
    .catch((e: unknown) => c.fatal(`cannot complete a command of SQ ${sq.id}: ${(e as Error).message}`))
    .finally(() => c.settled());
}

/** The host moved a CQ head: backlogged completions, INTx level, SQs that waited for room. */
export function cqHeadMoved(c: NvmeCore, cq: CompQueue): void {
  while (cq.backlog.length && !cqFull(cq, 0)) {
    const b = cq.backlog.shift()!;
    writeCqe(c, cq, b.sqid, b.cid, b.status, b.dw0);
  }
  updateIntx(c);
  if (!c.running) return;
  // SQs that stopped because this CQ was full
  for (const sq of c.sqs) if (sq && sq.cqid === cq.id && sq.head !== sq.tail) void runSq(c, sq);
  flushIrqs(c);
}

export function sqTailFromShadow(sq: SubQueue, s: number): boolean {
  const t = sq.db!.fromShadow(s, sq.size);
  if (t < 0) return false;
  sq.tail = t;
  return true;
}

export function cqHeadFromShadow(cq: CompQueue, s: number): boolean {
  const h = cq.db!.fromShadow(s, cq.size);
  if (h < 0) return false;
  cq.head = h;
  return true;
}

/** Completes a command (and logs its error); into the backlog when the CQ is full. */
export function post(c: NvmeCore, cq: CompQueue, sqid: number, sqe: Uint8Array, res: Result): void {
  const cid = sqe[2]! | (sqe[3]! << 8);
  if (res.status !== Status.SUCCESS) {
    c.errorCount++;
    const lba = sqid !== 0 ? BigInt(u64(sqe, 40)) : 0n;
    c.errors.push({ count: c.errorCount, sqid, cid, status: res.status, lba, nsid: new DataView(sqe.buffer, sqe.byteOffset).getUint32(4, true) });
    if (c.errors.length > 64) c.errors.shift();
  }
  if (cqFull(cq, 0) || cq.backlog.length) cq.backlog.push({ sqid, cid, status: res.status, dw0: res.dw0 ?? 0 });
  else writeCqe(c, cq, sqid, cid, res.status, res.dw0 ?? 0);
}

function writeCqe(c: NvmeCore, cq: CompQueue, sqid: number, cid: number, status: number, dw0: number): void {
  const sqhd = c.sqs[sqid]?.head ?? 0;
  const addr = cq.base + cq.tail * CQE_SIZE;
  const dw3 = (cid | (cq.phase << 16) | (status << 17)) >>> 0;
  const dma = c.dev.dma;
  const v = dma.tryView(addr, CQE_SIZE, true);
  if (v && v.byteOffset % 4 === 0) {
    // the dword with the phase tag goes last, as a single store
    const w = new Int32Array(v.buffer, v.byteOffset, 4);
    w[0] = dw0;
    w[1] = 0;
    w[2] = sqhd | (sqid << 16);
    Atomics.store(w, 3, dw3 | 0);
  } else if (!dma.isShared(addr, CQE_SIZE) || !writeSharedCqe(c, addr, cqeBytes(dw0, sqhd, sqid, dw3))) {
    // not shared memory: a DMA_WRITE message, in order on the socket behind the data of the
    // command; its interrupt waits for both (see WriteOrder). Entries posted in one job to
    // adjacent slots go in one message: held until the job's end, or until an interrupt or
    // a non-adjacent entry needs them sent
    const u = cq.unsent;
    if (u !== undefined && u.gen === c.generation && u.addr + u.n * CQE_SIZE === addr && u.n < CQE_BATCH) {
      u.bytes.set(cqeBytes(dw0, sqhd, sqid, dw3), u.n++ * CQE_SIZE);
    } else {
      if (u !== undefined) sendCqes(c, cq);
      const bytes = new Uint8Array(CQE_BATCH * CQE_SIZE);
      bytes.set(cqeBytes(dw0, sqhd, sqid, dw3));
      cq.unsent = { addr, bytes, n: 1, gen: c.generation };
      c.unsentCqs.push(cq);
      c.inflight++; // until sent and answered (a migration's quiesce waits for it)
      flushIrqsSoon(c);
    }
  }
  cq.tail++;
  if (cq.tail === cq.size) {
    cq.tail = 0;
    cq.phase ^= 1;
  }
  cq.irqPending = true;
  cq.coalesced++;
}

/** CQ entries written by one DMA_WRITE at most (adjacent slots posted in one job) */
export const CQE_BATCH = 64;

/** Sends a CQ's unsent entries (dropped when the controller was reset since). */
function sendCqes(c: NvmeCore, cq: CompQueue): void {
  const u = cq.unsent;
  if (u === undefined) return;
  cq.unsent = undefined;
  const i = c.unsentCqs.indexOf(cq);
  if (i >= 0) c.unsentCqs.splice(i, 1);
  if (u.gen !== c.generation) {
    c.settled();
    return;
  }
  const gen = u.gen;
  void c.dev.dma.write(u.addr, u.bytes.subarray(0, u.n * CQE_SIZE)).then(
    () => {
      if (gen === c.generation) flushIrqs(c);
    },
    (err: Error) => c.fatal(`cannot post to CQ ${cq.id}: ${err.message}`),
  ).finally(() => c.settled());
}

/** Every CQ's unsent entries go out (before any interrupt is raised: it must follow them). */
function sendAllCqes(c: NvmeCore): void {
  while (c.unsentCqs.length > 0) sendCqes(c, c.unsentCqs[0]!);
}

/** Sends unsent CQ entries and raises interrupts at the end of the current job (once). */
export function flushIrqsSoon(c: NvmeCore): void {
  if (c.cqeFlushDue) return;
  c.cqeFlushDue = true;
  process.nextTick(() => {
    c.cqeFlushDue = false;
    sendAllCqes(c);
    flushIrqs(c);
  });
}

/** A CQE into shared memory that is not one aligned view; false when that failed (DmaError). */
function writeSharedCqe(c: NvmeCore, addr: number, cqe: Uint8Array): boolean {
  try {
    c.dev.dma.writeSync(addr, cqe);
    return true;
  } catch (e) {
    if (!(e instanceof DmaError)) throw e;
    return false;
  }
}

function cqeBytes(dw0: number, sqhd: number, sqid: number, dw3: number): Uint8Array {
  const b = new Uint8Array(CQE_SIZE);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, dw0 >>> 0, true);
  dv.setUint32(8, (sqhd | (sqid << 16)) >>> 0, true);
  dv.setUint32(12, dw3, true);
  return b;
}

/** Raises the interrupts of the CQs that got entries (one per CQ per batch). */
export function flushIrqs(c: NvmeCore, timeUp = false): void {
  sendAllCqes(c);
  if (!c.running) return;
  const msix = c.msixEnabled();
  // Interrupt Coalescing (feature 08h): an I/O vector without Coalescing Disable waits for
  // THR + 1 entries or TIME x 100 us, whichever comes first (TIME 0: no waiting)
  const ic = c.features.intCoalescing;
  const thr = (ic & 0xff) + 1;
  const time = (ic >> 8) & 0xff;
  let intx = false;
  let waiting = false;
  for (const cq of c.cqs) {
    if (!cq || !cq.irqPending) continue;
    if (cq.ien && msix && time && !timeUp && cq.id !== 0 && !c.features.ivConfig[cq.iv] && cq.coalesced < thr) {
      waiting = true;
      continue;
    }
    cq.irqPending = false;
    cq.coalesced = 0;
    if (!cq.ien) continue;
    c.counters.irqs++;
    if (msix) c.dev.trigger(IrqIndex.MSIX, cq.iv);
    else intx = true;
  }
  if (intx) updateIntx(c);
  if (waiting && !c.coalesceTimer) {
    c.coalesceTimer = setTimeout(() => {
      c.coalesceTimer = undefined;
      flushIrqs(c, true);
    }, Math.max(1, time / 10));
  } else if (!waiting && c.coalesceTimer) {
    // nothing waits any more (THR reached): the next entry's TIME counts from that entry, not
    // from a window already closed
    clearTimeout(c.coalesceTimer);
    c.coalesceTimer = undefined;
  }
}

/** INTx level: high while an interrupt-enabled CQ has entries the host has not consumed. */
export function updateIntx(c: NvmeCore): void {
  sendAllCqes(c);
  if (!c.running) return;
  let level = false;
  if (!c.msixEnabled() && !(c.regs.intms & 1)) {
    for (const cq of c.cqs) if (cq && cq.ien && cq.head !== cq.tail) level = true;
  }
  c.dev.setIrqLevel(level);
}

/** The data segments of a command (PRPs, or SGLs for I/O commands), lists read from the guest. */
export function dataSegments(c: NvmeCore, sq: SubQueue, sqe: Uint8Array, len: number): Segment[] | Promise<Segment[]> {
  const psdt = sqe[1]! >> 6;
  const mem = { read: (iova: number, n: number) => guestRead(c.dev.dma, iova, n) };
  if (psdt === 0) return prpSegments(mem, u64(sqe, 24), u64(sqe, 32), len, c.regs.pageSize);
  if (sq.id === 0 || psdt === 3) throw new NvmeStatusError(Status.INVALID_FIELD | DNR, 'SGLs are for I/O commands');
  return sglSegments(mem, sqe.subarray(24, 40), len);
}
