/**
 * A vfio-user client: drives any vfio-user server.
 *
 *   const c = await VfioUserClient.connect('/tmp/gpio.sock');
 *   const info = await c.deviceInfo();
 *   const v = await c.read(2, 0, 1);
 *   await c.write(2, 0, Uint8Array.of(0xff));
 *
 * Guest memory is a memfd (GuestMemory). Mapping it with `shared: true` passes its fd so the
 * server accesses it directly; with `shared: false` the server must use DMA_READ/DMA_WRITE,
 * which this client answers from the memory after checking the access lies in a map.
 */
import { EventEmitter } from 'node:events';
import { native, PROT_READ, PROT_WRITE } from '../native/index.js';
import * as P from '../protocol/index.js';
import { HEADER_SIZE } from '../protocol/header.js';
import { Connection, takeFds, closeFds, type Message } from '../transport/connection.js';
import { connectPath, adoptFd } from '../transport/socket.js';
import { VfioUserError, Errno } from '../errors.js';

export interface ClientOptions {
  /** ask for twin-socket mode (default true) */
  twinSocket?: boolean;
  /** our max_data_xfer_size (default 1 MiB) */
  maxDataXferSize?: number;
  /** per-request timeout in ms (default none) */
  timeout?: number;
  /** version minor to propose (default 0) */
  minor?: number;
}

/** Guest memory backed by a memfd. */
export class GuestMemory {
  readonly fd: number;
  readonly size: number;
  private buf: ArrayBuffer | undefined;
  readonly bytes: Uint8Array;
  constructor(size: number, name = 'vfio-user-guest') {
    if (!Number.isSafeInteger(size) || size <= 0 || size % native.PAGE_SIZE) {
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `guest memory size must be a positive multiple of ${native.PAGE_SIZE}`, Errno.EINVAL);
    }
    if (size >= 2 ** 32) throw new VfioUserError('VFU_INVALID_ARGUMENT', 'guest memory objects are limited to 4 GiB - 1 page', Errno.EINVAL);
    this.fd = native.memfdCreate(name);
    native.ftruncate(this.fd, size);
    this.size = size;
    this.buf = native.mmap(this.fd, 0, size, PROT_READ | PROT_WRITE);
    this.bytes = new Uint8Array(this.buf);
  }
  free(): void {
    if (this.buf) native.munmap(this.buf);
    this.buf = undefined;
    native.close(this.fd);
  }
}

interface ClientMap {
  iova: number;
  size: number;
  mem: GuestMemory;
  offset: number;
  prot: number;
  shared: boolean;
}

export interface RegionDescription {
  index: number;
  flags: number;
  size: number;
  offset: bigint;
  readable: boolean;
  writable: boolean;
  mappable: boolean;
  sparseAreas: { offset: number; size: number }[];
  type?: { type: number; subtype: number };
  caps: P.RegionCap[];
}

export interface MappedRegion {
  index: number;
  /** one view per mmap-ed area */
  areas: { offset: number; size: number; bytes: Uint8Array }[];
  unmap(): void;
}

export interface IrqHandle {
  index: number;
  start: number;
  eventfds: number[];
  /** fires with the vector each time the server signals it */
  on(event: 'irq', listener: (vector: number, count: number) => void): this;
  /** resolves with the next vector signalled */
  next(): Promise<number>;
  close(): void;
}

export class VfioUserClient extends EventEmitter {
  readonly conn: Connection;
  private twin: Connection | undefined;
  readonly opts: ClientOptions;
  serverCaps!: P.ResolvedCapabilities;
  version!: { major: number; minor: number };
  private maps: ClientMap[] = [];
  private irqHandles = new Set<IrqHandleImpl>();
  private closedErr: VfioUserError | undefined;
  private isClosed = false;
  readonly path: string | undefined;

