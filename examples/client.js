#!/usr/bin/env node
// @ts-check
/**
 * A client script: connects to a vfio-user server, shows what the device is, shares guest
 * memory with it and drives it. With the example devices it also exercises them:
 *
 *   vfio-user serve ./examples/mmio-device.js --socket-path=/tmp/mmio.sock &
 *   node examples/client.js /tmp/mmio.sock
 *
 * It prints one line per step. Any vfio-user server works for the first part (the IDs and
 * regions), e.g. `vfio-user serve gpio`.
 */
import { VfioUserClient, GuestMemory, IrqIndex } from 'vfio-user';

const path = process.argv[2];
if (!path) {
  process.stderr.write('usage: node examples/client.js <socket>\n');
  process.exit(2);
}

/** @param {number} v */
const hex = (v) => `0x${v.toString(16)}`;
/** @param {number} v */
const le32 = (v) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
};
/** @param {Uint8Array} b */
const rd32 = (b) => new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);

const client = await VfioUserClient.connect(path);
try {
  // config space: IDs (a real driver would look at the class code and capabilities too)
  const cfg = await client.readConfig(0, 4);
  const ids = new DataView(cfg.buffer, cfg.byteOffset, 4);
  const vendor = ids.getUint16(0, true);
  const device = ids.getUint16(2, true);
  const info = await client.deviceInfo();
  console.log(`device ${hex(vendor)}:${hex(device)}, ${info.numRegions} regions, ${info.numIrqs} IRQ types`);
  for (const r of await client.regions()) {
    if (r.index < 6 && r.size) console.log(`BAR${r.index}: ${r.size} bytes${r.mappable ? ', mappable' : ''}`);
  }

  if (vendor === 0x1234 && device === 0x11e1) {
    // examples/mmio-device.js: registers and an interrupt
    console.log(`ID ${hex(rd32(await client.read(0, 0x00, 4)))}`);
    await client.write(0, 0x04, le32(0xc0ffee));
    console.log(`SCRATCH ${hex(rd32(await client.read(0, 0x04, 4)))}`);
    const irq = await client.enableIrqs(IrqIndex.MSIX, 4);
    await client.write(0, 0x0c, le32(2)); // DOORBELL: vector 2
    console.log(`interrupt on vector ${await irq.next()}`);
    irq.close();
  } else if (vendor === 0x1234 && device === 0x11e2) {
    // examples/dma-device.js: share 1 MiB of memory, have the device copy within it
    const mem = new GuestMemory(1 << 20);
    const iova = 0x1000_0000;
    await client.dmaMap(mem, iova);
    const text = Buffer.from('hello through DMA');
    mem.bytes.set(text, 0);
    const irq = await client.enableIrqs(IrqIndex.MSIX, 1);
    const w64 = async (/** @type {number} */ off, /** @type {number} */ v) => {
      await client.write(0, off, le32(v % 2 ** 32));
      await client.write(0, off + 4, le32(Math.floor(v / 2 ** 32)));
    };
    await w64(0x00, iova); // SRC
    await w64(0x08, iova + 4096); // DST
    await client.write(0, 0x10, le32(text.length)); // LEN
    await client.write(0, 0x14, le32(1)); // GO
    // on each interrupt read STATUS, as a driver would: done when it is no longer BUSY (1)
    let status = 1;
    while (status === 1) {
      await irq.next();
      status = rd32(await client.read(0, 0x18, 4));
    }
    console.log(`STATUS ${status}, copied: ${Buffer.from(mem.bytes.subarray(4096, 4096 + text.length)).toString()}`);
    irq.close();
    await client.dmaUnmap(iova, mem.size);
    mem.free();
  }
} finally {
  client.close();
}
