/**
 * Typed protocol errors with stable codes (undici style). Every decoder failure is a
 * ProtocolError; callers switch on `code`, never on the message text.
 */
export type ProtocolErrorCode =
  | 'VFU_SHORT_MESSAGE' // fewer bytes than the fixed part of the message needs
  | 'VFU_BAD_SIZE' // a size field disagrees with the message size or with itself
  | 'VFU_BAD_ARGSZ' // argsz smaller than the structure or larger than the message
  | 'VFU_BAD_COUNT' // a count that exceeds what the message holds or a protocol limit
  | 'VFU_BAD_OFFSET' // an offset (cap chain, data) pointing outside the message
  | 'VFU_BAD_FLAGS' // reserved or contradictory flag bits
  | 'VFU_BAD_VERSION' // malformed VERSION payload or capability JSON
  | 'VFU_BAD_HEADER' // malformed 16-byte header
  | 'VFU_MESSAGE_TOO_LARGE' // exceeds the negotiated or configured maximum
  | 'VFU_BAD_VALUE' // a field value that cannot be encoded (out of range, wrong type) or is invalid for its field
  | 'VFU_UNKNOWN_COMMAND';

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  /** errno to put in an error reply for this failure (EINVAL unless stated). */
  readonly errno: number;
  constructor(code: ProtocolErrorCode, message: string, errno = 22 /* EINVAL */) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
    this.errno = errno;
  }
}
