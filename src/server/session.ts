/**
 * One client's session with the server: its connection (and twin socket), the negotiated
 * capabilities, and the command handlers. Commands run strictly in arrival order: a handler
 * that completes synchronously replies at once (the fast path for REGION_READ/WRITE); one
 * that returns a promise holds later commands back until it settles (bounded: a client
 * that piles up more is dropped). A failure becomes an error reply with an errno.
 *
 * One exception: while a migration STOP waits for the device's requests in flight, DMA
 * maps and unmaps and region accesses that come after it are run, in order, without waiting
 * for its reply. A request in flight may need the client to answer DMA by message, and a
 * client such as QEMU answers those in the same loop that waits for its DMA_UNMAP or MMIO
 * read: holding them behind the STOP would leave both sides waiting (until QEMU's 5 s reply
 * timeout). The STOP took effect before they run (the device starts nothing new); only its
 * reply comes later.
 *
 * One idea in one file although it passes 600 lines: the handler of each vfio-user command,
 * one short method per command, sharing the session's negotiated state and reply helpers.
 * The codec is in protocol/, the device state in the device, DMA in dma.ts.
 */
import { native } from '../native/index.js';
import * as P from '../protocol/index.js';
import { HEADER_SIZE, FLAG_NO_REPLY, type Header } from '../protocol/header.js';
import { Connection, takeFds, closeFds, retain, type Message } from '../transport/connection.js';
import { VfioUserError, Errno, errnoName } from '../errors.js';
import { RegionIndex, type Region } from './device.js';
import { DmaController, type DmaMessenger, type DmaRegion } from './dma.js';
import { ClientDmaMessenger, QEMU_DMA_READ_WINDOW } from './dma-messenger.js';
import { IRQ_INDEX_COUNT } from './irq.js';
import type { VfioUserServer } from './server.js';
import { served, msixAccess, type Served } from './served.js';

/** REGION_READ/WRITE's layout, for the allocation-free lane (fastCommand) */
const RA = P.LAYOUTS.REGION_ACCESS;
/** DMA_MAP/DMA_UNMAP's layouts, for the hot lane (fastDma) */
const DMA_MAP = P.LAYOUTS.DMA_MAP;
const DMA_UNMAP = P.LAYOUTS.DMA_UNMAP;

/** commands that may wait behind a pending asynchronous one before the client is dropped */
const MAX_QUEUED_COMMANDS = 4096;
const MAX_QUEUED_BYTES = 64 * 1024 * 1024;

/** what runs beside a STOP that waits for the device to go quiet (see the module comment) */
const WHILE_STOPPING: ReadonlySet<number> = new Set([P.Command.DMA_MAP, P.Command.DMA_UNMAP, P.Command.REGION_READ, P.Command.REGION_WRITE, P.Command.REGION_WRITE_MULTI]);

const SERVER_MAJOR = 0;
const SERVER_MINOR = 0;
const PAGE = 4096;

/** Raised inside handlers to produce an error reply. */
function fail(errno: number, message: string): never {
  throw new VfioUserError('VFU_INVALID_ARGUMENT', message, errno);
}

function errnoOf(e: unknown): number {
  if (e instanceof VfioUserError) return e.errno || Errno.EINVAL;
  const n = (e as { errno?: number }).errno;
  return typeof n === 'number' && n > 0 ? n : Errno.EINVAL;
}

/** One client connection of a VfioUserServer: handshake, command dispatch, teardown. @internal */
export class Session {
  readonly server: VfioUserServer;
  readonly conn: Connection;
  /** server-to-client command channel (the twin socket, or the main one) */
  toClient: Connection;
  private twin: Connection | undefined;
  negotiated = false;
  clientCaps: P.VersionCapabilities = {};
  clientMaxDataXfer = 1048576;
  /** layout for DMA messages to this client */
  dmaLayout: 'spec' | 'qemu' = 'spec';
  private queue: Message[] = [];
  private queuedBytes = 0;
  private busy = false;
  /** a command run beside a stopping STOP has not settled yet */
  private aside = false;
  private closed = false;
  /**
   * false while this client waits for the previous one to be torn down: its commands are
   * queued, and a VERSION that arrives while another client is being served gets EBUSY
   */
  private active: boolean;
  private handshakeTimer: NodeJS.Timeout | undefined;
  /** the server's state of the device (MSI-X table, FLR) */
  private readonly st: Served;
  /** false: every command goes the general way (tests compare both ways) @internal */
  hotLane = true;
  /** DMA_MAPs and DMA_UNMAPs the hot lane (fastDma) answered @internal */
  hotCommands = 0;

  constructor(server: VfioUserServer, fd: number, active: boolean) {
    this.server = server;
    this.st = served(server.device);
    this.active = active;
    this.busy = !active;
    this.conn = new Connection(fd, {
      maxMessageSize: HEADER_SIZE + server.maxDataXferSize + 4096,
      maxFdsPerMessage: server.maxMsgFds,
      // a client that does not read its replies is not read either: memory stays bounded
      pauseReadsWhenBacklogged: true,
      fastPath: server.fastPath,
      spinUs: server.spinUs,
      onCommand: (msg) => this.onCommand(msg),
      onFastCommand: (command, msgId, buf, at, size, fd) => this.fastCommand(command, msgId, buf, at, size, fd),
      onClose: (err) => this.onClose(err),
      onBadHeader: (h, why) => this.server.log('warn', `command ${P.commandName(h.command)} id ${h.msgId} refused (EINVAL): ${why}`),
    });
    this.toClient = this.conn;
    this.handshakeTimer = setTimeout(() => {
      this.server.log('warn', `client did not complete VERSION within ${server.handshakeTimeoutMs} ms: disconnecting`);
      this.conn.close();
    }, server.handshakeTimeoutMs);
    this.handshakeTimer.unref();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    this.conn.close();
  }

