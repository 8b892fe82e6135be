/**
 * A poller that sleeps. While work flows it calls `step` once per event-loop turn
 * (setImmediate: sockets are still served between turns); once `step` has found nothing for
 * the poll window it calls `arm`, which publishes what makes the host notify us again
 * (EventIdx) and re-checks for work that raced with it; if there is none, the poller stops:
 * no timer, no CPU, until `kick()` (an MMIO doorbell arrived). With `idleMs` (a doorbell page
 * the host writes without notifying us) it keeps a slow unref'd timer instead of stopping.
 *
 * The window adapts, like KVM's halt polling: at each wake-up from sleep, the time since the
 * last work is the gap polling would have had to cover. A gap within `spinUs` grows the
 * window to cover it (polling would have caught that work without a notification); a longer
 * gap halves it (polling only burned CPU), down to 0. So a host that submits its next
 * command long after our completion (a guest at queue depth 1 under emulation) costs no
 * polling at all, while a stream of commands is caught by polling, without notifications.
 */
export interface PollerOptions {
  /** one pass over the doorbells; true when something moved */
  step: () => boolean;
  /** before sleeping: publish EventIdx values, re-check; true when something moved meanwhile */
  arm: () => boolean;
  /** keep polling at most this long after the last work (microseconds; 0: sleep at once) */
  spinUs: number;
  /** when asleep, poll every idleMs anyway (0: truly asleep) */
  idleMs?: number;
  /** after a polling turn that found nothing (e.g. sched_yield, so a thread queued on this CPU runs) */
  idle?: (() => void) | undefined;
}

/** arm() attempts a kick makes with a window of 0 before it falls back to a polling turn */
const KICK_ARMS = 3;

export class Poller {
  private readonly o: PollerOptions;
  private immediate: NodeJS.Immediate | undefined;
  private timer: NodeJS.Timeout | undefined;
  private last = 0;
  /** when the last work was seen before the current sleep (-1: never) */
  private lastWork = -1;
  private stopped = true;
  /** the current poll window (microseconds, 0..spinUs) */
  windowUs: number;
  /** true from kick() until arm() lets it sleep */
  polling = false;
  /** statistics: wake-ups from sleep, polling turns */
  wakeups = 0;
  turns = 0;

  constructor(o: PollerOptions) {
    this.o = o;
    this.windowUs = o.spinUs;
  }

  /** Starts (or restarts after stop()) in the sleeping state. */
  start(): void {
    this.stopped = false;
    this.sleep();
  }

  /**
   * Wakes the poller: poll again for the current window. With a window of 0 (and no idle
   * timer) there is nothing to poll for: it arms and sleeps at once, in the caller's turn,
   * unless work keeps racing with the arming (no extra event-loop turn per notification).
   */
  kick(): void {
    this.poke(true);
  }

  /**
   * Activity that comes just before work (a DMA map under a guest IOMMU: the host maps a
   * command's pages, then rings): counts as work for the window, like a kick, but only
   * schedules a polling turn, never arming in the caller's turn. So a stream of maps keeps
   * the poller polling, and the maps that follow (each a synchronous message from the host)
   * are read in a polling turn instead of waking a sleeping thread.
   */
  hint(): void {
    this.poke(false);
  }

  /** kick() (armNow) or hint() */
  private poke(armNow: boolean): void {
    if (this.stopped) return;
    this.wake(performance.now());
    if (this.immediate) return;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (armNow && this.windowUs === 0 && !this.o.idleMs) {
      // what moved meanwhile (often only a CQ head the host consumed without ringing) was
      // applied by arm(): arm again for it, a few times, before falling back to a turn
      for (let i = 0; i < KICK_ARMS; i++) {
        const raced = this.o.arm();
        if (this.stopped) return;
        if (!raced) {
          this.sleep();
          return;
        }
      }
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
    if (!moved) this.o.idle?.();
    const now = performance.now();
    if (moved) this.wake(now);
    if (!(this.polling && now - this.last < this.windowUs / 1000)) {
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
    if (!this.polling) {
      this.wakeups++;
      if (this.lastWork >= 0) this.adapt((now - this.lastWork) * 1000);
    }
    this.last = now;
    this.polling = true;
  }

  /** A wake-up came gapUs after the last work: resize the window (see the class comment). */
  private adapt(gapUs: number): void {
    const max = this.o.spinUs;
    if (gapUs <= max) this.windowUs = Math.min(max, Math.max(2 * this.windowUs, 1.25 * gapUs));
    else this.windowUs = this.windowUs < 2 ? 0 : this.windowUs / 2;
  }

  private sleep(): void {
    if (this.polling) this.lastWork = this.last;
    this.polling = false;
    if (this.o.idleMs) {
      this.timer = setTimeout(this.turn, this.o.idleMs);
      this.timer.unref();
    }
  }
}
