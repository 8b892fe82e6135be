/**
 * The codec's errors: every decoder failure is a ProtocolError (a VfioUserError, see
 * ../errors.ts); callers switch on `code`, never on the message text. errno defaults to
 * EINVAL: the errno of the error reply to a malformed message.
 */
import { LayerError, type ProtocolErrorCode } from '../errors.js';

export type { ProtocolErrorCode };

export class ProtocolError extends LayerError<ProtocolErrorCode> {}
