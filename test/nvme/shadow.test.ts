/**
 * Shadow doorbells and EventIdx (Doorbell Buffer Config) and the poller that sleeps: the
 * in-test driver behaves like Linux's nvme driver (shadow first, MMIO doorbell only when the
 * EventIdx asks for it), against the controller served in this process.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN, GUARD, pattern, sc, type NvmeDriver } from '../../src/testing/index.js';
import { rig } from './rig.js';
import { needEvent, DoorbellTracker } from '../../src/devices/nvme/shadow.js';
import { delay, waitFor } from '../helpers.js';
import { GuestMemory } from '../../src/client/guest-memory.js';

/** writes then reads back `n` 4 KiB blocks on queue q at depth qd, checking the data */
async function io(d: NvmeDriver, q: number, n: number, qd: number, base = 0): Promise<void> {
  const bufs = Array.from({ length: qd }, () => d.alloc(4096));
  for (const op of ['write', 'read'] as const) {
    let next = 0;
    await Promise.all(
      bufs.map(async (buf) => {
        for (let i = next++; i < n; i = next++) {
          const lba = base + i * 8;
          if (op === 'write') d.at(buf, 4096).set(pattern(4096, lba));
          else d.at(buf, 4096).fill(0);
          const c = await d.rw(op, q, lba, 8, { prp1: buf });
          assert.equal(c.status, 0, `${op} ${i}`);
          if (op === 'read') assert.ok(Buffer.from(d.at(buf, 4096)).equals(Buffer.from(pattern(4096, lba))), `data ${i}`);
        }
      }),
    );
  }
}


describe('nvme shadow doorbells: EventIdx arithmetic', () => {
  test('needEvent is true exactly when the EventIdx lies in [old, new), 16-bit wrap included', () => {
    assert.equal(needEvent(5, 6, 5), true);
    assert.equal(needEvent(5, 5, 4), false);
    assert.equal(needEvent(4, 8, 5), false);
    assert.equal(needEvent(7, 8, 5), true);
    // the queue pointer wraps (mod queue size, not mod 2^16): old 62 -> new 3 on a 64-entry queue
    assert.equal(needEvent(63, 3, 62), true);
    assert.equal(needEvent(0, 3, 62), true);
    assert.equal(needEvent(2, 3, 62), true);
    assert.equal(needEvent(3, 3, 62), false);
    assert.equal(needEvent(61, 3, 62), false);
    // 16-bit wrap of the values themselves
    assert.equal(needEvent(0xffff, 1, 0xfffe), true);
    assert.equal(needEvent(1, 1, 0xfffe), false);
  });

  test('the tracker takes every new, valid shadow value; a repeated or out-of-range one is nothing', () => {
    const t = new DoorbellTracker(10);
    assert.equal(t.fromShadow(10, 64), -1, 'unchanged');
    assert.equal(t.fromShadow(14, 64), 14);
    assert.equal(t.fromShadow(14, 64), -1);
    assert.equal(t.fromShadow(2, 64), 2, 'across the wrap');
    assert.equal(t.fromShadow(64, 64), -1, 'out of range: ignored');
    assert.equal(t.fromShadow(3, 64), 3);
  });
});

