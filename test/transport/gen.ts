/**
 * Hostile traffic for the fuzz tests: valid protocol messages made with the codec's encoders,
 * then corrupted (header fields, payload bits, truncation, extension), random garbage, random
 * write splits and random fds (memfds, eventfds, socket ends) on random writes.
 */
import * as P from '../../src/protocol/index.js';
import { HEADER_SIZE, FLAG_NO_REPLY, FLAG_ERROR, MSG_TYPE_REPLY, encodeHeader } from '../../src/protocol/header.js';
import { native } from '../../src/native/index.js';
import { closeFds } from '../../src/transport/connection.js';
import { Rng, concat } from './util.js';
import { flipBits } from '../helpers.js';

const C = P.Command;

/** A valid request payload for a random command (fds suggested for DMA_MAP / SET_IRQS). */
export function validRequest(r: Rng): { command: number; payload: Uint8Array; fds: number } {
  const u64 = (): bigint => r.pick([0n, 0x1000n, 0x100000n, BigInt(r.u32()) << 12n, (1n << 64n) - 4096n, 1n << 53n]);
  switch (r.int(16)) {
    case 0:
      return {
        command: C.VERSION,
        payload: P.encodeVersionRequest({
          major: r.chance(0.8) ? 0 : r.int(3),
          minor: r.int(3),
          capabilities: r.chance(0.5) ? {} : { maxMsgFds: r.int(300), maxDataXferSize: r.pick([0, 1, 4096, 1 << 20, 0xffffffff]), twinSocket: { supported: r.chance(0.5) } },
        }),
        fds: 0,
      };
    case 1:
      return {
        command: C.DMA_MAP,
        payload: P.encodeDmaMapRequest({ flags: r.int(5), offset: r.pick([0n, 4096n, 1n, u64()]), address: u64(), size: r.pick([0n, 4096n, 0x10000n, u64()]) }),
        fds: r.pick([0, 1, 1, 2]),
      };
    case 2:
      return {
        command: C.DMA_UNMAP,
        payload: P.encodeDmaUnmapRequest({
          flags: r.pick([0, 0, 2, 1]),
          address: u64(),
          size: r.pick([0n, 4096n, u64()]),
          bitmap: { pgsize: r.pick([0n, 4096n, 1n, u64()]), size: r.pick([0n, 8n, 1n, u64()]) },
        }),
        fds: 0,
      };
    case 3:
      return { command: C.DEVICE_GET_INFO, payload: P.encodeDeviceGetInfoRequest({ argsz: r.pick([16, 0, 15, 1 << 20]) }), fds: 0 };
    case 4:
      return { command: C.DEVICE_GET_REGION_INFO, payload: P.encodeRegionInfoRequest({ argsz: r.pick([32, 0, 31, 33, 80, 4096, 0xffffffff]), index: r.int(12) }), fds: 0 };
    case 5:
      return { command: C.DEVICE_GET_REGION_IO_FDS, payload: P.encodeRegionIoFdsRequest({ argsz: r.pick([16, 0, 64, 0xffffffff]), index: r.int(12) }), fds: 0 };
    case 6:
      return { command: C.DEVICE_GET_IRQ_INFO, payload: P.encodeIrqInfoRequest({ index: r.int(7) }), fds: 0 };
    case 7: {
      const data = r.pick([1, 2, 4]);
      const action = r.pick([8, 16, 32]);
      const count = r.int(10);
      return {
        command: C.DEVICE_SET_IRQS,
        payload: P.encodeSetIrqsRequest({ flags: data | action, index: r.int(6), start: r.int(9), count, ...(data === 2 && { data: r.bytes(count) }) }),
        fds: data === 4 ? r.int(count + 2) : 0,
      };
    }
    case 8:
      return { command: C.REGION_READ, payload: P.encodeRegionReadRequest({ offset: r.pick([0, 0x18, 0x100, 4092, 4096, r.u32()]), region: r.pick([0, 1, 2, 7, 9, 3, 200]), count: r.pick([0, 1, 4, 8, 256, 4097, 1 << 20]) }), fds: 0 };
    case 9: {
      // scratch, DMA address/length/command, IRQ raise, buffer, async register
      const offset = r.pick([0, 0x08, 0x10, 0x14, 0x20, 0x100, 0x800, 4094, r.u32() & 0xffff]);
      const data = offset === 0x08 ? P.encodeDmaReadRequest({ address: u64(), count: 0 }).subarray(0, 8) : r.bytes(r.pick([1, 2, 4, 8, 64]));
      if (offset === 0x14) data.set([r.int(5), 0, 0, 0].slice(0, data.length));
      return { command: C.REGION_WRITE, payload: P.encodeRegionWriteRequest({ offset, region: r.pick([0, 0, 1, 2, 7, 9, 5]), data }), fds: 0 };
    }
    case 10: {
      const n = r.int(5);
      const entries = Array.from({ length: n }, () => ({ offset: r.pick([0, 0x100, 4095]), region: r.pick([0, 1, 7]), data: r.bytes(r.int(9)) }));
      return { command: C.REGION_WRITE_MULTI, payload: P.encodeRegionWriteMultiRequest({ entries }), fds: 0 };
    }
    case 11:
      return { command: C.DEVICE_RESET, payload: new Uint8Array(0), fds: 0 };
    case 12: {
      const feature = r.int(10);
      const op = r.pick([P.DeviceFeatureFlags.GET, P.DeviceFeatureFlags.SET, P.DeviceFeatureFlags.PROBE | P.DeviceFeatureFlags.GET]);
      return { command: C.DEVICE_FEATURE, payload: P.encodeDeviceFeatureRequest({ flags: feature | op, data: r.bytes(r.pick([0, 4, 8, 24, 40])) }), fds: 0 };
    }
    case 13:
      return { command: C.MIG_DATA_READ, payload: P.encodeMigDataReadRequest({ size: r.pick([0, 16, 4096, 1 << 20]) }), fds: 0 };
    case 14:
      return { command: C.MIG_DATA_WRITE, payload: P.encodeMigDataWriteRequest({ data: r.bytes(r.int(64)) }), fds: 0 };
    default:
      return { command: r.pick([0, 14, 19, 0xffff, C.DMA_READ, C.DMA_WRITE]), payload: r.bytes(r.int(40)), fds: 0 };
  }
}

