import { randomFillSync } from 'node:crypto';
import { VirtioPciDevice, type Virtqueue, type VirtioRequest } from '../../src/index.js';

/** virtio-rng (device type 4): one queue; each buffer the driver offers comes back full of random bytes. */
export class VirtioRng extends VirtioPciDevice {
  constructor() {
    super({ name: 'virtio-rng', deviceType: 4, classCode: 0xff0000, queues: 1, features: 0n, configSize: 0 });
  }

  protected override async handleRequest(_queue: Virtqueue, req: VirtioRequest): Promise<number> {
    const n = Math.min(req.writeLen, 64 * 1024);
    await req.write(0, randomFillSync(new Uint8Array(n)));
    return n; // the used length: bytes written into the driver's buffers
  }
}
