/**
 * A small NVMe host driver built on the vfio-user client library, for tests and benchmarks:
 * guest memory is a memfd mapped with DMA_MAP, interrupts are MSI-X (enabled in config space,
 * eventfds by SET_IRQS) or INTx, and the controller is driven through BAR0 like a kernel
 * driver would: reset, admin queue, Identify, I/O queues, then I/O with PRPs or SGLs.
 */
import type { VfioUserClient, GuestMemory, IrqHandle } from '../client/client.js';
import { needEvent } from '../devices/nvme/shadow.js';
import { GuestRam, PAGE } from './memory.js';
import { GuestDriver } from './driver.js';
import { enableMsix, armMsixVectors } from './pci.js';

/** the admin queue's ID */
export const ADMIN = 0;

export interface Completion {
  dw0: number;
  sqhd: number;
  sqid: number;
  cid: number;
  /** the 15-bit status field (SCT << 8 | SC, plus M and DNR) */
  status: number;
}

/** status without the DNR/More bits */
export function sc(c: Completion): number {
  return c.status & 0x7ff;
}

export interface Command {
  opc: number;
  nsid?: number;
  prp1?: number;
  prp2?: number;
  /** a 16-byte SGL descriptor for DPTR (sets PSDT = 1) */
  sgl?: Uint8Array;
  /** raw flags byte (FUSE/PSDT) override */
  flags?: number;
  cdw10?: number;
  cdw11?: number;
  cdw12?: number;
  cdw13?: number;
  cdw14?: number;
  cdw15?: number;
}

interface Sq {
  id: number;
  iova: number;
  bytes: Uint8Array;
  size: number;
  tail: number;
  head: number;
  cq: Cq;
  nextCid: number;
}

interface Cq {
  id: number;
  iova: number;
  bytes: Uint8Array;
  size: number;
  head: number;
  phase: number;
  vector: number;
  waiters: Map<number, (c: Completion) => void>;
}

/** Options of {@link NvmeDriver.attach}. */
export interface DriverOptions {
  /** guest memory size (default 64 MiB) */
  memSize?: number;
  /** IOVA of the first mapped byte (default 0x100000000) */
  iova?: number;
  /** pass the memfd (default) or make the server use DMA messages */
  shared?: boolean;
  /** MSI-X (default) or INTx */
  interrupts?: 'msix' | 'intx';
  /** doorbells as posted writes (default true) */
  posted?: boolean;
  /** write doorbells to the mmap-ed doorbell page instead of REGION_WRITE */
  mmapDoorbells?: boolean;
  /** an existing memory object and layout to reuse (migration destination) */
  mem?: GuestMemory;
}

/**
 * An NVMe host driver over a {@link VfioUserClient}: like Linux's nvme driver, it resets and
 * enables the controller through BAR0, sets up the admin queue, identifies the controller and
 * namespace 1, creates I/O queue pairs (one MSI-X vector each, or INTx), and submits commands
 * with PRPs or SGLs; completions are taken from the completion queues when their interrupt
 * arrives. Guest memory is a {@link GuestRam}.
 *
 * ```ts
 * const d = await NvmeDriver.attach(client);
 * await d.init({ queues: 2 });
 * const buf = d.alloc(4096);
 * const c = await d.rw('read', 1, 0, 8, { prp1: buf });   // 8 blocks from LBA 0 on queue 1
 * d.close(); await d.ram.unmap(); d.mem.free();
 * ```
 */
