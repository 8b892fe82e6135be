/**
 * Migration v2 (spec "VFIO_USER_DEVICE_FEATURE_MIG_DEVICE_STATE"): the device state machine,
 * and the migration data stream read with MIG_DATA_READ and written with MIG_DATA_WRITE.
 *
 * Stream format (ours; self-delimiting so pre-copy and stop-copy data concatenate):
 *   record := u8 type, u32 length (LE), bytes[length]
 *   type 1 PRECOPY  a pre-copy chunk from the device
 *   type 2 CONFIG   the config space image (ConfigSpace.save())
 *   type 3 DEVICE   the device's final state
 *   type 0xff END   u32 CRC-32 of every byte before this record (length 4)
 * The first record of a stream is preceded by the 8-byte magic "VFUMIG01".
 * The destination applies nothing until RESUMING -> STOP, and then only a complete stream
 * whose CRC matches: bad data fails the transition and leaves the device in ERROR, with its
 * previous state untouched until a reset.
 */
import { VfioUserError, Errno } from '../errors.js';
import { DeviceState, MigrationFlags, Command } from '../protocol/constants.js';
import type { PciDevice, MigrationHooks } from './device.js';

export type { MigrationHooks };

/** Device states of the migration FSM (enum vfio_device_mig_state). */
export const MigState = DeviceState;
export type MigStateValue = (typeof MigState)[keyof typeof MigState];

const STATE_NAMES = ['ERROR', 'STOP', 'RUNNING', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P'];
export function migStateName(s: number): string {
  return STATE_NAMES[s] ?? `state ${s}`;
}

/** default bound on the migration data a destination buffers */
export const DEFAULT_MAX_STATE_BYTES = 64 * 1024 * 1024;
/** framing and the config space image, on top of the device's own bytes */
const STREAM_OVERHEAD = 65536;

const MAGIC = new TextEncoder().encode('VFUMIG01');
const REC_PRECOPY = 1;
const REC_CONFIG = 2;
const REC_DEVICE = 3;
const REC_END = 0xff;

// direct arcs of the spec (P2P states unsupported)
const ARCS: Record<number, number[]> = {
  [MigState.RUNNING]: [MigState.STOP, MigState.PRE_COPY],
  [MigState.STOP]: [MigState.RUNNING, MigState.STOP_COPY, MigState.RESUMING],
  [MigState.STOP_COPY]: [MigState.STOP],
  [MigState.RESUMING]: [MigState.STOP],
  [MigState.PRE_COPY]: [MigState.RUNNING, MigState.STOP_COPY],
};
const SAVING = new Set<number>([MigState.PRE_COPY, MigState.STOP_COPY]);

/** Shortest path of direct arcs from `from` to `to`, with no saving state in its interior. */
export function migrationPath(from: number, to: number): number[] | undefined {
  if (from === to) return [];
  if (!(from in ARCS) || !(to in ARCS)) return undefined;
  if (from === MigState.STOP_COPY && to === MigState.PRE_COPY) return undefined;
  const prev = new Map<number, number>([[from, -1]]);
  const queue = [from];
  while (queue.length) {
    const s = queue.shift()!;
    for (const n of ARCS[s]!) {
      if (prev.has(n)) continue;
      prev.set(n, s);
      if (n === to) {
        const path = [n];
        for (let p = s; p !== from; p = prev.get(p)!) path.unshift(p);
        return path;
      }
      if (!SAVING.has(n)) queue.push(n); // saving states may only end a path
    }
  }
  return undefined;
}

export const crc32 = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[i] = c >>> 0;
  }
  return (data: Uint8Array, seed = 0): number => {
    let c = ~seed >>> 0;
    for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
    return ~c >>> 0;
  };
})();

function record(type: number, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + data.length);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, data.length, true);
  out.set(data, 5);
  return out;
}

function migError(message: string, errno: number = Errno.EINVAL): VfioUserError {
  return new VfioUserError('VFU_BAD_STATE', message, errno);
}

export class Migration {
  private readonly device: PciDevice;
  private readonly hooks: MigrationHooks;
  state: number = MigState.RUNNING;
  /** STOP is waiting for the device to finish its requests in flight */
  stopping = false;
  /** saving: bytes produced but not yet read */
  private out: Uint8Array[] = [];
  private outStarted = false;
  private crc = 0;
  private finalQueued = false;
  /** resuming: bytes received */
  private in: Uint8Array[] = [];
  private inBytes = 0;
  readonly maxResumeBytes: number;

  constructor(device: PciDevice, opts: { maxResumeBytes?: number } = {}) {
    this.device = device;
    this.hooks = device.migration!;
    this.maxResumeBytes = opts.maxResumeBytes ?? (this.hooks.maxStateBytes ?? DEFAULT_MAX_STATE_BYTES) + STREAM_OVERHEAD;
  }

  get flags(): bigint {
    return BigInt(MigrationFlags.STOP_COPY | MigrationFlags.PRE_COPY);
  }

  get stateName(): string {
    return migStateName(this.state);
  }

