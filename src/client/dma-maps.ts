/**
 * The client's side of DMA: its table of guest memory maps (sorted by IOVA), and the answers
 * to a server's DMA_READ / DMA_WRITE from that memory, each access checked against the maps.
 */
import { PROT_READ, PROT_WRITE } from '../native/index.js';
import * as P from '../protocol/index.js';
import { type Connection, takeFds, closeFds, retain, type Message } from '../transport/connection.js';
import { VfioUserError, Errno } from '../errors.js';
import type { GuestMemory } from './guest-memory.js';

/** DMA requests the beforeDma hook may hold at once before the server is dropped as a flood */
const MAX_HELD_DMA = 4096;

export interface ClientMap {
  /** as the caller gave it */
  iova: number | bigint;
  /** [start, end) as u64 */
  start: bigint;
  end: bigint;
  size: number;
  mem: GuestMemory;
  offset: number;
  prot: number;
  shared: boolean;
}

/**
 * The DMA_WRITE reply: the spec's u64 address + u32 count, widened to a u64 count (16 bytes).
 * libvfio-user reads exactly 16 bytes (struct vfio_user_dma_region_access) and resets the
 * connection on a 12-byte reply; a spec reader takes the low half and ignores the rest.
 */
function dmaWriteReply(address: bigint, count: number): Uint8Array {
  const b = new Uint8Array(16);
  b.set(P.encodeDmaWriteReply({ address, count }), 0);
  return b;
}

/** The maps a client made, in IOVA order. */
export class ClientMaps {
  list: ClientMap[] = [];

  add(m: ClientMap): void {
    this.list.splice(this.index(m.start), 0, m);
  }

  /** index of the first map starting at or after iova */
  private index(iova: bigint): number {
    let lo = 0;
    let hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.list[mid]!.start < iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** forgets the maps inside [start, end) */
  drop(start: bigint, end: bigint): void {
    const first = this.index(start);
    let last = first;
    while (last < this.list.length && this.list[last]!.end <= end) last++;
    this.list.splice(first, last - first);
  }

  /** The map holding [iova, iova+length) with the access's permission, and the offset in its memory (EFAULT otherwise). */
  find(iova: bigint, length: number, write: boolean): { map: ClientMap; off: number } {
    const i = this.index(iova + 1n) - 1; // the last map starting at or before iova
    const m = this.list[i];
    if (m && iova >= m.start && iova + BigInt(length) <= m.end && m.prot & (write ? PROT_WRITE : PROT_READ)) {
      return { map: m, off: m.offset + Number(iova - m.start) };
    }
    throw new VfioUserError('VFU_DMA', `server DMA ${write ? 'write' : 'read'} of [0x${iova.toString(16)}, +${length}) is outside the maps`, Errno.EFAULT);
  }
}

/** What DmaResponder needs of the client's options. */
export interface DmaResponderOptions {
  beforeDma?: ((kind: 'read' | 'write', iova: number, length: number) => void | Promise<void>) | undefined;
  maxDataXferSize: number;
  /** a request answered with an error */
  onError: (e: unknown) => void;
}

/** Answers a server's DMA_READ / DMA_WRITE from the client's maps (and ENOSYS to any other command). */
export class DmaResponder {
  /** DMA requests whose answer waits for the beforeDma hook */
  private held = 0;

  constructor(
    private readonly maps: ClientMaps,
    private readonly opts: DmaResponderOptions,
  ) {}

  /**
   * DMA_READ / DMA_WRITE from the server, answered from guest memory. The messages use the
   * spec's layout (u64 count, data at 16): this client never presents itself like QEMU.
   */
  onServerCommand(m: Message, conn: Connection): void {
    const hook = this.opts.beforeDma;
    if (hook && (m.header.command === P.Command.DMA_READ || m.header.command === P.Command.DMA_WRITE)) {
      // the payload is only valid during this call: keep a copy for the delayed answer
      const held = retain(m);
      closeFds(takeFds(held));
      let wait: void | Promise<void>;
      try {
        const req = m.header.command === P.Command.DMA_READ ? P.decodeDmaReadRequest(m.payload) : P.decodeDmaWriteRequest(m.payload, 'spec');
        wait = hook(m.header.command === P.Command.DMA_READ ? 'read' : 'write', Number(req.address), req.count);
      } catch {
        wait = undefined; // a malformed request: answered with an error below, at once
      }
      if (wait) {
        // a server flooding DMA requests while the hook holds them: the same bound as the
        // transport's for held commands, then the connection goes
        if (++this.held > MAX_HELD_DMA) {
          conn.close();
          return;
        }
        const done = (): void => {
          this.held--;
          this.serveDma(held, conn);
        };
        void wait.then(done, done);
        return;
      }
    }
    this.serveDma(m, conn);
  }

  private serveDma(m: Message, conn: Connection): void {
    if (conn.isClosed) return;
    try {
      const limit = this.opts.maxDataXferSize;
      if (m.header.command === P.Command.DMA_READ) {
        const req = P.decodeDmaReadRequest(m.payload);
        if (req.count > limit) throw new VfioUserError('VFU_DMA', `DMA_READ of ${req.count} bytes exceeds our max_data_xfer_size`, Errno.EINVAL);
        const { map, off } = this.maps.find(req.address, req.count, false);
        const data = map.mem.bytes.subarray(off, off + req.count);
        conn.reply(m.header, P.encodeDmaReadReply({ address: req.address, data, layout: 'spec' }));
      } else if (m.header.command === P.Command.DMA_WRITE) {
        const req = P.decodeDmaWriteRequest(m.payload, 'spec');
        if (req.count > limit) throw new VfioUserError('VFU_DMA', `DMA_WRITE of ${req.count} bytes exceeds our max_data_xfer_size`, Errno.EINVAL);
        const { map, off } = this.maps.find(req.address, req.count, true);
        map.mem.bytes.set(req.data, off);
        conn.reply(m.header, dmaWriteReply(req.address, req.count));
      } else {
        conn.replyError(m.header, Errno.ENOSYS);
      }
    } catch (e) {
      const errno = (e as { errno?: number }).errno || Errno.EINVAL;
      this.opts.onError(e);
      try {
        conn.replyError(m.header, errno);
      } catch {
        /* the connection is gone */
      }
    }
  }
}
