/**
 * Guest memory for a client: a memfd mapped into this process, which DMA_MAP can pass to the
 * server (shared) or from which the client answers DMA_READ/DMA_WRITE (not shared).
 */
import { native, PROT_READ, PROT_WRITE } from '../native/index.js';
import { VfioUserError, Errno } from '../errors.js';

/** Guest memory backed by a memfd (or by a file the caller opened: {@link GuestMemory.fromFd}). */
export class GuestMemory {
  readonly fd: number;
  readonly size: number;
  private buf: ArrayBuffer | undefined;
  readonly bytes: Uint8Array;

  /**
   * Guest memory over a file the caller opened (a /dev/shm or hugetlbfs file, say) of at least
   * `size` bytes. The object owns `fd` from then on: free() unmaps it and closes it. A server
   * may refuse a file that cannot be sealed (ours does unless started with
   * --allow-unsealed-dma).
   */
  static fromFd(fd: number, size: number): GuestMemory {
    return new GuestMemory(size, { fd });
  }

  /** `size` bytes of a new memfd named `name` (a multiple of the page size, below 4 GiB). */
  constructor(size: number, name: string | { fd: number } = 'vfio-user-guest') {
    if (!Number.isSafeInteger(size) || size <= 0 || size % native.PAGE_SIZE) {
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `guest memory size must be a positive multiple of ${native.PAGE_SIZE}`, Errno.EINVAL);
    }
    if (size >= 2 ** 32) throw new VfioUserError('VFU_INVALID_ARGUMENT', 'guest memory objects are limited to 4 GiB - 1 page', Errno.EINVAL);
    if (typeof name === 'string') {
      this.fd = native.memfdCreate(name);
      native.ftruncate(this.fd, size);
    } else this.fd = name.fd;
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
