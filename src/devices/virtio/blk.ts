/**
 * virtio-blk (virtio 1.2, 5.2) on the virtio PCI framework, over a raw image file (or memory).
 *
 * Requests: IN (read), OUT (write), FLUSH (fdatasync: durable), GET_ID (20-byte serial),
 * DISCARD and WRITE_ZEROES (both leave zeroes), on `queues` request queues (MQ). Read-only
 * devices offer VIRTIO_BLK_F_RO and fail OUT with VIRTIO_BLK_S_IOERR without touching the
 * image; DISCARD and WRITE_ZEROES are then not offered, so they are UNSUPP like any request
 * type the device does not know. A request beyond the capacity, or whose data the device
 * cannot reach (outside the client's maps), fails with IOERR. A request without its 16-byte
 * header or its status byte is a broken driver: NEEDS_RESET.
 *
 * Without VIRTIO_BLK_F_FLUSH negotiated the cache is write-through (every write is followed
 * by fdatasync); with it, FLUSH makes earlier writes durable.
 */
import { createHash } from 'node:crypto';
import { DmaError } from '../../server/dma.js';
import { VfioUserError, Errno } from '../../errors.js';
import { FileBackend, MemoryBackend, type Backend } from '../backend.js';
import { VirtioPciDevice } from './device.js';
import { VirtqError, type Virtqueue, type VirtioRequest } from './virtqueue.js';
import { DeviceType, bit } from './constants.js';

/** Feature bits (5.2.3). */
export const BlkFeature = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Request types (5.2.6). */
export const BlkType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const;

/** Status byte values. */
export const BlkStatus = {
  OK: 0,
  IOERR: 1,
  UNSUPP: 2,
} as const;

/** struct virtio_blk_config offsets. */
export const BlkConfig = {
  CAPACITY: 0,
  SIZE_MAX: 8,
  SEG_MAX: 12,
  BLK_SIZE: 20,
  NUM_QUEUES: 34,
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56,
  SIZE: 60,
} as const;

export const SECTOR = 512;
export const ID_BYTES = 20;
const HEADER = 16;
/** segments in one DISCARD / WRITE_ZEROES request, sectors in one segment */
const MAX_RANGES = 256;
const MAX_RANGE_SECTORS = 0x400000; // 2 GiB
/** DISCARD / WRITE_ZEROES flags: only "unmap" is defined */
const FLAG_UNMAP = 1;

export interface VirtioBlkOptions {
  /** raw image file; created with `size` bytes when missing */
  image?: string | undefined;
  /** bytes (required for memory disks and new images) */
  size?: number | undefined;
  readOnly?: boolean | undefined;
  /** request queues (default 1) */
  queues?: number | undefined;
  /** largest queue size (default 256) */
  queueSize?: number | undefined;
  /** the GET_ID string (default: derived from the image path) */
  serial?: string | undefined;
  /** notifications trapped (default) or by a polled mmap-able page (see VirtioDeviceOptions) */
  notify?: 'trap' | 'mmap' | undefined;
  pollUs?: number | undefined;
  log?: ((msg: string) => void) | undefined;
}

export class VirtioBlkDevice extends VirtioPciDevice {
  readonly backend: Backend;
  readonly readOnly: boolean;
  readonly serial: string;
  /** sectors */
  readonly capacity: number;
  readonly stats = { reads: 0, writes: 0, flushes: 0, errors: 0 };

  constructor(o: VirtioBlkOptions) {
    const readOnly = o.readOnly ?? false;
    const queues = o.queues ?? 1;
    const queueSize = o.queueSize ?? 256;
    const features =
      bit(BlkFeature.SEG_MAX) | bit(BlkFeature.BLK_SIZE) | bit(BlkFeature.FLUSH) | bit(BlkFeature.MQ) |
      (readOnly ? bit(BlkFeature.RO) : bit(BlkFeature.DISCARD) | bit(BlkFeature.WRITE_ZEROES));
    super({ name: 'virtio-blk', deviceType: DeviceType.BLOCK, classCode: 0x010000, queues, queueSize, features, configSize: BlkConfig.SIZE, notify: o.notify, pollUs: o.pollUs, log: o.log });
    let backend: Backend;
    if (o.image) backend = new FileBackend(o.image, readOnly ? undefined : o.size, { readOnly });
    else {
      if (!o.size) throw new Error('a memory disk needs a size');
      backend = new MemoryBackend(o.size);
    }
    this.backend = backend;
    this.readOnly = readOnly;
    this.capacity = Math.floor(backend.size / SECTOR);
    this.serial = (o.serial ?? serialFrom(o.image ?? 'memory')).slice(0, ID_BYTES);
    const dv = new DataView(this.deviceConfig.buffer);
    dv.setBigUint64(BlkConfig.CAPACITY, BigInt(this.capacity), true);
    dv.setUint32(BlkConfig.SEG_MAX, queueSize - 2, true); // the header and status take two descriptors
    dv.setUint32(BlkConfig.BLK_SIZE, SECTOR, true);
    dv.setUint16(BlkConfig.NUM_QUEUES, queues, true);
    dv.setUint32(BlkConfig.MAX_DISCARD_SECTORS, MAX_RANGE_SECTORS, true);
    dv.setUint32(BlkConfig.MAX_DISCARD_SEG, MAX_RANGES, true);
    dv.setUint32(BlkConfig.DISCARD_SECTOR_ALIGNMENT, 1, true);
    dv.setUint32(BlkConfig.MAX_WRITE_ZEROES_SECTORS, MAX_RANGE_SECTORS, true);
    dv.setUint32(BlkConfig.MAX_WRITE_ZEROES_SEG, MAX_RANGES, true);
    this.deviceConfig[BlkConfig.WRITE_ZEROES_MAY_UNMAP] = 1;
  }

