/**
 * A switchover proxy: a vfio-user client (QEMU) connects to the proxy's socket, and the proxy
 * forwards the session, message for message with its fds, to a server A. On command
 * (`switchTo(B)`) the device moves to server B under the running guest:
 *
 *   1. B is connected and given the client's own VERSION (the capabilities must match A's);
 *   2. A is stopped (migration STOP) with the client's commands still flowing to it: the STOP
 *      reply waits for A's requests in flight, which may need the client to answer DMA by
 *      message, and QEMU answers those in the loop that waits for its own DMA_UNMAPs and MMIO
 *      reads; A answers those beside the waiting STOP (server/session.ts), so nobody waits on
 *      anybody (held here, they would leave QEMU and A waiting until QEMU's 5 s timeout);
 *   3. the client's commands are held at the proxy (its replies to server commands, DMA by
 *      message, still flow) and the commands already sent to A are answered;
 *   4. migrate(): A's state is read (STOP_COPY), B gets the client's DMA maps (the same
 *      memory fds, dup'ed), the state, then the client's interrupt settings (the same
 *      eventfds), and runs;
 *   5. the held commands go to B, and so does everything after; A is reset (its migration
 *      state back to RUNNING, the device to power-on) and let go.
 *
 * The client sees a short pause in its MMIO replies and nothing else: its guest memory and
 * eventfds are the ones B now uses. What the proxy keeps to make this possible: the client's
 * VERSION request, its live DMA maps (DMA_MAP/DMA_UNMAP as the server accepted them, with a
 * dup of each fd) and its interrupt settings (SET_IRQS, compacted: a later setting of the
 * same vectors replaces an earlier one).
 *
 * What the proxy changes in the session: regions are offered without mmap (the client traps
 * every access, because a mapping of A's memory cannot follow the device to B), no
 * ioeventfds (GET_REGION_IO_FDS fails with ENOTSUP), and no twin socket (server commands use
 * the main socket). Guest memory is not copied: the client is the same process before and
 * after, so only the device state moves, and there is no pre-copy.
 *
 * One idea in one file although it passes 600 lines: the forwarding and the switchover act
 * on the same session state (the recorded VERSION, maps and interrupt settings, the held
 * commands, the upstream connection), and each step of a switch must see what forwarding
 * did meanwhile. The migration itself is client/migrate.ts.
 */
import { EventEmitter } from 'node:events';
import { native } from '../native/index.js';
import * as P from '../protocol/index.js';
import { MSG_TYPE_MASK, MSG_TYPE_REPLY, MSG_TYPE_COMMAND, FLAG_ERROR, FLAG_NO_REPLY, type Header } from '../protocol/header.js';
import { Connection, takeFds, closeFds, type Message } from '../transport/connection.js';
import { Listener, connectPath } from '../transport/socket.js';
import { VfioUserError, Errno } from '../errors.js';
import { migrate, type MigrationResult, type MigrationEndpoint, type MigrationDestination } from './migrate.js';

const MAX_MESSAGE = 64 * 1024 * 1024;
/** the most DMA maps and interrupt settings kept for a switchover */
const MAX_MAPS = 65536;
const MAX_IRQ_SETTINGS = 4096;

export interface ProxyOptions {
  log?: (level: 'info' | 'warn', msg: string) => void;
  /** bound on each of the proxy's own requests to a server (ms, default 30000) */
  requestTimeoutMs?: number;
}

export interface SwitchOptions {
  /** longest wait for the client's commands in flight at A to be answered (ms, default 10000) */
  drainTimeoutMs?: number;
  /** how long a new server that answers EBUSY (still busy with a leaving client) is asked again (ms, default 5000) */
  busyWaitMs?: number;
}

