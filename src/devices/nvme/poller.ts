/**
 * A poller that sleeps. While work flows it calls `step` once per event-loop turn
 * (setImmediate: sockets are still served between turns); once `step` has found nothing for
 * `spinUs` microseconds it calls `arm`, which publishes what makes the host notify us again
 * (EventIdx) and re-checks for work that raced with it; if there is none, the poller stops:
 * no timer, no CPU, until `kick()` (an MMIO doorbell arrived). With `idleMs` (a doorbell page
 * the host writes without notifying us) it keeps a slow unref'd timer instead of stopping.
 */
export interface PollerOptions {
  /** one pass over the doorbells; true when something moved */
  step: () => boolean;
  /** before sleeping: publish EventIdx values, re-check; true when something moved meanwhile */
  arm: () => boolean;
  /** keep polling this long after the last work (microseconds; 0: sleep at once) */
  spinUs: number;
  /** when asleep, poll every idleMs anyway (0: truly asleep) */
  idleMs?: number;
}

export class Poller {
  private readonly o: PollerOptions;
  private immediate: NodeJS.Immediate | undefined;
  private timer: NodeJS.Timeout | undefined;
  private last = 0;
  private stopped = true;
  /** true from kick() until arm() lets it sleep */
  polling = false;
  /** statistics: wake-ups from sleep, polling turns */
  wakeups = 0;
  turns = 0;

  constructor(o: PollerOptions) {
    this.o = o;
  }

  /** Starts (or restarts after stop()) in the sleeping state. */
  start(): void {
    this.stopped = false;
    this.sleep();
  }

  /** Wakes the poller: poll again for at least spinUs. */
  kick(): void {
    if (this.stopped) return;
    this.wake(performance.now());
    if (this.immediate) return;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.immediate = setImmediate(this.turn);
  }

  /** Cancels every pending turn or timer; nothing runs until start(). */
  stop(): void {
    this.stopped = true;
    this.polling = false;
    if (this.immediate) clearImmediate(this.immediate);
    if (this.timer) clearTimeout(this.timer);
    this.immediate = undefined;
    this.timer = undefined;
  }

  /** true while a turn or timer is pending (for tests: nothing leaks after stop) */
  get pending(): boolean {
    return this.immediate !== undefined || this.timer !== undefined;
  }

  private readonly turn = (): void => {
    this.immediate = undefined;
    this.timer = undefined;
    if (this.stopped) return;
    this.turns++;
    const moved = this.o.step();
    if (this.stopped) return; // step may reset the controller
    const now = performance.now();
    if (moved) this.wake(now);
    if (!(this.polling && now - this.last < this.o.spinUs / 1000)) {
      const raced = this.o.arm();
      if (this.stopped) return;
      if (!raced) {
        this.sleep();
        return;
      }
      this.wake(now);
    }
    this.immediate = setImmediate(this.turn);
  };

  private wake(now: number): void {
    this.last = now;
    if (!this.polling) this.wakeups++;
    this.polling = true;
  }

  private sleep(): void {
    this.polling = false;
    if (this.o.idleMs) {
      this.timer = setTimeout(this.turn, this.o.idleMs);
      this.timer.unref();
    }
  }
}