  /** The previous client is gone: this one is served from now on (its queued commands first). */
  activate(): void {
    this.active = true;
    this.next();
  }

  private onClose(err: VfioUserError | undefined): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.handshakeTimer);
    if (err) this.server.log('warn', `client connection failed: ${err.code} ${err.message}`);
    this.twin?.close();
    for (const m of this.queue) closeFds(m.fds);
    this.queue = [];
    this.server.sessionEnded(this);
  }

  // ------------------------------------------------------------ dispatch

  private onCommand(msg: Message): void {
    if (!this.active && msg.header.command === P.Command.VERSION && this.server.serving) {
      // another client is being served (not just leaving): say so, clearly, and hang up
      this.server.log('info', 'refusing a client while another one is served (EBUSY)');
      this.conn.replyError(msg.header, Errno.EBUSY);
      this.conn.close();
      return;
    }
    if (this.queue.length === 0 && this.asideOk(msg.header.command)) {
      this.runAside(msg);
      return;
    }
    if (this.busy || this.aside || this.queue.length) {
      // keep order: fds must be owned by us until the command runs
      if (this.queue.length >= MAX_QUEUED_COMMANDS || this.queuedBytes + msg.payload.length > MAX_QUEUED_BYTES) {
        // a client flooding us while a command waits (e.g. on its own DMA reply): drop it
        this.server.log('warn', `client queued more than ${MAX_QUEUED_COMMANDS} commands or ${MAX_QUEUED_BYTES} bytes behind a pending one: disconnecting`);
        this.conn.close();
        return;
      }
      this.queuedBytes += msg.payload.length;
      this.queue.push(retain(msg));
      return;
    }
    this.run(msg);
  }

  /** Runs a command's handler; true when it goes on (a promise), settled by `after` (a failure replied first). */
  private dispatch(msg: Message, after: () => void): boolean {
    let result: void | Promise<void>;
    try {
      result = this.handle(msg);
    } catch (e) {
      this.replyFailure(msg.header, e);
      closeFds(takeFds(msg));
      return false;
    }
    if (!result || typeof result.then !== 'function') return false;
    result.then(after, (e) => {
      this.replyFailure(msg.header, e);
      after();
    });
    return true;
  }

  private run(msg: Message): void {
    if (this.dispatch(msg, () => this.next())) this.busy = true;
  }

  /** Whether a command may run beside a STOP that waits for the device (see the module comment). */
  private asideOk(cmd: number): boolean {
    return this.busy && this.active && !this.aside && this.server.migration?.stopping === true && WHILE_STOPPING.has(cmd);
  }

  private runAside(msg: Message): void {
    const settled = (): void => {
      this.aside = false;
      if (!this.busy) this.next();
      else this.runQueuedAside();
    };
    if (this.dispatch(msg, settled)) this.aside = true;
  }

  /** Runs what queued up behind a command run aside, while the STOP still waits and it may. */
  private runQueuedAside(): void {
    while (!this.closed && this.queue.length && this.asideOk(this.queue[0]!.header.command)) {
      const m = this.queue.shift()!;
      this.queuedBytes -= m.payload.length;
      this.runAside(m);
      if (m.fds.length) closeFds(takeFds(m));
    }
  }

  /** Holds later commands back until the hot lane's asynchronous command h settles (as run() does). */
  private pend(h: Header, result: Promise<void>): void {
    this.busy = true;
    result.then(
      () => this.next(),
      (e) => {
        this.replyFailure(h, e);
        this.next();
      },
    );
  }

  /**
   * The hot lane (Connection's onFastCommand): a REGION_READ or REGION_WRITE of a trapped or
   * memory-backed BAR, in order (nothing pending or queued), decoded where it lies in the
   * receive buffer, without a Message, a Header or a decoded request object. Anything it
   * does not take (other commands, bad or unusual requests, config space, MSI-X) goes the
   * general way, which also gives the errors; it takes nothing it would have to undo.
   */
  private fastCommand(command: number, msgId: number, b: Uint8Array, at: number, size: number, fd: number): boolean {
    if (this.busy || this.aside || this.queue.length > 0 || !this.negotiated || !this.hotLane) return false;
    if (command === P.Command.DMA_MAP || command === P.Command.DMA_UNMAP) {
      if (!this.fastDma(command, msgId, b, at, size, fd)) return false;
      this.hotCommands++;
      return true;
    }
    if (fd >= 0) return false;
    const write = command === P.Command.REGION_WRITE;
    if (!write && command !== P.Command.REGION_READ) return false;
    const p = at + HEADER_SIZE;
    if (size < HEADER_SIZE + RA.size) return false;
    const o = p + RA.fields.offset;
    if ((b[o + 4]! | b[o + 5]! | b[o + 6]! | b[o + 7]!) !== 0) return false; // offsets from 4 GiB: the general way
    const offset = u32le(b, o);
    const region = u32le(b, p + RA.fields.region);
    const count = u32le(b, p + RA.fields.count);
    if (size !== HEADER_SIZE + RA.size + (write ? count : 0) || count > this.server.maxDataXferSize || this.st.msix) return false;
    const r = this.server.device.regions.get(region);
    if (!r || offset + count > r.size || !(write ? r.writable : r.readable)) return false;
    const mig = this.server.migration;
    if (mig && !mig.allows(command)) return false;
    if (write) {
      if (!r.access?.write && !r.memory) return false;
      const data = copyAt(b, p + RA.fields.data, count); // devices may keep it
      let res: void | Promise<void>;
      try {
        res = this.write(r, region, offset, data);
      } catch (e) {
        this.replyFailure(fastHeader(msgId, command, size), e);
        return true;
      }
      if (res) {
        this.pend(
          fastHeader(msgId, command, size),
          res.then(() => this.writeReply(msgId, command, offset, region, count)),
        );
      } else this.writeReply(msgId, command, offset, region, count);
      return true;
    }
    let data: Uint8Array | Promise<Uint8Array>;
    try {
      if (r.access?.read) data = r.access.read(offset, count);
      else if (r.memory) data = r.memory.slice(offset, offset + count);
      else return false;
      if (data instanceof Uint8Array) {
        this.readReplyFast(msgId, command, offset, region, count, data);
        return true;
      }
    } catch (e) {
      this.replyFailure(fastHeader(msgId, command, size), e);
      return true;
    }
    this.pend(
      fastHeader(msgId, command, size),
      data.then((d) => this.readReplyFast(msgId, command, offset, region, count, d)),
    );
    return true;
  }

  /**
   * The hot lane for what a guest IOMMU sends for every page of every I/O: a DMA_UNMAP of
   * one range (no flags, no fd) and a DMA_MAP with one fd (guest RAM shared) or none, of the
   * plain layout (argsz and payload exactly the structure, addresses, sizes and file offsets
   * page aligned and below 2^53). It checks and changes the map table as dmaMap/dmaUnmap do,
   * through the same DmaController calls, and fails as they do; anything else (flags, ALL,
   * bitmaps, unusual sizes) goes the general way, its fd untouched. Once it takes a map's fd
   * it owns it: DmaController.map keeps it or closes it, on failure too.
   */
  private fastDma(command: number, msgId: number, b: Uint8Array, at: number, size: number, fd: number): boolean {
    const p = at + HEADER_SIZE;
    const map = command === P.Command.DMA_MAP;
    const L = map ? DMA_MAP : DMA_UNMAP;
    if (size !== HEADER_SIZE + L.size || (!map && (fd >= 0 || u32le(b, p + L.fields.flags) !== 0))) return false;
    const argsz = u32le(b, p + L.fields.argsz);
    if (map ? argsz !== L.size : argsz < L.size) return false;
    const mig = this.server.migration;
    if (mig && !mig.allows(command)) return false;
    const address = u64Page(b, p + L.fields.address);
    const bytes = u64Page(b, p + L.fields.size);
    if (address < 0 || bytes <= 0) return false;
    const dma = this.server.device.dma;
    if (map) {
      const flags = u32le(b, p + DMA_MAP.fields.flags);
      if (flags === 0 || flags & ~(P.DmaMapFlags.READ | P.DmaMapFlags.WRITE)) return false;
      const offset = fd >= 0 ? u64Page(b, p + DMA_MAP.fields.offset) : 0;
      if (offset < 0) return false;
      let region: DmaRegion;
      try {
        region = dma.map(address, bytes, (flags & P.DmaMapFlags.READ ? 1 : 0) | (flags & P.DmaMapFlags.WRITE ? 2 : 0), fd >= 0 ? fd : undefined, offset);
      } catch (e) {
        this.replyFailure(fastHeader(msgId, command, size), e);
        return true;
      }
      if (!region.sealed) this.warnUnsealed(region);
      this.conn.replyFill(msgId, command, 0, fillNothing);
      return true;
    }
    let pending: Promise<void> | undefined;
    try {
      pending = dma.unmapNow(address, bytes).pending;
    } catch (e) {
      this.replyFailure(fastHeader(msgId, command, size), e);
      return true;
    }
    if (pending) this.pend(fastHeader(msgId, command, size), pending.then(() => this.unmapReply(msgId, address, bytes)));
    else this.unmapReply(msgId, address, bytes);
    return true;
  }

  /** DMA_UNMAP's reply: the request's structure (no flags) echoed. */
  private unmapReply(msgId: number, address: number, bytes: number): void {
    this.unAddress = address;
    this.unSize = bytes;
    this.conn.replyFill(msgId, P.Command.DMA_UNMAP, DMA_UNMAP.size, this.fillUnmap);
  }

  private unAddress = 0;
  private unSize = 0;
  private readonly fillUnmap = (_b: Uint8Array, dv: DataView, at: number): number => {
    const F = DMA_UNMAP.fields;
    dv.setUint32(at + F.argsz, DMA_UNMAP.size, true);
    dv.setUint32(at + F.flags, 0, true);
    dv.setUint32(at + F.address, this.unAddress % 2 ** 32, true);
    dv.setUint32(at + F.address + 4, Math.floor(this.unAddress / 2 ** 32), true);
    dv.setUint32(at + F.size, this.unSize % 2 ** 32, true);
    dv.setUint32(at + F.size + 4, Math.floor(this.unSize / 2 ** 32), true);
    return DMA_UNMAP.size;
  };

  private readonly fillWrite = (_b: Uint8Array, dv: DataView, at: number): number =>
    P.encodeRegionWriteReplyInto(dv, at, this.rdOffset, this.rdRegion, this.wrCount);
  private wrCount = 0;

  private writeReply(msgId: number, command: number, offset: number, region: number, count: number): void {
    this.rdOffset = offset;
    this.rdRegion = region;
    this.wrCount = count;
    this.conn.replyFill(msgId, command, RA.size, this.fillWrite);
  }

  private readReplyFast(msgId: number, command: number, offset: number, region: number, count: number, data: Uint8Array): void {
    if (data.length !== count) fail(Errno.EIO, `device returned ${data.length} bytes for a ${count}-byte read`);
    this.rdOffset = offset;
    this.rdRegion = region;
    this.rdData = data;
    this.conn.replyFill(msgId, command, RA.size + count, this.fillRead);
  }

  private next(): void {
    if (!this.active) return;
    this.busy = false;
    if (this.aside) return; // resumed when the command run aside settles
    while (!this.busy && this.queue.length && !this.closed) {
      const m = this.queue.shift()!;
      this.queuedBytes -= m.payload.length;
      this.run(m);
      if (m.fds.length) closeFds(takeFds(m));
    }
  }

  private replyFailure(h: Header, e: unknown): void {
    const errno = errnoOf(e);
    const cmd = P.commandName(h.command);
    if (!(e instanceof VfioUserError)) {
      // a bug in device code must not take the server down; report it loudly (every error
      // of this package, a ConfigSpaceError from a client's config-space blob included, is a
      // VfioUserError: a client error)
      this.server.log('warn', `device error in ${cmd} (client gets ${errnoName(errno)}): ${(e as Error)?.stack ?? String(e)}`);
    } else {
      this.server.log('debug', `client error: ${cmd} -> ${errnoName(errno)} (${e.code}): ${e.message}`);
    }
    if (!this.conn.isClosed) this.conn.replyError(h, errno);
  }

  private handle(msg: Message): void | Promise<void> {
    const h = msg.header;
    const cmd = h.command;
    if (!this.negotiated && cmd !== P.Command.VERSION) fail(Errno.EINVAL, 'VERSION must come first');
    const mig = this.server.migration;
    if (mig && !mig.allows(cmd)) fail(Errno.EINVAL, `${P.commandName(cmd)} not allowed in migration state ${mig.stateName}`);
    switch (cmd) {
      case P.Command.VERSION:
        return this.version(msg);
      case P.Command.DMA_MAP:
        return this.dmaMap(msg);
      case P.Command.DMA_UNMAP:
        return this.dmaUnmap(msg);
      case P.Command.DEVICE_GET_INFO:
        return this.deviceInfo(msg);
      case P.Command.DEVICE_GET_REGION_INFO:
        return this.regionInfo(msg);
      case P.Command.DEVICE_GET_REGION_IO_FDS:
        return this.regionIoFds(msg);
      case P.Command.DEVICE_GET_IRQ_INFO:
        return this.irqInfo(msg);
      case P.Command.DEVICE_SET_IRQS:
        return this.setIrqs(msg);
      case P.Command.REGION_READ:
        return this.regionRead(msg);
      case P.Command.REGION_WRITE:
        return this.regionWrite(msg);
      case P.Command.REGION_WRITE_MULTI:
        return this.regionWriteMulti(msg);
      case P.Command.DEVICE_RESET:
        return this.deviceReset(msg);
      case P.Command.DEVICE_FEATURE:
        return this.deviceFeature(msg);
      case P.Command.MIG_DATA_READ:
        return this.migDataRead(msg);
      case P.Command.MIG_DATA_WRITE:
        return this.migDataWrite(msg);
      default:
        fail(Errno.ENOSYS, `unsupported command ${cmd}`);
    }
  }

  // ------------------------------------------------------------ VERSION

  private version(msg: Message): void {
    if (this.negotiated) fail(Errno.EINVAL, 'VERSION already negotiated');
    const req = P.decodeVersionRequest(msg.payload);
    if (req.major !== SERVER_MAJOR) fail(Errno.ENOTSUP, `unsupported major version ${req.major}`);
    const s = this.server;
    const caps = req.capabilities;
    this.clientCaps = caps;
    this.clientMaxDataXfer = caps.maxDataXferSize ?? P.DEFAULT_CAPABILITIES.maxDataXferSize;
    if (this.clientMaxDataXfer < P.MIN_DATA_XFER_SIZE) {
      fail(Errno.EINVAL, `client max_data_xfer_size ${this.clientMaxDataXfer} is below the minimum ${P.MIN_DATA_XFER_SIZE}`);
    }
    const raw = caps.raw ?? {};
    this.dmaLayout = s.dmaLayout !== 'auto' ? s.dmaLayout : 'write_multiple' in raw && !('twin_socket' in raw) ? 'qemu' : 'spec';
    const reply: P.VersionCapabilities = {
      maxMsgFds: s.maxMsgFds,
      maxDataXferSize: s.maxDataXferSize,
      maxDmaMaps: s.maxDmaMaps,
      pgsizes: BigInt(PAGE),
      writeMultiple: s.writeMultiple,
    };
    if (s.migration) {
      reply.migration = { pgsize: PAGE, maxBitmapSize: 256 * 1024 * 1024 };
    }
    let fds: number[] = [];
    if (caps.twinSocket?.supported && s.twinSocket) {
      const [mine, theirs] = native.socketpair();
      this.twin = new Connection(mine, {
        maxMessageSize: HEADER_SIZE + Math.max(s.maxDataXferSize, this.clientMaxDataXfer) + 4096,
        maxFdsPerMessage: 0,
        onClose: () => {
          // the twin going away means the client is gone
          this.conn.close();
        },
      });
      this.toClient = this.twin;
      reply.twinSocket = { supported: true, fdIndex: 0 };
      fds = [theirs];
    }
    const payload = P.encodeVersionReply({ major: SERVER_MAJOR, minor: Math.min(req.minor, SERVER_MINOR), capabilities: reply });
    this.negotiated = true;
    clearTimeout(this.handshakeTimer);
    try {
      this.conn.reply(msg.header, payload, fds);
    } finally {
      closeFds(fds);
    }
    this.server.attached(this);
  }

  // ------------------------------------------------------------ DMA

  private dmaMap(msg: Message): void {
    const req = P.decodeDmaMapRequest(msg.payload);
    const dma = this.server.device.dma;
    const fds = takeFds(msg);
    if (fds.length > 1) {
      closeFds(fds);
      fail(Errno.EINVAL, 'DMA_MAP with more than one fd');
    }
    const prot = (req.flags & P.DmaMapFlags.READ ? 1 : 0) | (req.flags & P.DmaMapFlags.WRITE ? 2 : 0);
    if (req.flags & ~(P.DmaMapFlags.READ | P.DmaMapFlags.WRITE)) {
      closeFds(fds);
      fail(Errno.EINVAL, `bad DMA_MAP flags 0x${req.flags.toString(16)}`);
    }
    if ((req.address | req.size) & BigInt(PAGE - 1)) {
      // honour the pgsizes we advertised
      closeFds(fds);
      fail(Errno.EINVAL, `DMA_MAP [0x${req.address.toString(16)}, +0x${req.size.toString(16)}) is not aligned to ${PAGE}`);
    }
    const region = dma.map(req.address, req.size, prot, fds[0], req.offset); // full 64-bit; closes the fd on failure
    if (!region.sealed) this.warnUnsealed(region);
    this.conn.reply(msg.header, null);
  }

  private warnUnsealed(region: DmaRegion): void {
    this.server.log('warn', `DMA map at 0x${region.iova.toString(16)}: its file cannot be sealed against shrinking; it is accessed by SIGBUS-safe copies only (slower, no zero-copy)`);
  }

  /** DMA_UNMAP: replies at once unless a map it removes is pinned by DMA in flight (then a promise). */
  private dmaUnmap(msg: Message): void | Promise<void> {
    const req = P.decodeDmaUnmapRequest(msg.payload);
    const F = P.DmaUnmapFlags;
    if (req.flags & ~(F.GET_DIRTY_BITMAP | F.ALL)) fail(Errno.EINVAL, `bad DMA_UNMAP flags 0x${req.flags.toString(16)}`);
    if (req.flags & F.GET_DIRTY_BITMAP) return this.dmaUnmapBitmap(msg, req);
    const dma = this.server.device.dma;
    const reply = (): void => {
      this.conn.reply(msg.header, P.encodeDmaUnmapReply({ flags: req.flags, address: req.address, size: req.size }));
    };
    if (req.flags & F.ALL) {
      if (req.address !== 0n || req.size !== 0n) fail(Errno.EINVAL, 'DMA_UNMAP ALL needs address and size 0');
      return dma.unmapAll().then(reply);
    }
    // as Linux VFIO type1: every map inside the range goes, none is fine, cutting one is EINVAL
    if ((req.address | req.size) & BigInt(PAGE - 1)) fail(Errno.EINVAL, `DMA_UNMAP range is not aligned to ${PAGE}`);
    const { pending } = dma.unmapNow(req.address, req.size);
    if (pending) return pending.then(reply);
    reply();
  }

  /** DMA_UNMAP with GET_DIRTY_BITMAP (libvfio-user's form): the map's dirty bitmap, then the unmap. */
  private async dmaUnmapBitmap(msg: Message, req: P.DmaUnmapRequest): Promise<void> {
    const dma = this.server.device.dma;
    // libvfio-user's form: the region's dirty bitmap (from DMA logging), then the unmap
    const bm = req.bitmap!;
    const { iova, size } = DmaController.range(req.address, req.size, 'DMA_UNMAP range');
    const pgsize = toSafe(bm.pgsize);
    const bytes = toSafe(bm.size);
    if (!dma.loggingActive) fail(Errno.EINVAL, 'DMA_UNMAP dirty bitmap requested but DMA logging is not started');
    if (!(pgsize > 0) || size % pgsize) fail(Errno.EINVAL, `DMA_UNMAP bitmap page size ${pgsize} does not divide ${size}`);
    const need = Math.ceil(size / pgsize / 8);
    if (bytes < need || bytes > this.clientMaxDataXfer) fail(Errno.EINVAL, `DMA_UNMAP bitmap of ${bytes} bytes, ${need} needed`);
    if (req.argsz < 24 + 16 + bytes) fail(Errno.EINVAL, `DMA_UNMAP argsz ${req.argsz} too small for the bitmap`);
    const region = dma.regionAt(iova);
    if (!region || region.iova !== iova || region.size !== size) fail(Errno.ENOENT, `no DMA map at [0x${iova.toString(16)}, +0x${size.toString(16)})`);
    const data = new Uint8Array(bytes);
    data.set(dma.report(iova, size, pgsize).subarray(0, need));
    await dma.unmap(iova, size);
    this.conn.reply(msg.header, P.encodeDmaUnmapReply({ flags: req.flags, address: req.address, size: req.size, bitmap: { pgsize: bm.pgsize, size: BigInt(bytes), data } }));
  }

  // ------------------------------------------------------------ info

  private deviceInfo(msg: Message): void {
    P.decodeDeviceGetInfoRequest(msg.payload); // validates argsz
    const dev = this.server.device;
    let numRegions = RegionIndex.VGA + 1;
    for (const i of dev.regions.keys()) numRegions = Math.max(numRegions, i + 1);
    this.conn.reply(
      msg.header,
      P.encodeDeviceGetInfoReply({
        flags: P.DeviceInfoFlags.PCI | P.DeviceInfoFlags.RESET,
        numRegions,
        numIrqs: IRQ_INDEX_COUNT,
      }),
    );
  }

  private regionInfo(msg: Message): void {
    const req = P.decodeRegionInfoRequest(msg.payload);
    const dev = this.server.device;
    const idx = req.index;
    const F = P.RegionInfoFlags;
    let flags = 0;
    let size = 0;
    const caps: P.RegionCap[] = [];
    let fds: number[] = [];
    if (idx === RegionIndex.CONFIG) {
      flags = F.READ | F.WRITE;
      size = dev.config.size;
    } else {
      const r = dev.regions.get(idx);
      if (!r) {
        let numRegions = RegionIndex.VGA + 1;
        for (const i of dev.regions.keys()) numRegions = Math.max(numRegions, i + 1);
        if (idx >= numRegions) fail(Errno.EINVAL, `no region ${idx}`);
      } else {
        size = r.size;
        if (r.readable) flags |= F.READ;
        if (r.writable) flags |= F.WRITE;
        if (r.mappable) {
          flags |= F.MMAP;
          const whole = r.mmapAreas.length === 1 && r.mmapAreas[0]!.offset === 0 && r.mmapAreas[0]!.size === r.size;
          if (!whole) caps.push({ kind: 'sparse-mmap', version: 1, areas: r.mmapAreas.map((a) => ({ offset: BigInt(a.offset), size: BigInt(a.size) })) });
          fds = [r.memfd];
        }
        if (r.type) caps.push({ kind: 'type', version: 1, type: r.type.type, subtype: r.type.subtype });
      }
    }
    const complete = P.regionInfoReplySize(caps) <= req.argsz;
    // the fd goes along only with a complete reply (the client asks again with a larger
    // argsz), and the MMAP flag only with the fd, as the spec says
    if (!complete) flags &= ~F.MMAP;
    const payload = P.encodeRegionInfoReply({ flags, index: idx, size: BigInt(size), offset: 0n, caps }, req.argsz);
    this.conn.reply(msg.header, payload, complete ? fds : []);
  }

  private regionIoFds(msg: Message): void {
    const req = P.decodeRegionIoFdsRequest(msg.payload);
    const r = this.server.device.regions.get(req.index);
    if (!r && req.index !== RegionIndex.CONFIG) fail(Errno.EINVAL, `no region ${req.index}`);
    const evs = r?.ioeventfds ?? [];
    const subRegions: P.IoFdSubRegion[] = evs.map((e, i) => ({
      kind: 'ioeventfd' as const,
      offset: BigInt(e.offset),
      size: BigInt(e.size),
      fdIndex: i,
      flags: e.datamatch !== undefined ? P.IoEventFdFlags.DATAMATCH : 0,
      datamatch: e.datamatch ?? 0n,
    }));
    const payload = P.encodeRegionIoFdsReply({ flags: 0, index: req.index, subRegions }, req.argsz);
    const complete = P.regionIoFdsReplySize(subRegions.length) <= req.argsz;
    this.conn.reply(msg.header, payload, complete ? evs.map((e) => e.fd) : []);
  }

  private irqInfo(msg: Message): void {
    const req = P.decodeIrqInfoRequest(msg.payload);
    if (req.index >= IRQ_INDEX_COUNT) fail(Errno.EINVAL, `no IRQ index ${req.index}`);
    const irqs = this.server.device.irqs;
    this.conn.reply(
      msg.header,
      P.encodeIrqInfoReply({ flags: irqs.infoFlags(req.index), index: req.index, count: irqs.count(req.index) }),
    );
  }

  private setIrqs(msg: Message): void {
    const req = P.decodeSetIrqsRequest(msg.payload);
    const fds = takeFds(msg);
    this.server.device.irqs.setIrqs({ flags: req.flags, index: req.index, start: req.start, count: req.count, data: req.data }, fds);
    this.conn.reply(msg.header, null);
  }

  // ------------------------------------------------------------ region access

  private checkAccess(region: number, offset: number, count: number, write: boolean): Region | undefined {
    if (count > this.server.maxDataXferSize) fail(Errno.EINVAL, `access of ${count} bytes exceeds max_data_xfer_size`);
    if (region === RegionIndex.CONFIG) {
      if (offset + count > this.server.device.config.size) fail(Errno.EINVAL, 'config access out of range');
      return undefined;
    }
    const r = this.server.device.regions.get(region);
    if (!r) fail(Errno.EINVAL, `no region ${region}`);
    if (offset + count > r.size || offset < 0) fail(Errno.EINVAL, `access [${offset}, +${count}) outside region ${region} of ${r.size} bytes`);
    if (write ? !r.writable : !r.readable) fail(Errno.EINVAL, `region ${region} is not ${write ? 'writable' : 'readable'}`);
    return r;
  }

  private regionRead(msg: Message): void | Promise<void> {
    const req = P.decodeRegionReadRequest(msg.payload);
    const { offset, region, count } = req;
    const r = this.checkAccess(region, offset, count, false);
    const dev = this.server.device;
    const h = msg.header;
    if (!r) return this.readReply(h, offset, region, count, dev.config.read(offset, count));
    if (this.st.msix) {
      const buf = new Uint8Array(count);
      if (msixAccess(dev, region, offset, buf, false)) return this.readReply(h, offset, region, count, buf);
    }
    if (r.access?.read) {
      const out = r.access.read(offset, count);
      if (out instanceof Uint8Array) return this.readReply(h, offset, region, count, out);
      return out.then((d) => this.readReply(h, offset, region, count, d));
    }
    if (r.memory) return this.readReply(h, offset, region, count, r.memory.slice(offset, offset + count));
    fail(Errno.EINVAL, `region ${region} has no read handler`);
  }

  // the REGION_READ reply is written in place by a bound filler (no closure per request)
  private rdOffset = 0;
  private rdRegion = 0;
  private rdData: Uint8Array = new Uint8Array(0);
  private readonly fillRead = (buf: Uint8Array, dv: DataView, at: number): number =>
    P.encodeRegionReadReplyInto(buf, dv, at, this.rdOffset, this.rdRegion, this.rdData);

  private readReply(h: Header, offset: number, region: number, count: number, data: Uint8Array): void {
    if (data.length !== count) fail(Errno.EIO, `device returned ${data.length} bytes for a ${count}-byte read`);
    this.rdOffset = offset;
    this.rdRegion = region;
    this.rdData = data;
    this.conn.replyWith(h, 16 + count, this.fillRead);
  }

  private regionWrite(msg: Message): void | Promise<void> {
    const req = P.decodeRegionWriteRequest(msg.payload);
    const { offset, region, count } = req;
    const data = copyOf(req.data); // the payload is only valid during this call; devices may keep data
    const r = this.checkAccess(region, offset, count, true);
    const h = msg.header;
    const done = (): void => {
      if (!(h.flags & FLAG_NO_REPLY)) this.conn.replyWith(h, 16, (_b, dv, at) => P.encodeRegionWriteReplyInto(dv, at, offset, region, count));
    };
    const res = this.write(r, region, offset, data);
    if (res) return res.then(done);
    done();
  }

  /** One write to a region; returns a promise only when the device's handler is async. */
  private write(r: Region | undefined, region: number, offset: number, data: Uint8Array): void | Promise<void> {
    const dev = this.server.device;
    if (!r) {
      dev.config.write(offset, data);
      if (this.st.flrRequested) return dev.reset('flr');
      return;
    }
    if (this.st.msix && msixAccess(dev, region, offset, data, true)) return;
    if (r.access?.write) {
      const res = r.access.write(offset, data);
      if (res && typeof res.then === 'function') return res;
      return;
    }
    if (r.memory) {
      r.memory.set(data, offset);
      return;
    }
    fail(Errno.EINVAL, `region ${region} has no write handler`);
  }

  private async regionWriteMultiAsync(entries: P.RegionWriteMultiEntry[], from: number, first: Promise<void>): Promise<void> {
    await first;
    for (let i = from; i < entries.length; i++) {
      const e = entries[i]!;
      const r = this.checkAccess(e.region, e.offset, e.count, true);
      await this.write(r, e.region, e.offset, e.data);
    }
  }

  private regionWriteMulti(msg: Message): void | Promise<void> {
    if (!this.server.writeMultiple) fail(Errno.ENOTSUP, 'REGION_WRITE_MULTI not enabled');
    const req = P.decodeRegionWriteMultiRequest(msg.payload);
    const entries = req.entries.map((e) => ({ ...e, data: copyOf(e.data) }));
    const done = (): void => {
      this.conn.reply(msg.header, P.encodeRegionWriteMultiReply({ wrCnt: entries.length }));
    };
    // validate everything first so a bad entry applies nothing
    for (const e of entries) this.checkAccess(e.region, e.offset, e.count, true);
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      const res = this.write(this.server.device.regions.get(e.region), e.region, e.offset, e.data);
      if (res) return this.regionWriteMultiAsync(entries, i + 1, res).then(done);
    }
    done();
  }

  // ------------------------------------------------------------ reset, features, migration

  private async deviceReset(msg: Message): Promise<void> {
    if (msg.payload.length !== 0) fail(Errno.EINVAL, 'DEVICE_RESET takes no payload');
    this.server.migration?.reset();
    await this.server.device.reset('client');
    this.conn.reply(msg.header, null);
  }

  private deviceFeature(msg: Message): void | Promise<void> {
    const req = P.decodeDeviceFeatureRequest(msg.payload);
    const F = P.DeviceFeatureFlags;
    const feature = req.flags & F.MASK;
    const op = req.flags & (F.GET | F.SET | F.PROBE);
    const dev = this.server.device;
    const mig = this.server.migration;
    const replyData = (data: Uint8Array | null): void => {
      this.conn.reply(msg.header, P.encodeDeviceFeatureReply({ flags: req.flags, data: data ?? new Uint8Array(0) }));
    };
    const supported = (get: boolean, set: boolean): void => {
      if (op & F.PROBE) {
        if ((op & F.GET && !get) || (op & F.SET && !set)) fail(Errno.EINVAL, `feature ${feature} does not support that operation`);
        replyData(null);
        return;
      }
      if (op === F.GET && !get) fail(Errno.EINVAL, `feature ${feature} cannot be read`);
      if (op === F.SET && !set) fail(Errno.EINVAL, `feature ${feature} cannot be set`);
      if (op !== F.GET && op !== F.SET) fail(Errno.EINVAL, 'DEVICE_FEATURE needs exactly one of GET, SET or PROBE');
    };
    switch (feature) {
      case P.DeviceFeature.MIGRATION: {
        if (!mig) fail(Errno.ENOTSUP, 'device does not support migration');
        supported(true, false);
        if (op & F.PROBE) return;
        return replyData(P.encodeFeatureMigration({ flags: mig.flags }));
      }
      case P.DeviceFeature.MIG_DEVICE_STATE: {
        if (!mig) fail(Errno.ENOTSUP, 'device does not support migration');
        supported(true, true);
        if (op & F.PROBE) return;
        if (op === F.GET) return replyData(P.encodeFeatureMigDeviceState({ deviceState: mig.state, dataFd: 0xffffffff }));
        const s = P.decodeFeatureMigDeviceState(req.data);
        return mig.setState(s.deviceState).then(() =>
          replyData(P.encodeFeatureMigDeviceState({ deviceState: mig.state, dataFd: 0xffffffff })),
        );
      }
      case P.DeviceFeature.DMA_LOGGING_START: {
        supported(false, true);
        if (op & F.PROBE) return;
        const s = P.decodeFeatureDmaLoggingControl(req.data);
        dev.dma.startLogging(
          toSafe(s.pageSize),
          s.ranges.map((r) => ({ iova: r.iova, length: r.length })),
        );
        return replyData(null);
      }
      case P.DeviceFeature.DMA_LOGGING_STOP: {
        supported(false, true);
        if (op & F.PROBE) return;
        dev.dma.stopLogging();
        return replyData(null);
      }
      case P.DeviceFeature.DMA_LOGGING_REPORT: {
        supported(true, false);
        if (op & F.PROBE) return;
        const r = P.decodeFeatureDmaLoggingReportRequest(req.data);
        const bitmap = dev.dma.report(r.iova, r.length, toSafe(r.pageSize));
        if (HEADER_SIZE + 8 + 24 + bitmap.length > HEADER_SIZE + this.clientMaxDataXfer + 4096) {
          fail(Errno.EINVAL, 'dirty bitmap too large for one message');
        }
        return replyData(P.encodeFeatureDmaLoggingReportReply({ iova: r.iova, length: r.length, pageSize: r.pageSize, bitmap }));
      }
      default:
        fail(Errno.ENOTSUP, `device feature ${feature} is not supported`);
    }
  }

  private migDataRead(msg: Message): void | Promise<void> {
    const mig = this.server.migration;
    if (!mig) fail(Errno.ENOTSUP, 'device does not support migration');
    const req = P.decodeMigDataReadRequest(msg.payload);
    if (req.size > this.server.maxDataXferSize) fail(Errno.EINVAL, 'MIG_DATA_READ larger than max_data_xfer_size');
    return mig.read(req.size).then((data) => {
      this.conn.reply(msg.header, P.encodeMigDataReadReply({ data }));
    });
  }

  private migDataWrite(msg: Message): void | Promise<void> {
    const mig = this.server.migration;
    if (!mig) fail(Errno.ENOTSUP, 'device does not support migration');
    const req = P.decodeMigDataWriteRequest(msg.payload);
    return mig.write(req.data).then(() => {
      this.conn.reply(msg.header, null);
    });
  }

  // ------------------------------------------------------------ server-to-client DMA

  messenger(): DmaMessenger {
    const s = this.server;
    return new ClientDmaMessenger({
      conn: this.toClient,
      maxTransfer: Math.min(s.maxDataXferSize, this.clientMaxDataXfer),
      layout: this.dmaLayout,
      timeoutMs: s.dmaTimeoutMs,
      readWindow: s.dmaReadWindow ?? (this.dmaLayout === 'qemu' ? QEMU_DMA_READ_WINDOW : Infinity),
    });
  }
}