export interface SwitchResult {
  /** false when no client was connected: only later sessions go to the new server */
  migrated: boolean;
  from: string;
  to: string;
  /** the migration's figures (bytes, downtime of the device) */
  migration?: MigrationResult;
  /** how long the client's commands were held (ms) */
  holdMs: number;
  /** how long the device ran nowhere: from A's STOP to B's RUNNING (ms) */
  stoppedMs: number;
  /** client commands that waited at the proxy and went to the new server */
  heldCommands: number;
  /** DMA maps and interrupt settings replayed to the new server */
  maps: number;
  irqSettings: number;
}

interface MapRecord {
  start: bigint;
  end: bigint;
  payload: Uint8Array;
  /** our dup of the client's fd (-1: DMA by message) */
  fd: number;
}

interface IrqRecord {
  index: number;
  start: number;
  count: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

type Pending = { command: number; commit?: () => void; drop?: () => void };

/** One server behind the proxy, spoken to in raw mode: the client's messages and the proxy's own requests. */
class Upstream implements MigrationEndpoint {
  readonly conn: Connection;
  caps: P.ResolvedCapabilities | undefined;
  private readonly own = new Map<number, { command: number; resolve: (m: Message) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private nextId = 0x8000;
  /** the session this upstream serves (set by it), for adoptMaps/adoptIrqs */
  session!: ProxySession;

  constructor(
    readonly path: string,
    onMessage: (m: Message, u: Upstream) => void,
    onClose: (u: Upstream) => void,
    private readonly timeoutMs: number,
  ) {
    this.conn = new Connection(connectPath(path), {
      maxMessageSize: MAX_MESSAGE,
      onRaw: (m) => {
        const own = (m.header.flags & MSG_TYPE_MASK) === MSG_TYPE_REPLY ? this.own.get(m.header.msgId) : undefined;
        if (own && own.command === m.header.command) {
          this.own.delete(m.header.msgId);
          clearTimeout(own.timer);
          if (m.header.flags & FLAG_ERROR) {
            closeFds(takeFds(m));
            own.reject(new VfioUserError('VFU_REMOTE_ERROR', `${this.path}: ${P.commandName(m.header.command)} failed`, m.header.error));
          } else own.resolve({ header: m.header, payload: m.payload.slice(), fds: takeFds(m) });
          return;
        }
        onMessage(m, this);
      },
      onClose: () => {
        for (const [, o] of this.own) {
          clearTimeout(o.timer);
          o.reject(new VfioUserError('VFU_DISCONNECTED', `${this.path}: the server went away`, Errno.ENOTCONN));
        }
        this.own.clear();
        onClose(this);
      },
    });
  }

  /** The proxy's own request (ids from 0x8000 up, never one the client has in flight here). */
  request(command: number, payload: Uint8Array | null, fds: number[] = []): Promise<Message> {
    let id = this.nextId;
    while (this.own.has(id) || this.session.clientInFlight(id)) id = (id + 1) & 0xffff;
    this.nextId = (id + 1) & 0xffff;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // a late reply would then reach the client as an unknown reply: the session is not to be trusted
        this.own.delete(id);
        reject(new VfioUserError('VFU_TIMEOUT', `${this.path}: no reply to ${P.commandName(command)} within ${this.timeoutMs} ms`, Errno.EAGAIN));
        this.conn.close();
      }, this.timeoutMs);
      this.own.set(id, { command, resolve, reject, timer });
      try {
        this.conn.send({ msgId: id, command, size: 0, flags: MSG_TYPE_COMMAND, error: 0 }, payload, fds);
      } catch (e) {
        this.own.delete(id);
        clearTimeout(timer);
        reject(e);
      }
    });
  }

  close(): void {
    this.conn.close();
  }

  // ------------------------------------------------------------ migration (MigrationEndpoint)

  get maxDataXferSize(): number {
    return this.caps?.maxDataXferSize ?? P.MIN_DATA_XFER_SIZE;
  }

  private async feature(flags: number, data: Uint8Array = new Uint8Array(0)): Promise<Uint8Array> {
    const m = await this.request(P.Command.DEVICE_FEATURE, P.encodeDeviceFeatureRequest({ flags, data }));
    return P.decodeDeviceFeatureReply(m.payload).data;
  }

  async migrationFlags(): Promise<bigint> {
    return P.decodeFeatureMigration(await this.feature(P.DeviceFeature.MIGRATION | P.DeviceFeatureFlags.GET)).flags;
  }

  async setDeviceState(state: number): Promise<number> {
    const d = await this.feature(P.DeviceFeature.MIG_DEVICE_STATE | P.DeviceFeatureFlags.SET, P.encodeFeatureMigDeviceState({ deviceState: state, dataFd: 0xffffffff }));
    return P.decodeFeatureMigDeviceState(d).deviceState;
  }

  async migDataRead(size: number): Promise<Uint8Array> {
    const m = await this.request(P.Command.MIG_DATA_READ, P.encodeMigDataReadRequest({ size }));
    const data = P.decodeMigDataReadReply(m.payload).data;
    if (data.length > size) throw new VfioUserError('VFU_PROTOCOL', `${this.path}: MIG_DATA_READ returned more than asked`, Errno.EPROTO);
    return data;
  }

  async migDataWrite(data: Uint8Array): Promise<void> {
    for (let done = 0; done < data.length; done += this.maxDataXferSize) {
      await this.request(P.Command.MIG_DATA_WRITE, P.encodeMigDataWriteRequest({ data: data.subarray(done, done + this.maxDataXferSize) }));
    }
  }

  async reset(): Promise<void> {
    await this.request(P.Command.DEVICE_RESET, null);
  }
}

