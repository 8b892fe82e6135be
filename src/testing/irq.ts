/**
 * Interrupt assertions: record what a device signals on the client's interrupt eventfds and
 * wait for it with a timeout, without ever losing an interrupt that arrived before the wait.
 */
import { VfioUserError, Errno } from '../errors.js';

/** Options of the waits: how long, and a signal to give up early. */
export interface WaitOptions {
  /** give up after this many ms (default 5000) */
  timeoutMs?: number;
  /** give up when this signal aborts */
  signal?: AbortSignal;
}

/** Thrown when a wait of the test kit runs out of time (code VFU_TIMEOUT, errno ETIMEDOUT). */
export class WaitTimeoutError extends VfioUserError {
  constructor(message: string) {
    super('VFU_TIMEOUT', message, Errno.ETIMEDOUT);
    this.name = 'WaitTimeoutError';
  }
}

/** What an IrqRecorder listens to: an IrqHandle, or a stand-in with the same `irq` events. */
export interface IrqSource {
  on(event: 'irq', listener: (vector: number, count: bigint) => void): unknown;
  off(event: 'irq', listener: (vector: number, count: bigint) => void): unknown;
}

/**
 * Waits until `cond()` is true (or resolves true), checking every `intervalMs` (default 1 ms):
 * for conditions that have no event to wait for, instead of sleeping a fixed time.
 */
export async function waitUntil(cond: () => boolean | Promise<boolean>, opts: WaitOptions & { intervalMs?: number; what?: string } = {}): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const end = Date.now() + timeoutMs;
  for (;;) {
    opts.signal?.throwIfAborted();
    if (await cond()) return;
    if (Date.now() > end) throw new WaitTimeoutError(`${opts.what ?? 'condition'} not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 1));
  }
}

interface Waiter {
  vector: number | undefined;
  resolve: (vector: number) => void;
}

/**
 * Counts the interrupts a client receives, per vector, from the moment it is created.
 *
 * Signals are queued per vector; {@link IrqRecorder.next} takes one (waiting for it if none is
 * queued), so an interrupt that arrives between a trigger and the wait is never lost, and two
 * signals the eventfd coalesced count as two. (A counter beyond `Number.MAX_SAFE_INTEGER`,
 * which only a server adding huge values to the eventfd produces, counts as that many.)
 *
 * ```ts
 * const h = await client.enableIrqs(IrqIndex.MSIX, 4);
 * using irqs = new IrqRecorder(h);
 * await client.write(0, 0x10, u32(1));      // the device raises vector 2
 * await irqs.next(2, { timeoutMs: 1000 });  // or throws WaitTimeoutError
 * await irqs.expectNone(3, 50);             // nothing on vector 3 within 50 ms
 * ```
 */
export class IrqRecorder implements Disposable {
  private readonly total = new Map<number, number>();
  private readonly pending = new Map<number, number>();
  private readonly waiters = new Set<Waiter>();
  private readonly handles: { h: IrqSource; fn: (vector: number, count: bigint) => void }[] = [];

  /** Starts recording the given handles' interrupts. */
  constructor(...handles: IrqSource[]) {
    for (const h of handles) this.watch(h);
  }

  /** Records this handle's interrupts too. */
  watch(h: IrqSource): this {
    const fn = (vector: number, count: bigint): void => this.record(vector, count);
    h.on('irq', fn);
    this.handles.push({ h, fn });
    return this;
  }

  private record(vector: number, count: bigint): void {
    const n = count > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Math.max(1, Number(count));
    this.total.set(vector, (this.total.get(vector) ?? 0) + n);
    this.pending.set(vector, (this.pending.get(vector) ?? 0) + n);
    for (const w of this.waiters) {
      if (w.vector !== undefined && w.vector !== vector) continue;
      const got = this.takePending(w.vector);
      if (got === undefined) break;
      this.waiters.delete(w);
      w.resolve(got);
    }
  }

  private takePending(vector: number | undefined): number | undefined {
    for (const [v, n] of this.pending) {
      if (vector !== undefined && v !== vector) continue;
      if (n <= 0) continue;
      this.pending.set(v, n - 1);
      return v;
    }
    return undefined;
  }

  /** Signals received on `vector` since recording began (or on every vector, when omitted). */
  count(vector?: number): number {
    if (vector !== undefined) return this.total.get(vector) ?? 0;
    let n = 0;
    for (const c of this.total.values()) n += c;
    return n;
  }

  /** Signals received and not yet taken by {@link IrqRecorder.next}, per vector. */
  get queued(): ReadonlyMap<number, number> {
    return new Map([...this.pending].filter(([, n]) => n > 0));
  }

  /**
   * Takes one signal of `vector` (of any vector when omitted), waiting for it if none is queued;
   * resolves with the vector. Throws {@link WaitTimeoutError} after `timeoutMs` (default 5000).
   */
  next(vector?: number, opts: WaitOptions = {}): Promise<number> {
    const v = this.takePending(vector);
    if (v !== undefined) return Promise.resolve(v);
    const timeoutMs = opts.timeoutMs ?? 5000;
    return new Promise<number>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(t);
        opts.signal?.removeEventListener('abort', abort);
        this.waiters.delete(w);
      };
      const w: Waiter = { vector, resolve: (got) => (done(), resolve(got)) };
      const t = setTimeout(() => {
        done();
        reject(new WaitTimeoutError(`no interrupt${vector === undefined ? '' : ` on vector ${vector}`} within ${timeoutMs} ms (${this.describe()})`));
      }, timeoutMs);
      const abort = (): void => {
        done();
        const reason: unknown = opts.signal?.reason; // whatever abort() was given
        reject(reason);
      };
      if (opts.signal?.aborted) return abort();
      opts.signal?.addEventListener('abort', abort, { once: true });
      this.waiters.add(w);
    });
  }

  /** Waits until `vector` has been signalled `total` times in all since recording began. */
  async waitCount(vector: number, total: number, opts: WaitOptions = {}): Promise<void> {
    await waitUntil(() => this.count(vector) >= total, { ...opts, what: `${total} interrupts on vector ${vector} (${this.describe()})` });
  }

  /**
   * Throws if `vector` (any vector, when omitted) is signalled within `ms`, or has a signal
   * queued already. Only as good as the time given: use it after the device had every chance
   * to raise the interrupt, for example after a read of its register that would have done so.
   */
  async expectNone(vector: number | undefined, ms: number): Promise<void> {
    const before = this.count(vector);
    const queued = vector === undefined ? [...this.queued.values()].reduce((a, b) => a + b, 0) : (this.queued.get(vector) ?? 0);
    if (queued) throw new Error(`unexpected interrupt${vector === undefined ? '' : ` on vector ${vector}`} (${this.describe()})`);
    await new Promise((r) => setTimeout(r, ms));
    if (this.count(vector) !== before) throw new Error(`unexpected interrupt${vector === undefined ? '' : ` on vector ${vector}`} within ${ms} ms (${this.describe()})`);
  }

  /** Drops the queued signals (the counts stay). */
  clear(): void {
    this.pending.clear();
  }

  /** e.g. "seen: vector 0 x2, vector 3 x1" */
  describe(): string {
    const seen = [...this.total].sort(([a], [b]) => a - b).map(([v, n]) => `vector ${v} x${n}`);
    return seen.length ? `seen: ${seen.join(', ')}` : 'none seen';
  }

  /** Stops recording (the handles stay open). */
  close(): void {
    for (const { h, fn } of this.handles) h.off('irq', fn);
    this.handles.length = 0;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