export class NvmeDriver extends GuestDriver<DriverOptions> {
  private sqs = new Map<number, Sq>();
  private cqs = new Map<number, Cq>();
  irq: IrqHandle | undefined;
  private irqs: IrqHandle[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private doorbellPage: Uint32Array | undefined;
  private unmapDoorbells: (() => void) | undefined;
  /** interrupts received per vector */
  readonly interrupts = new Map<number, number>();
  mdts = 0;
  nsBlocks = 0;
  lbaSize = 512;
  identifyData: Uint8Array | undefined;
  /** shadow doorbells (Doorbell Buffer Config), like Linux: I/O queues only */
  private shadow: { db: Uint32Array; ei: Uint32Array; dbs: number; eis: number } | undefined;
  /** test knob: a host that stops updating its shadow doorbells but rings every MMIO doorbell */
  shadowFrozen = false;
  /**
   * test knob: MMIO doorbell writes are held here (doorbell index, value) instead of sent, until
   * releaseRings() sends them in order: rings that reach the controller late, after the shadow
   * moved past them (as posted writes queued in a socket can)
   */
  heldRings: [number, number][] | undefined;
  /** doorbell writes sent (MMIO / REGION_WRITE or the mmap page), and ones the EventIdx let us skip */
  readonly doorbellStats = { rung: 0, skipped: 0 };

  private constructor(client: VfioUserClient, ram: GuestRam, opts: DriverOptions) {
    super(client, ram, opts);
  }

  /** Maps guest memory (all but a guard page at each end) and sets up interrupts. */
  static async attach(client: VfioUserClient, opts: DriverOptions = {}): Promise<NvmeDriver> {
    const d = new NvmeDriver(client, await GuestDriver.mapRam(client, opts, 64 << 20), opts);
    await d.setupInterrupts();
    if (opts.mmapDoorbells) {
      const m = await client.mapRegion(0);
      const area = m.areas.find((a) => a.offset === 0x1000);
      if (!area) throw new Error('no mmap-able doorbell page');
      d.doorbellPage = new Uint32Array(area.bytes.buffer, area.bytes.byteOffset, area.size / 4);
      d.unmapDoorbells = () => m.unmap();
    }
    return d;
  }

  // ------------------------------------------------------------ registers

  async r32(off: number): Promise<number> {
    const b = await this.client.read(0, off, 4);
    return new DataView(b.buffer, b.byteOffset).getUint32(0, true);
  }

  async r64(off: number): Promise<bigint> {
    const b = await this.client.read(0, off, 8);
    return new DataView(b.buffer, b.byteOffset).getBigUint64(0, true);
  }

  async w32(off: number, v: number): Promise<void> {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v >>> 0, true);
    await this.client.write(0, off, b);
  }

  async w64(off: number, v: number): Promise<void> {
    await this.w32(off, v % 2 ** 32);
    await this.w32(off + 4, Math.floor(v / 2 ** 32));
  }

  private doorbell(index: number, value: number): void {
    const sh = this.shadow;
    if (sh && index >= 2 && !this.shadowFrozen) {
      // Linux's nvme_dbbuf_update_and_check_event
      const old = sh.db[index]!;
      Atomics.store(sh.db, index, value);
      if (!needEvent(Atomics.load(sh.ei, index), value, old)) {
        this.doorbellStats.skipped++;
        return;
      }
    }
    this.doorbellStats.rung++;
    if (this.heldRings) {
      this.heldRings.push([index, value]);
      return;
    }
    this.ring(index, value);
  }

  /** Sends the held MMIO doorbell writes, oldest first, and stops holding them. */
  releaseRings(): void {
    const held = this.heldRings ?? [];
    this.heldRings = undefined;
    for (const [index, value] of held) this.ring(index, value);
  }