function mutate(r: Rng, b: Uint8Array): Uint8Array {
  const len = b.length;
  switch (r.int(6)) {
    case 0: {
      const out = b.slice();
      for (let i = 1 + r.int(4); i > 0 && len > 0; i--) flipBits(out, r.int(len), 1 << r.int(8));
      return out;
    }
    case 1:
      return b.slice(0, r.int(len + 1)); // short payload (argsz may now lie)
    case 2:
      return concat(b, r.bytes(1 + r.int(64))); // trailing bytes
    case 3: {
      if (len < 4) return b.slice();
      const out = b.slice();
      new DataView(out.buffer).setUint32(4 * r.int(len >> 2), r.pick([0, 1, 0xffffffff, 0x80000000, len, len + 1, len - 1, r.u32()]) >>> 0, true);
      return out;
    }
    case 4: {
      if (len < 8) return b.slice();
      const out = b.slice();
      new DataView(out.buffer).setBigUint64(8 * r.int(len >> 3), r.pick([0n, (1n << 64n) - 1n, 1n << 53n, 1n << 63n]), true);
      return out;
    }
    default:
      return b.slice();
  }
}

export interface Write {
  data: Uint8Array;
  /** how many fds to attach to this write */
  fds: number;
}

export interface StreamOpts {
  /** most frames in one case */
  frames: number;
  /** keep the header sane most of the time (so the payload decoders get exercised) */
  saneHeaders: number;
  /** a valid VERSION first (for a server session) */
  versionFirst: boolean;
  maxMessageSize: number;
}

