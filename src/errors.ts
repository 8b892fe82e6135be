/**
 * One error family for the whole package. Every error it raises is a VfioUserError with a
 * stable `code` (callers switch on it, never on the message text, as with undici) and an
 * `errno`: the errno an error reply carries for it, or the one the peer sent
 * (VFU_REMOTE_ERROR). Each layer has its subclass with its own codes:
 *
 *   VfioUserError        transport, server, client (the codes below)
 *   ├─ ProtocolError     the codec: a malformed message (protocol/errors.ts)
 *   ├─ ConfigSpaceError  the PCI config-space model (server/pci/errors.ts)
 *   ├─ DmaError          a DMA access or map the client's maps do not allow (server/dma-error.ts)
 *   ├─ VirtqError        a broken virtqueue or descriptor chain (devices/virtio/virtqueue.ts)
 *   ├─ NvmeStatusError   an NVMe command that completes with a status (devices/nvme/constants.ts)
 *   ├─ WaitTimeoutError  a wait of the test kit that ran out of time (testing/irq.ts)
 *   └─ UsageError        a command line mistake (cli/factory.ts)
 *
 * A server replies to any of them with their errno and logs them as client errors; anything
 * else thrown by device code is a device bug (logged with its stack).
 */
export type VfioUserErrorCode =
  | 'VFU_DISCONNECTED' // the peer hung up, or the connection was closed locally
  | 'VFU_REMOTE_ERROR' // the peer answered with an error reply (see errno)
  | 'VFU_TIMEOUT' // no reply (or no interrupt) within the requested time
  | 'VFU_ABORTED' // the caller's AbortSignal fired (the error's cause is the signal's reason)
  | 'VFU_MESSAGE_TOO_LARGE' // a message over the configured maximum
  | 'VFU_TOO_MANY_FDS' // more fds than allowed with one message
  | 'VFU_CTRUNC' // the kernel truncated ancillary data: fds were lost
  | 'VFU_STRAY_FDS' // fds arrived with no message to own them
  | 'VFU_PROTOCOL' // the peer broke the protocol (bad reply, wrong size, ...)
  | 'VFU_BUSY' // too many requests in flight (all message ids in use)
  | 'VFU_DMA' // a DMA access or map the client's maps do not allow (errno says why)
  | 'VFU_BAD_STATE' // an operation that the current state forbids
  | 'VFU_DEVICE_FAILED' // a device on a worker thread failed to start (server/threads.ts)
  | 'VFU_INVALID_ARGUMENT' // a local caller's argument is invalid
  | 'VFU_VIRTQ' // a broken virtqueue or descriptor chain: the virtio device needs a reset (VirtqError)
  | 'VFU_NVME_STATUS' // an NVMe command fails with the error's `status` (NvmeStatusError)
  | 'VFU_USAGE' // a command line mistake (the CLI's UsageError)
  | 'VFU_DEVICE_DEFINITION'; // a device definition that contradicts itself (thrown when it is defined or served)

/** The codes of ProtocolError: what is wrong with a malformed message. */
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

/** The codes of ConfigSpaceError. */
export type ConfigSpaceErrorCode =
  | 'VFU_CONFIG_RANGE' // an access (offset/length) outside config space or the MSI-X table
  | 'VFU_CONFIG_BAD_ARG' // an invalid argument to a builder or device-side method
  | 'VFU_CONFIG_CONFLICT' // a BAR index already taken, a capability added twice
  | 'VFU_CONFIG_NO_SPACE' // capability does not fit (standard: below 0x100; extended: below size)
  | 'VFU_CONFIG_BAD_STATE'; // save/load blob malformed or from a different device layout

/** Every stable code an error of this package carries. */
export type ErrorCode = VfioUserErrorCode | ProtocolErrorCode | ConfigSpaceErrorCode;

export class VfioUserError extends Error {
  readonly code: ErrorCode;
  /** errno from the peer (VFU_REMOTE_ERROR) or the local errno to report */
  readonly errno: number;
  constructor(code: ErrorCode, message: string, errno = 0, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VfioUserError';
    this.code = code;
    this.errno = errno;
  }
}

/**
 * The base of a layer's error with its own codes (ProtocolError, ConfigSpaceError): errno
 * defaults to EINVAL, the errno of the error reply when a peer's input caused it; `name` is
 * the subclass's name.
 */
export abstract class LayerError<C extends ErrorCode> extends VfioUserError {
  declare readonly code: C;
  constructor(code: C, message: string, errno: number = Errno.EINVAL) {
    super(code, message, errno);
    this.name = new.target.name;
  }
}

/** errno values used across the package (Linux x86-64/arm64 generic numbers). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOSPC: 28,
  ERANGE: 34,
  ENOSYS: 38,
  ENOTSUP: 95,
  EMSGSIZE: 90,
  EPROTO: 71,
  ENOTCONN: 107,
  ECONNRESET: 104,
  ETIMEDOUT: 110,
} as const;

const errnoNames = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));
export function errnoName(n: number): string {
  return errnoNames.get(n) ?? `errno ${n}`;
}