/** The destination side of a switchover: it takes the client's maps and interrupts from the session. */
class Destination extends Upstream implements MigrationDestination<Upstream> {
  async adoptMaps(): Promise<number> {
    const maps = [...this.session.maps];
    await Promise.all(maps.map((m) => this.request(P.Command.DMA_MAP, m.payload, m.fd >= 0 ? [m.fd] : [])));
    return maps.length;
  }

  async adoptIrqs(): Promise<number> {
    const list = [...this.session.irqs];
    for (const r of list) await this.request(P.Command.DEVICE_SET_IRQS, r.payload, r.fds);
    return list.length;
  }
}

/** One client connection and the server session behind it. */
class ProxySession {
  readonly down: Connection;
  up: Upstream;
  /** the client's VERSION request as forwarded (twin socket removed) */
  private version: Uint8Array | undefined;
  readonly maps: MapRecord[] = [];
  readonly irqs: IrqRecord[] = [];
  private tooManyIrqSettings = false;
  /** the client's commands forwarded and not yet answered, by id */
  private readonly inflight = new Map<number, Pending>();
  /** which server sent each server-to-client command (its reply goes back there) */
  private readonly s2c = new Map<number, Upstream>();
  /** the client's commands while a switchover holds them */
  private held: Message[] | undefined;
  private drainWaiter: (() => void) | undefined;
  private closed = false;
  /** commands forwarded to each server */
  readonly forwarded = new Map<string, number>();

  constructor(
    private readonly proxy: SwitchoverProxy,
    fd: number,
    upstreamPath: string,
    private readonly onEnd: (s: ProxySession) => void,
  ) {
    this.down = new Connection(fd, {
      maxMessageSize: MAX_MESSAGE,
      onRaw: (m) => this.fromClient(m),
      onClose: () => this.end(),
    });
    try {
      this.up = this.connect(upstreamPath, Upstream);
    } catch (e) {
      this.down.close();
      throw e;
    }
  }

  private connect<U extends Upstream>(path: string, Kind: new (...a: ConstructorParameters<typeof Upstream>) => U): U {
    const u = new Kind(path, (m, from) => this.fromServer(m, from), (from) => {
      if (from === this.up) this.end(); // the server we forward to is gone
    }, this.proxy.requestTimeoutMs);
    u.session = this;
    return u;
  }

  get negotiated(): boolean {
    return this.version !== undefined && this.up.caps !== undefined;
  }

