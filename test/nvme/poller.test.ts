/**
 * The NVMe poller's adaptive window (src/devices/nvme/poller.ts): work that arrives long after
 * the last one shrinks the window to nothing (no CPU spent polling for a host that is slow to
 * submit), work that arrives soon after grows it to cover the gap.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Poller } from '../../src/devices/nvme/poller.js';
import { delay, waitFor } from '../helpers.js';

function asleep(p: Poller): Promise<void> {
  return waitFor(() => !p.polling && !p.pending, 'the poller to sleep');
}

describe('nvme poller', () => {
  test('gaps longer than the window shrink it to 0: then a kick arms and sleeps at once, with no turn', async () => {
    let arms = 0;
    const p = new Poller({ step: () => false, arm: () => (arms++, false), spinUs: 1000 });
    p.start();
    try {
      assert.equal(p.windowUs, 1000);
      for (let i = 0; i < 12; i++) {
        p.kick();
        await asleep(p);
        await delay(10); // a 10 ms gap: far beyond the 1 ms the window may reach
      }
      assert.equal(p.windowUs, 0);
      const turns = p.turns;
      p.kick();
      assert.equal(p.polling || p.pending, false, 'asleep when kick() returns');
      assert.equal(p.turns, turns, 'no turn');
      assert.equal(arms, 13);
    } finally {
      p.stop();
    }
  });

  test('with a window of 0, kick() arms again after work that raced with arming; work that keeps racing gets a turn', async () => {
    let races = 1;
    let steps = 0;
    let arms = 0;
    const p = new Poller({ step: () => (steps++, false), arm: () => (arms++, races-- > 0), spinUs: 0 });
    p.start();
    try {
      p.kick();
      assert.equal(arms, 2, 'armed again once');
      assert.equal(p.polling || p.pending, false, 'then asleep, no turn');
      races = 100;
      p.kick();
      assert.equal(p.pending, true, 'a turn scheduled');
      races = 0;
      await asleep(p);
      assert.ok(steps >= 1, 'the turn polled');
    } finally {
      p.stop();
    }
  });

  test('a gap within the maximum grows the window to cover it; never past the maximum', async () => {
    const p = new Poller({ step: () => false, arm: () => false, spinUs: 1_000_000 });
    p.start();
    try {
      p.windowUs = 0;
      p.kick();
      const kicked = performance.now();
      await asleep(p);
      // a gap of at least 2 ms after the last work, within the 1 s maximum (measured: a timer of
      // 2 ms may fire after less, counted from the loop's cached time)
      await waitFor(() => performance.now() - kicked >= 2, 'a 2 ms gap');
      p.kick();
      assert.ok(p.windowUs >= 2000 * 1.25 && p.windowUs <= 1_000_000, `window ${p.windowUs} µs`);
      await asleep(p);
      const w = p.windowUs;
      p.kick(); // at once: the window doubles (or covers the gap), bounded by the maximum
      assert.ok(p.windowUs >= Math.min(2 * w, 1_000_000) && p.windowUs <= 1_000_000);
    } finally {
      p.stop();
    }
  });

  test('idle runs after each polling turn that found nothing, never after one that found work', async () => {
    let work = 3; // the first three passes find something
    const log: string[] = [];
    const p = new Poller({
      step: () => (log.push('step'), work-- > 0),
      arm: () => (log.push('arm'), false),
      spinUs: 2000,
      idle: () => log.push('idle'),
    });
    p.start();
    try {
      p.kick();
      await asleep(p);
      const steps = log.filter((x) => x === 'step').length;
      const idles = log.filter((x) => x === 'idle').length;
      assert.ok(steps > 3, `polled on after the work (${steps} passes)`);
      assert.equal(idles, steps - 3, 'one idle per empty pass');
      assert.deepEqual(log.slice(0, 4), ['step', 'step', 'step', 'step'], 'no idle after the passes that found work');
      assert.equal(log[4], 'idle');
      assert.equal(log[log.length - 1], 'arm', 'armed, then asleep');
    } finally {
      p.stop();
    }
  });

  test('hint() polls from the next turn (never arming in the caller\'s), and hints close together grow the window', async () => {
    let arms = 0;
    // a 1 s maximum: the gap between the two hints is within it however slow this machine is
    const p = new Poller({ step: () => false, arm: () => (arms++, false), spinUs: 1_000_000 });
    p.start();
    try {
      p.windowUs = 0;
      p.hint();
      assert.equal(arms, 0, 'nothing armed in the caller\'s turn');
      assert.equal(p.pending, true, 'a polling turn scheduled');
      await new Promise((res) => setImmediate(res)); // after the poller's turn, queued first
      assert.equal(arms, 1, 'armed by the turn');
      assert.equal(p.polling || p.pending, false, 'then asleep');
      p.hint(); // at once: a gap far within the maximum
      assert.ok(p.windowUs > 0, `the window grew (${p.windowUs} µs)`);
      await asleep(p);
    } finally {
      p.stop();
    }
    p.hint();
    assert.equal(p.pending, false, 'a stopped poller ignores hints');
  });
});