/** A copy that small sizes keep on V8's heap (no malloc). */
/** The header of a command taken by the hot lane, made only when needed (errors, async). */
function fastHeader(msgId: number, command: number, size: number): Header {
  return { msgId, command, size, flags: 0, error: 0 };
}

/** A reply without payload (replyFill's fill). */
function fillNothing(): number {
  return 0;
}

/**
 * The u64 at b[o] as a number when it is a multiple of 4 KiB below 2^53 (exact), else -1 (the
 * general path decides what it is).
 */
function u64Page(b: Uint8Array, o: number): number {
  const lo = u32le(b, o);
  const hi = u32le(b, o + 4);
  if (lo & (PAGE - 1) || hi >= 2 ** 21) return -1;
  return hi * 2 ** 32 + lo;
}

function u32le(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

/** b[at, at+n) copied (register-sized: by a loop, cheaper than slice()'s builtin). */
function copyAt(b: Uint8Array, at: number, n: number): Uint8Array {
  if (n > 8) return b.slice(at, at + n);
  const c = new Uint8Array(n);
  for (let i = 0; i < n; i++) c[i] = b[at + i]!;
  return c;
}

function copyOf(v: Uint8Array): Uint8Array {
  const c = new Uint8Array(v.length);
  c.set(v);
  return c;
}

function toSafe(v: bigint, fds?: number[]): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < 0n) {
    if (fds) closeFds(fds);
    fail(Errno.EINVAL, `value 0x${v.toString(16)} out of range`);
  }
  return Number(v);
}