  clientInFlight(id: number): boolean {
    return this.inflight.has(id);
  }

  // ------------------------------------------------------------ client -> server

  private fromClient(m: Message): void {
    const h = m.header;
    if ((h.flags & MSG_TYPE_MASK) === MSG_TYPE_REPLY) {
      // an answer to a server command (DMA by message): back to the server that asked
      const to = this.s2c.get(h.msgId) ?? this.up;
      this.s2c.delete(h.msgId);
      this.send(to.conn, h, m.payload, takeFds(m));
      return;
    }
    if (this.held) {
      this.held.push({ header: h, payload: m.payload.slice(), fds: takeFds(m) });
      return;
    }
    this.forward(h, m.payload, takeFds(m));
  }

  private forward(h: Header, payload: Uint8Array, fds: number[]): void {
    const p: Pending = { command: h.command };
    try {
      switch (h.command) {
        case P.Command.VERSION:
          payload = withoutTwinSocket(payload);
          this.version = payload.slice();
          break;
        case P.Command.DEVICE_GET_REGION_IO_FDS:
          // ioeventfds belong to one server's device: refused, the client writes the region instead
          closeFds(fds);
          if (!(h.flags & FLAG_NO_REPLY)) this.down.replyError(h, Errno.ENOTSUP);
          return;
        case P.Command.DMA_MAP: {
          const req = P.decodeDmaMapRequest(payload);
          const rec: MapRecord = { start: req.address, end: req.address + req.size, payload: payload.slice(), fd: fds.length ? native.dup(fds[0]!) : -1 };
          p.commit = () => {
            if (this.maps.length >= MAX_MAPS) this.proxy.log('warn', `more than ${MAX_MAPS} DMA maps: a switchover is refused`);
            this.maps.push(rec);
          };
          p.drop = () => closeFds(rec.fd >= 0 ? [rec.fd] : []);
          break;
        }
        case P.Command.DMA_UNMAP: {
          const req = P.decodeDmaUnmapRequest(payload);
          p.commit = () => this.unmapped(req);
          break;
        }
        case P.Command.DEVICE_SET_IRQS: {
          const req = P.decodeSetIrqsRequest(payload);
          const rec: IrqRecord = { index: req.index, start: req.start, count: req.count, flags: req.flags, payload: payload.slice(), fds: fds.map((fd) => native.dup(fd)) };
          p.commit = () => this.irqSet(rec);
          p.drop = () => closeFds(rec.fds);
          break;
        }
        default:
          break;
      }
    } catch {
      // undecodable: the server answers it (with an error); nothing is recorded
    }
    if (h.flags & FLAG_NO_REPLY) p.commit?.();
    else this.inflight.set(h.msgId, p);
    this.forwarded.set(this.up.path, (this.forwarded.get(this.up.path) ?? 0) + 1);
    this.send(this.up.conn, h, payload, fds);
  }

  private unmapped(req: P.DmaUnmapRequest): void {
    const all = (req.flags & P.DmaUnmapFlags.ALL) !== 0;
    const end = req.address + req.size;
    for (let i = this.maps.length - 1; i >= 0; i--) {
      const m = this.maps[i]!;
      if (all || (m.start >= req.address && m.end <= end)) {
        if (m.fd >= 0) closeFds([m.fd]);
        this.maps.splice(i, 1);
      }
    }
  }