  private ring(index: number, value: number): void {
    if (this.doorbellPage) {
      this.doorbellPage[index] = value;
      return;
    }
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value, true);
    void this.client.write(0, 0x1000 + 4 * index, b, { posted: this.opts.posted ?? true }).catch(() => {});
  }

  // ------------------------------------------------------------ interrupts

  /** Finds a capability in config space (its offset, 0 when absent). */
  private async setupInterrupts(): Promise<void> {
    if ((this.opts.interrupts ?? 'msix') === 'intx') {
      this.irq = await this.client.enableIrqs(0, 1);
      this.irq.on('irq', () => {
        this.count(0);
        for (const cq of this.cqs.values()) this.drain(cq);
        void this.client.unmaskIrq(0, 0).catch(() => {});
      });
      return;
    }
    const vectors = await enableMsix(this.client);
    await this.enableMsixVectors(this.client, vectors);
  }

  private async enableMsixVectors(client: VfioUserClient, vectors: number): Promise<void> {
    this.irqs = await armMsixVectors(client, vectors, (v) => {
      this.count(v);
      for (const cq of this.cqs.values()) if (cq.vector === v) this.drain(cq);
    });
    this.irq = this.irqs[0];
  }

  /** the interrupt handles (MSI-X in chunks of the server's max_msg_fds, or INTx) */
  get irqHandles(): readonly IrqHandle[] {
    return this.irqs.length ? this.irqs : this.irq ? [this.irq] : [];
  }

  private count(v: number): void {
    this.interrupts.set(v, (this.interrupts.get(v) ?? 0) + 1);
  }

  /** Re-arms interrupts on a new client (migration destination). */
  async moveTo(client: VfioUserClient): Promise<void> {
    for (const h of this.irqs) h.close();
    this.irq?.close();
    this.setClient(client);
    if ((this.opts.interrupts ?? 'msix') === 'intx') {
      this.irq = await client.enableIrqs(0, 1);
      this.irq.on('irq', () => {
        for (const cq of this.cqs.values()) this.drain(cq);
        void this.client.unmaskIrq(0, 0).catch(() => {});
      });
    } else {
      const info = await client.irqInfo(2);
      await this.enableMsixVectors(client, info.count);
    }
    // anything completed while switching
    for (const cq of this.cqs.values()) this.drain(cq);
  }

  /** Processes new entries of a CQ (phase tag), then writes its head doorbell. */
  private drain(cq: Cq): void {
    let n = 0;
    const dv = new DataView(cq.bytes.buffer, cq.bytes.byteOffset, cq.bytes.byteLength);
    for (;;) {
      const o = cq.head * 16;
      const dw3 = dv.getUint32(o + 12, true);
      if (((dw3 >>> 16) & 1) !== cq.phase) break;
      const c: Completion = {
        dw0: dv.getUint32(o, true),
        sqhd: dv.getUint16(o + 8, true),
        sqid: dv.getUint16(o + 10, true),
        cid: dw3 & 0xffff,
        status: dw3 >>> 17,
      };
      if (++cq.head === cq.size) {
        cq.head = 0;
        cq.phase ^= 1;
      }
      n++;
      const sq = this.sqs.get(c.sqid);
      if (sq) sq.head = c.sqhd;
      const key = (c.sqid << 16) | c.cid;
      const w = cq.waiters.get(key);
      if (w) {
        cq.waiters.delete(key);
        w(c);
      }
    }
    if (n) this.doorbell(2 * cq.id + 1, cq.head);
  }

  // ------------------------------------------------------------ commands

  /** Submits a command on an SQ; resolves with its completion. */
  submit(qid: number, cmd: Command, opts: { timeoutMs?: number } = {}): Promise<Completion> {
    const sq = this.sqs.get(qid);
    if (!sq) throw new Error(`no SQ ${qid}`);
    if ((sq.tail + 1) % sq.size === sq.head) throw new Error(`SQ ${qid} full`);
    let cid = sq.nextCid;
    while (sq.cq.waiters.has((qid << 16) | cid)) cid = (cid + 1) & 0xffff;
    sq.nextCid = (cid + 1) & 0xffff;
    const e = sq.bytes.subarray(sq.tail * 64, sq.tail * 64 + 64);
    e.fill(0);
    const dv = new DataView(e.buffer, e.byteOffset, 64);
    e[0] = cmd.opc;
    e[1] = cmd.flags ?? (cmd.sgl ? 0x40 : 0);
    dv.setUint16(2, cid, true);
    dv.setUint32(4, cmd.nsid ?? 0, true);
    if (cmd.sgl) e.set(cmd.sgl, 24);
    else {
      setU64(dv, 24, cmd.prp1 ?? 0);
      setU64(dv, 32, cmd.prp2 ?? 0);
    }
    const dws = [cmd.cdw10, cmd.cdw11, cmd.cdw12, cmd.cdw13, cmd.cdw14, cmd.cdw15];
    dws.forEach((v, i) => dv.setUint32(40 + 4 * i, (v ?? 0) >>> 0, true));
    const p = new Promise<Completion>((resolve, reject) => {
      const t = setTimeout(() => {
        this.timers.delete(t);
        sq.cq.waiters.delete((qid << 16) | cid);
        reject(new Error(`command opc 0x${cmd.opc.toString(16)} cid ${cid} on SQ ${qid} timed out`));
      }, opts.timeoutMs ?? 10000);
      this.timers.add(t);
      sq.cq.waiters.set((qid << 16) | cid, (c) => {
        this.timers.delete(t);
        clearTimeout(t);
        resolve(c);
      });
    });
    sq.tail = (sq.tail + 1) % sq.size;
    this.doorbell(2 * qid, sq.tail);
    return p;
  }

  /** Submits and throws unless the command succeeded. */
  async ok(qid: number, cmd: Command): Promise<Completion> {
    const c = await this.submit(qid, cmd);
    if (c.status !== 0) throw new Error(`opc 0x${cmd.opc.toString(16)} on SQ ${qid} failed: status 0x${c.status.toString(16)}`);
    return c;
  }

  /**
   * Doorbell Buffer Config: a shadow doorbell page and an EventIdx page (fresh ones, or the
   * given IOVAs); from its success on, I/O queue doorbells go through the shadow.
   */
  async enableShadowDoorbells(at: { dbs?: number; eis?: number } = {}): Promise<Completion> {
    const dbs = at.dbs ?? this.alloc(PAGE);
    const eis = at.eis ?? this.alloc(PAGE);
    const c = await this.submit(ADMIN, { opc: 0x7c, prp1: dbs, prp2: eis });
    if (c.status === 0) {
      const view = (iova: number): Uint32Array => {
        const b = this.at(iova, PAGE);
        return new Uint32Array(b.buffer, b.byteOffset, PAGE / 4);
      };
      this.shadow = { db: view(dbs), ei: view(eis), dbs, eis };
    }
    return c;
  }

  /** the shadow doorbell and EventIdx values of a doorbell slot (2 qid, 2 qid + 1) */
  shadowSlot(index: number): { db: number; ei: number } | undefined {
    const sh = this.shadow;
    return sh && { db: Atomics.load(sh.db, index), ei: Atomics.load(sh.ei, index) };
  }

  /** Resets and enables the controller with an admin queue of `depth` entries. */
  async enable(depth = 32): Promise<void> {
    await this.disable();
    this.shadow = undefined;
    const acq = this.alloc(depth * 16);
    const asq = this.alloc(depth * 64);
    this.sqs.clear();
    this.cqs.clear();
    const cq: Cq = { id: 0, iova: acq, bytes: this.at(acq, depth * 16), size: depth, head: 0, phase: 1, vector: 0, waiters: new Map() };
    this.cqs.set(0, cq);
    this.sqs.set(0, { id: 0, iova: asq, bytes: this.at(asq, depth * 64), size: depth, tail: 0, head: 0, cq, nextCid: 0 });
    await this.w32(0x24, ((depth - 1) << 16) | (depth - 1));
    await this.w64(0x28, asq);
    await this.w64(0x30, acq);
    await this.w32(0x14, (4 << 20) | (6 << 16) | 1); // IOCQES 16, IOSQES 64, MPS 4 KiB, NVM, EN
    await this.waitReady(true);
  }

  async disable(): Promise<void> {
    await this.w32(0x14, 0);
    await this.waitReady(false);
  }

  async waitReady(ready: boolean, timeoutMs = 5000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const csts = await this.r32(0x1c);
      if (csts & 2) throw new Error('controller fatal status');
      if (((csts & 1) === 1) === ready) return;
      if (Date.now() > end) throw new Error(`timeout waiting for CSTS.RDY=${ready ? 1 : 0}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Identify controller and namespace 1 into a 4 KiB buffer. */
  async identify(cns: number, nsid = 0): Promise<{ c: Completion; data: Uint8Array }> {
    const buf = this.alloc(4096);
    const c = await this.submit(ADMIN, { opc: 0x06, nsid, prp1: buf, cdw10: cns });
    return { c, data: this.at(buf, 4096).slice() };
  }

  /** Full bring-up: enable, identify, number of queues, (shadow doorbells,) I/O queue pairs 1..n. */
  async init(o: { queues?: number; depth?: number; shadow?: boolean } = {}): Promise<void> {
    await this.enable();
    const ctrl = await this.identify(1);
    if (ctrl.c.status) throw new Error('identify controller failed');
    this.identifyData = ctrl.data;
    this.mdts = ctrl.data[77]!;
    const ns = await this.identify(0, 1);
    const dv = new DataView(ns.data.buffer);
    this.nsBlocks = Number(dv.getBigUint64(0, true));
    this.lbaSize = 2 ** ((dv.getUint32(128, true) >> 16) & 0xff);
    const n = o.queues ?? 1;
    await this.ok(ADMIN, { opc: 0x09, cdw10: 0x07, cdw11: ((n - 1) << 16) | (n - 1) });
    if (o.shadow) {
      const c = await this.enableShadowDoorbells();
      if (c.status) throw new Error(`Doorbell Buffer Config failed: 0x${c.status.toString(16)}`);
    }
    for (let q = 1; q <= n; q++) await this.createQueuePair(q, o.depth ?? 64, q);
  }

  async createQueuePair(qid: number, depth: number, vector: number): Promise<void> {
    const cqIova = this.alloc(depth * 16);
    const sqIova = this.alloc(depth * 64);
    const msix = (this.opts.interrupts ?? 'msix') === 'msix';
    const iv = msix ? vector : 0;
    await this.ok(ADMIN, { opc: 0x05, prp1: cqIova, cdw10: ((depth - 1) << 16) | qid, cdw11: (iv << 16) | 3 });
    const cq: Cq = { id: qid, iova: cqIova, bytes: this.at(cqIova, depth * 16), size: depth, head: 0, phase: 1, vector: iv, waiters: new Map() };
    this.cqs.set(qid, cq);
    await this.ok(ADMIN, { opc: 0x01, prp1: sqIova, cdw10: ((depth - 1) << 16) | qid, cdw11: (qid << 16) | 1 });
    this.sqs.set(qid, { id: qid, iova: sqIova, bytes: this.at(sqIova, depth * 64), size: depth, tail: 0, head: 0, cq, nextCid: 0 });
  }

  // ------------------------------------------------------------ data pointers

  /** PRP1/PRP2 for a buffer of pages (each page's IOVA; the first may have an offset). */
  prps(pages: number[], len: number): { prp1: number; prp2: number } {
    const prp1 = pages[0]!;
    const first = PAGE - (prp1 % PAGE);
    if (len <= first) return { prp1, prp2: 0 };
    if (len <= first + PAGE) return { prp1, prp2: pages[1]! };
    const rest = pages.slice(1);
    // PRP list pages; the last entry of a full page chains to the next list page
    const perPage = PAGE / 8;
    const lists: number[] = [];
    let i = 0;
    let listIova = this.alloc(PAGE);
    const prp2 = listIova;
    for (;;) {
      lists.push(listIova);
      const l = new DataView(this.at(listIova, PAGE).buffer, this.at(listIova, PAGE).byteOffset, PAGE);
      const left = rest.length - i;
      if (left <= perPage) {
        for (let k = 0; k < left; k++) setU64(l, 8 * k, rest[i++]!);
        break;
      }
      for (let k = 0; k < perPage - 1; k++) setU64(l, 8 * k, rest[i++]!);
      listIova = this.alloc(PAGE);
      setU64(l, 8 * (perPage - 1), listIova);
    }
    return { prp1, prp2 };
  }

  /** An SGL for chunks: one data block in the command, or a chain of segments of `perSegment` blocks. */
  sgl(chunks: { iova: number; len: number }[], perSegment = 16): Uint8Array {
    if (chunks.length === 1) return sglDesc(chunks[0]!.iova, chunks[0]!.len, 0x00);
    // segments: every segment but the last ends with a descriptor for the next
    const groups: { iova: number; len: number }[][] = [];
    for (let i = 0; i < chunks.length; i += perSegment) groups.push(chunks.slice(i, i + perSegment));
    let next: Uint8Array | undefined;
    for (let g = groups.length - 1; g >= 0; g--) {
      const descs = groups[g]!.map((c) => sglDesc(c.iova, c.len, 0x00));
      if (next) descs.push(next);
      const seg = this.alloc(descs.length * 16, 16);
      descs.forEach((d, k) => this.at(seg, descs.length * 16).set(d, 16 * k));
      next = sglDesc(seg, descs.length * 16, g === groups.length - 1 ? 0x30 : 0x20);
    }
    return next!;
  }

  // ------------------------------------------------------------ I/O

  async rw(op: 'read' | 'write', qid: number, lba: number, nlb: number, dptr: { prp1?: number; prp2?: number; sgl?: Uint8Array }, extra: Partial<Command> = {}): Promise<Completion> {
    return this.submit(qid, {
      opc: op === 'read' ? 0x02 : 0x01,
      nsid: 1,
      ...dptr,
      cdw10: lba % 2 ** 32,
      cdw11: Math.floor(lba / 2 ** 32),
      cdw12: nlb - 1,
      ...extra,
    });
  }

  async flush(qid: number, nsid = 1): Promise<Completion> {
    return this.submit(qid, { opc: 0x00, nsid });
  }

  async writeZeroes(qid: number, lba: number, nlb: number): Promise<Completion> {
    return this.submit(qid, { opc: 0x08, nsid: 1, cdw10: lba % 2 ** 32, cdw11: Math.floor(lba / 2 ** 32), cdw12: nlb - 1 });
  }

  /** Dataset Management, deallocate the ranges. */
  async deallocate(qid: number, ranges: { lba: number; nlb: number }[]): Promise<Completion> {
    const buf = this.alloc(ranges.length * 16);
    const dv = new DataView(this.at(buf, ranges.length * 16).buffer, this.at(buf, 0).byteOffset, ranges.length * 16);
    ranges.forEach((r, i) => {
      dv.setUint32(16 * i + 4, r.nlb, true);
      setU64(dv, 16 * i + 8, r.lba);
    });
    return this.submit(qid, { opc: 0x09, nsid: 1, prp1: buf, cdw10: ranges.length - 1, cdw11: 0x4 });
  }

  /** Stops: disables interrupts and unmaps the doorbell page (guest memory stays the caller's). */
  close(): void {
    for (const h of this.irqs) h.close();
    this.irq?.close();
    this.unmapDoorbells?.();
    for (const cq of this.cqs.values()) cq.waiters.clear();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  /** the driver's queue bookkeeping */
  queue(qid: number): { sqTail: number; sqHead: number; cqHead: number } {
    const sq = this.sqs.get(qid)!;
    return { sqTail: sq.tail, sqHead: sq.head, cqHead: sq.cq.head };
  }
}

/** Stores a number below 2^53 as a little-endian u64. */
export function setU64(dv: DataView, off: number, v: number): void {
  dv.setUint32(off, v % 2 ** 32, true);
  dv.setUint32(off + 4, Math.floor(v / 2 ** 32), true);
}

/** A 16-byte SGL descriptor (type in the high nibble of byte 15: 0x00 data block, 0x20 segment, 0x30 last segment). */
export function sglDesc(iova: number, len: number, type: number): Uint8Array {
  const d = new Uint8Array(16);
  const dv = new DataView(d.buffer);
  setU64(dv, 0, iova);
  dv.setUint32(8, len, true);
  d[15] = type;
  return d;
}
