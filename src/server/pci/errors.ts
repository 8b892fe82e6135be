/**
 * Errors raised by the PCI config-space model: ConfigSpaceError (a VfioUserError, see
 * ../../errors.ts). Callers switch on `code`, never on the message text.
 */
import { VfioUserError, Errno, type ConfigSpaceErrorCode } from '../../errors.js';

export type { ConfigSpaceErrorCode };

export class ConfigSpaceError extends VfioUserError {
  declare readonly code: ConfigSpaceErrorCode;
  /** errno defaults to EINVAL: the errno of the error reply when a client caused it */
  constructor(code: ConfigSpaceErrorCode, message: string, errno: number = Errno.EINVAL) {
    super(code, message, errno);
    this.name = 'ConfigSpaceError';
  }
}
