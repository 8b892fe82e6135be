/**
 * The vfio-user server: serves one PciDevice to one client at a time, over a listening
 * socket path or an inherited fd.
 *
 * Each client is a Session (session.ts: its commands, in arrival order). Any failure becomes
 * an error reply with an errno; a peer that breaks framing is disconnected. Either way the
 * server keeps serving.
 */
import { EventEmitter } from 'node:events';
import { native } from '../native/index.js';
import { Listener, adoptFd } from '../transport/socket.js';
import { VfioUserError, Errno } from '../errors.js';
import type { PciDevice } from './device.js';
import { DEFAULT_MAX_DMA_BYTES } from './dma.js';
import { Migration } from './migration.js';
import { Session } from './session.js';
import { served } from './served.js';
import { IrqIndex } from './irq.js';

export interface ServerOptions {
  /** most bytes of data in one REGION_READ/WRITE or DMA message (default 1 MiB) */
  maxDataXferSize?: number | undefined;
  /** most fds accepted with one message (default 16, the most QEMU accepts) */
  maxMsgFds?: number | undefined;
  /** most DMA maps (default 65535) */
  maxDmaMaps?: number | undefined;
  /** most bytes all DMA maps together may cover (default 16 TiB); a DMA_MAP past it gets ENOSPC */
  maxDmaBytes?: number | undefined;
  /** offer twin-socket mode to clients that support it (default true) */
  twinSocket?: boolean | undefined;
  /** advertise REGION_WRITE_MULTI (default true) */
  writeMultiple?: boolean | undefined;
  /**
   * Layout of DMA_WRITE requests and DMA_READ replies: the spec's (u64 count, data at 16) or
   * QEMU's (u32 count, data at 12). 'auto' (default) picks QEMU's for a client whose VERSION
   * announces write_multiple without twin_socket, as QEMU's does, and the spec's otherwise.
   */
  dmaMessageLayout?: 'auto' | 'spec' | 'qemu' | undefined;
  /** how long a DMA_READ/DMA_WRITE to the client may take before the access fails (ms, default 30000) */
  dmaTimeoutMs?: number | undefined;
  /**
   * Most bytes of DMA_READ data the client may owe at once (larger reads are split and
   * queued). Default: 65536 for a client with QEMU's DMA layout, which loses the tail of a
   * reply that does not fit its socket buffer (see dma-messenger.ts), no bound otherwise.
   */
  dmaReadWindow?: number | undefined;
  /**
   * Refuse DMA_MAP of files that cannot be sealed against shrinking (EPERM; default true).
   * Such a file (a regular file, one in /dev/shm, a memfd without MFD_ALLOW_SEALING) could be
   * truncated by the client while we map it. With false they are accepted: never handed to
   * device code as views, only copied by a native copy that turns the fault (SIGBUS) into an
   * error for that one access. QEMU's memory-backend-memfd is sealed already.
   */
  requireSealedDmaFiles?: boolean | undefined;
  /**
   * How long a client may take to complete VERSION after it connects (ms, default 5000);
   * a client that has not by then is disconnected, so a silent or trickling peer cannot
   * hold the device.
   */
  handshakeTimeoutMs?: number | undefined;
  /**
   * The serving fast path (default true): after answering, wait for the client's next message
   * in poll(2) without a round through the event loop while the loop has nothing else to do
   * (see ConnectionOptions.fastPath). Timers, other fds, immediates, worker messages and
   * asynchronous device callbacks still run as before. false serves every message through
   * the event loop. Undefined: the environment's VFU_FAST_PATH (0 turns it off), else true.
   * The CLI's `--fast-path=on|off`.
   */
  fastPath?: boolean | undefined;
  /**
   * With the fast path: after answering, poll for the client's next message without sleeping
   * for up to this many microseconds (default 50; 0: never), adaptively (spinning stops for a
   * while after a spin that caught nothing, so a client slower than that costs little CPU, and
   * an idle one none). Saves the wake-up of an idle CPU when the client runs on another one.
   * Between polls the thread yields its CPU, so a client on the same CPU runs meanwhile.
   * Undefined: the environment's VFU_SPIN_US, else 50. An integer from 0 to 1,000,000. The
   * CLI's `--spin-us=N`.
   */
  spinUs?: number | undefined;
  /**
   * log function. Default: warnings (a device error, with its stack; a misbehaving client)
   * go to stderr, nothing else; `() => {}` silences them.
   */
  log?: ((level: 'info' | 'warn' | 'debug', msg: string) => void) | undefined;
}