  /**
   * Commands the current state allows (the reference library's rule: STOP and STOP_COPY are
   * quiet). One difference: in STOP a client may also ask what the device is and give it
   * memory and interrupts (DMA_MAP/UNMAP, SET_IRQS and the GET_* queries). A stopped device
   * does no DMA and raises nothing, and its state outlives its client (spec, "Client
   * Disconnection"): the next client must re-establish its maps and interrupts before it sets
   * RUNNING, or the device would resume without them. libvfio-user refuses them, which leaves
   * a stopped device's next client only DEVICE_RESET or RUNNING without memory.
   */
  allows(cmd: number): boolean {
    if (this.state !== MigState.STOP && this.state !== MigState.STOP_COPY) return true;
    switch (cmd) {
      case Command.REGION_READ:
      case Command.DEVICE_FEATURE:
      case Command.MIG_DATA_READ:
      case Command.DEVICE_RESET: // the way out of anything
      case Command.VERSION:
        return true;
      case Command.REGION_WRITE:
      case Command.REGION_WRITE_MULTI:
      case Command.DMA_MAP:
      case Command.DMA_UNMAP:
      case Command.DEVICE_SET_IRQS:
      case Command.DEVICE_GET_INFO:
      case Command.DEVICE_GET_REGION_INFO:
      case Command.DEVICE_GET_IRQ_INFO:
      case Command.DEVICE_GET_REGION_IO_FDS:
        return this.state === MigState.STOP;
      default:
        return false;
    }
  }

  async setState(target: number): Promise<void> {
    if (this.state === MigState.ERROR) throw migError('device is in ERROR: reset it first');
    if (target === MigState.ERROR) throw migError('ERROR cannot be requested');
    const path = migrationPath(this.state, target);
    if (!path) throw migError(`no transition from ${migStateName(this.state)} to ${migStateName(target)}`);
    for (const next of path) await this.arc(next);
  }

  private async arc(to: number): Promise<void> {
    const from = this.state;
    try {
      if (from === MigState.RESUMING && to === MigState.STOP) await this.finishResume();
      if (to === MigState.PRE_COPY || (to === MigState.STOP_COPY && from === MigState.STOP)) this.beginSave();
      if (to === MigState.STOP_COPY) await this.queueFinal();
      if (from === MigState.STOP_COPY || (from === MigState.PRE_COPY && to === MigState.RUNNING)) this.endSave();
      if (to === MigState.RESUMING) {
        this.in = [];
        this.inBytes = 0;
      }
    } catch (e) {
      this.state = MigState.ERROR;
      this.in = [];
      this.inBytes = 0;
      this.endSave();
      throw e instanceof VfioUserError ? e : migError(`migration arc failed: ${(e as Error).message}`, Errno.EIO);
    }
    this.state = to;
    this.hooks.onStateChange?.(from, to);
    if (to === MigState.STOP && (from === MigState.RUNNING || from === MigState.PRE_COPY) && this.hooks.quiesce) {
      this.stopping = true;
      try {
        await this.hooks.quiesce();
      } finally {
        this.stopping = false;
      }
    }
  }

  private beginSave(): void {
    this.out = [];
    this.outStarted = false;
    this.crc = 0;
    this.finalQueued = false;
  }

  private endSave(): void {
    this.out = [];
    this.finalQueued = false;
  }

  private push(chunk: Uint8Array): void {
    if (!this.outStarted) {
      this.outStarted = true;
      this.out.push(MAGIC);
      this.crc = crc32(MAGIC, this.crc);
    }
    this.out.push(chunk);
    this.crc = crc32(chunk, this.crc);
  }

  private async queueFinal(): Promise<void> {
    this.push(record(REC_CONFIG, this.device.config.save()));
    this.push(record(REC_DEVICE, await this.hooks.save()));
    const end = new Uint8Array(4);
    new DataView(end.buffer).setUint32(0, this.crc, true);
    const rec = record(REC_END, end);
    this.out.push(rec); // not part of the CRC
    this.finalQueued = true;
  }

  /** MIG_DATA_READ: up to size bytes; fewer (possibly none) means no more data for now. */
  async read(size: number): Promise<Uint8Array> {
    if (this.state !== MigState.PRE_COPY && this.state !== MigState.STOP_COPY) {
      throw migError(`MIG_DATA_READ in state ${this.stateName}`);
    }
    const parts: Uint8Array[] = [];
    let n = 0;
    while (n < size) {
      if (this.out.length === 0) {
        // pre-copy: ask the device for more; what does not fit stays queued for the next read,
        // so a short read really means "nothing more for now"
        if (this.state !== MigState.PRE_COPY || !this.hooks.precopyRead) break;
        const chunk = this.hooks.precopyRead(Math.max(size, 65536));
        if (!chunk.length) break;
        this.push(record(REC_PRECOPY, chunk));
      }
      const head = this.out[0]!;
      const take = Math.min(head.length, size - n);
      parts.push(head.subarray(0, take));
      n += take;
      if (take === head.length) this.out.shift();
      else this.out[0] = head.subarray(take);
    }
    return concatBytes(parts);
  }

