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
  /** false for an adopted fd: its owner closes it (and removes its path) */
  private readonly ownsFd: boolean;
  private closed = false;

  /**
   * Listens on `path` (a stale socket file left by a dead process is replaced; any other
   * existing file is an error) and calls onConnection with each accepted fd. With
   * `{ fd }` instead, accepts on a listening socket somebody else owns (e.g. the main thread,
   * for a device served by a worker thread): close() then stops accepting but leaves the fd
   * open and the path in place.
   */
  constructor(path: string | { fd: number }, onConnection: (fd: number) => void, opts: { backlog?: number } = {}) {
    if (typeof path === 'string') {
      this.path = path;
      this.fd = listenPath(path, opts.backlog ?? 16);
      this.ownsFd = true;
    } else {
      this.path = undefined;
      this.fd = path.fd;
      this.ownsFd = false;
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
    if (this.ownsFd) this.poller.ownFd();
    this.poller.start(native.POLL_READABLE);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.close();
    if (!this.ownsFd) return;
    native.close(this.fd);
    if (this.path) removeSocket(this.path);
  }

  unref(): void {
    this.poller.unref();
  }
}

/**
 * A listening socket on path (non-blocking, close-on-exec): a stale socket file left by a dead
 * process is replaced; any other existing file is an error (EADDRINUSE).
 */
export function listenPath(path: string, backlog = 16): number {
  try {
    return native.listen(path, backlog);
  } catch (e) {
    if ((e as { code?: string }).code !== 'EADDRINUSE' || !isStaleSocket(path)) throw e;
    unlinkSync(path);
    return native.listen(path, backlog);
  }
}

/** Removes a socket file (nothing if it is gone already). */
export function removeSocket(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    /* already gone */
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
