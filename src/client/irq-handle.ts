/**
 * A client's handle on the eventfds of some vectors of one IRQ index (see IrqHandle).
 */
import { EventEmitter } from 'node:events';
import { native } from '../native/index.js';
import { closeFds } from '../transport/connection.js';
import { VfioUserError, Errno } from '../errors.js';
import type { VfioUserClient } from './client.js';

/** How long IrqHandle.next() may wait. */
export interface IrqWaitOptions {
  /** give up after this many ms */
  timeoutMs?: number;
  /** give up when this signal aborts */
  signal?: AbortSignal;
}

interface Waiter {
  resolve: (v: number) => void;
  reject: (e: Error) => void;
}

/**
 * The eventfds of vectors [start, start+count) of one IRQ index.
 *
 * Delivery: the 'irq' event (vector, count) for every signal, and next() / `for await` for
 * pull-style consumers. Signals nobody pulled yet are kept per vector (coalesced like a real
 * interrupt line: a vector is queued at most once until it is pulled).
 *
 * Lifetime: close() disables nothing on the server (use disableIrqs) but stops delivery,
 * closes the eventfds, rejects waiting next() calls and ends iterators. When the connection
 * dies the handle is *detached*: eventfds closed, waiting next() calls and iterators fail with
 * VFU_DISCONNECTED; VfioUserClient.reconnect() then re-binds the same handle to new eventfds
 * on the new connection, so 'irq' listeners keep working and next()/iteration can resume.
 */
export interface IrqHandle extends EventEmitter, AsyncIterable<number> {
  readonly index: number;
  readonly start: number;
  readonly count: number;
  /** the current eventfds (empty while detached or closed) */
  readonly eventfds: readonly number[];
  /** 'active', 'detached' (connection lost, may be re-bound by reconnect) or 'closed' */
  readonly state: 'active' | 'detached' | 'closed';
  /**
   * fires with the vector each time the server signals it; count: the eventfd's counter, the
   * signals it coalesced when the server adds 1 each time (exact whatever it added: a bigint)
   */
  on(event: 'irq', listener: (vector: number, count: bigint) => void): this;
  /** fires when reconnect() re-bound this handle to a new connection */
  on(event: 'rebound', listener: (client: VfioUserClient) => void): this;
  off(event: 'irq', listener: (vector: number, count: bigint) => void): this;
  /**
   * Resolves with the next vector signalled. With `timeoutMs` it rejects with VFU_TIMEOUT, with
   * `signal` with VFU_ABORTED (cause: the signal's reason); a wait given up that way takes
   * nothing: the next signal goes to the next wait.
   */
  next(opts?: IrqWaitOptions): Promise<number>;
  close(): void;
}

export class IrqHandleImpl extends EventEmitter implements IrqHandle {
  readonly index: number;
  readonly start: number;
  readonly count: number;
  private fds: number[] = [];
  private pollers: { close(): void }[] = [];
  private waiters: Waiter[] = [];
  private backlog: number[] = [];
  private st: 'active' | 'detached' | 'closed' = 'detached';
  private detachedErr: VfioUserError | undefined;
  private owner: VfioUserClient | undefined;

  constructor(index: number, start: number, count: number) {
    super();
    this.index = index;
    this.start = start;
    this.count = count;
  }

  get eventfds(): readonly number[] {
    return this.fds;
  }

  get state(): 'active' | 'detached' | 'closed' {
    return this.st;
  }

  /** binds to a client's new eventfds */
  attach(owner: VfioUserClient, fds: number[]): void {
    this.owner = owner;
    owner.adoptIrqHandle(this);
    this.fds = fds;
    this.st = 'active';
    this.detachedErr = undefined;
    fds.forEach((fd, i) => {
      const p = native.createPoller(fd, (status) => {
        if (status < 0 || this.st !== 'active') return;
        let n: bigint;
        try {
          n = native.eventfdRead(fd);
        } catch {
          return;
        }
        if (n === 0n) return;
        const vector = this.start + i;
        const w = this.waiters.shift();
        if (w) w.resolve(vector);
        else if (!this.backlog.includes(vector)) this.backlog.push(vector);
        this.emit('irq', vector, n);
      });
      p.start(native.POLL_READABLE);
      p.unref();
      this.pollers.push(p);
    });
  }

  /** re-binds an active handle to another client's eventfds, keeping waiters */
  moveTo(owner: VfioUserClient, fds: number[]): void {
    this.release();
    this.attach(owner, fds);
  }

  private release(): void {
    for (const p of this.pollers) p.close();
    this.pollers = [];
    closeFds(this.fds);
    this.fds = [];
  }

  /** the connection is gone: stop, fail waiters, keep listeners for a re-bind */
  detach(err: VfioUserError): void {
    if (this.st !== 'active') return;
    this.st = 'detached';
    this.detachedErr = err;
    this.release();
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w.reject(err);
  }

  next(opts: IrqWaitOptions = {}): Promise<number> {
    const b = this.backlog.shift();
    if (b !== undefined) return Promise.resolve(b);
    if (this.st === 'closed') return Promise.reject(new VfioUserError('VFU_BAD_STATE', 'IRQ handle closed', Errno.EBADF));
    if (this.st === 'detached') {
      return Promise.reject(this.detachedErr ?? new VfioUserError('VFU_DISCONNECTED', 'IRQ handle detached', Errno.ENOTCONN));
    }
    const { timeoutMs, signal } = opts;
    if (signal?.aborted) return Promise.reject(aborted(signal));
    if (timeoutMs === undefined && !signal) return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      // giving up removes the waiter: a signal that comes later is queued for the next wait
      const giveUp = (e: Error): void => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        done();
        reject(e);
      };
      const onAbort = (): void => giveUp(aborted(signal!));
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const w: Waiter = {
        resolve: (v) => {
          done();
          resolve(v);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      };
      this.waiters.push(w);
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => giveUp(new VfioUserError('VFU_TIMEOUT', `no interrupt on IRQ index ${this.index} within ${timeoutMs} ms`, Errno.EAGAIN)), timeoutMs);
      }
    });
  }

  /** Yields vectors as they are signalled; ends when the handle is closed, throws VFU_DISCONNECTED when detached. */
  [Symbol.asyncIterator](): AsyncIterator<number> {
    return {
      next: async (): Promise<IteratorResult<number>> => {
        try {
          return { value: await this.next(), done: false };
        } catch (e) {
          if (e instanceof VfioUserError && e.code === 'VFU_BAD_STATE') return { value: undefined, done: true };
          throw e;
        }
      },
      return: async (): Promise<IteratorResult<number>> => ({ value: undefined, done: true }),
    };
  }

  close(): void {
    if (this.st === 'closed') return;
    const wasActive = this.st === 'active';
    this.st = 'closed';
    if (wasActive) this.release();
    this.backlog = [];
    const ws = this.waiters;
    this.waiters = [];
    const err = new VfioUserError('VFU_BAD_STATE', 'IRQ handle closed', Errno.EBADF);
    for (const w of ws) w.reject(err);
    this.owner?.dropIrqHandle(this);
  }
}

function aborted(signal: AbortSignal): VfioUserError {
  return new VfioUserError('VFU_ABORTED', 'wait for an interrupt aborted', Errno.EINTR, { cause: signal.reason });
}
