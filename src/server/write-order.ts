/**
 * Keeps interrupts behind the DMA writes that precede them.
 *
 * When guest memory is not shared, a DMA write is a DMA_WRITE message the client answers
 * once the data is in guest memory, while an interrupt is an eventfd the client may see
 * first (QEMU handles both in its main loop, in no fixed order). A device that writes a
 * completion and raises its interrupt at once would let the guest look before the data is
 * there. Every message-based write takes a ticket when it starts; an interrupt raised while
 * writes are outstanding waits until every write started before it has been answered
 * (successfully or not), and interrupts keep their order among themselves.
 */
export class WriteOrder {
  private started = 0;
  /** every ticket up to this one has finished */
  private finishedUpTo = 0;
  private readonly finished = new Set<number>();
  private readonly waiting: { after: number; run: () => void }[] = [];
  private head = 0;

  /** Called when a message-based write starts; pass the ticket to end(). */
  begin(): number {
    return ++this.started;
  }

  /** Called when that write has been answered or has failed. */
  end(ticket: number): void {
    this.finished.add(ticket);
    while (this.finished.delete(this.finishedUpTo + 1)) this.finishedUpTo++;
    this.release();
  }

  /** true while some write started earlier has not finished */
  get pending(): boolean {
    return this.finishedUpTo !== this.started;
  }

  /**
   * Runs fn now when no write is outstanding and nothing waits, else once every write started
   * so far has finished (after the functions queued before it). Returns true when it ran now.
   */
  after(fn: () => void): boolean {
    if (!this.pending && this.head === this.waiting.length) {
      fn();
      return true;
    }
    this.waiting.push({ after: this.started, run: fn });
    return false;
  }

  /** Drops whatever waits (the client is gone: its interrupt fds are closed). */
  clear(): void {
    this.waiting.length = 0;
    this.head = 0;
  }

  private release(): void {
    while (this.head < this.waiting.length && this.waiting[this.head]!.after <= this.finishedUpTo) {
      const w = this.waiting[this.head++]!;
      w.run();
    }
    if (this.head === this.waiting.length) {
      this.waiting.length = 0;
      this.head = 0;
    }
  }
}