/** One hostile case: a list of writes (random splits, fds on some). */
export function hostileStream(r: Rng, o: StreamOpts): Write[] {
  const frames: { bytes: Uint8Array; fds: number }[] = [];
  if (o.versionFirst) {
    frames.push({ bytes: frameOf(0, C.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: r.chance(0.5) ? {} : { twinSocket: { supported: true } } }), 0), fds: 0 });
  }
  const n = 1 + r.int(o.frames);
  for (let i = 0; i < n; i++) {
    const kind = r.int(100);
    if (kind < 4) {
      frames.push({ bytes: r.bytes(1 + r.int(64)), fds: r.chance(0.2) ? 1 : 0 }); // garbage
      continue;
    }
    const req = validRequest(r);
    let payload = req.payload;
    if (r.chance(0.4)) payload = mutate(r, payload);
    let flags = r.chance(0.2) ? FLAG_NO_REPLY : 0;
    let size = HEADER_SIZE + payload.length;
    if (kind >= o.saneHeaders) {
      // header corruption
      switch (r.int(6)) {
        case 0:
          size = r.pick([0, 1, 15, 16, size - 1, size + 1, size + 100, 0xffffffff, o.maxMessageSize, o.maxMessageSize + 1]);
          break;
        case 1:
          flags = r.pick([MSG_TYPE_REPLY, MSG_TYPE_REPLY | FLAG_ERROR, 2, 0xf, 1 << 6, FLAG_ERROR]);
          break;
        case 2:
          flags |= FLAG_ERROR;
          break;
        default:
          break;
      }
    }
    const bytes = frameOf(r.int(0x10000), req.command, payload, flags, size);
    frames.push({ bytes, fds: req.fds && r.chance(0.8) ? req.fds : r.chance(0.05) ? 1 + r.int(20) : 0 });
  }
  // writes: either one per frame (fds stay with their frame) or random splits over the stream
  const writes: Write[] = [];
  if (r.chance(0.5)) {
    for (const f of frames) writes.push({ data: f.bytes, fds: f.fds });
  } else {
    const stream = concat(...frames.map((f) => f.bytes));
    let off = 0;
    while (off < stream.length) {
      const len = 1 + r.int(r.chance(0.3) ? 8 : 600);
      writes.push({ data: stream.subarray(off, off + len), fds: r.chance(0.1) ? 1 + r.int(4) : 0 });
      off += len;
    }
  }
  return writes;
}

function frameOf(msgId: number, command: number, payload: Uint8Array, flags: number, size = HEADER_SIZE + payload.length): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(out, 0, { msgId, command, size: size >>> 0, flags, error: flags & FLAG_ERROR ? 22 : 0 });
  out.set(payload, HEADER_SIZE);
  return out;
}

/** Random fds of several kinds (the caller closes its copies after sending). */
export function randomFds(r: Rng, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    switch (r.int(4)) {
      case 0: {
        const fd = native.memfdCreate('fuzz');
        native.ftruncate(fd, r.pick([0, 4096, 65536, 1 << 20]));
        out.push(fd);
        break;
      }
      case 1:
        out.push(native.eventfd(0, false));
        break;
      case 2: {
        const [a, b] = native.socketpair();
        native.close(b);
        out.push(a);
        break;
      }
      default: {
        const fd = native.memfdCreate('fuzz-small');
        native.ftruncate(fd, 100);
        out.push(fd);
      }
    }
  }
  return out;
}

/** Sends a case's writes on a raw socket fd; stops early if the other side goes away. */
export async function sendWrites(r: Rng, fd: number, writes: Write[], wait: () => Promise<void>): Promise<void> {
  for (const w of writes) {
    const fds = w.fds ? randomFds(r, w.fds) : null;
    try {
      let off = 0;
      let spins = 0;
      while (off < w.data.length) {
        let n: number;
        try {
          n = native.sendmsg(fd, [w.data.subarray(off)], off === 0 ? fds : null);
        } catch {
          return; // EPIPE / ECONNRESET: the other side closed on us, as it may
        }
        if (n < 0) {
          if (++spins > 200) return; // the peer stopped reading (it may): give up on this case
          await wait();
          continue;
        }
        off += n;
      }
    } finally {
      if (fds) closeFds(fds);
    }
    if (r.chance(0.3)) await wait();
  }
}