  /** Keeps what the next server needs to deliver the same interrupts, compacted. */
  private irqSet(r: IrqRecord): void {
    const data = r.flags & P.SetIrqsFlags.DATA_TYPE_MASK;
    const action = r.flags & P.SetIrqsFlags.ACTION_TYPE_MASK;
    const drop = (pred: (x: IrqRecord) => boolean): void => {
      for (let i = this.irqs.length - 1; i >= 0; i--) {
        const x = this.irqs[i]!;
        if (x.index === r.index && pred(x)) {
          closeFds(x.fds);
          this.irqs.splice(i, 1);
        }
      }
    };
    const inside = (x: IrqRecord): boolean => x.start >= r.start && x.start + x.count <= r.start + r.count;
    if (action === P.SetIrqsFlags.ACTION_TRIGGER && data !== P.SetIrqsFlags.DATA_EVENTFD) {
      // count 0 with DATA_NONE turns the whole index off; otherwise a one-shot trigger
      if (data === P.SetIrqsFlags.DATA_NONE && r.count === 0) drop(() => true);
      closeFds(r.fds);
      return;
    }
    // a setting replaces earlier ones of the same kind on vectors it covers
    const kind = (x: IrqRecord): string => {
      const a = x.flags & P.SetIrqsFlags.ACTION_TYPE_MASK;
      const d = x.flags & P.SetIrqsFlags.DATA_TYPE_MASK;
      if (d === P.SetIrqsFlags.DATA_EVENTFD) return `fd:${a}`;
      return a === P.SetIrqsFlags.ACTION_TRIGGER ? 'trigger' : 'mask';
    };
    if (data !== P.SetIrqsFlags.DATA_BOOL) drop((x) => kind(x) === kind(r) && inside(x));
    if (this.irqs.length >= MAX_IRQ_SETTINGS) {
      this.tooManyIrqSettings = true;
      closeFds(r.fds);
      return;
    }
    this.irqs.push(r);
  }

  // ------------------------------------------------------------ server -> client

  private fromServer(m: Message, from: Upstream): void {
    const h = m.header;
    let payload = m.payload;
    let fds = takeFds(m);
    if ((h.flags & MSG_TYPE_MASK) !== MSG_TYPE_REPLY) {
      this.s2c.set(h.msgId, from);
      this.send(this.down, h, payload, fds);
      return;
    }
    const p = this.inflight.get(h.msgId);
    if (p && p.command === h.command) {
      this.inflight.delete(h.msgId);
      if (h.flags & FLAG_ERROR) p.drop?.();
      else p.commit?.();
      if (this.inflight.size === 0) this.drainWaiter?.();
    }
    if (!(h.flags & FLAG_ERROR)) {
      try {
        if (h.command === P.Command.VERSION) {
          const rep = P.decodeVersionReply(payload);
          from.caps = P.resolveCapabilities(rep.capabilities);
          if (fds.length) {
            closeFds(fds); // a twin socket we did not ask for
            fds = [];
          }
        } else if (h.command === P.Command.DEVICE_GET_REGION_INFO) {
          const stripped = withoutMmap(payload);
          if (stripped) {
            payload = stripped;
            closeFds(fds);
            fds = [];
          }
        }
      } catch {
        /* forwarded as is: the client judges it */
      }
    }
    this.send(this.down, h, payload, fds);
  }

  private send(to: Connection, h: Header, payload: Uint8Array, fds: number[]): void {
    try {
      if (!to.isClosed) to.send(h, payload, fds);
    } catch {
      this.end();
    } finally {
      closeFds(fds);
    }
  }

  // ------------------------------------------------------------ switchover

