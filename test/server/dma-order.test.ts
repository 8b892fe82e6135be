/**
 * Interrupts never overtake the DMA writes that precede them.
 *
 * With guest memory that is not shared, a DMA write is a DMA_WRITE message and an interrupt is
 * an eventfd: a VMM (QEMU handles both in its main loop) may see the interrupt first. A device
 * that posts a completion with `void dma.write()` and raises its interrupt at once must still
 * have the data in guest memory before the interrupt reaches the client. The client here
 * answers DMA requests late, like a VMM whose main loop is busy.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PciDevice } from '../../src/server/device.js';
import { IrqIndex } from '../../src/server/irq.js';
import { VfioUserServer, type ServerOptions } from '../../src/server/server.js';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import { sockPath, delay, u32 } from '../helpers.js';
import { within } from '../client/util.js';

const IOVA = 0x10000;

/** Writing v to BAR0+0 posts v as a 4-byte completion at IOVA + 4*slot and raises INTx. */
class PostingDevice extends PciDevice {
  slot = 0;
  constructor() {
    super({ vendorId: 0x1234, deviceId: 0x0001, classCode: 0xff0000, irqs: { intx: 1 } });
    this.addRegion(0, {
      size: 4096,
      access: {
        read: (_o, n) => new Uint8Array(n),
        write: (o, d) => {
          if (o !== 0) return;
          void this.dma.write(IOVA + 4 * this.slot++, d).catch(() => undefined);
          this.trigger(IrqIndex.INTX);
        },
      },
    });
  }
}

async function withPosting(
  fn: (c: VfioUserClient, mem: GuestMemory) => Promise<void>,
  beforeDma: (kind: 'read' | 'write', iova: number, len: number) => void | Promise<void>,
  opts: ServerOptions = {},
): Promise<void> {
  const server = new VfioUserServer(new PostingDevice(), opts);
  const path = sockPath('order');
  server.listen(path);
  const c = await VfioUserClient.connect(path, { beforeDma });
  const mem = new GuestMemory(1 << 16);
  try {
    await c.dmaMap(mem, IOVA, { shared: false });
    await fn(c, mem);
  } finally {
    await c.close();
    mem.free();
    server.close();
  }
}

test('an interrupt raised right after a DMA write by message reaches the client after the data', async () => {
  await withPosting(
    async (c, mem) => {
      const irq = await c.enableIrqs(IrqIndex.INTX, 1);
      const view = new DataView(mem.bytes.buffer);
      for (let i = 0; i < 5; i++) {
        await c.write(0, 0, u32(0xc0de0000 + i));
        await within(irq.next(), 5000, `interrupt ${i}`);
        // the data the interrupt announces is already in guest memory
        assert.equal(view.getUint32(4 * i, true), 0xc0de0000 + i, `completion ${i} in memory when its interrupt arrived`);
        await c.unmaskIrq(IrqIndex.INTX); // INTx masked itself
      }
      irq.close();
    },
    // a VMM whose main loop answers DMA 30 ms late
    () => delay(30),
  );
});

test('an interrupt waiting for a DMA write is still delivered when the write fails', async () => {
  await withPosting(
    async (c) => {
      const irq = await c.enableIrqs(IrqIndex.INTX, 1);
      const t0 = Date.now();
      await c.write(0, 0, u32(1));
      // the client answers after 400 ms, the server gives up after 100 ms: the write failed
      await within(irq.next(), 5000, 'interrupt after a failed write');
      assert.ok(Date.now() - t0 >= 90, 'the interrupt waited for the write to end');
      irq.close();
    },
    () => delay(400),
    { dmaTimeoutMs: 100 },
  );
});
