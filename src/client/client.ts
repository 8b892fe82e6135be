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
 *
 * One idea in one file although it passes 600 lines: the client API, one short method per
 * vfio-user command (grouped: device description, region access, guest memory, interrupts,
 * reset/features/migration) plus the connection's lifetime (reconnect moves maps and IRQ
 * handles); every method shares the connection, the negotiated limits and the maps. The parts
 * that stand alone are their own files: the map table and the answers to server DMA
 * (dma-maps.ts), the errors naming a failed request (request-errors.ts), guest-memory.ts,
 * irq-handle.ts, write-batch.ts, pci-decode.ts, migrate.ts.
 */
import { EventEmitter } from 'node:events';
import { native, PROT_READ, PROT_WRITE } from '../native/index.js';
import * as P from '../protocol/index.js';
import { HEADER_SIZE } from '../protocol/header.js';
import { Connection, takeFds, closeFds, type Message } from '../transport/connection.js';
import { connectPath, adoptFd } from '../transport/socket.js';
import { VfioUserError, Errno } from '../errors.js';
import { decodeConfig, type DecodedConfig } from './pci-decode.js';
import { GuestMemory } from './guest-memory.js';
import { IrqHandleImpl, type IrqHandle, type IrqWaitOptions } from './irq-handle.js';
import { WriteBatchImpl, type WriteBatch } from './write-batch.js';
import { ClientMaps, DmaResponder, type ClientMap } from './dma-maps.js';
import { decoded, named, protocolError } from './request-errors.js';

export { GuestMemory, type IrqHandle, type IrqWaitOptions, type WriteBatch };

export interface ClientOptions {
  /** ask for twin-socket mode (default true) */
  twinSocket?: boolean;
  /** our max_data_xfer_size (default 1 MiB) */
  maxDataXferSize?: number;
  /** per-request timeout in ms (default none) */
  timeout?: number;
  /** timeout of the VERSION exchange in ms (default: `timeout`, else 10 s) */
  negotiateTimeout?: number;
  /** version minor to propose (default 0) */
  minor?: number;
  /**
   * Called before a DMA_READ or DMA_WRITE from the server is served from unshared guest
   * memory; the answer waits for a returned promise. Tools use it to trace server DMA, tests
   * to play a VMM whose main loop is busy (QEMU answers DMA requests in its main loop,
   * after interrupts that may already be waiting there).
   */
  beforeDma?: (kind: 'read' | 'write', iova: number, length: number) => void | Promise<void>;
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
  type?: { type: number; subtype: number } | undefined;
  caps: P.RegionCap[];
}

export interface MappedRegion {
  index: number;
  /** one view per mmap-ed area */
  areas: { offset: number; size: number; bytes: Uint8Array }[];
  unmap(): void;
}

export interface ReconnectOptions {
  /** keep trying to connect for this many ms (default 0: one attempt) */
  waitMs?: number;
  /** connect to this target instead of the original path */
  target?: string | { fd: number };
}

const DEFAULT_XFER = 1048576;
const MAX_ARGSZ = 65536;
const WRITE_MULTI_DEFAULT_ENTRIES = 200; // QEMU's VFIO_USER_MULTI_MAX

/** an IOVA as a u64 (EINVAL for what is not one) */
function u64(v: number | bigint): bigint {
  if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new VfioUserError('VFU_INVALID_ARGUMENT', `IOVA ${v} is not a safe integer: use a bigint`, Errno.EINVAL);
  const b = BigInt(v);
  if (b < 0n || b >= 1n << 64n) throw new VfioUserError('VFU_INVALID_ARGUMENT', `IOVA 0x${b.toString(16)} is not a u64`, Errno.EINVAL);
  return b;
}

export class VfioUserClient extends EventEmitter {
  /** @internal */
  readonly conn: Connection;
  private twin: Connection | undefined;
  readonly opts: ClientOptions;
  serverCaps!: P.ResolvedCapabilities;
  version!: { major: number; minor: number };
  private readonly maps = new ClientMaps();
  private readonly dma: DmaResponder;
  private irqHandles = new Set<IrqHandleImpl>();
  private closedErr: VfioUserError | undefined;
  private isClosed = false;
  readonly path: string | undefined;