  /** Bytes the source has ready to read now (pre-copy estimate included). */
  pendingBytes(): number {
    let n = 0;
    for (const x of this.out) n += x.length;
    if (this.state === MigState.PRE_COPY) n += this.hooks.precopyPending?.() ?? 0;
    return n;
  }

  /** MIG_DATA_WRITE: appends to the resume stream. */
  async write(data: Uint8Array): Promise<void> {
    if (this.state !== MigState.RESUMING) throw migError(`MIG_DATA_WRITE in state ${this.stateName}`);
    if (this.inBytes + data.length > this.maxResumeBytes) {
      this.refuseStream();
      throw migError(`migration data exceeds the ${this.maxResumeBytes} bytes this device takes: stream refused`, Errno.ENOSPC);
    }
    if (this.inBytes < MAGIC.length) {
      // refuse a stream that is not ours at its first bytes, not after buffering it all
      const head = this.inBytes === 0 ? data : concatBytes([...this.in, data]);
      const n = Math.min(head.length, MAGIC.length);
      for (let i = 0; i < n; i++) {
        if (head[i] !== MAGIC[i]) {
          this.refuseStream();
          throw migError('migration data: bad magic: stream refused');
        }
      }
    }
    this.in.push(data.slice());
    this.inBytes += data.length;
  }

  /** A refused stream: its buffered bytes are freed at once and the device goes to ERROR. */
  private refuseStream(): void {
    this.in = [];
    this.inBytes = 0;
    const from = this.state;
    this.state = MigState.ERROR;
    this.hooks.onStateChange?.(from, MigState.ERROR);
  }

  /** bytes buffered for resuming (for tests and stats) */
  get resumeBytes(): number {
    return this.inBytes;
  }

  private async finishResume(): Promise<void> {
    const all = concatBytes(this.in);
    this.in = [];
    this.inBytes = 0;
    const { config, device, precopy } = parseStream(all);
    // validate the config image before touching anything: load() throws on mismatch
    const before = this.device.config.save();
    this.device.config.load(config);
    try {
      await this.hooks.load(device, precopy);
    } catch (e) {
      this.device.config.load(before);
      throw e;
    }
  }

  /** The client went away mid-migration: drop any half-received or half-sent stream. */
  clientGone(): void {
    if (this.state === MigState.RESUMING || this.state === MigState.STOP_COPY || this.state === MigState.PRE_COPY) {
      this.in = [];
      this.inBytes = 0;
      this.endSave();
      const from = this.state;
      // a destination that never got its data stays stopped; a source resumes running
      this.state = from === MigState.RESUMING ? MigState.STOP : MigState.RUNNING;
      this.hooks.onStateChange?.(from, this.state);
    }
  }

  /** DEVICE_RESET: back to RUNNING, whatever the state. */
  reset(): void {
    const from = this.state;
    this.in = [];
    this.inBytes = 0;
    this.endSave();
    this.state = MigState.RUNNING;
    if (from !== MigState.RUNNING) this.hooks.onStateChange?.(from, MigState.RUNNING);
  }

  get finalReady(): boolean {
    return this.finalQueued;
  }
}

function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const x of parts) n += x.length;
  const all = new Uint8Array(n);
  let p = 0;
  for (const x of parts) {
    all.set(x, p);
    p += x.length;
  }
  return all;
}

/** Parses and verifies a complete migration stream. Throws VfioUserError(EINVAL) if it is not one. */
export function parseStream(all: Uint8Array): { config: Uint8Array; device: Uint8Array; precopy: Uint8Array[] } {
  if (all.length < MAGIC.length || MAGIC.some((b, i) => all[i] !== b)) throw migError('migration data: bad magic');
  const dv = new DataView(all.buffer, all.byteOffset, all.byteLength);
  let p = MAGIC.length;
  const precopy: Uint8Array[] = [];
  let config: Uint8Array | undefined;
  let device: Uint8Array | undefined;
  for (;;) {
    if (p + 5 > all.length) throw migError('migration data: truncated');
    const type = all[p]!;
    const len = dv.getUint32(p + 1, true);
    if (p + 5 + len > all.length) throw migError('migration data: truncated record');
    const body = all.subarray(p + 5, p + 5 + len);
    if (type === REC_END) {
      if (len !== 4) throw migError('migration data: bad end record');
      const want = dv.getUint32(p + 5, true);
      if (crc32(all.subarray(0, p)) !== want) throw migError('migration data: checksum mismatch');
      if (p + 9 !== all.length) throw migError('migration data: trailing bytes');
      break;
    }
    if (type === REC_PRECOPY) precopy.push(body);
    else if (type === REC_CONFIG && !config) config = body;
    else if (type === REC_DEVICE && !device) device = body;
    else throw migError(`migration data: unexpected record ${type}`);
    p += 5 + len;
  }
  if (!config || !device) throw migError('migration data: incomplete');
  return { config, device, precopy };
}