  private constructor(fd: number, path: string | undefined, opts: ClientOptions) {
    super();
    this.opts = opts;
    this.path = path;
    this.conn = new Connection(fd, {
      maxMessageSize: HEADER_SIZE + (opts.maxDataXferSize ?? 1048576) * 2 + 65536,
      maxFdsPerMessage: 253,
      onCommand: (m) => this.onServerCommand(m, this.conn),
      onClose: (err) => this.onClose(err),
    });
  }

  /** Connects to a server socket path (or an already connected fd) and negotiates. */
  static async connect(target: string | { fd: number }, opts: ClientOptions = {}): Promise<VfioUserClient> {
    const fd = typeof target === 'string' ? connectPath(target) : adoptFd(target.fd);
    const c = new VfioUserClient(fd, typeof target === 'string' ? target : undefined, opts);
    try {
      await c.negotiate();
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  private req(cmd: number, payload: Uint8Array | null, extra: { fds?: number[]; expectFds?: boolean } = {}): Promise<Message> {
    return this.conn.request(cmd, payload, { ...extra, timeout: this.opts.timeout });
  }

  private async negotiate(): Promise<void> {
    const ours: P.VersionCapabilities = {
      maxMsgFds: 253,
      maxDataXferSize: this.opts.maxDataXferSize ?? 1048576,
      maxDmaMaps: 65535,
      pgsizes: 4096n,
      twinSocket: { supported: this.opts.twinSocket ?? true },
    };
    const m = await this.req(P.Command.VERSION, P.encodeVersionRequest({ major: 0, minor: this.opts.minor ?? 0, capabilities: ours }), { expectFds: true });
    const fds = takeFds(m);
    try {
      const rep = P.decodeVersionReply(m.payload);
      if (rep.major !== 0) throw new VfioUserError('VFU_PROTOCOL', `server speaks major version ${rep.major}`, Errno.ENOTSUP);
      if (rep.minor > (this.opts.minor ?? 0)) throw new VfioUserError('VFU_PROTOCOL', `server replied with a larger minor ${rep.minor}`, Errno.EPROTO);
      this.version = { major: rep.major, minor: rep.minor };
      this.serverCaps = P.resolveCapabilities(rep.capabilities);
      const twin = rep.capabilities.twinSocket;
      if (twin?.supported && (this.opts.twinSocket ?? true)) {
        const idx = twin.fdIndex;
        if (idx === undefined || idx < 0 || idx >= fds.length) {
          throw new VfioUserError('VFU_PROTOCOL', 'server enabled twin-socket mode without a valid fd_index', Errno.EPROTO);
        }
        const tfd = fds.splice(idx, 1)[0]!;
        this.twin = new Connection(tfd, {
          maxMessageSize: HEADER_SIZE + Math.max(this.serverCaps.maxDataXferSize, this.opts.maxDataXferSize ?? 1048576) + 65536,
          maxFdsPerMessage: 0,
          onCommand: (cm) => this.onServerCommand(cm, this.twin!),
          onClose: () => this.conn.close(),
        });
      }
    } finally {
      closeFds(fds);
    }
  }

  get twinSocket(): boolean {
    return this.twin !== undefined;
  }

  get maxDataXferSize(): number {
    return this.serverCaps.maxDataXferSize;
  }

  // ------------------------------------------------------------ device description

  async deviceInfo(): Promise<P.DeviceGetInfoReply> {
    const m = await this.req(P.Command.DEVICE_GET_INFO, P.encodeDeviceGetInfoRequest({}));
    return P.decodeDeviceGetInfoReply(m.payload);
  }

  /** GET_REGION_INFO, asking again with a larger argsz when the capability chain needs it. The fd (if any) is returned. */
  async regionInfoRaw(index: number): Promise<{ info: P.RegionInfoReply; fd: number | undefined }> {
    let argsz = 256;
    for (let attempt = 0; attempt < 3; attempt++) {
      const m = await this.req(P.Command.DEVICE_GET_REGION_INFO, P.encodeRegionInfoRequest({ argsz, index }), { expectFds: true });
      const fds = takeFds(m);
      const info = P.decodeRegionInfoReply(m.payload);
      if (info.argsz > argsz) {
        closeFds(fds);
        argsz = info.argsz;
        continue;
      }
      if (fds.length > 1) closeFds(fds.slice(1));
      return { info, fd: fds[0] };
    }
    throw new VfioUserError('VFU_PROTOCOL', `region ${index}: argsz keeps growing`, Errno.EPROTO);
  }

  async regionInfo(index: number): Promise<RegionDescription> {
    const { info, fd } = await this.regionInfoRaw(index);
    if (fd !== undefined) closeFds([fd]);
    return describeRegion(info);
  }

  async regions(): Promise<RegionDescription[]> {
    const di = await this.deviceInfo();
    const out: RegionDescription[] = [];
    for (let i = 0; i < di.numRegions; i++) out.push(await this.regionInfo(i));
    return out;
  }

  async irqInfo(index: number): Promise<P.IrqInfoReply> {
    const m = await this.req(P.Command.DEVICE_GET_IRQ_INFO, P.encodeIrqInfoRequest({ index }));
    return P.decodeIrqInfoReply(m.payload);
  }

  async regionIoFds(index: number): Promise<{ reply: P.RegionIoFdsReply; fds: number[] }> {
    let argsz = 16 + 48 * 16;
    for (let attempt = 0; attempt < 3; attempt++) {
      const m = await this.req(P.Command.DEVICE_GET_REGION_IO_FDS, P.encodeRegionIoFdsRequest({ argsz, index }), { expectFds: true });
      const fds = takeFds(m);
      const reply = P.decodeRegionIoFdsReply(m.payload);
      if (reply.argsz > argsz) {
        closeFds(fds);
        argsz = reply.argsz;
        continue;
      }
      return { reply, fds };
    }
    throw new VfioUserError('VFU_PROTOCOL', `region ${index}: IO_FDS argsz keeps growing`, Errno.EPROTO);
  }

  /** mmaps the mappable areas of a region (sparse areas, or the whole region). */
  async mapRegion(index: number): Promise<MappedRegion> {
    const { info, fd } = await this.regionInfoRaw(index);
    const d = describeRegion(info);
    if (fd === undefined || !d.mappable) {
      if (fd !== undefined) closeFds([fd]);
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `region ${index} is not mappable`, Errno.EINVAL);
    }
    const areas = d.sparseAreas.length ? d.sparseAreas : [{ offset: 0, size: d.size }];
    const bufs: ArrayBuffer[] = [];
    try {
      const prot = (d.readable ? PROT_READ : 0) | (d.writable ? PROT_WRITE : 0);
      const out = areas.map((a) => {
        const b = native.mmap(fd, Number(d.offset) + a.offset, a.size, prot);
        bufs.push(b);
        return { offset: a.offset, size: a.size, bytes: new Uint8Array(b) };
      });
      return {
        index,
        areas: out,
        unmap: () => {
          for (const b of bufs) native.munmap(b);
        },
      };
    } catch (e) {
      for (const b of bufs) native.munmap(b);
      throw e;
    } finally {
      closeFds([fd]);
    }
  }

  // ------------------------------------------------------------ region access

  /** Reads a region by message, in chunks of max_data_xfer_size. */
  async read(region: number, offset: number, length: number): Promise<Uint8Array> {
    const max = this.serverCaps.maxDataXferSize;
    if (length <= max) {
      const m = await this.req(P.Command.REGION_READ, P.encodeRegionReadRequest({ offset, region, count: length }));
      const rep = P.decodeRegionReadReply(m.payload);
      if (rep.count !== length || rep.data.length !== length || rep.offset !== offset || rep.region !== region) {
        throw new VfioUserError('VFU_PROTOCOL', `REGION_READ reply does not match the request`, Errno.EPROTO);
      }
      return rep.data;
    }
    const out = new Uint8Array(length);
    const parts: Promise<void>[] = [];
    for (let done = 0; done < length; done += max) {
      const n = Math.min(max, length - done);
      const at = done;
      parts.push(this.read(region, offset + at, n).then((d) => out.set(d, at)));
    }
    await Promise.all(parts);
    return out;
  }

  /** Writes a region by message, chunked. With posted, sends NO_REPLY writes (resolves once queued). */
  async write(region: number, offset: number, data: Uint8Array, opts: { posted?: boolean } = {}): Promise<void> {
    const max = this.serverCaps.maxDataXferSize;
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < data.length || (done === 0 && data.length === 0); done += max) {
      const n = Math.min(max, data.length - done);
      const payload = P.encodeRegionWriteRequest({ offset: offset + done, region, count: n, data: data.subarray(done, done + n) });
      if (opts.posted) {
        if (!this.conn.post(P.Command.REGION_WRITE, payload)) parts.push(this.conn.drained());
      } else {
        parts.push(
          this.req(P.Command.REGION_WRITE, payload).then((m) => {
            const rep = P.decodeRegionWriteReply(m.payload);
            if (rep.count !== n) throw new VfioUserError('VFU_PROTOCOL', 'REGION_WRITE reply count mismatch', Errno.EPROTO);
          }),
        );
      }
      if (data.length === 0) break;
    }
    await Promise.all(parts);
  }

