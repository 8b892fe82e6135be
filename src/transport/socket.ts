/**
 * Listening and connecting on UNIX stream sockets, on top of the native layer.
 */
import { unlinkSync, lstatSync } from 'node:fs';
import { native, type NativePoller } from '../native/index.js';
import { VfioUserError, Errno } from '../errors.js';

export class Listener {
  readonly fd: number;
  readonly path: string | undefined;
  private readonly poller: NativePoller;
  private closed = false;

  /**
   * Listens on `path` (a stale socket file left by a dead process is replaced; any other
   * existing file is an error) and calls onConnection with each accepted fd.
   */
  constructor(path: string, onConnection: (fd: number) => void, opts: { backlog?: number } = {}) {
    this.path = path;
    try {
      this.fd = native.listen(path, opts.backlog ?? 16);
    } catch (e) {
      if ((e as { code?: string }).code !== 'EADDRINUSE' || !isStaleSocket(path)) throw e;
      unlinkSync(path);
      this.fd = native.listen(path, opts.backlog ?? 16);
    }
    this.poller = native.createPoller(this.fd, (status) => {
      if (this.closed) return;
      if (status < 0) return;
      for (;;) {
        let fd: number;
        try {
          fd = native.accept(this.fd);
        } catch (e) {
          const code = (e as { code?: string }).code;
          // transient per-connection failures must not stop the listener
          if (code === 'ECONNABORTED' || code === 'EMFILE' || code === 'ENFILE' || code === 'EPROTO') return;
          throw e;
        }
        if (fd < 0) return;
        onConnection(fd);
        if (this.closed) return;
      }
    });
    this.poller.start(native.POLL_READABLE);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.close();
    native.close(this.fd);
    if (this.path) {
      try {
        unlinkSync(this.path);
      } catch {
        /* already gone */
      }
    }
  }

  unref(): void {
    this.poller.unref();
  }
}

function isStaleSocket(path: string): boolean {
  try {
    if (!lstatSync(path).isSocket()) return false;
  } catch {
    return false;
  }
  try {
    const fd = native.connect(path);
    native.close(fd);
    return false; // somebody is serving there
  } catch (e) {
    return (e as { code?: string }).code === 'ECONNREFUSED';
  }
}

/** Connects to a UNIX stream socket path; the fd is non-blocking and close-on-exec. */
export function connectPath(path: string): number {
  try {
    return native.connect(path);
  } catch (e) {
    const err = e as { code?: string; errno?: number; message?: string };
    throw new VfioUserError('VFU_DISCONNECTED', `cannot connect to ${path}: ${err.message ?? String(e)}`, err.errno ?? Errno.ENOTCONN, {
      cause: e,
    });
  }
}

/** Adopts an inherited fd (the spec's --fd=N convention): makes it non-blocking and close-on-exec. */
export function adoptFd(fd: number): number {
  if (!Number.isInteger(fd) || fd < 0) throw new VfioUserError('VFU_INVALID_ARGUMENT', `bad fd ${fd}`, Errno.EBADF);
  native.setNonBlocking(fd, true);
  native.setCloexec(fd, true);
  return fd;
}