  private constructor(fd: number, path: string | undefined, opts: ClientOptions) {
    super();
    this.opts = opts;
    this.path = path;
    this.dma = new DmaResponder(this.maps, {
      beforeDma: opts.beforeDma,
      maxDataXferSize: opts.maxDataXferSize ?? DEFAULT_XFER,
      onError: (e) => this.emit('dma-error', e),
    });
    this.conn = new Connection(fd, {
      maxMessageSize: HEADER_SIZE + (opts.maxDataXferSize ?? DEFAULT_XFER) * 2 + 65536,
      maxFdsPerMessage: 253,
      // a server that floods commands and never reads the answers is dropped: memory stays bounded
      holdCommandsWhenBacklogged: true,
      onCommand: (m) => this.dma.onServerCommand(m, this.conn),
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

  private req(cmd: number, payload: Uint8Array | null, extra: { fds?: number[]; expectFds?: boolean; timeout?: number } = {}): Promise<Message> {
    return this.conn.request(cmd, payload, { timeout: this.opts.timeout, ...extra }).catch((e: unknown) => {
      throw named(e, cmd, payload);
    });
  }

  private async negotiate(): Promise<void> {
    const ourXfer = this.opts.maxDataXferSize ?? DEFAULT_XFER;
    const ours: P.VersionCapabilities = {
      maxMsgFds: 253,
      maxDataXferSize: ourXfer,
      maxDmaMaps: 65535,
      pgsizes: 4096n,
      twinSocket: { supported: this.opts.twinSocket ?? true },
    };
    const m = await this.req(P.Command.VERSION, P.encodeVersionRequest({ major: 0, minor: this.opts.minor ?? 0, capabilities: ours }), {
      expectFds: true,
      timeout: this.opts.negotiateTimeout ?? this.opts.timeout ?? 10000,
    }).catch((e: unknown) => {
      if (e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR' && e.errno === Errno.EBUSY) {
        throw new VfioUserError('VFU_REMOTE_ERROR', `the server is serving another client (EBUSY)${this.path ? `: ${this.path}` : ''}`, Errno.EBUSY, { cause: e });
      }
      throw e;
    });
    const fds = takeFds(m);
    try {
      const rep = decoded('VERSION', () => P.decodeVersionReply(m.payload));
      if (rep.major !== 0) throw new VfioUserError('VFU_PROTOCOL', `server speaks major version ${rep.major}`, Errno.ENOTSUP);
      if (rep.minor > (this.opts.minor ?? 0)) throw protocolError(`server replied with a larger minor ${rep.minor}`);
      const caps = decoded('VERSION', () => P.resolveCapabilities(rep.capabilities));
      if (!Number.isSafeInteger(caps.maxDataXferSize) || caps.maxDataXferSize <= 0) {
        throw protocolError(`server max_data_xfer_size ${caps.maxDataXferSize} is unusable`);
      }
      this.version = { major: rep.major, minor: rep.minor };
      this.serverCaps = caps;
      const twin = rep.capabilities.twinSocket;
      if (twin?.supported && (this.opts.twinSocket ?? true)) {
        const idx = twin.fdIndex;
        if (idx === undefined || idx < 0 || idx >= fds.length) {
          throw protocolError('server enabled twin-socket mode without a valid fd_index');
        }
        const tfd = fds.splice(idx, 1)[0]!;
        try {
          this.twin = new Connection(tfd, {
            maxMessageSize: HEADER_SIZE + Math.max(caps.maxDataXferSize, ourXfer) * 2 + 65536,
            maxFdsPerMessage: 0,
            holdCommandsWhenBacklogged: true,
            onCommand: (cm) => this.dma.onServerCommand(cm, this.twin!),
            onClose: () => this.conn.close(),
          });
        } catch (e) {
          // not a socket we can poll (a file, a memfd...): the server's fault, said as such
          closeFds([tfd]);
          throw protocolError(`the server's twin socket fd cannot be used: ${(e as Error).message}`);
        }
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
    const di = decoded('DEVICE_GET_INFO', () => P.decodeDeviceGetInfoReply(m.payload));
    if (di.numRegions > 64 || di.numIrqs > 64) throw protocolError(`DEVICE_GET_INFO: implausible counts (${di.numRegions} regions, ${di.numIrqs} irqs)`);
    return di;
  }

  /** GET_REGION_INFO, asking again with a larger argsz when the capability chain needs it. The fd (if any) is returned. */
  async regionInfoRaw(index: number): Promise<{ info: P.RegionInfoReply; fd: number | undefined }> {
    const { reply: info, fds } = await this.askGrowing(P.Command.DEVICE_GET_REGION_INFO, `region ${index}`, 256, (argsz) => P.encodeRegionInfoRequest({ argsz, index }), (payload) => {
      const r = P.decodeRegionInfoReply(payload);
      if (r.index !== index) throw protocolError(`GET_REGION_INFO: asked for region ${index}, got ${r.index}`);
      return r;
    });
    if (fds.length > 1) closeFds(fds.slice(1));
    return { info, fd: fds[0] };
  }

  /**
   * A request whose reply may ask for a larger argsz (a longer capability chain, more
   * sub-regions): asked again with the argsz the reply gives, up to MAX_ARGSZ and three times
   * in all. The reply's fds are the caller's; `decode` may throw to refuse a reply.
   */
  private async askGrowing<T extends { argsz: number }>(
    command: number,
    what: string,
    argsz: number,
    encode: (argsz: number) => Uint8Array,
    decode: (payload: Uint8Array) => T,
  ): Promise<{ reply: T; fds: number[] }> {
    const name = P.commandName(command);
    for (let attempt = 0; attempt < 3; attempt++) {
      const m = await this.req(command, encode(argsz), { expectFds: true });
      const fds = takeFds(m);
      let reply: T;
      try {
        reply = decoded(name, () => decode(m.payload));
        if (reply.argsz > argsz) {
          if (reply.argsz > MAX_ARGSZ) throw protocolError(`${name}: argsz ${reply.argsz} is too large`);
          argsz = reply.argsz;
          closeFds(fds);
          continue;
        }
      } catch (e) {
        closeFds(fds);
        throw e;
      }
      return { reply, fds };
    }
    throw protocolError(`${what}: ${name} argsz keeps growing`);
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
    const ii = decoded('DEVICE_GET_IRQ_INFO', () => P.decodeIrqInfoReply(m.payload));
    if (ii.index !== index) throw protocolError(`GET_IRQ_INFO: asked for index ${index}, got ${ii.index}`);
    return ii;
  }

  /** GET_REGION_IO_FDS; the caller owns the returned fds. */
  async regionIoFds(index: number): Promise<{ reply: P.RegionIoFdsReply; fds: number[] }> {
    return this.askGrowing(P.Command.DEVICE_GET_REGION_IO_FDS, `region ${index}`, 16 + 48 * 16, (argsz) => P.encodeRegionIoFdsRequest({ argsz, index }), P.decodeRegionIoFdsReply);
  }

  /** Reads the config space (up to 4 KiB, or the config region's size) and decodes IDs, BARs and capability lists. */
  async config(): Promise<{ bytes: Uint8Array; decoded: DecodedConfig }> {
    const r = await this.regionInfo(P.PciRegion.CONFIG);
    const size = r.size > 0 ? Math.min(r.size, 4096) : 256;
    const bytes = await this.read(P.PciRegion.CONFIG, 0, size);
    return { bytes, decoded: decodeConfig(bytes) };
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
        if (a.offset + a.size > d.size) throw protocolError(`region ${index}: sparse area [${a.offset}, +${a.size}) outside the region`);
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
      const rep = decoded('REGION_READ', () => P.decodeRegionReadReply(m.payload));
      if (rep.count !== length || rep.data.length !== length || rep.offset !== offset || rep.region !== region) {
        throw protocolError(`REGION_READ reply (region ${rep.region} offset ${rep.offset} count ${rep.count}) does not match the request`);
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
  async write(region: number, offset: number, data: Uint8Array, opts: { posted?: boolean | undefined } = {}): Promise<void> {
    const max = this.serverCaps.maxDataXferSize;
    const parts: Promise<unknown>[] = [];
    for (let done = 0; done < data.length || (done === 0 && data.length === 0); done += max) {
      const n = Math.min(max, data.length - done);
      const payload = P.encodeRegionWriteRequest({ offset: offset + done, region, count: n, data: data.subarray(done, done + n) });
      this.sendWrite(parts, P.Command.REGION_WRITE, payload, opts.posted, (reply) => {
        const rep = decoded('REGION_WRITE', () => P.decodeRegionWriteReply(reply));
        if (rep.count !== n) throw protocolError(`REGION_WRITE reply count ${rep.count}, expected ${n}`);
      });
      if (data.length === 0) break;
    }
    await Promise.all(parts);
  }

  /**
   * Sends one write message: posted (NO_REPLY; a drain joins `parts` when the socket is backed
   * up), or as a request whose reply `check` verifies (the request joins `parts`).
   */
  private sendWrite(parts: Promise<unknown>[], command: number, payload: Uint8Array, posted: boolean | undefined, check: (reply: Uint8Array) => void): void {
    if (posted) {
      if (!this.conn.post(command, payload)) parts.push(this.conn.drained());
    } else {
      parts.push(this.req(command, payload).then((m) => check(m.payload)));
    }
  }

  /** Most entries in one WRITE_MULTI message: bounded by max_data_xfer_size and QEMU's 200. */
  get writeMultiMaxEntries(): number {
    return Math.max(1, Math.min(WRITE_MULTI_DEFAULT_ENTRIES, Math.floor((this.serverCaps.maxDataXferSize - 8) / 24)));
  }

  /**
   * REGION_WRITE_MULTI: several small (≤ 8 byte) writes in one message when the server supports
   * it (split into several messages past writeMultiMaxEntries); one REGION_WRITE each otherwise.
   */
  async writeMulti(entries: { region: number; offset: number; data: Uint8Array }[], opts: { posted?: boolean | undefined } = {}): Promise<void> {
    for (const e of entries) {
      if (e.data.length > P.WRITE_MULTI_MAX_DATA) {
        throw new VfioUserError('VFU_INVALID_ARGUMENT', `WRITE_MULTI entries carry at most ${P.WRITE_MULTI_MAX_DATA} bytes`, Errno.EINVAL);
      }
    }
    if (!this.serverCaps.writeMultiple) {
      await Promise.all(entries.map((e) => this.write(e.region, e.offset, e.data, opts)));
      return;
    }
    const max = this.writeMultiMaxEntries;
    const parts: Promise<unknown>[] = [];
    for (let i = 0; i < entries.length; i += max) {
      const chunk = entries.slice(i, i + max);
      const payload = P.encodeRegionWriteMultiRequest({ entries: chunk.map((e) => ({ offset: e.offset, region: e.region, count: e.data.length, data: e.data })) });
      this.sendWrite(parts, P.Command.REGION_WRITE_MULTI, payload, opts.posted, (reply) => {
        const rep = decoded('REGION_WRITE_MULTI', () => P.decodeRegionWriteMultiReply(reply));
        if (rep.wrCnt !== chunk.length) throw protocolError(`WRITE_MULTI reply count ${rep.wrCnt}, expected ${chunk.length}`);
      });
    }
    await Promise.all(parts);
  }

  /**
   * An automatic batcher: writes of ≤ 8 bytes queued in the same tick (or until
   * writeMultiMaxEntries are queued) go out as one REGION_WRITE_MULTI. Order among the
   * batch's own writes is kept; flush() before mixing with other writes.
   */
  batch(opts: { posted?: boolean; maxEntries?: number } = {}): WriteBatch {
    return new WriteBatchImpl(this, opts);
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
  async dmaMap(mem: GuestMemory, iova: number | bigint, opts: { offset?: number; size?: number; prot?: number; shared?: boolean } = {}): Promise<void> {
    const offset = opts.offset ?? 0;
    const size = opts.size ?? mem.size - offset;
    const prot = opts.prot ?? PROT_READ | PROT_WRITE;
    const shared = opts.shared ?? true;
    if (offset < 0 || size <= 0 || offset + size > mem.size) throw new VfioUserError('VFU_INVALID_ARGUMENT', 'map outside guest memory', Errno.EINVAL);
    const start = u64(iova);
    const flags = (prot & PROT_READ ? P.DmaMapFlags.READ : 0) | (prot & PROT_WRITE ? P.DmaMapFlags.WRITE : 0);
    await this.req(
      P.Command.DMA_MAP,
      P.encodeDmaMapRequest({ flags, offset: BigInt(shared ? offset : 0), address: start, size: BigInt(size) }),
      { fds: shared ? [mem.fd] : [] },
    );
    const m: ClientMap = { iova, start, end: start + BigInt(size), size, mem, offset, prot, shared };
    this.maps.add(m);
  }

  /**
   * Unmaps every map inside [iova, iova+size) (the server refuses a range that cuts a map in
   * two, as Linux VFIO does; a range covering no map is not an error).
   */
  async dmaUnmap(iova: number | bigint, size: number | bigint): Promise<void> {
    const start = u64(iova);
    const len = u64(size);
    await this.req(P.Command.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: 0, address: start, size: len }));
    this.maps.drop(start, start + len);
  }

  /**
   * Unmaps [iova, iova+size) and returns its dirty bitmap at pageSize (bit i = page i), the
   * DMA_UNMAP GET_DIRTY_BITMAP form libvfio-user servers (and ours) support; DMA logging
   * must be started.
   */
  async dmaUnmapDirty(iova: number | bigint, size: number, pageSize: number): Promise<Uint8Array> {
    const bytes = Math.ceil(size / pageSize / 64) * 8; // whole u64 words, as vfio and libvfio-user expect
    const m = await this.req(
      P.Command.DMA_UNMAP,
      P.encodeDmaUnmapRequest({
        argsz: 24 + 16 + bytes,
        flags: P.DmaUnmapFlags.GET_DIRTY_BITMAP,
        address: u64(iova),
        size: BigInt(size),
        bitmap: { pgsize: BigInt(pageSize), size: BigInt(bytes) },
      }),
    );
    const rep = P.decodeDmaUnmapReply(m.payload);
    this.maps.drop(u64(iova), u64(iova) + BigInt(size));
    if (!rep.bitmap?.data || rep.bitmap.data.length !== bytes) {
      throw new VfioUserError('VFU_PROTOCOL', 'DMA_UNMAP reply without the dirty bitmap asked for', Errno.EPROTO);
    }
    return rep.bitmap.data;
  }

  async dmaUnmapAll(): Promise<void> {
    await this.req(P.Command.DMA_UNMAP, P.encodeDmaUnmapRequest({ flags: P.DmaUnmapFlags.ALL, address: 0n, size: 0n }));
    this.maps.list = [];
  }

  /** the client's map table (what a reconnect re-establishes) */
  get dmaMaps(): readonly { iova: number | bigint; size: number; shared: boolean }[] {
    return this.maps.list;
  }

  // ------------------------------------------------------------ interrupts

  /** Creates eventfds for vectors [start, start+count) of an IRQ index and hands them to the server. */
  async enableIrqs(index: number, count: number, start = 0): Promise<IrqHandle> {
    const fds = await this.bindIrqFds(index, start, count);
    const h = new IrqHandleImpl(index, start, count);
    h.attach(this, fds);
    return h;
  }

  private async bindIrqFds(index: number, start: number, count: number): Promise<number[]> {
    if (!Number.isInteger(count) || count <= 0 || count > 2048) throw new VfioUserError('VFU_INVALID_ARGUMENT', `bad vector count ${count}`, Errno.EINVAL);
    const fds: number[] = [];
    try {
      for (let i = 0; i < count; i++) fds.push(native.eventfd(0, false));
      // no more fds per message than the server accepts (QEMU does the same)
      const per = Math.max(1, this.serverCaps.maxMsgFds);
      for (let done = 0; done < count; done += per) {
        const n = Math.min(per, count - done);
        await this.setIrqs(index, P.SetIrqsFlags.DATA_EVENTFD | P.SetIrqsFlags.ACTION_TRIGGER, start + done, n, undefined, fds.slice(done, done + n));
      }
    } catch (e) {
      closeFds(fds);
      throw e;
    }
    return fds;
  }

  /** @internal */
  adoptIrqHandle(h: IrqHandleImpl): void {
    this.irqHandles.add(h);
  }

  /** @internal */
  dropIrqHandle(h: IrqHandleImpl): void {
    this.irqHandles.delete(h);
  }

  /** the IRQ handles bound to this client */
  get irqs(): readonly IrqHandle[] {
    return [...this.irqHandles];
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
    await this.req(P.Command.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags, index, start, count, ...(data && { data }) }), { fds });
  }

  // ------------------------------------------------------------ reset, features, migration

  async reset(): Promise<void> {
    await this.req(P.Command.DEVICE_RESET, null);
  }

  /** Raw DEVICE_FEATURE; returns the reply's data. */
  async feature(flags: number, data: Uint8Array = new Uint8Array(0)): Promise<Uint8Array> {
    const m = await this.req(P.Command.DEVICE_FEATURE, P.encodeDeviceFeatureRequest({ flags, data }));
    return decoded('DEVICE_FEATURE', () => P.decodeDeviceFeatureReply(m.payload).data);
  }

  /** PROBE a feature for an operation (GET/SET): false when the server refuses. */
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
    return decoded('DEVICE_FEATURE MIGRATION', () => P.decodeFeatureMigration(d).flags);
  }

  async getDeviceState(): Promise<number> {
    const d = await this.feature(P.DeviceFeature.MIG_DEVICE_STATE | P.DeviceFeatureFlags.GET);
    return decoded('DEVICE_FEATURE MIG_DEVICE_STATE', () => P.decodeFeatureMigDeviceState(d).deviceState);
  }

  async setDeviceState(state: number): Promise<number> {
    const d = await this.feature(
      P.DeviceFeature.MIG_DEVICE_STATE | P.DeviceFeatureFlags.SET,
      P.encodeFeatureMigDeviceState({ deviceState: state, dataFd: 0xffffffff }),
    );
    return decoded('DEVICE_FEATURE MIG_DEVICE_STATE', () => P.decodeFeatureMigDeviceState(d).deviceState);
  }

  /** MIG_DATA_READ: up to size bytes (fewer: no more data for now). */
  async migDataRead(size: number): Promise<Uint8Array> {
    const m = await this.req(P.Command.MIG_DATA_READ, P.encodeMigDataReadRequest({ size }));
    const rep = decoded('MIG_DATA_READ', () => P.decodeMigDataReadReply(m.payload));
    if (rep.data.length > size) throw protocolError('MIG_DATA_READ returned more than asked');
    return rep.data;
  }

  /**
   * The migration data stream: MIG_DATA_READ in chunks until a short read (the end of what
   * the current state has to give: a pre-copy round, or the whole stop-copy state).
   */
  async *migDataStream(chunk = Math.min(DEFAULT_XFER, this.serverCaps.maxDataXferSize)): AsyncGenerator<Uint8Array, void, void> {
    for (;;) {
      const d = await this.migDataRead(chunk);
      if (d.length) yield d;
      if (d.length < chunk) return;
    }
  }

  /** MIG_DATA_WRITE, chunked by max_data_xfer_size. */
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
    const bm = decoded('DMA_LOGGING_REPORT', () => P.decodeFeatureDmaLoggingReportReply(d).bitmap);
    const pages = Math.ceil(length / pageSize);
    if (bm.length < Math.ceil(pages / 8)) throw protocolError(`DMA_LOGGING_REPORT bitmap of ${bm.length} bytes for ${pages} pages`);
    return bm;
  }

  // ------------------------------------------------------------ lifetime

  private onClose(err: VfioUserError | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedErr = err;
    this.twin?.close();
    const why = new VfioUserError('VFU_DISCONNECTED', `connection closed${err ? `: ${err.message}` : ''}`, Errno.ENOTCONN, { cause: err });
    for (const h of this.irqHandles) h.detach(why);
    this.emit('close', err);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  get closeError(): VfioUserError | undefined {
    return this.closedErr;
  }

  /** Closes the connection. Guest memory objects stay the caller's; IRQ handles are detached. */
  close(): void {
    this.conn.close();
  }

  /** `await using client = await VfioUserClient.connect(...)`: closes it. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  /**
   * Re-creates another client's guest memory maps here (same memory, same IOVAs), skipping
   * maps this client already has. Used when a device moves to this client's server.
   */
  async adoptMaps(src: VfioUserClient): Promise<number> {
    let n = 0;
    for (const m of src.maps.list) {
      if (this.maps.list.some((x) => x.start === m.start && x.size === m.size)) continue;
      await this.dmaMap(m.mem, m.iova, { offset: m.offset, size: m.size, prot: m.prot, shared: m.shared });
      n++;
    }
    return n;
  }

  /**
   * Moves another client's active IRQ handles here: new eventfds are given to this client's
   * server and the same handle objects keep their listeners and waiters (they emit 'rebound').
   * Handles for an index this client already serves are left alone.
   */
  async adoptIrqs(src: VfioUserClient): Promise<number> {
    let n = 0;
    for (const h of [...src.irqHandles]) {
      if (h.state !== 'active') continue;
      if ([...this.irqHandles].some((x) => x.index === h.index && x.state === 'active')) continue;
      const fds = await this.bindIrqFds(h.index, h.start, h.count);
      src.irqHandles.delete(h);
      h.moveTo(this, fds);
      h.emit('rebound', this);
      n++;
    }
    return n;
  }

  /**
   * Connects again (to the same socket path, normally a restarted server) and re-establishes
   * the state this client had set up: every DMA map (same memory, iova, prot, shared or not)
   * and every IRQ handle that was still open, re-bound with new eventfds to the new client
   * (the same IrqHandle objects: their 'irq' listeners keep working and they emit 'rebound').
   * Masks and device state are not replayed. Returns the new client; this one stays closed.
   */
  async reconnect(opts: ReconnectOptions = {}): Promise<VfioUserClient> {
    const target = opts.target ?? this.path;
    if (target === undefined) throw new VfioUserError('VFU_BAD_STATE', 'reconnect needs a socket path (or opts.target)', Errno.EINVAL);
    if (!this.isClosed) this.close();
    const deadline = Date.now() + (opts.waitMs ?? 0);
    let c: VfioUserClient;
    for (;;) {
      try {
        c = await VfioUserClient.connect(target, this.opts);
        break;
      } catch (e) {
        if (typeof target !== 'string' || Date.now() >= deadline || !(e instanceof VfioUserError) || e.code !== 'VFU_DISCONNECTED') throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    try {
      for (const m of this.maps.list) await c.dmaMap(m.mem, m.iova, { offset: m.offset, size: m.size, prot: m.prot, shared: m.shared });
      for (const h of [...this.irqHandles]) {
        if (h.state !== 'detached') continue;
        const fds = await c.bindIrqFds(h.index, h.start, h.count);
        this.irqHandles.delete(h);
        h.attach(c, fds);
        h.emit('rebound', c);
      }
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
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
