/**
 * Errors you can act on: a failed request names the command and its arguments; a device
 * exception is printed by default; irq.next() gives up on a timeout or an AbortSignal without
 * losing the next interrupt; clients and servers are async-disposable.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { PciDevice } from '../../src/server/device.js';
import { IrqIndex } from '../../src/server/irq.js';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserError, Errno } from '../../src/errors.js';
import { sockPath, u32 } from '../helpers.js';
import { serveDevice } from '../../src/testing/index.js';

/** A device whose BAR0 write at 0 raises INTx, and whose read at 0x100 throws (a device bug). */
function device(): PciDevice {
  const d = new PciDevice({ vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000, irqs: { intx: 1 } });
  d.addRegion(0, {
    size: 4096,
    access: {
      read: (off, n) => {
        if (off === 0x100) throw new RangeError('a bug in the device');
        return new Uint8Array(n);
      },
      write: (off) => {
        if (off === 0) d.trigger(IrqIndex.INTX);
      },
    },
  });
  return d;
}

async function serve(fn: (c: VfioUserClient, s: VfioUserServer) => Promise<void>, opts: ConstructorParameters<typeof VfioUserServer>[1] = { log: () => {} }): Promise<void> {
  await using h = await serveDevice(device(), { server: opts, name: 'errs' });
  await fn(h.client, h.server);
}

describe('client errors name the request', () => {
  test('REGION_READ/REGION_WRITE with region, offset and size; other commands with their fields', async () => {
    await serve(async (c) => {
      await assert.rejects(c.read(3, 0x10, 4), (e) => e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR' && e.errno === Errno.EINVAL && e.message === 'REGION_READ region 3 +0x10 4B: EINVAL');
      await assert.rejects(c.write(0, 0xffe, u32(1)), (e) => (e as Error).message === 'REGION_WRITE region 0 +0xffe 4B: EINVAL');
      await assert.rejects(c.irqInfo(9), (e) => (e as Error).message.startsWith('DEVICE_GET_IRQ_INFO ') && (e as Error).message.includes('index=9') && (e as Error).message.endsWith(': EINVAL'));
    });
  });
});

describe('device exceptions', () => {
  test('are printed by default (stderr), with the stack; the server keeps serving', async () => {
    const written: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    });
    try {
      await serve(async (c) => {
        await assert.rejects(c.read(0, 0x100, 4), (e) => (e as Error).message === 'REGION_READ region 0 +0x100 4B: EINVAL');
        assert.equal((await c.read(0, 0, 4)).length, 4, 'still serving');
      }, {});
    } finally {
      process.stderr.write = write;
    }
    const line = written.find((w) => w.includes('device error in REGION_READ'));
    assert.ok(line, `nothing printed: ${JSON.stringify(written)}`);
    assert.match(line, /^vfio-user server: device error in REGION_READ \(client gets EINVAL\): RangeError: a bug in the device\n\s+at /);
  });
});

describe('irq.next()', () => {
  test('a timeout rejects with VFU_TIMEOUT and does not swallow the next interrupt', async () => {
    await serve(async (c) => {
      const irq = await c.enableIrqs(IrqIndex.INTX, 1);
      await assert.rejects(irq.next({ timeoutMs: 20 }), (e) => e instanceof VfioUserError && e.code === 'VFU_TIMEOUT');
      await c.write(0, 0, u32(1)); // raises INTx once
      assert.equal(await irq.next({ timeoutMs: 5000 }), 0, 'the interrupt after the abandoned wait is delivered');
      await assert.rejects(irq.next({ timeoutMs: 20 }), (e) => e instanceof VfioUserError && e.code === 'VFU_TIMEOUT', 'and only once');
      irq.close();
    });
  });

  test('an AbortSignal rejects with VFU_ABORTED (cause: its reason) and does not swallow the next interrupt', async () => {
    await serve(async (c) => {
      const irq = await c.enableIrqs(IrqIndex.INTX, 1);
      const ac = new AbortController();
      const waiting = irq.next({ signal: ac.signal });
      ac.abort(new Error('user gave up'));
      await assert.rejects(waiting, (e) => e instanceof VfioUserError && e.code === 'VFU_ABORTED' && (e.cause as Error).message === 'user gave up');
      await assert.rejects(irq.next({ signal: ac.signal }), (e) => e instanceof VfioUserError && e.code === 'VFU_ABORTED', 'an aborted signal rejects at once');
      await c.write(0, 0, u32(1));
      assert.equal(await irq.next({ signal: new AbortController().signal, timeoutMs: 5000 }), 0);
      irq.close();
    });
  });
});

describe('async disposal', () => {
  test('await using closes the client, and the server after its client is torn down', async () => {
    const d = device();
    let detached = 0;
    d.onDetach = () => detached++;
    const path = sockPath('dispose');
    let client: VfioUserClient | undefined;
    {
      await using s = new VfioUserServer(d, { log: () => {} });
      s.listen(path);
      {
        await using c = await VfioUserClient.connect(path);
        client = c;
        const connected = s.serving;
        assert.equal(connected, true);
        const gone = once(s, 'disconnect');
        void gone.catch(() => {});
      }
      assert.equal(client.closed, true, 'client closed at the end of its block');
    }
    assert.equal(detached, 1, 'the server waited for the teardown');
    await assert.rejects(VfioUserClient.connect(path), (e) => e instanceof VfioUserError && e.code === 'VFU_DISCONNECTED');
    d.destroy();
  });
});