  async switchTo(path: string, opts: SwitchOptions): Promise<SwitchResult> {
    if (!this.negotiated) throw new VfioUserError('VFU_BAD_STATE', 'the client has not negotiated yet', Errno.EAGAIN);
    if (this.held) throw new VfioUserError('VFU_BAD_STATE', 'a switchover is already running', Errno.EBUSY);
    if (this.tooManyIrqSettings || this.maps.length > MAX_MAPS) {
      throw new VfioUserError('VFU_BAD_STATE', 'too many DMA maps or interrupt settings to replay', Errno.ENOSPC);
    }
    const from = this.up;
    // B first, while the client runs: same VERSION, compatible answer
    const to = await this.negotiate(path, opts.busyWaitMs ?? 5000);
    let t0 = 0;
    let tStop = 0;
    let stopped = false;
    let migration: MigrationResult | undefined;
    let held: Message[] = [];
    try {
      checkCompatible(from.caps!, to.caps!);
      // A stops first, the client still served (see the module comment, step 2)
      tStop = performance.now();
      await from.setDeviceState(P.DeviceState.STOP);
      stopped = true;
      // then hold the client, let A answer what it has
      t0 = performance.now();
      this.held = held;
      await this.drained(opts.drainTimeoutMs ?? 10000);
      migration = await migrate(from, to, { noPrecopy: true });
      this.up = to;
      this.forwarded.set(to.path, 0);
    } catch (e) {
      to.close();
      // A runs on (migrate() restarts it when it fails itself)
      if (stopped) await from.setDeviceState(P.DeviceState.RUNNING).catch(() => {});
      this.release();
      throw e;
    }
    const stoppedMs = performance.now() - tStop;
    held = this.held ?? [];
    this.release();
    const holdMs = performance.now() - t0;
    // A let go: reset (back to RUNNING and power-on, ready for a next client), then left
    await from.reset().catch(() => {});
    from.close();
    return {
      migrated: true,
      from: from.path,
      to: path,
      migration,
      holdMs,
      stoppedMs,
      heldCommands: held.length,
      maps: this.maps.length,
      irqSettings: this.irqs.length,
    };
  }

  /**
   * Connects to a server and gives it the client's VERSION. A server still busy with a client
   * that is leaving (a previous switchover's) says EBUSY: asked again until busyWaitMs.
   */
  private async negotiate(path: string, busyWaitMs: number): Promise<Destination> {
    const end = performance.now() + busyWaitMs;
    for (;;) {
      const to = this.connect(path, Destination);
      try {
        const v = await to.request(P.Command.VERSION, this.version!);
        closeFds(takeFds(v));
        to.caps = P.resolveCapabilities(P.decodeVersionReply(v.payload).capabilities);
        return to;
      } catch (e) {
        to.close();
        if (!(e instanceof VfioUserError && e.errno === Errno.EBUSY) || performance.now() > end) throw e;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Resolves when every command the client sent has been answered. */
  private drained(timeoutMs: number): Promise<void> {
    if (this.inflight.size === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.drainWaiter = undefined;
        reject(new VfioUserError('VFU_TIMEOUT', `${this.inflight.size} client commands still unanswered after ${timeoutMs} ms`, Errno.EAGAIN));
      }, timeoutMs);
      this.drainWaiter = () => {
        clearTimeout(t);
        this.drainWaiter = undefined;
        resolve();
      };
    });
  }

  /** Sends the held commands to the current server, in order, and stops holding. */
  private release(): void {
    const held = this.held ?? [];
    this.held = undefined;
    for (const m of held) {
      if (this.closed) closeFds(m.fds);
      else this.forward(m.header, m.payload, m.fds);
    }
  }

  end(): void {
    if (this.closed) return;
    this.closed = true;
    this.down.close();
    this.up.close();
    for (const m of this.held ?? []) closeFds(m.fds);
    this.held = undefined;
    for (const m of this.maps) if (m.fd >= 0) closeFds([m.fd]);
    this.maps.length = 0;
    for (const r of this.irqs) closeFds(r.fds);
    this.irqs.length = 0;
    for (const p of this.inflight.values()) p.drop?.();
    this.inflight.clear();
    this.onEnd(this);
  }
}

/** B must accept everything the client was told by A. */
function checkCompatible(a: P.ResolvedCapabilities, b: P.ResolvedCapabilities): void {
  const bad = (what: string): never => {
    throw new VfioUserError('VFU_BAD_STATE', `the new server's ${what} differs from the current one's`, Errno.EINVAL);
  };
  if (b.maxDataXferSize < a.maxDataXferSize) bad('max_data_xfer_size');
  if (b.maxMsgFds < a.maxMsgFds) bad('max_msg_fds');
  if (b.maxDmaMaps < a.maxDmaMaps) bad('max_dma_maps');
  if (b.pgsizes !== a.pgsizes) bad('pgsizes');
}

