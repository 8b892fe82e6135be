/** A DMA access outside what the client mapped, or that failed (errno EFAULT unless said). */
import { VfioUserError, Errno } from '../errors.js';

export class DmaError extends VfioUserError {
  constructor(message: string, errno: number = Errno.EFAULT) {
    super('VFU_DMA', message, errno);
    this.name = 'DmaError';
  }
}
