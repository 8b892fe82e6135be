/** The bytes (and duplicated fds) a connection could not write yet, in order. */
export interface QueuedWrite {
  data: Uint8Array;
  fds: number[] | null; // duplicated fds owned by the queue
}

/** A FIFO with O(1) shift (Array.shift is O(n): a long backlog would make flushing quadratic). */
export class WriteQueue {
  /** slots before `head` are cleared (undefined) so the queue does not hold sent buffers */
  private a: (QueuedWrite | undefined)[] = [];
  private head = 0;
  get length(): number {
    return this.a.length - this.head;
  }
  at(i: number): QueuedWrite {
    return this.a[this.head + i]!;
  }
  push(w: QueuedWrite): void {
    this.a.push(w);
  }
  shift(): void {
    this.a[this.head++] = undefined;
    if (this.head === this.a.length) {
      this.a = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.a.length) {
      this.a = this.a.slice(this.head);
      this.head = 0;
    }
  }
  items(): QueuedWrite[] {
    const out: QueuedWrite[] = [];
    for (let i = 0; i < this.length; i++) out.push(this.at(i));
    return out;
  }
}
