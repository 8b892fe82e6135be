/**
 * Errors raised by the PCI config-space model: ConfigSpaceError (a VfioUserError, see
 * ../../errors.ts). Callers switch on `code`, never on the message text. errno defaults to
 * EINVAL: the errno of the error reply when a client caused it.
 */
import { LayerError, type ConfigSpaceErrorCode } from '../../errors.js';

export type { ConfigSpaceErrorCode };

export class ConfigSpaceError extends LayerError<ConfigSpaceErrorCode> {}
