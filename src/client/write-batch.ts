/**
 * Batches of small region writes sent as REGION_WRITE_MULTI (see VfioUserClient.batch).
 */
import * as P from '../protocol/index.js';
import type { VfioUserClient } from './client.js';

/** Collects small writes into REGION_WRITE_MULTI messages (see VfioUserClient.batch). */
export interface WriteBatch {
  /**
   * Queues a write (≤ 8 bytes go into WRITE_MULTI entries; larger ones flush the queue and go
   * as REGION_WRITE, keeping order). Resolves when the message holding it is acknowledged
   * (at once for posted batches, after the message is queued).
   */
  write(region: number, offset: number, data: Uint8Array): Promise<void>;
  /** sends what is queued now; resolves when every write so far is done */
  flush(): Promise<void>;
  /** writes queued and not yet sent */
  readonly queued: number;
  /** WRITE_MULTI messages sent so far */
  readonly messages: number;
}

export class WriteBatchImpl implements WriteBatch {
  private q: { region: number; offset: number; data: Uint8Array; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private scheduled = false;
  private inflight: Promise<unknown>[] = [];
  private sent = 0;
  private readonly max: number;

  constructor(
    private readonly c: VfioUserClient,
    private readonly opts: { posted?: boolean; maxEntries?: number },
  ) {
    this.max = Math.max(1, Math.min(opts.maxEntries ?? Infinity, c.writeMultiMaxEntries));
  }

  get queued(): number {
    return this.q.length;
  }

  get messages(): number {
    return this.sent;
  }

  write(region: number, offset: number, data: Uint8Array): Promise<void> {
    if (data.length > P.WRITE_MULTI_MAX_DATA) {
      this.send();
      const p = this.c.write(region, offset, data, { posted: this.opts.posted });
      this.track(p);
      return p;
    }
    const p = new Promise<void>((resolve, reject) => this.q.push({ region, offset, data: data.slice(), resolve, reject }));
    p.catch(() => {}); // a caller may rely on flush() alone
    if (this.q.length >= this.max) this.send();
    else if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => {
        this.scheduled = false;
        this.send();
      });
    }
    return p;
  }

  private track(p: Promise<unknown>): void {
    p.catch(() => {}); // failures surface through the write's own promise and flush()
    this.inflight.push(p);
  }

  private send(): void {
    while (this.q.length) {
      const chunk = this.q.splice(0, this.max);
      if (this.c.serverCaps.writeMultiple) this.sent++;
      const p = this.c.writeMulti(chunk, { posted: this.opts.posted });
      this.track(p);
      void p.then(
        () => chunk.forEach((e) => e.resolve()),
        (e: unknown) => chunk.forEach((x) => x.reject(e)),
      );
    }
  }

  /** Sends the queue; rejects with the first failure among the writes since the last flush. */
  async flush(): Promise<void> {
    this.send();
    const ps = this.inflight;
    this.inflight = [];
    await Promise.all(ps);
  }
}
