/**
 * The codec's errors: every decoder failure is a ProtocolError (a VfioUserError, see
 * ../errors.ts); callers switch on `code`, never on the message text.
 */
import { VfioUserError, Errno, type ProtocolErrorCode } from '../errors.js';

export type { ProtocolErrorCode };

export class ProtocolError extends VfioUserError {
  declare readonly code: ProtocolErrorCode;
  /** errno defaults to EINVAL: the errno of the error reply to a malformed message */
  constructor(code: ProtocolErrorCode, message: string, errno: number = Errno.EINVAL) {
    super(code, message, errno);
    this.name = 'ProtocolError';
  }
}