  /** REGION_WRITE_MULTI: several small (≤ 8 byte) writes in one message, when the server supports it. */
  async writeMulti(entries: { region: number; offset: number; data: Uint8Array }[]): Promise<void> {
    if (!this.serverCaps.writeMultiple) {
      for (const e of entries) await this.write(e.region, e.offset, e.data);
      return;
    }
    const m = await this.req(
      P.Command.REGION_WRITE_MULTI,
      P.encodeRegionWriteMultiRequest({ entries: entries.map((e) => ({ offset: e.offset, region: e.region, count: e.data.length, data: e.data })) }),
    );
    const rep = P.decodeRegionWriteMultiReply(m.payload);
    if (rep.wrCnt !== entries.length) throw new VfioUserError('VFU_PROTOCOL', 'WRITE_MULTI reply count mismatch', Errno.EPROTO);
  }

  readConfig(offset: number, length: number): Promise<Uint8Array> {
    return this.read(P.PciRegion.CONFIG, offset, length);
  }

  writeConfig(offset: number, data: Uint8Array): Promise<void> {
    return this.write(P.PciRegion.CONFIG, offset, data);
  }

  // ------------------------------------------------------------ guest memory

  /**
   * Maps guest memory [offset, offset+size) of mem at iova. shared (default true) passes the fd;
   * otherwise the server must use DMA_READ/WRITE messages, answered here.
   */
  async dmaMap(mem: GuestMemory, iova: number, opts: { offset?: number; size?: number; prot?: number; shared?: boolean } = {}): Promise<void> {
    const offset = opts.offset ?? 0;
    const size = opts.size ?? mem.size - offset;
    const prot = opts.prot ?? PROT_READ | PROT_WRITE;
    const shared = opts.shared ?? true;
    if (offset < 0 || size <= 0 || offset + size > mem.size) throw new VfioUserError('VFU_INVALID_ARGUMENT', 'map outside guest memory', Errno.EINVAL);
    const flags = (prot & PROT_READ ? P.DmaMapFlags.READ : 0) | (prot & PROT_WRITE ? P.DmaMapFlags.WRITE : 0);
    await this.req(
      P.Command.DMA_MAP,
      P.encodeDmaMapRequest({ flags, offset: BigInt(shared ? offset : 0), address: BigInt(iova), size: BigInt(size) }),
      { fds: shared ? [mem.fd] : [] },
    );
    this.maps.push({ iova, size, mem, offset, prot, shared });
  }

