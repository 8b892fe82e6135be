/**
 * DMA by message: the server's DMA_READ and DMA_WRITE requests to its client, used for guest
 * memory the client did not share by fd.
 *
 * Replies the client owes are bounded by a window (bytes of DMA_READ data in flight). QEMU
 * 10.1 writes a reply to its non-blocking socket in one sendmsg and treats a partial write as
 * sent: a reply larger than the free space of its socket buffer (about 208 KiB by default,
 * less while earlier replies wait in it) loses its tail and the stream is out of step for
 * good. With a window of 64 KiB for such clients, every reply QEMU owes fits in its buffer
 * at once. Other clients (ours, libvfio-user) get no window.
 */
import * as P from '../protocol/index.js';
import { Errno } from '../errors.js';
import type { Connection, Message } from '../transport/connection.js';
import { DmaError, type DmaMessenger } from './dma.js';

/** DMA_READ reply bytes (data) a QEMU-like client may owe at once */
export const QEMU_DMA_READ_WINDOW = 65536;

export interface MessengerOptions {
  /** where requests go: the twin socket, or the main one */
  conn: Connection;
  /** most bytes in one message (the smaller of both sides' max_data_xfer_size) */
  maxTransfer: number;
  layout: 'spec' | 'qemu';
  timeoutMs: number;
  /** most DMA_READ data bytes in flight at once (Infinity: no bound) */
  readWindow: number;
}

export class ClientDmaMessenger implements DmaMessenger {
  readonly maxTransfer: number;
  private readonly conn: Connection;
  private readonly layout: 'spec' | 'qemu';
  private readonly timeoutMs: number;
  private readonly window: number;
  private inFlight = 0;
  private readonly waiting: { bytes: number; go: () => void }[] = [];

  constructor(o: MessengerOptions) {
    this.conn = o.conn;
    this.layout = o.layout;
    this.timeoutMs = o.timeoutMs;
    this.window = o.readWindow;
    this.maxTransfer = Math.min(o.maxTransfer, o.readWindow);
  }

  /**
   * One DMA_READ. Requests made in the same job go out with one send (Connection.cork); the
   * reply is checked (address and length, as the client is not trusted) in the one callback
   * that resolves the caller: no async function, no extra microtask per message.
   */
  read(iova: bigint, length: number): Promise<Uint8Array> {
    const wait = this.reserve(length);
    if (wait !== undefined) return wait.then(() => this.readReserved(iova, length));
    return this.readReserved(iova, length);
  }

  private readReserved(iova: bigint, length: number): Promise<Uint8Array> {
    let sent: Promise<Message>;
    try {
      this.conn.cork();
      sent = this.conn.request(P.Command.DMA_READ, P.encodeDmaReadRequest({ address: iova, count: length }), { timeout: this.timeoutMs });
    } catch (e) {
      this.release(length);
      return Promise.reject(e);
    }
    return sent.then(
      (m) => {
        this.release(length);
        const rep = P.decodeDmaReadReply(m.payload, length, this.layout);
        if (rep.address !== iova || rep.data.length !== length) {
          throw new DmaError(`bad DMA_READ reply for 0x${iova.toString(16)}+${length}`, Errno.EIO);
        }
        return rep.data;
      },
      (e: unknown) => {
        this.release(length);
        throw e;
      },
    );
  }

  /** One DMA_WRITE (sent as read() sends); the reply, when it has a body, must match it. */
  write(iova: bigint, data: Uint8Array): Promise<void> {
    let sent: Promise<Message>;
    try {
      this.conn.cork();
      sent = this.conn.request(P.Command.DMA_WRITE, P.encodeDmaWriteRequest({ address: iova, data, layout: this.layout }), { timeout: this.timeoutMs });
    } catch (e) {
      return Promise.reject(e);
    }
    return sent.then((m) => {
      const rep = P.decodeDmaWriteReply(m.payload);
      // QEMU answers with an empty payload; a spec reply must match the request
      if (rep.address !== undefined && (rep.address !== iova || rep.count !== data.length)) {
        throw new DmaError(`bad DMA_WRITE reply for 0x${iova.toString(16)}+${data.length}`, Errno.EIO);
      }
    });
  }

  /** Waits (in order) until `bytes` more fit in the window. */
  private reserve(bytes: number): Promise<void> | undefined {
    if (this.waiting.length === 0 && this.inFlight + bytes <= this.window) {
      this.inFlight += bytes;
      return undefined;
    }
    return new Promise<void>((go) => this.waiting.push({ bytes, go }));
  }

  private release(bytes: number): void {
    this.inFlight -= bytes;
    while (this.waiting.length && this.inFlight + this.waiting[0]!.bytes <= this.window) {
      const w = this.waiting.shift()!;
      this.inFlight += w.bytes;
      w.go();
    }
  }
}
