/**
 * Typed binding to the native addon (native/vfio_user_native.c).
 *
 * Everything here is a thin, synchronous wrapper over one system call. All fds are
 * created close-on-exec and (for sockets) non-blocking. Failures throw a NativeError
 * carrying `errno` (the positive Linux errno), the stable `code` (the errno name, e.g.
 * 'EAGAIN') and the `syscall`; the message is "syscall: strerror". Invalid arguments throw
 * TypeError (code 'ERR_INVALID_ARG_TYPE') or RangeError (code 'ERR_OUT_OF_RANGE').
 * Works in worker threads: the addon keeps no process-global state (one instance per env).
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';

export interface NativeError extends Error {
  errno: number;
  code: string;
  syscall: string;
}

export type PollCallback = (status: number, events: number) => void;

/**
 * A libuv poll watcher. The callback runs with the poller as `this`, as an async callback
 * (nextTicks and microtasks run right after it); an exception it throws is reported as
 * process 'uncaughtException'. status < 0 is a libuv error (UV_EBADF = -9 when the fd reports
 * POLLERR, e.g. a reset socket); libuv has then stopped the watcher.
 * A started poller is kept alive (not garbage collected); an idle one that is dropped is
 * closed by GC. libuv allows only one started poller per fd (and event loop): stop/close the
 * poller before closing its fd, or createPoller/start on a reused fd number fails with EEXIST.
 */
export interface NativePoller {
  /** Start (or change) watching for POLL_READABLE/POLL_WRITABLE/POLL_DISCONNECT; 0 = stop(). Throws after close(). */
  start(events: number): void;
  stop(): void;
  /** Stops and releases the libuv handle (does not close the fd). Idempotent. */
  close(): void;
  /** Whether the poll handle keeps the event loop alive (default true). */
  ref(): void;
  unref(): void;
  /**
   * Marks the fd as owned by whoever owns the poller, who closes it right after closing the
   * poller. Should the thread's environment end first (a worker that died or was terminated),
   * the fd is closed then, so a client of a dead worker sees its connection end.
   */
  ownFd(): void;
}