/**
 * Clients that may wait while the previous one is torn down (or while a live one is served,
 * until their VERSION gets the busy answer); more are closed at once.
 */
const MAX_WAITING_CLIENTS = 16;


/** What a device must be to be served: checks that need the whole definition. */
function checkDefinition(device: PciDevice): void {
  const msix = device.irqs.count(IrqIndex.MSIX);
  if (msix > 0 && !device.config.msix()) {
    throw new VfioUserError('VFU_DEVICE_DEFINITION', `device ${device.name} declares ${msix} MSI-X IRQs but has no MSI-X capability (addMsix)`, Errno.EINVAL);
  }
}

/** The default log: warnings only, to stderr. */
function warningsToStderr(level: 'info' | 'warn' | 'debug', msg: string): void {
  if (level === 'warn') process.stderr.write(`vfio-user server: ${msg}\n`);
}

export interface ServerEvents {
  connect: [];
  disconnect: [];
  error: [Error];
}

export class VfioUserServer extends EventEmitter {
  readonly device: PciDevice;
  readonly maxDataXferSize: number;
  readonly maxMsgFds: number;
  readonly maxDmaMaps: number;
  readonly twinSocket: boolean;
  readonly writeMultiple: boolean;
  /** @internal */
  readonly migration: Migration | undefined;
  readonly dmaLayout: 'auto' | 'spec' | 'qemu';
  readonly dmaTimeoutMs: number;
  readonly dmaReadWindow: number | undefined;
  readonly handshakeTimeoutMs: number;
  readonly fastPath: boolean;
  readonly spinUs: number;
  private readonly logFn: ServerOptions['log'];
  private listener: Listener | undefined;
  /** the client being served (or torn down: see `serving`) @internal */
  session: Session | undefined;
  /** clients that connected while another was served or torn down */
  private readonly waiting: Session[] = [];
  /** the previous client's teardown (unmapping its DMA) is still running */
  private tearingDown = false;
  /** settles when the teardown of the last client is over */
  private teardown: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(device: PciDevice, opts: ServerOptions = {}) {
    super();
    checkDefinition(device);
    const st = served(device);
    if (st.server) {
      throw new VfioUserError('VFU_DEVICE_DEFINITION', `device ${device.name} is already served by another server (close that one first)`, Errno.EBUSY);
    }
    st.server = this;
    this.device = device;
    this.maxDataXferSize = opts.maxDataXferSize ?? 1048576;
    this.maxMsgFds = opts.maxMsgFds ?? 16;
    this.dmaLayout = opts.dmaMessageLayout ?? 'auto';
    this.dmaTimeoutMs = opts.dmaTimeoutMs ?? 30000;
    this.dmaReadWindow = opts.dmaReadWindow;
    this.maxDmaMaps = opts.maxDmaMaps ?? 65535;
    this.twinSocket = opts.twinSocket ?? true;
    this.writeMultiple = opts.writeMultiple ?? true;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 5000;
    this.fastPath = opts.fastPath ?? process.env.VFU_FAST_PATH !== '0';
    const env = process.env.VFU_SPIN_US;
    this.spinUs = opts.spinUs ?? (env !== undefined && env !== '' ? Number(env) : 50);
    if (!Number.isInteger(this.spinUs) || this.spinUs < 0 || this.spinUs > 1_000_000) {
      const from = opts.spinUs !== undefined ? 'spinUs' : 'VFU_SPIN_US';
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `${from} must be an integer from 0 to 1000000 (microseconds), not ${String(opts.spinUs ?? env)}`, Errno.EINVAL);
    }
    this.logFn = opts.log ?? warningsToStderr;
    this.migration = device.migratable ? new Migration(device) : undefined;
    (device.dma as { maxMaps: number }).maxMaps = this.maxDmaMaps;
    device.dma.maxBytes = opts.maxDmaBytes ?? DEFAULT_MAX_DMA_BYTES;
    device.dma.requireSealed = opts.requireSealedDmaFiles ?? true;
    device.irqs.log = (level, msg) => this.log(level, msg);
  }

  log(level: 'info' | 'warn' | 'debug', msg: string): void {
    this.logFn?.(level, msg);
  }

  /** Listens on a UNIX socket path; clients are served one at a time. */
  listen(path: string): this {
    if (this.listener) throw new VfioUserError('VFU_BAD_STATE', 'already listening', Errno.EBUSY);
    this.listener = new Listener(path, (fd) => this.accept(fd));
    this.log('info', `listening on ${path}`);
    return this;
  }

  /**
   * Accepts clients on a listening socket fd that somebody else owns (e.g. the main thread, for
   * a device served by a worker: see DeviceThreads). close() stops accepting; the fd stays open.
   */
  listenFd(fd: number): this {
    if (this.listener) throw new VfioUserError('VFU_BAD_STATE', 'already listening', Errno.EBUSY);
    this.listener = new Listener({ fd }, (c) => this.accept(c));
    return this;
  }

  /** Serves a client already connected on fd (the spec's --fd=N convention). */
  serveFd(fd: number): this {
    this.accept(adoptFd(fd));
    return this;
  }

  /** true while a client is connected and not leaving */
  get serving(): boolean {
    return this.session !== undefined;
  }

  private accept(fd: number): void {
    if (this.closed) {
      native.close(fd);
      return;
    }
    if (!this.session && !this.tearingDown) {
      this.session = new Session(this, fd, true);
      this.log('info', 'client connected');
      return;
    }
    if (this.waiting.length >= MAX_WAITING_CLIENTS) {
      this.log('warn', `more than ${MAX_WAITING_CLIENTS} clients waiting: closing a new one`);
      native.close(fd);
      return;
    }
    // it waits: served when the current client has gone and been torn down, or told EBUSY
    // at its VERSION if the current client is still there then
    this.waiting.push(new Session(this, fd, false));
  }

  /** Serves the oldest waiting client once nobody else is served or torn down. */
  private admit(): void {
    while (!this.session && !this.tearingDown && !this.closed) {
      const s = this.waiting.shift();
      if (!s) return;
      if (s.isClosed) continue;
      this.session = s;
      this.log('info', 'client connected');
      s.activate();
    }
  }

  /** called by a session after VERSION @internal */
  attached(s: Session): void {
    served(this.device).attached = true;
    this.device.dma.setMessenger(s.messenger());
    this.device.onAttach?.();
    this.emit('connect');
  }

  /** called by a session when its client is gone: unmap, close IRQ fds, keep device state. @internal */
  sessionEnded(s: Session): void {
    const w = this.waiting.indexOf(s);
    if (w >= 0) this.waiting.splice(w, 1);
    if (this.session !== s) return;
    this.session = undefined;
    this.tearingDown = true;
    served(this.device).attached = false;
    this.device.dma.setMessenger(undefined);
    this.device.irqs.clientGone();
    this.teardown = this.device.dma
      .unmapAll()
      .then(
        async () => {
          this.migration?.clientGone();
          if (this.device.dma.loggingActive) this.device.dma.stopLogging();
          await this.device.onDetach?.();
          this.log('info', 'client disconnected');
          this.emit('disconnect');
        },
        (e) => {
          this.emit('error', e);
        },
      )
      .finally(() => {
        this.tearingDown = false;
        this.admit();
      });
  }

  /**
   * `await using server = new VfioUserServer(dev)`: closes it and waits until its client's
   * teardown (DMA unmaps, onDetach) is over. The device stays usable (destroy() is yours).
   */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.teardown;
  }

  /** Stops listening and disconnects the client. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const st = served(this.device);
    if (st.server === this) st.server = undefined;
    this.listener?.close();
    this.listener = undefined;
    this.session?.close();
    for (const w of this.waiting.splice(0)) w.close();
  }
}
