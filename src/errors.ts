/**
 * Errors raised above the codec (transport, server, client). Like undici, every error has
 * a stable `code`; remote failures also carry the peer's `errno`.
 */
export type VfioUserErrorCode =
  | 'VFU_DISCONNECTED' // the peer hung up, or the connection was closed locally
  | 'VFU_REMOTE_ERROR' // the peer answered with an error reply (see errno)
  | 'VFU_TIMEOUT' // no reply within the requested time
  | 'VFU_MESSAGE_TOO_LARGE' // a message over the configured maximum
  | 'VFU_TOO_MANY_FDS' // more fds than allowed with one message
  | 'VFU_CTRUNC' // the kernel truncated ancillary data: fds were lost
  | 'VFU_STRAY_FDS' // fds arrived with no message to own them
  | 'VFU_PROTOCOL' // the peer broke the protocol (bad reply, wrong size, ...)
  | 'VFU_BUSY' // too many requests in flight (all message ids in use)
  | 'VFU_DMA' // a DMA access or map the client's maps do not allow (errno says why)
  | 'VFU_BAD_STATE' // an operation that the current state forbids
  | 'VFU_INVALID_ARGUMENT'; // a local caller's argument is invalid

export class VfioUserError extends Error {
  readonly code: VfioUserErrorCode;
  /** errno from the peer (VFU_REMOTE_ERROR) or the local errno to report */
  readonly errno: number;
  constructor(code: VfioUserErrorCode, message: string, errno = 0, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VfioUserError';
    this.code = code;
    this.errno = errno;
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
} as const;

const errnoNames = new Map<number, string>(Object.entries(Errno).map(([k, v]) => [v, k]));
export function errnoName(n: number): string {
  return errnoNames.get(n) ?? `errno ${n}`;
}