  async dmaUnmap(iova: number, size: number): Promise<void> {
    await this.req(P.Command.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 0, address: BigInt(iova), size: BigInt(size) }));
    this.maps = this.maps.filter((m) => !(m.iova === iova && m.size === size));
  }

  async dmaUnmapAll(): Promise<void> {
    await this.req(P.Command.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: P.DmaUnmapFlags.ALL, address: 0n, size: 0n }));
    this.maps = [];
  }

  /** the client's map table (what a reconnect re-establishes) */
  get dmaMaps(): readonly { iova: number; size: number; shared: boolean }[] {
    return this.maps;
  }

  private findMap(iova: number, length: number, write: boolean): { map: ClientMap; off: number } {
    for (const m of this.maps) {
      if (iova >= m.iova && iova + length <= m.iova + m.size && length >= 0) {
        if (!(m.prot & (write ? PROT_WRITE : PROT_READ))) break;
        return { map: m, off: m.offset + (iova - m.iova) };
      }
    }
    throw new VfioUserError('VFU_DMA', `server DMA ${write ? 'write' : 'read'} of [0x${iova.toString(16)}, +${length}) is outside the maps`, Errno.EFAULT);
  }

  /** DMA_READ / DMA_WRITE from the server, answered from guest memory. */
  private onServerCommand(m: Message, conn: Connection): void {
    try {
      if (m.header.command === P.Command.DMA_READ) {
        const req = P.decodeDmaReadRequest(m.payload);
        const iova = Number(req.address);
        if (req.count > this.opts.maxDataXferSize! && req.count > 1048576) throw new VfioUserError('VFU_PROTOCOL', 'DMA_READ too large', Errno.EINVAL);
        const { map, off } = this.findMap(iova, req.count, false);
        const data = map.mem.bytes.subarray(off, off + req.count);
        conn.reply(m.header, P.encodeDmaReadReply({ address: req.address, data }));
      } else if (m.header.command === P.Command.DMA_WRITE) {
        const req = P.decodeDmaWriteRequest(m.payload);
        const { map, off } = this.findMap(Number(req.address), req.count, true);
        map.mem.bytes.set(req.data, off);
        conn.reply(m.header, P.encodeDmaWriteReply({ address: req.address, count: req.count }));
      } else {
        conn.replyError(m.header, Errno.ENOSYS);
      }
    } catch (e) {
      const errno = (e as { errno?: number }).errno || Errno.EINVAL;
      this.emit('dma-error', e);
      conn.replyError(m.header, errno);
    }
  }

  // ------------------------------------------------------------ interrupts

  /** Creates eventfds for vectors [start, start+count) of an IRQ index and hands them to the server. */
  async enableIrqs(index: number, count: number, start = 0): Promise<IrqHandle> {
    const fds: number[] = [];
    for (let i = 0; i < count; i++) fds.push(native.eventfd(0, false));
    try {
      await this.setIrqs(index, P.SetIrqsFlags.DATA_EVENTFD | P.SetIrqsFlags.ACTION_TRIGGER, start, count, undefined, fds);
    } catch (e) {
      closeFds(fds);
      throw e;
    }
    const h = new IrqHandleImpl(index, start, fds, () => this.irqHandles.delete(h));
    this.irqHandles.add(h);
    return h;
  }

  /** Disables every vector of an index (start = count = 0, DATA_NONE | TRIGGER). */
  async disableIrqs(index: number): Promise<void> {
    await this.setIrqs(index, P.SetIrqsFlags.DATA_NONE | P.SetIrqsFlags.ACTION_TRIGGER, 0, 0);
    for (const h of [...this.irqHandles]) if (h.index === index) h.close();
  }

  async maskIrq(index: number, vector = 0, count = 1): Promise<void> {
    await this.setIrqs(index, P.SetIrqsFlags.DATA_NONE | P.SetIrqsFlags.ACTION_MASK, vector, count);
  }

  async unmaskIrq(index: number, vector = 0, count = 1): Promise<void> {
    await this.setIrqs(index, P.SetIrqsFlags.DATA_NONE | P.SetIrqsFlags.ACTION_UNMASK, vector, count);
  }

  async triggerIrq(index: number, vector = 0, count = 1): Promise<void> {
    await this.setIrqs(index, P.SetIrqsFlags.DATA_NONE | P.SetIrqsFlags.ACTION_TRIGGER, vector, count);
  }

  /** Raw SET_IRQS. */
  async setIrqs(index: number, flags: number, start: number, count: number, data?: Uint8Array, fds: number[] = []): Promise<void> {
    await this.req(P.Command.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags, index, start, count, data }), { fds });
  }

  // ------------------------------------------------------------ reset, features, migration

  async reset(): Promise<void> {
    await this.req(P.Command.DEVICE_RESET, null);
  }

  /** Raw DEVICE_FEATURE; returns the reply's data. */
  async feature(flags: number, data: Uint8Array = new Uint8Array(0)): Promise<Uint8Array> {
    const m = await this.req(P.Command.DEVICE_FEATURE, P.encodeDeviceFeatureRequest({ flags, data }));
    return P.decodeDeviceFeatureReply(m.payload).data;
  }

  async probeFeature(feature: number, op: number): Promise<boolean> {
    try {
      await this.feature(feature | op | P.DeviceFeatureFlags.PROBE);
      return true;
    } catch (e) {
      if (e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR') return false;
      throw e;
    }
  }

  async migrationFlags(): Promise<bigint> {
    const d = await this.feature(P.DeviceFeature.MIGRATION | P.DeviceFeatureFlags.GET);
    return P.decodeFeatureMigration(d).flags;
  }

  async getDeviceState(): Promise<number> {
    const d = await this.feature(P.DeviceFeature.MIG_DEVICE_STATE | P.DeviceFeatureFlags.GET);
    return P.decodeFeatureMigDeviceState(d).deviceState;
  }

  async setDeviceState(state: number): Promise<number> {
    const d = await this.feature(
      P.DeviceFeature.MIG_DEVICE_STATE | P.DeviceFeatureFlags.SET,
      P.encodeFeatureMigDeviceState({ deviceState: state, dataFd: 0xffffffff }),
    );
    return P.decodeFeatureMigDeviceState(d).deviceState;
  }

  /** MIG_DATA_READ: up to size bytes (fewer: no more data for now). */
  async migDataRead(size: number): Promise<Uint8Array> {
    const m = await this.req(P.Command.MIG_DATA_READ, P.encodeMigDataReadRequest({ size }));
    const rep = P.decodeMigDataReadReply(m.payload);
    if (rep.data.length > size) throw new VfioUserError('VFU_PROTOCOL', 'MIG_DATA_READ returned more than asked', Errno.EPROTO);
    return rep.data;
  }

  async migDataWrite(data: Uint8Array): Promise<void> {
    const max = this.serverCaps.maxDataXferSize;
    for (let done = 0; done < data.length; done += max) {
      await this.req(P.Command.MIG_DATA_WRITE, P.encodeMigDataWriteRequest({ data: data.subarray(done, done + max) }));
    }
  }

  async dmaLoggingStart(pageSize: number, ranges: { iova: number; length: number }[]): Promise<void> {
    await this.feature(
      P.DeviceFeature.DMA_LOGGING_START | P.DeviceFeatureFlags.SET,
      P.encodeFeatureDmaLoggingControl({ pageSize: BigInt(pageSize), ranges: ranges.map((r) => ({ iova: BigInt(r.iova), length: BigInt(r.length) })) }),
    );
  }

  async dmaLoggingStop(): Promise<void> {
    await this.feature(P.DeviceFeature.DMA_LOGGING_STOP | P.DeviceFeatureFlags.SET, P.encodeFeatureDmaLoggingControl({ pageSize: 0n, ranges: [] }));
  }

  /** Dirty bitmap of [iova, iova+length) at pageSize: bit i = page i. */
  async dmaLoggingReport(iova: number, length: number, pageSize: number): Promise<Uint8Array> {
    const d = await this.feature(
      P.DeviceFeature.DMA_LOGGING_REPORT | P.DeviceFeatureFlags.GET,
      P.encodeFeatureDmaLoggingReportRequest({ iova: BigInt(iova), length: BigInt(length), pageSize: BigInt(pageSize) }),
    );
    return P.decodeFeatureDmaLoggingReportReply(d).bitmap;
  }

  // ------------------------------------------------------------ lifetime

  private onClose(err: VfioUserError | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedErr = err;
    this.twin?.close();
    for (const h of [...this.irqHandles]) h.close();
    this.emit('close', err);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  get closeError(): VfioUserError | undefined {
    return this.closedErr;
  }

  /** Closes the connection. Guest memory objects stay the caller's. */
  close(): void {
    this.conn.close();
  }

  /**
   * Connects again to the same socket path (a restarted server) and re-establishes the DMA
   * maps. IRQs must be enabled again by the caller (the handles of the old connection closed).
   */
  async reconnect(): Promise<VfioUserClient> {
    if (!this.path) throw new VfioUserError('VFU_BAD_STATE', 'reconnect needs a socket path', Errno.EINVAL);
    if (!this.isClosed) this.close();
    const c = await VfioUserClient.connect(this.path, this.opts);
    for (const m of this.maps) await c.dmaMap(m.mem, m.iova, { offset: m.offset, size: m.size, prot: m.prot, shared: m.shared });
    return c;
  }
}

class IrqHandleImpl extends EventEmitter implements IrqHandle {
  readonly index: number;
  readonly start: number;
  readonly eventfds: number[];
  private pollers: { close(): void }[] = [];
  private waiters: ((v: number) => void)[] = [];
  private backlog: number[] = [];
  private closed = false;
  private readonly onClosed: () => void;

  constructor(index: number, start: number, fds: number[], onClosed: () => void) {
    super();
    this.index = index;
    this.start = start;
    this.eventfds = fds;
    this.onClosed = onClosed;
    fds.forEach((fd, i) => {
      const p = native.createPoller(fd, (status) => {
        if (status < 0 || this.closed) return;
        const n = native.eventfdRead(fd);
        if (n <= 0) return;
        const vector = start + i;
        const w = this.waiters.shift();
        if (w) w(vector);
        else if (this.listenerCount('irq') === 0) this.backlog.push(vector);
        this.emit('irq', vector, n);
      });
      p.start(native.POLL_READABLE);
      p.unref();
      this.pollers.push(p);
    });
  }

  next(): Promise<number> {
    const b = this.backlog.shift();
    if (b !== undefined) return Promise.resolve(b);
    if (this.closed) return Promise.reject(new VfioUserError('VFU_DISCONNECTED', 'IRQ handle closed', Errno.ENOTCONN));
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pollers) p.close();
    closeFds(this.eventfds);
    this.onClosed();
  }
}

export function describeRegion(info: P.RegionInfoReply): RegionDescription {
  const F = P.RegionInfoFlags;
  const sparse: { offset: number; size: number }[] = [];
  let type: { type: number; subtype: number } | undefined;
  for (const c of info.caps) {
    if (c.kind === 'sparse-mmap') for (const a of c.areas) sparse.push({ offset: Number(a.offset), size: Number(a.size) });
    if (c.kind === 'type') type = { type: c.type, subtype: c.subtype };
  }
  return {
    index: info.index,
    flags: info.flags,
    size: Number(info.size),
    offset: info.offset,
    readable: (info.flags & F.READ) !== 0,
    writable: (info.flags & F.WRITE) !== 0,
    mappable: (info.flags & F.MMAP) !== 0,
    sparseAreas: sparse,
    type,
    caps: info.caps,
  };
}
