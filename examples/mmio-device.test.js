// @ts-check
// Tests of examples/mmio-device.js with the test kit: `node --test examples/`
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serveDevice, spawnDevice, IrqRecorder, u32, rd32 } from 'vfio-user/testing';
import { IrqIndex } from 'vfio-user';
import { MmioDevice, REG, ID } from './mmio-device.js';

test('mmio example: registers, and a doorbell raises its MSI-X vector', async () => {
  // served in this process: the test sees the device object too
  const h = await serveDevice(new MmioDevice());
  try {
    const { client, device } = h;
    assert.equal(rd32(await client.read(0, REG.ID, 4)), ID);
    await client.write(0, REG.SCRATCH, u32(0xc0ffee));
    assert.equal(rd32(await client.read(0, REG.SCRATCH, 4)), 0xc0ffee);

    const irqs = new IrqRecorder(await client.enableIrqs(IrqIndex.MSIX, 4));
    await client.write(0, REG.DOORBELL, u32(2));
    await client.write(0, REG.DOORBELL, u32(2));
    await irqs.next(2, { timeoutMs: 5000 }); // both arrive: an interrupt is never lost
    await irqs.next(2, { timeoutMs: 5000 });
    await irqs.expectNone(1, 20);
    assert.equal(device.count, 2);

    await client.reset();
    assert.equal(rd32(await client.read(0, REG.SCRATCH, 4)), 0, 'reset clears SCRATCH');
    await assert.rejects(client.write(0, REG.DOORBELL, u32(9)), /EINVAL/, 'no vector 9');
  } finally {
    await h.close(); // client, server, device (or `await using h = ...` in TypeScript)
  }
});

test('mmio example: served by a child process, as vfio-user serve would', async () => {
  const h = await spawnDevice(new URL('./mmio-device.js', import.meta.url));
  try {
    assert.equal(rd32(await h.client.read(0, REG.ID, 4)), ID);
    const irqs = new IrqRecorder(await h.client.enableIrqs(IrqIndex.MSIX, 4));
    await h.client.write(0, REG.DOORBELL, u32(3));
    assert.equal(await irqs.next(undefined, { timeoutMs: 5000 }), 3);
  } finally {
    assert.equal(await h.close(), 0, 'the child exits cleanly on SIGTERM');
  }
});
