/**
 * Fuzz target: virtio descriptor chains through a real virtio-blk device (memory disk) whose
 * guest memory is a DMA-mapped memfd. Input: byte 0 picks the features (bit 0 event index,
 * bit 1 indirect descriptors), byte 1 how many heads to publish (1..8), then the heads (u16
 * each), then the bytes of guest memory from the descriptor table on (table, then the data
 * area that descriptors and indirect tables may point into; addresses are guest IOVAs, the
 * map starts at 0x100000). The device is reset and brought up as a driver would, the heads
 * are published and notified, and every request must complete or the device must go to
 * NEEDS_RESET for a broken chain; a request that does neither (a hang) or an internal error
 * in the device is a finding.
 */
import { native, PROT_READ, PROT_WRITE } from '../../src/native/index.js';
import { VirtioBlkDevice, Layout } from '../../src/devices/virtio/index.js';
import { Common, Status, Feature, bit } from '../../src/devices/virtio/constants.js';
import { Bytes } from '../lib.js';

const IOVA = 0x100000;
const MEM = 1 << 20;
const QS = 16;
const DESC = 0;
const AVAIL = 0x1000;
const USED = 0x2000;

let rig: { dev: VirtioBlkDevice; mem: Uint8Array; dv: DataView } | undefined;

function setupRig(): NonNullable<typeof rig> {
  const dev = new VirtioBlkDevice({ size: 1 << 20, queueSize: QS, log: () => {} });
  const fd = native.memfdCreate('fuzz-guest');
  native.ftruncate(fd, MEM);
  const buf = native.mmap(fd, 0, MEM, PROT_READ | PROT_WRITE);
  dev.dma.map(IOVA, MEM, PROT_READ | PROT_WRITE, fd, 0);
  return { dev, mem: new Uint8Array(buf), dv: new DataView(buf) };
}

async function common(off: number, len: 1 | 2 | 4, v: number): Promise<void> {
  const d = new Uint8Array(len);
  const dv = new DataView(d.buffer);
  if (len === 1) dv.setUint8(0, v);
  else if (len === 2) dv.setUint16(0, v, true);
  else dv.setUint32(0, v >>> 0, true);
  await rig!.dev.regions.get(Layout.BAR)!.access!.write!(Layout.COMMON + off, d);
}

export async function fuzz(data: Buffer): Promise<void> {
  rig ??= setupRig();
  const { dev, mem, dv } = rig;
  const b = new Bytes(data);
  const flags = b.u8();
  const features = bit(Feature.VERSION_1) | (flags & 1 ? bit(Feature.RING_EVENT_IDX) : 0n) | (flags & 2 ? bit(Feature.RING_INDIRECT_DESC) : 0n);
  // reset and bring up like a driver
  await common(Common.DEVICE_STATUS, 1, 0);
  if (dev.deviceStatus !== 0) throw new Error('status not 0 after reset');
  mem.fill(0, 0, 0x3000);
  await common(Common.DEVICE_STATUS, 1, Status.ACKNOWLEDGE | Status.DRIVER);
  for (let sel = 0; sel < 2; sel++) {
    await common(Common.DRIVER_FEATURE_SELECT, 4, sel);
    await common(Common.DRIVER_FEATURE, 4, Number((features >> BigInt(32 * sel)) & 0xffffffffn));
  }
  await common(Common.DEVICE_STATUS, 1, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK);
  if (!(dev.deviceStatus & Status.FEATURES_OK)) throw new Error('FEATURES_OK refused for offered features');
  await common(Common.QUEUE_SELECT, 2, 0);
  await common(Common.QUEUE_DESC, 4, IOVA + DESC);
  await common(Common.QUEUE_DRIVER, 4, IOVA + AVAIL);
  await common(Common.QUEUE_DEVICE, 4, IOVA + USED);
  await common(Common.QUEUE_ENABLE, 2, 1);
  await common(Common.DEVICE_STATUS, 1, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
  // the heads, then guest memory from the descriptor table on
  const n = 1 + (b.u8() % 8);
  for (let i = 0; i < n; i++) dv.setUint16(AVAIL + 4 + 2 * i, b.u16() % (QS + 2), true);
  const rest = b.rest();
  mem.set(rest.subarray(0, AVAIL - DESC), DESC);
  if (rest.length > AVAIL) mem.set(rest.subarray(AVAIL, AVAIL + MEM - 0x3000), 0x3000);
  dv.setUint16(AVAIL + 2, n, true);
  await rig.dev.regions.get(Layout.BAR)!.access!.write!(Layout.NOTIFY, Uint8Array.of(0, 0));
  const q = dev.queues[0]!;
  const end = Date.now() + 3000;
  while (q.usedIdx !== n && !(dev.deviceStatus & Status.NEEDS_RESET)) {
    if (Date.now() > end) throw new Error(`hang: ${q.usedIdx}/${n} requests completed after 3 s, no NEEDS_RESET`);
    await new Promise((r) => setImmediate(r));
  }
  if (dev.brokenReason?.startsWith('internal error')) throw new Error(`virtio device: ${dev.brokenReason}`);
}
