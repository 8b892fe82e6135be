/**
 * IrqController: SET_IRQS semantics checked on real eventfds (their counters read directly).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import { IrqController, IrqIndex } from '../../src/server/irq.js';
import * as P from '../../src/protocol/index.js';

const F = P.SetIrqsFlags;
const { INTX, MSIX } = IrqIndex;

/** a controller with INTx and 4 MSI-X vectors, eventfds on INTx and MSI-X 0..1 */
function rig(): { irqs: IrqController; intx: number; msix: number[]; done: () => void } {
  const irqs = new IrqController([1, 0, 4, 0, 0]);
  const intx = native.eventfd(0, false);
  const msix = [native.eventfd(0, false), native.eventfd(0, false)];
  irqs.setIrqs({ flags: F.DATA_EVENTFD | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1 }, [native.dup(intx)]);
  irqs.setIrqs({ flags: F.DATA_EVENTFD | F.ACTION_TRIGGER, index: MSIX, start: 0, count: 2 }, msix.map((fd) => native.dup(fd)));
  return {
    irqs,
    intx,
    msix,
    done: () => {
      irqs.clientGone();
      for (const fd of [intx, ...msix]) native.close(fd);
    },
  };
}

/** eventfd counter (reset by the read); 0n when nothing was signalled */
function taken(fd: number): bigint {
  return native.eventfdRead(fd);
}

describe('SET_IRQS ACTION_TRIGGER with DATA_NONE/DATA_BOOL is a loopback (as in VFIO)', () => {
  test('INTx masked by its own delivery: DATA_NONE and DATA_BOOL [1] still signal, the mask stays, nothing pends', () => {
    const r = rig();
    try {
      r.irqs.setLevel(INTX, 0, true);
      assert.equal(taken(r.intx), 1n);
      assert.equal(r.irqs.isMasked(INTX), true, 'automasked');
      r.irqs.setIrqs({ flags: F.DATA_NONE | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1 }, []);
      assert.equal(taken(r.intx), 1n, 'DATA_NONE signalled while masked');
      r.irqs.setIrqs({ flags: F.DATA_BOOL | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1, data: Uint8Array.of(1) }, []);
      assert.equal(taken(r.intx), 1n, 'DATA_BOOL [1] signalled while masked');
      r.irqs.setIrqs({ flags: F.DATA_BOOL | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1, data: Uint8Array.of(0) }, []);
      assert.equal(taken(r.intx), 0n, 'DATA_BOOL [0] does nothing');
      assert.equal(r.irqs.isMasked(INTX), true);
      assert.equal(r.irqs.isPending(INTX), false);
      // the level is still high: unmasking delivers it once, as before
      r.irqs.setIrqs({ flags: F.DATA_NONE | F.ACTION_UNMASK, index: INTX, start: 0, count: 1 }, []);
      assert.equal(taken(r.intx), 1n);
    } finally {
      r.done();
    }
  });

  test('INTx unmasked: the loopback does not automask it', () => {
    const r = rig();
    try {
      for (let i = 0; i < 3; i++) {
        r.irqs.setIrqs({ flags: F.DATA_NONE | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1 }, []);
        assert.equal(taken(r.intx), 1n, `trigger ${i}`);
        assert.equal(r.irqs.isMasked(INTX), false, 'not automasked');
      }
      // the device's own delivery still automasks
      r.irqs.setLevel(INTX, 0, true);
      assert.equal(taken(r.intx), 1n);
      assert.equal(r.irqs.isMasked(INTX), true);
    } finally {
      r.done();
    }
  });

  test('MSI-X: a masked vector is signalled by the loopback, with no pending bit; vectors without an eventfd are skipped', () => {
    const r = rig();
    const pending: string[] = [];
    r.irqs.onPendingChange = (i, v, on) => pending.push(`${i}/${v}:${on}`);
    try {
      r.irqs.setIrqs({ flags: F.DATA_NONE | F.ACTION_MASK, index: MSIX, start: 0, count: 4 }, []);
      r.irqs.setIrqs({ flags: F.DATA_BOOL | F.ACTION_TRIGGER, index: MSIX, start: 0, count: 4, data: Uint8Array.of(0, 1, 1, 1) }, []);
      assert.deepEqual(r.msix.map(taken), [0n, 1n]);
      r.irqs.setIrqs({ flags: F.DATA_NONE | F.ACTION_TRIGGER, index: MSIX, start: 0, count: 4 }, []);
      assert.deepEqual(r.msix.map(taken), [1n, 1n]);
      assert.deepEqual(pending, []);
      for (let v = 0; v < 4; v++) assert.equal(r.irqs.isPending(MSIX, v), false);
      // the device's own trigger of a masked vector pends as before
      assert.equal(r.irqs.trigger(MSIX, 1), false);
      assert.deepEqual(pending, ['2/1:true']);
      assert.deepEqual(r.msix.map(taken), [0n, 0n]);
    } finally {
      r.done();
    }
  });
});
