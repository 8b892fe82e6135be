/**
 * Guest memory for a client: a memfd mapped into this process, which DMA_MAP can pass to the
 * server (shared) or from which the client answers DMA_READ/DMA_WRITE (not shared).
 */
import { native, PROT_READ, PROT_WRITE } from '../native/index.js';
import { VfioUserError, Errno } from '../errors.js';

/** Guest memory backed by a memfd. */
export class GuestMemory {
  readonly fd: number;
  readonly size: number;
  private buf: ArrayBuffer | undefined;
  readonly bytes: Uint8Array;
  constructor(size: number, name = 'vfio-user-guest') {
    if (!Number.isSafeInteger(size) || size <= 0 || size % native.PAGE_SIZE) {
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `guest memory size must be a positive multiple of ${native.PAGE_SIZE}`, Errno.EINVAL);
    }
    if (size >= 2 ** 32) throw new VfioUserError('VFU_INVALID_ARGUMENT', 'guest memory objects are limited to 4 GiB - 1 page', Errno.EINVAL);
    this.fd = native.memfdCreate(name);
    native.ftruncate(this.fd, size);
    this.size = size;
    this.buf = native.mmap(this.fd, 0, size, PROT_READ | PROT_WRITE);
    this.bytes = new Uint8Array(this.buf);
  }
  free(): void {
    if (!this.buf) return;
    native.munmap(this.buf);
    this.buf = undefined;
    native.close(this.fd);
  }
}
