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
import type { ServerOptions } from '../../src/server/server.js';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import { delay, u32 } from '../helpers.js';
import { serveDevice } from '../../src/testing/index.js';
import { within } from '../client/util.js';

const IOVA = 0x10000;

/** Writing v to BAR0+0 posts v as a 4-byte completion at IOVA + 4*slot and raises INTx. */
class PostingDevice extends PciDevice {
  slot = 0;
  reads: Promise<Uint8Array[]> | undefined;
  constructor() {
    super({ vendorId: 0x1234, deviceId: 0x0001, classCode: 0xff0000, irqs: { intx: 1 } });
    this.addRegion(0, {
      size: 4096,
      access: {
        read: (_o, n) => new Uint8Array(n),
        write: (o, d) => {
          if (o === 16) {
            // a flood of DMA writes the client's hook never lets through
            for (let i = 0; i < 5000; i++) void this.dma.write(BigInt(IOVA), d).catch(() => undefined);
            return;
          }
          if (o === 8) {
            // three 64 KiB reads at once
            this.reads = Promise.all([0, 1, 2].map((i) => this.dma.read(BigInt(IOVA + i * 65536), 65536)));
            return;
          }
          if (o !== 0) return;
          void this.dma.write(IOVA + 4 * this.slot++, d).catch(() => undefined);
          this.trigger(IrqIndex.INTX);
        },
      },
    });
  }
}

async function withPosting(
  fn: (c: VfioUserClient, mem: GuestMemory, dev: PostingDevice) => Promise<void>,
  beforeDma: (kind: 'read' | 'write', iova: number, len: number) => void | Promise<void>,
  opts: ServerOptions = {},
): Promise<void> {
  const h = await serveDevice(new PostingDevice(), { server: opts, client: { beforeDma }, name: 'order' });
  const mem = new GuestMemory(1 << 18);
  try {
    await h.client.dmaMap(mem, IOVA, { shared: false });
    await fn(h.client, mem, h.device);
  } finally {
    await h.close();
    mem.free();
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
  let answer!: () => void;
  const answered = new Promise<void>((r) => (answer = r));
  await withPosting(
    async (c) => {
      const irq = await c.enableIrqs(IrqIndex.INTX, 1);
      const t0 = Date.now();
      await c.write(0, 0, u32(1));
      // the client does not answer until the interrupt came; the server gives up after 100 ms: the write failed
      await within(irq.next(), 5000, 'interrupt after a failed write');
      assert.ok(Date.now() - t0 >= 90, 'the interrupt waited for the write to end');
      answer();
      irq.close();
    },
    () => answered,
    { dmaTimeoutMs: 100 },
  );
});

test('DMA_READ data the client owes is bounded by the read window (QEMU loses the tail of a reply that overflows its socket buffer)', async () => {
  let owed = 0;
  let most = 0;
  let largest = 0;
  await withPosting(
    async (c, mem, dev) => {
      mem.bytes.fill(0x5c, 0, 3 * 65536);
      await c.write(0, 8, u32(1));
      const got = await within(dev.reads!, 10000, 'the reads');
      assert.equal(got.length, 3);
      for (const g of got) assert.ok(g.length === 65536 && g.every((b) => b === 0x5c));
    },
    async (kind, _iova, len) => {
      if (kind !== 'read') return;
      owed += len;
      most = Math.max(most, owed);
      largest = Math.max(largest, len);
      await delay(2);
      owed -= len;
    },
    { dmaReadWindow: 16384 },
  );
  assert.ok(largest <= 16384, `no request above the window (largest ${largest})`);
  assert.ok(most <= 16384, `at most 16 KiB owed at once (saw ${most})`);
  assert.ok(most > 0);
});

test('a client holding DMA requests for its beforeDma hook drops a server that floods them (bounded memory)', async () => {
  await withPosting(
    async (c) => {
      const closed = new Promise<void>((r) => c.once('close', () => r()));
      await c.write(0, 16, u32(1), { posted: true });
      await within(closed, 10000, 'the client dropped the flooding server');
    },
    () => new Promise<void>(() => undefined), // never answers
  );
});