describe('nvme shadow doorbells', () => {
  test('OACS bit 8; I/O through the shadows: data verified, most doorbells skipped, the poller sleeps after', async () => {
    const r = await rig({}, {}, { queues: 2, depth: 64, shadow: true });
    try {
      const id = r.d.identifyData!;
      assert.equal((id[256]! | (id[257]! << 8)) & 0x100, 0x100, 'OACS: Doorbell Buffer Config');
      const before = { ...r.d.doorbellStats };
      await io(r.d, 1, 400, 32);
      await io(r.d, 2, 100, 1, 8000);
      const rung = r.d.doorbellStats.rung - before.rung;
      const skipped = r.d.doorbellStats.skipped - before.skipped;
      assert.ok(skipped > rung, `more doorbells skipped (${skipped}) than rung (${rung})`);
      // quiet: the poller publishes EventIdx = tail (ring on the next entry) and stops
      await waitFor(() => !r.dev.pollStats.polling && !r.dev.pollStats.pending, 'the poller to sleep');
      const q = r.d.queue(1);
      assert.deepEqual(r.d.shadowSlot(2), { db: q.sqTail, ei: q.sqTail }, 'SQ 1: EventIdx at the tail');
      const turns = r.dev.pollStats.turns;
      await delay(50); // proves a negative (nothing to wait for): no turn runs while idle
      assert.equal(r.dev.pollStats.turns, turns, 'no polling while idle');
      // and the next I/O wakes it with one ring
      const rungBefore = r.d.doorbellStats.rung;
      await io(r.d, 1, 1, 1);
      assert.ok(r.d.doorbellStats.rung > rungBefore);
    } finally {
      await r.close();
    }
  });

  test('a DMA map or unmap wakes the sleeping poller (a guest IOMMU maps before it rings); the user\'s onChange still fires', async () => {
    const r = await rig({}, {}, { queues: 1, depth: 16, shadow: true });
    const mem = new GuestMemory(1 << 16);
    try {
      await io(r.d, 1, 4, 1);
      await waitFor(() => !r.dev.pollStats.polling && !r.dev.pollStats.pending, 'the poller to sleep');
      const seen: string[] = [];
      r.dev.dma.onChange = (what) => seen.push(what);
      const w0 = r.dev.pollStats.wakeups;
      await r.client.dmaMap(mem, 0x7000_0000);
      assert.ok(r.dev.pollStats.wakeups > w0, 'the map woke the poller');
      await waitFor(() => !r.dev.pollStats.polling && !r.dev.pollStats.pending, 'the poller to sleep again');
      const w1 = r.dev.pollStats.wakeups;
      await r.client.dmaUnmap(0x7000_0000, 1 << 16);
      assert.ok(r.dev.pollStats.wakeups > w1, 'the unmap woke it');
      assert.deepEqual(seen, ['map', 'unmap'], 'onChange is the user\'s, untouched');
      await waitFor(() => !r.dev.pollStats.polling && !r.dev.pollStats.pending, 'asleep after: a map is no work');
      await io(r.d, 1, 4, 1); // and I/O goes on
    } finally {
      mem.free();
      await r.close();
    }
  });

  test('EventIdx wrap-around: an 8-entry queue goes round many times, at depth 1 and 7', async () => {
    for (const spin of [0, 200]) {
      const r = await rig({ pollUs: spin }, {}, { queues: 1, depth: 8, shadow: true });
      try {
        await io(r.d, 1, 100, 1);
        await io(r.d, 1, 300, 7, 4000);
        // CQ heads too: the host only rings a CQ head doorbell when the EventIdx asks
        assert.ok(r.d.doorbellStats.skipped > 0);
      } finally {
        await r.close();
      }
    }
  });

  test('a host that stops updating its shadows: its rings are kicks, the queue stalls, nothing runs twice; a reset recovers', async () => {
    const r = await rig({}, {}, { queues: 1, depth: 16, shadow: true });
    try {
      await io(r.d, 1, 40, 4);
      const before = r.dev.perfStats.commands;
      r.d.shadowFrozen = true;
      const stuck = r.d.submit(1, { opc: 0x02, nsid: 1, prp1: r.d.alloc(4096), cdw12: 7 }, { timeoutMs: 300 });
      await assert.rejects(stuck, /timed out/);
      assert.equal(r.dev.perfStats.commands, before, 'the ring alone ran nothing');
      await waitFor(() => !r.dev.pollStats.polling && !r.dev.pollStats.pending, 'the poller to sleep');
      const turns = r.dev.pollStats.turns;
      await delay(30); // proves a negative (nothing to wait for): no turn runs while stalled
      assert.equal(r.dev.pollStats.turns, turns, 'no polling while stalled');
      // the host resets the controller (as Linux does after a timeout) and starts again
      r.d.shadowFrozen = false;
      await r.d.init({ queues: 1, depth: 16, shadow: true });
      await io(r.d, 1, 30, 4, 2000);
    } finally {
      await r.close();
    }
  });

  test('MMIO rings that reach the controller after the shadow moved past them are only kicks (8-entry queue, rings held over 10 laps)', async () => {
    // posted doorbell writes queue up in the socket while the controller polls the shadows: a
    // ring's value can be laps old when it is read, and a queue index alone cannot tell how old
    const r = await rig({ pollUs: 1_000_000 }, {}, { queues: 1, depth: 8, shadow: true });
    try {
      await io(r.d, 1, 8, 7);
      await waitFor(() => r.dev.pollStats.polling, 'polling');
      r.d.heldRings = [];
      const before = r.dev.perfStats.commands;
      await io(r.d, 1, 40, 7, 1000); // 80 commands through the shadows alone
      assert.equal(r.dev.perfStats.commands - before, 80);
      assert.ok(r.d.heldRings.length >= 2, `rings held: ${r.d.heldRings.length}`);
      r.d.releaseRings();
      await r.d.r32(0x1c); // handled after the rings
      await waitFor(() => !r.dev.pollStats.polling || r.dev.perfStats.commands - before > 80, 'the rings handled');
      assert.equal(r.dev.perfStats.commands - before, 80, 'no stale entry executed again');
      await io(r.d, 1, 30, 7, 2000);
      assert.equal(r.dev.perfStats.commands - before, 140);
    } finally {
      await r.close();
    }
  });

  test('shadow doorbells on an mmap-ed doorbell page', async () => {
    const r = await rig({ doorbells: 'mmap' }, { mmapDoorbells: true }, { queues: 2, depth: 32, shadow: true });
    try {
      await io(r.d, 1, 200, 16);
      await io(r.d, 2, 50, 1, 4000);
    } finally {
      await r.close();
    }
  });

  test('buffers outside the DMA maps or misaligned are refused; nothing is written; MMIO doorbells keep working', async () => {
    const r = await rig({}, {}, { queues: 1, depth: 16 });
    try {
      const page = r.d.alloc(4096);
      const guardBefore = Buffer.from(r.d.mem.bytes.subarray(0, GUARD));
      const unmapped = r.d.iova - 4096; // the guard page below the map
      assert.equal(sc(await r.d.enableShadowDoorbells({ dbs: unmapped, eis: page })), 0x04, 'shadow page unmapped');
      assert.equal(sc(await r.d.enableShadowDoorbells({ dbs: page, eis: unmapped })), 0x04, 'EventIdx page unmapped');
      assert.equal(sc(await r.d.enableShadowDoorbells({ dbs: page, eis: r.d.iova + r.d.mem.size - 2 * GUARD })), 0x04, 'past the end');
      assert.equal(sc(await r.d.enableShadowDoorbells({ dbs: page + 8, eis: r.d.alloc(4096) })), 0x02, 'misaligned');
      assert.equal(sc(await r.d.enableShadowDoorbells({ dbs: page, eis: page })), 0x02, 'same page');
      assert.equal(sc(await r.d.enableShadowDoorbells({ dbs: 0, eis: page })), 0x02, 'zero');
      assert.ok(Buffer.from(r.d.mem.bytes.subarray(0, GUARD)).equals(guardBefore), 'guard page untouched');
      assert.ok(r.d.at(page, 4096).every((b) => b === 0), 'refused buffer untouched');
      await io(r.d, 1, 30, 4);
    } finally {
      await r.close();
    }
  });

  test('a shadow buffer unmapped later: controller fatal status, no access; a reset recovers', async () => {
    const r = await rig({}, {}, { queues: 1, depth: 16, shadow: true });
    try {
      await io(r.d, 1, 20, 4);
      // the host takes its memory away, doorbell buffers included, then rings
      await r.client.dmaUnmap(r.d.iova, r.d.mem.size - 2 * GUARD);
      r.d.shadowFrozen = true; // ring the MMIO doorbell
      void r.d.rw('read', 1, 0, 8, { prp1: r.d.iova }, {}).catch(() => {});
      await waitFor(async () => ((await r.d.r32(0x1c)) & 2) !== 0, 'CSTS.CFS');
      assert.equal(r.dev.pollStats.pending, false, 'poller stopped');
      await r.d.disable();
    } finally {
      await r.close();
    }
  });

  test('controller reset with the poller running: no timer left, no access to the buffers after', async () => {
    const r = await rig({ pollUs: 100000 }, {}, { queues: 2, depth: 64, shadow: true });
    try {
      void io(r.d, 1, 2000, 32).catch(() => {}); // left hanging by the reset
      await waitFor(() => r.dev.pollStats.polling, 'polling');
      const dbs = r.d.shadowSlot(2)!;
      assert.ok(dbs);
      await r.d.w32(0x14, 0); // CC.EN = 0 while I/O flows
      await r.d.waitReady(false);
      assert.equal(r.dev.pollStats.pending, false, 'no poller turn or timer left');
      assert.equal(r.dev.pollStats.polling, false);
      // nothing reads or writes the buffers any more: a shadow write is ignored, EventIdx stays
      const eiBefore = r.d.shadowSlot(2)!.ei;
      const turns = r.dev.pollStats.turns;
      await delay(30); // proves a negative (nothing to wait for): no turn runs after the reset
      assert.equal(r.dev.pollStats.turns, turns);
      assert.equal(r.d.shadowSlot(2)!.ei, eiBefore);
      // the controller comes back, with or without shadows
      await r.client.reset();
      await r.client.writeConfig((await r.d.findCap(0x11)) + 3, Uint8Array.of(0x80));
      const r2 = r.d;
      await r2.init({ queues: 1, depth: 16, shadow: true });
      await io(r2, 1, 20, 4);
    } finally {
      await r.close();
    }
  });

  test('Doorbell Buffer Config after the I/O queues exist: they carry on from their current values', async () => {
    const r = await rig({}, {}, { queues: 2, depth: 16 });
    try {
      await io(r.d, 1, 21, 3);
      assert.equal(sc(await r.d.enableShadowDoorbells()), 0);
      const q = r.d.queue(1);
      assert.deepEqual(r.d.shadowSlot(2), { db: q.sqTail, ei: q.sqTail });
      await io(r.d, 1, 50, 5, 1000);
      await io(r.d, 2, 30, 2, 2000);
      const aq = await r.d.submit(ADMIN, { opc: 0x18 });
      assert.equal(aq.status, 0, 'admin queue: MMIO doorbells as before');
    } finally {
      await r.close();
    }
  });
});

