/**
 * Reply matching for a Connection: the requests awaiting a reply by message id, their
 * timeouts, and the tombstones that keep a timed-out request's id reserved for its late reply.
 */
import { VfioUserError, Errno } from '../errors.js';
import { closeFds, type Message } from './message.js';

export interface Pending {
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  command: number;
  expectFds: boolean;
  timer: ReturnType<typeof setTimeout> | undefined;
  /** performance.now() when sent */
  sent: number;
  /** a timed-out request: its id is reserved (see ConnectionOptions.tombstoneMs) */
  tombstone?: true;
}

/** The requests of one connection that await a reply, by message id (16 bits). */
export class RequestTable {
  private readonly pending = new Map<number, Pending>();
  /** ids of timed-out requests (also in pending) -> when they expire; in expiry order */
  private readonly tombs = new Map<number, number>();
  private readonly tombstoneMs: number;
  private readonly maxTombstones: number;
  private nextId = 0;

  constructor(tombstoneMs: number, maxTombstones: number) {
    this.tombstoneMs = tombstoneMs;
    this.maxTombstones = maxTombstones;
  }

  /** requests awaiting a reply (timed-out ones whose id is still reserved included) */
  get size(): number {
    return this.pending.size;
  }

  /** ids of timed-out requests still reserved for a late reply */
  get tombstones(): number {
    this.expire();
    return this.tombs.size;
  }

  /** Frees the ids of tombstones past their age, and the oldest beyond maxTombstones. */
  private expire(): void {
    if (this.tombs.size === 0) return;
    const now = Date.now();
    for (const [id, expires] of this.tombs) {
      if (expires > now && this.tombs.size <= this.maxTombstones) break;
      this.tombs.delete(id);
      if (this.pending.get(id)?.tombstone) this.pending.delete(id);
    }
  }

  /** A free id for a request (VFU_BUSY when all 65,536 are in flight). */
  allocId(): number {
    this.expire();
    if (this.pending.size >= 0x10000) {
      throw new VfioUserError('VFU_BUSY', 'all 65536 message ids are in flight', Errno.EBUSY);
    }
    for (;;) {
      const id = this.postId();
      if (!this.pending.has(id)) return id;
    }
  }

  /** The next id, for a command that gets no reply (not reserved). */
  postId(): number {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff;
    return id;
  }

  /**
   * Adds a request sent with `id`. With `timeoutMs` it fails with VFU_TIMEOUT then, and its id
   * stays reserved by a tombstone: a late reply must not match nothing (that fails the
   * connection) nor a new request given the same id.
   */
  add(id: number, p: Pending, timeoutMs: number | undefined): void {
    this.pending.set(id, p);
    if (timeoutMs === undefined) return;
    p.timer = setTimeout(() => {
      if (this.pending.get(id) !== p) return;
      this.pending.set(id, { ...p, resolve: (m) => closeFds(m.fds), reject: () => {}, timer: undefined, tombstone: true });
      this.tombs.set(id, Date.now() + this.tombstoneMs);
      this.expire();
      p.reject(new VfioUserError('VFU_TIMEOUT', `no reply to command ${p.command} within ${timeoutMs} ms`, Errno.EAGAIN));
    }, timeoutMs);
  }

  /** Drops a request that could not be sent. */
  remove(id: number, p: Pending): void {
    if (this.pending.get(id) === p) this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
  }

  /** The request a reply answers, taken out; undefined when none has that id and command. */
  take(id: number, command: number): Pending | undefined {
    const p = this.pending.get(id);
    if (!p || p.command !== command) return undefined;
    this.pending.delete(id);
    if (p.tombstone) this.tombs.delete(id);
    if (p.timer) clearTimeout(p.timer);
    return p;
  }

  /** Fails every request with the error `why` makes (the connection closed). */
  rejectAll(why: () => Error): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.tombs.clear();
    for (const p of pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(why());
    }
  }
}