/** The VERSION request without the twin-socket capability (server commands stay on the main socket). */
function withoutTwinSocket(payload: Uint8Array): Uint8Array {
  const req = P.decodeVersionRequest(payload);
  const raw = req.capabilities.raw;
  if (!req.capabilities.twinSocket && !(raw && 'twin_socket' in raw)) return payload;
  if (raw) delete raw.twin_socket;
  delete req.capabilities.twinSocket;
  return P.encodeVersionRequest(req);
}

/** A REGION_INFO reply with mmap taken out (flag and sparse areas), or undefined if it had none. */
function withoutMmap(payload: Uint8Array): Uint8Array | undefined {
  const rep = P.decodeRegionInfoReply(payload);
  const sparse = rep.caps.some((c) => c.kind === 'sparse-mmap');
  if (!(rep.flags & P.RegionInfoFlags.MMAP) && !sparse) return undefined;
  return P.encodeRegionInfoReply({ ...rep, flags: rep.flags & ~P.RegionInfoFlags.MMAP, caps: rep.caps.filter((c) => c.kind !== 'sparse-mmap') });
}

/**
 * Listens for a client and forwards its session to the current server; switchTo() moves the
 * device to another server under it.
 */
/** Events: 'session' (a client connected), 'session-end'. */
export class SwitchoverProxy extends EventEmitter {
  private upstream: string;
  private listener: Listener | undefined;
  private readonly sessions = new Set<ProxySession>();
  readonly requestTimeoutMs: number;
  private readonly logFn: ProxyOptions['log'];

  constructor(upstream: string, opts: ProxyOptions = {}) {
    super();
    this.upstream = upstream;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 30000;
    this.logFn = opts.log;
  }

  /** the server new sessions go to, and the current session is forwarded to */
  get server(): string {
    return this.upstream;
  }

  log(level: 'info' | 'warn', msg: string): void {
    this.logFn?.(level, msg);
  }

  listen(path: string): this {
    if (this.listener) throw new VfioUserError('VFU_BAD_STATE', 'already listening', Errno.EBUSY);
    this.listener = new Listener(path, (fd) => this.accept(fd));
    return this;
  }

  /** Forwards a client already connected on fd. */
  accept(fd: number): void {
    try {
      this.sessions.add(new ProxySession(this, fd, this.upstream, (s) => this.sessionEnded(s)));
      this.log('info', `client connected, forwarded to ${this.upstream}`);
      this.emit('session');
    } catch (e) {
      native.close(fd);
      this.log('warn', `cannot reach ${this.upstream}: ${(e as Error).message}`);
    }
  }

  private sessionEnded(s: ProxySession): void {
    if (this.sessions.delete(s)) {
      this.log('info', 'session ended');
      this.emit('session-end');
    }
  }

  /** commands forwarded to each server by the current session(s) */
  get forwarded(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const s of this.sessions) for (const [k, v] of s.forwarded) out[k] = (out[k] ?? 0) + v;
    return out;
  }

  /**
   * Moves the device to the server at `path` under the connected client (see the module
   * comment); without a client, only later sessions go there. On failure the session stays
   * with the current server, which runs on.
   */
  async switchTo(path: string, opts: SwitchOptions = {}): Promise<SwitchResult> {
    const live = [...this.sessions].filter((s) => s.negotiated);
    if (live.length > 1) throw new VfioUserError('VFU_BAD_STATE', 'more than one client session', Errno.EBUSY);
    const from = this.upstream;
    if (live.length === 0) {
      this.upstream = path;
      return { migrated: false, from, to: path, holdMs: 0, stoppedMs: 0, heldCommands: 0, maps: 0, irqSettings: 0 };
    }
    const r = await live[0]!.switchTo(path, opts);
    this.upstream = path;
    return r;
  }

  close(): void {
    this.listener?.close();
    this.listener = undefined;
    for (const s of [...this.sessions]) s.end();
  }
}