  describe(): string {
    return `${this.backend.description}, ${this.capacity} sectors${this.readOnly ? ', read-only' : ''}, ${this.queues.length} queue(s)`;
  }

  override destroy(): void {
    this.backend.close();
    super.destroy();
  }

  protected override async handleRequest(_q: Virtqueue, req: VirtioRequest): Promise<number> {
    if (req.readLen < HEADER || req.writeLen < 1) throw new VirtqError(`virtio-blk request ${req.head} without header or status byte`);
    const status = req.writeLen - 1;
    let result: { status: number; written: number };
    try {
      result = await this.execute(req, status);
    } catch (e) {
      if (!(e instanceof DmaError)) throw e;
      result = { status: BlkStatus.IOERR, written: 0 };
    }
    if (result.status !== BlkStatus.OK) this.stats.errors++;
    try {
      await req.write(status, Uint8Array.of(result.status));
    } catch (e) {
      throw new VirtqError(`virtio-blk request ${req.head}: cannot write the status byte: ${(e as Error).message}`);
    }
    return result.written + 1;
  }

  private async execute(req: VirtioRequest, dataLen: number): Promise<{ status: number; written: number }> {
    const h = await req.read(0, HEADER);
    const dv = new DataView(h.buffer, h.byteOffset, HEADER);
    const type = dv.getUint32(0, true);
    const sector = dv.getUint32(8, true) + dv.getUint32(12, true) * 2 ** 32;
    const fail = (status: number): { status: number; written: number } => ({ status, written: 0 });
    switch (type) {
      case BlkType.IN: {
        if (dataLen % SECTOR || !this.inRange(sector, dataLen / SECTOR)) return fail(BlkStatus.IOERR);
        const pos = sector * SECTOR;
        const views = req.views(true, 0, dataLen);
        if (views) this.backend.readv(views, pos);
        else {
          const buf = new Uint8Array(dataLen);
          this.backend.readv([buf], pos);
          await req.write(0, buf);
        }
        this.stats.reads++;
        return { status: BlkStatus.OK, written: dataLen };
      }
      case BlkType.OUT: {
        const len = req.readLen - HEADER;
        if (this.readOnly) return fail(BlkStatus.IOERR);
        if (len % SECTOR || !this.inRange(sector, len / SECTOR)) return fail(BlkStatus.IOERR);
        const views = req.views(false, HEADER, len);
        this.backend.writev(views ?? [await req.read(HEADER, len)], sector * SECTOR);
        if (!this.has(BlkFeature.FLUSH)) this.backend.flush();
        this.stats.writes++;
        return { status: BlkStatus.OK, written: 0 };
      }
      case BlkType.FLUSH:
        if (!this.readOnly) this.backend.flush();
        this.stats.flushes++;
        return { status: BlkStatus.OK, written: 0 };
      case BlkType.GET_ID: {
        const id = new Uint8Array(ID_BYTES);
        id.set(new TextEncoder().encode(this.serial).subarray(0, ID_BYTES));
        const n = Math.min(ID_BYTES, dataLen);
        await req.write(0, id.subarray(0, n));
        return { status: BlkStatus.OK, written: n };
      }
      case BlkType.DISCARD:
      case BlkType.WRITE_ZEROES: {
        const feature = type === BlkType.DISCARD ? BlkFeature.DISCARD : BlkFeature.WRITE_ZEROES;
        if (!this.has(feature)) return fail(BlkStatus.UNSUPP);
        if (this.readOnly) return fail(BlkStatus.IOERR);
        const len = req.readLen - HEADER;
        if (len === 0 || len % 16 || len / 16 > MAX_RANGES) return fail(BlkStatus.IOERR);
        const data = await req.read(HEADER, len);
        const rv = new DataView(data.buffer, data.byteOffset, len);
        const ranges: [number, number][] = [];
        for (let o = 0; o < len; o += 16) {
          const s = rv.getUint32(o, true) + rv.getUint32(o + 4, true) * 2 ** 32;
          const n = rv.getUint32(o + 8, true);
          const flags = rv.getUint32(o + 12, true);
          // unknown flags, and "unmap" on a discard, are unsupported (5.2.6.2)
          if (flags & ~FLAG_UNMAP || (type === BlkType.DISCARD && flags)) return fail(BlkStatus.UNSUPP);
          if (n > MAX_RANGE_SECTORS || !this.inRange(s, n)) return fail(BlkStatus.IOERR);
          ranges.push([s * SECTOR, n * SECTOR]);
        }
        // discarded sectors read back as zeroes, like written zeroes
        for (const [pos, n] of ranges) if (n) this.backend.zero(pos, n);
        if (!this.has(BlkFeature.FLUSH)) this.backend.flush();
        return { status: BlkStatus.OK, written: 0 };
      }
      default:
        return fail(BlkStatus.UNSUPP);
    }
  }

  private inRange(sector: number, n: number): boolean {
    return Number.isSafeInteger(sector) && sector + n <= this.capacity;
  }

  protected override saveDevice(): Record<string, unknown> {
    return { capacity: this.capacity, serial: this.serial, readOnly: this.readOnly };
  }

  protected override loadDevice(s: Record<string, unknown>): void {
    if (s.capacity !== this.capacity || s.serial !== this.serial || s.readOnly !== this.readOnly) {
      throw new VfioUserError('VFU_BAD_STATE', `virtio-blk state: the destination disk differs (capacity ${String(s.capacity)}, serial ${String(s.serial)})`, Errno.EINVAL);
    }
  }
}

function serialFrom(identity: string): string {
  return `VB${createHash('sha256').update(identity).digest('hex').slice(0, 16).toUpperCase()}`;
}
