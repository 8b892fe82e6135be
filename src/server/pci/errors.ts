/**
 * Errors raised by the PCI config-space model. Callers switch on `code`, never on the
 * message text (same convention as ProtocolError).
 */
export type ConfigSpaceErrorCode =
  | 'VFU_CONFIG_RANGE' // an access (offset/length) outside config space or the MSI-X table
  | 'VFU_CONFIG_BAD_ARG' // an invalid argument to a builder or device-side method
  | 'VFU_CONFIG_CONFLICT' // a BAR index already taken, a capability added twice
  | 'VFU_CONFIG_NO_SPACE' // capability does not fit (standard: below 0x100; extended: below size)
  | 'VFU_CONFIG_BAD_STATE'; // save/load blob malformed or from a different device layout

export class ConfigSpaceError extends Error {
  readonly code: ConfigSpaceErrorCode;
  /** errno to put in a vfio-user error reply for this failure. */
  readonly errno: number;
  constructor(code: ConfigSpaceErrorCode, message: string, errno = 22 /* EINVAL */) {
    super(message);
    this.name = 'ConfigSpaceError';
    this.code = code;
    this.errno = errno;
  }
}