describe('nvme: interrupt coalescing and fairness between queues', () => {
  test('coalescing (feature 08h) fires one interrupt per THR + 1 entries or per TIME; CD on a vector turns it off', async () => {
    const r = await rig({}, {}, { queues: 2, depth: 64 });
    try {
      // n commands, each submitted in its own event-loop turn (one doorbell message each)
      const burst = async (q: number, n: number): Promise<number> => {
        const v = r.d.interrupts.get(q) ?? 0;
        const all: Promise<void>[] = [];
        for (let i = 0; i < n; i++) {
          all.push(r.d.rw('read', q, i * 8, 8, { prp1: r.d.alloc(4096) }).then((c) => assert.equal(c.status, 0)));
          await delay(1);
        }
        await Promise.all(all);
        return (r.d.interrupts.get(q) ?? 0) - v;
      };
      const plain = await burst(1, 32);
      // THR 15 (16 entries), TIME 200 (20 ms)
      assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x09, cdw10: 0x08, cdw11: (200 << 8) | 15 })), 0);
      const coalesced = await burst(1, 32);
      assert.ok(coalesced < plain / 2, `coalesced ${coalesced} interrupts vs ${plain}`);
      // one command: completes after TIME, not never
      const t0 = performance.now();
      assert.equal(await burst(1, 1), 1);
      assert.ok(performance.now() - t0 >= 15, 'waited for the aggregation time');
      // a window that THR closed leaves no timer behind: the next entry waits a TIME of its own
      const read = (): Promise<void> => r.d.rw('read', 1, 0, 8, { prp1: r.d.alloc(4096) }).then((c) => assert.equal(c.status, 0));
      const first = read(); // its entry starts the aggregation time
      await delay(10); // the input: the window is 10 ms old when THR closes it
      await Promise.all([first, ...Array.from({ length: 15 }, read)]); // 16 entries: THR
      const t1 = performance.now();
      assert.equal(await burst(1, 1), 1);
      assert.ok(performance.now() - t1 >= 15, `a fresh aggregation time, not the rest of the closed window's (${(performance.now() - t1).toFixed(1)} ms)`);
      // Coalescing Disable on vector 2 (feature 09h)
      assert.equal(sc(await r.d.submit(ADMIN, { opc: 0x09, cdw10: 0x09, cdw11: 2 | (1 << 16) })), 0);
      const off = await burst(2, 32);
      assert.ok(off > plain / 2, `vector 2 not coalesced: ${off} (${plain} before)`);
      // and a reset drops the pending aggregation timer
      void r.d.rw('read', 1, 0, 8, { prp1: r.d.alloc(4096) }).catch(() => {});
      await r.d.disable();
    } finally {
      await r.close();
    }
  });

  for (const shadow of [false, true]) {
    test(`a busy queue does not starve another (${shadow ? 'shadow doorbells' : 'MMIO doorbells'})`, async () => {
      const r = await rig({ size: 64 << 20 }, {}, { queues: 2, depth: 64, shadow });
      try {
        let busy = 0;
        let light = 0;
        let stop = false;
        const bufs = Array.from({ length: 48 }, () => r.d.alloc(64 << 10));
        const heavy = bufs.map(async (buf, k) => {
          // one PRP list per buffer, built once: the driver's allocator never frees, and a
          // fast machine goes round this loop often enough to exhaust guest RAM
          const { prp2 } = r.d.prps(Array.from({ length: 16 }, (_, i) => buf + i * 4096), 64 << 10);
          while (!stop) {
            const c = await r.d.rw('write', 1, (k * 128) % 100000, 128, { prp1: buf, prp2 });
            assert.equal(c.status, 0);
            busy++;
          }
        });
        const one = r.d.alloc(4096);
        const end = performance.now() + 600;
        while (performance.now() < end) {
          assert.equal((await r.d.rw('read', 2, 0, 8, { prp1: one })).status, 0);
          light++;
        }
        stop = true;
        await Promise.all(heavy);
        // 48 commands in flight on queue 1, one on queue 2: served in turn, queue 2 gets at
        // least one command per round of queue 1's
        assert.ok(light * 48 >= busy / 2, `queue 2: ${light} reads while queue 1 did ${busy} writes`);
      } finally {
        await r.close();
      }
    });
  }
});