export interface NativeAddon {
  /** socketpair(AF_UNIX, SOCK_STREAM|CLOEXEC|NONBLOCK) */
  socketpair(): [number, number];
  /**
   * socket+bind+listen on a path (non-blocking, CLOEXEC). Fails with EADDRINUSE if it exists,
   * ENAMETOOLONG if it does not fit sun_path. A leading '\0' selects the abstract namespace.
   */
  listen(path: string, backlog: number): number;
  /** accept4(CLOEXEC|NONBLOCK); returns -1 when no connection is pending (EAGAIN). */
  accept(fd: number): number;
  /** connect to a UNIX stream socket path (blocking connect); returns a non-blocking CLOEXEC fd. */
  connect(path: string): number;
  /** set or clear O_NONBLOCK */
  setNonBlocking(fd: number, on: boolean): void;
  /** set FD_CLOEXEC */
  setCloexec(fd: number, on: boolean): void;
  /**
   * sendmsg(MSG_NOSIGNAL|MSG_DONTWAIT) of the given buffers (gathered), with fds as one
   * SCM_RIGHTS control message when non-empty. Returns bytes sent, or -1 on EAGAIN.
   * bufs: up to 64 ArrayBufferViews (any TypedArray, Buffer or DataView). fds: at most
   * SCM_MAX_FD (else EINVAL) and only with at least one byte of data (else EINVAL). A partial
   * send returns the count: the fds went with the first byte, resend the rest without them.
   */
  sendmsg(fd: number, bufs: readonly ArrayBufferView[], fds?: readonly number[] | null): number;
  /**
   * send(MSG_NOSIGNAL|MSG_DONTWAIT) of buf[offset, offset+length) without fds (a reply's hot
   * path: no array to unpack). Returns bytes sent, or -1 on EAGAIN.
   */
  send(fd: number, buf: ArrayBufferView, offset: number, length: number): number;
  /**
   * recvmsg(MSG_CMSG_CLOEXEC|MSG_DONTWAIT) into buf[offset, offset+length) (length >= 1).
   * Received fds are stored at fdsOut[1..n] with n in fdsOut[0] (fdsOut must hold
   * at least 1+253 entries). Returns bytes read, 0 at EOF, -1 on EAGAIN.
   * fdsOut[0] is 0 when no fds arrived. A truncated control message (MSG_CTRUNC, e.g. the
   * process ran out of fds) closes any fds received and throws code 'ECTRUNC' (errno EMSGSIZE).
   */
  recvmsg(fd: number, buf: Uint8Array, offset: number, length: number, fdsOut: Int32Array): number;
  close(fd: number): void;
  /** dup(fd) with CLOEXEC */
  dup(fd: number): number;
  /** memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING) */
  memfdCreate(name: string): number;
  ftruncate(fd: number, size: number): void;
  /**
   * Seals the file against shrinking (F_SEAL_SHRINK) so mappings of it cannot fault.
   * Returns true when it is (now) sealed, false when the file cannot be sealed.
   */
  sealShrink(fd: number): boolean;
  /** fstat: size, device and inode (for identifying the same file across fds), mode. */
  fstat(fd: number): { size: number; dev: bigint; ino: bigint; mode: number };
  /**
   * fstat into out (a Float64Array of at least 5), without allocating: the size (at most
   * 2^53 - 1), then the device and the inode as two exact 32-bit halves each, high first.
   */
  fstatInto(fd: number, out: Float64Array): void;
  /**
   * mmap(MAP_SHARED) length bytes of fd at offset (page-aligned) with prot PROT_READ or
   * PROT_READ|PROT_WRITE (anything else, a misaligned offset or a length outside
   * 1..4 GiB - 1: EINVAL). Returns an ArrayBuffer over the mapping, unmapped by munmap() or
   * when garbage collected. Writing to a PROT_READ mapping, or touching pages beyond the end of
   * the file, kills the process (SIGSEGV/SIGBUS) as in C. priv = true maps MAP_PRIVATE: with
   * PROT_WRITE, stores go to private copies of the pages and never reach the file (which may be
   * open read-only); pages not stored to keep showing the file's current contents.
   *
   * The buffer is the mapping of this thread only: posted to another thread (postMessage, with
   * or without it in the transfer list), it arrives as a copy of the bytes at that moment, and
   * stores into the copy never reach the file (nor does the sender's buffer get detached). To
   * share the memory with a worker, send it the fd (fds are process-wide) and mmap there.
   */
  mmap(fd: number, offset: number, length: number, prot: number, priv?: boolean): ArrayBuffer;
  /**
   * Detaches the ArrayBuffer (all views then read as length 0) and munmaps. Idempotent (a
   * detached buffer is ignored); TypeError for an ArrayBuffer that mmap() did not return.
   */
  munmap(buf: ArrayBuffer): void;
  /**
   * Copies dst.byteLength bytes from buf (a mapping from mmap()) at offset into dst, or src into
   * buf at offset, like memcpy, but a SIGBUS on the way (a page of a file its owner truncated)
   * makes it return false instead of killing the process (what was copied before the fault
   * stays). Throws EFAULT when buf was unmapped, RangeError past its end.
   */
  copyFromMapping(buf: ArrayBuffer, offset: number, dst: ArrayBufferView): boolean;
  copyToMapping(buf: ArrayBuffer, offset: number, src: ArrayBufferView): boolean;
  /** eventfd(initval, EFD_CLOEXEC|EFD_NONBLOCK [|EFD_SEMAPHORE]) */
  eventfd(initval: number, semaphore: boolean): number;
  /**
   * Reads the counter, resetting it (in semaphore mode: takes 1 from it and returns 1n);
   * returns 0n when it is zero (EAGAIN), which a successful read never returns. A bigint: the
   * counter is a u64, up to 2^64 - 2, and a peer sharing the eventfd may write any value.
   */
  eventfdRead(fd: number): bigint;
  /**
   * Like {@link NativeAddon.eventfdRead} for callers that only need to know whether the
   * eventfd was signalled: resets the counter and returns whether it was non-zero.
   */
  eventfdDrain(fd: number): boolean;
  /**
   * Adds value (0 to 2^64 - 2: a bigint, or an integer number up to 2^53) to the counter.
   * Returns false on EAGAIN (the counter would pass 2^64 - 2).
   */
  eventfdWrite(fd: number, value: number | bigint): boolean;
  /**
   * Adds value (1 to 2^64 - 2: a bigint, or an integer number up to 2^53) to an eventfd
   * counter without ever waiting, whatever the fd's O_NONBLOCK flag (which a peer sharing the
   * file can change at any time). Returns true when added, false when the counter is full: it
   * is then readable, so whoever waits on it is woken already. A write that would block is cut short by a per-thread timer within about 2 ms
   * (a real-time signal, process-wide handler; see the C source). Throws on other errors
   * (EBADF, EINVAL for a non-eventfd...).
   */
  eventfdSignal(fd: number, value: number | bigint): boolean;
  /** Whether fd is an eventfd (by its /proc/self/fd link); throws EBADF for a closed fd. */
  isEventfd(fd: number): boolean;
  /**
   * Creates a (stopped) libuv poll watcher on fd; callback(status, events) runs on the JS thread.
   * libuv makes the fd non-blocking. EEXIST if another poller is started on fd.
   */
  createPoller(fd: number, callback: PollCallback): NativePoller;
  /**
   * The serving fast path (native/fastpath.c): waits in poll(2) until fd is readable (2 when
   * that happened within the first spinUs microseconds, polled without sleeping; 1 after
   * sleeping) or until this thread's event loop has anything to do (0): another watched fd or
   * signal ready, a timer due, immediates or closing handles, or a watcher started since the
   * loop's last poll. Never waits longer than the event loop would have; maxMs (-1: no bound)
   * bounds it further. The caller must have run nextTicks and microtasks before (they do not
   * wake it).
   */
  waitReadable(fd: number, maxMs?: number, spinUs?: number): 0 | 1 | 2;
  /**
   * The fast path's round trip in one call (native/fastpath.c, which documents io's layout):
   * sends the staged bytes of io, reads from the socket into buf and, when nothing came and
   * io asks for it, waits as waitReadable() does and reads. Its result goes to io: the
   * bytes read (0 at EOF), -1 when none, -2 after a short send (nothing read). Throws as
   * send() (err.syscall 'send') or recvmsg().
   */
  exchange(io: ArrayBuffer, buf?: ArrayBufferLike): void;
  /** sched_yield(2): lets whatever else is runnable on this CPU run first (a poller between empty passes). */
  schedYield(): void;
  readonly POLL_READABLE: number;
  readonly POLL_WRITABLE: number;
  readonly POLL_DISCONNECT: number;
  readonly PAGE_SIZE: number;
  readonly SCM_MAX_FD: number;
}

const require = createRequire(import.meta.url);

function load(): NativeAddon {
  // dist/src/native/index.js -> ../../../native; src/native/index.ts (run from source) -> ../../native.
  // native/index.cjs finds the binary and says what it looked for when there is none.
  const candidates = ['../../../native/index.cjs', '../../native/index.cjs'];
  const entry = candidates.find((c) => existsSync(new URL(c, import.meta.url)));
  if (!entry) throw new Error(`vfio-user: native/index.cjs is missing next to ${new URL('../../..', import.meta.url).pathname} (a broken installation: reinstall vfio-user)`);
  return require(entry) as NativeAddon;
}

export const native: NativeAddon = load();
export default native;

export const PROT_READ = 1;
export const PROT_WRITE = 2;

export function isNativeError(e: unknown): e is NativeError {
  return e instanceof Error && typeof (e as NativeError).errno === 'number' && typeof (e as NativeError).code === 'string';
}
