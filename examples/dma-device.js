// @ts-check
/**
 * A device with DMA: a copy engine. The driver puts a source and a destination address in
 * guest memory and a length in BAR0, writes GO, and gets MSI-X vector 0 when the copy is done.
 *
 *   0x00 SRC     u64, IOVA to read from
 *   0x08 DST     u64, IOVA to write to
 *   0x10 LEN     u32, bytes (at most 1 MiB, or --max-len)
 *   0x14 GO      write 1: start the copy (STATUS becomes BUSY)
 *   0x18 STATUS  0 idle/done, 1 busy, else the errno of a failed copy (14 EFAULT: outside the maps, 5 EIO)
 *   0x1c MAPS    read-only: DMA maps the client holds (kept up to date by the dma.onChange hook)
 *
 * The copy goes through dev.dma.read/write: zero-copy when the client shared its memory (a
 * memfd), DMA_READ/DMA_WRITE messages when it did not (QEMU without a memory backend). It
 * runs in the background, not awaited in the register handler, so a client that must answer
 * DMA messages can (see docs/device-guide.md, "DMA").
 *
 * Serve it:   vfio-user serve ./examples/dma-device.js --socket-path=/tmp/dma.sock
 */
import { PciDevice, IrqIndex, VfioUserError, Errno, defineDevice } from 'vfio-user';

export const REG = { SRC: 0x00, DST: 0x08, LEN: 0x10, GO: 0x14, STATUS: 0x18, MAPS: 0x1c };
export const STATUS = { IDLE: 0, BUSY: 1 };
export const MAX_LEN = 1 << 20;

export class DmaDevice extends PciDevice {
  regs = new DataView(new ArrayBuffer(32));
  maps = 0;
  /** the copy in flight (tests and migration may wait for it) @type {Promise<void> | undefined} */
  busy = undefined;
  /** @type {(msg: string) => void} */
  log;

  /** longest copy */
  maxLen = MAX_LEN;

  /** @param {{ log?: (msg: string) => void, maxLen?: number | undefined }} [opts] an undefined maxLen means the default */
  constructor(opts = {}) {
    super({ name: 'dma-example', vendorId: 0x1234, deviceId: 0x11e2, classCode: 0xff0000, irqs: { msix: 1 } });
    this.log = opts.log ?? (() => {});
    this.maxLen = opts.maxLen ?? MAX_LEN;
    this.addRegion(0, {
      size: 4096,
      access: { read: (offset, length) => this.read(offset, length), write: (offset, data) => this.write(offset, data) },
    });
    this.addRegion(2, { size: 8192, bar: { kind: 'mem64' }, access: { read: (_offset, length) => new Uint8Array(length), write: () => {} } });
    this.addMsix({ vectors: 1, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 4096 });
    // hooks: a client attaching and leaving, its memory maps coming and going
    this.onAttach = () => this.log('client attached');
    this.onDetach = () => this.log('client detached');
    this.dma.onChange = (what, iova, size) => {
      this.maps += what === 'map' ? 1 : -1;
      this.log(`${what} 0x${iova.toString(16)} +${size}`);
    };
    this.onReset = () => {
      // the registers go; the maps are the client's and stay
      this.regs = new DataView(new ArrayBuffer(32));
    };
  }

  /**
   * @param {number} offset
   * @param {number} length
   */
  read(offset, length) {
    this.regs.setUint32(REG.MAPS, this.maps, true);
    const out = new Uint8Array(length);
    if (offset < 32) out.set(new Uint8Array(this.regs.buffer, offset, Math.min(length, 32 - offset)));
    return out;
  }

  /**
   * @param {number} offset
   * @param {Uint8Array} data
   */
  write(offset, data) {
    if (offset >= REG.STATUS || offset + data.length > REG.STATUS) return; // STATUS and MAPS are read-only
    if (offset === REG.GO) {
      if (data[0] === 1 && this.regs.getUint32(REG.STATUS, true) !== STATUS.BUSY) this.busy = this.copy();
      return;
    }
    new Uint8Array(this.regs.buffer).set(data, offset);
  }

  async copy() {
    const src = this.regs.getBigUint64(REG.SRC, true);
    const dst = this.regs.getBigUint64(REG.DST, true);
    const len = Math.min(this.regs.getUint32(REG.LEN, true), this.maxLen);
    this.regs.setUint32(REG.STATUS, STATUS.BUSY, true);
    let status = STATUS.IDLE;
    try {
      const bytes = await this.dma.read(src, len);
      await this.dma.write(dst, bytes);
    } catch (e) {
      // DmaError (EFAULT) for memory outside the maps; a client that left mid-copy, or any
      // other failure, is an EIO: never let the background task's rejection go unhandled
      status = (e instanceof VfioUserError && e.errno) || Errno.EIO;
      this.log(`copy failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.regs.setUint32(REG.STATUS, status, true);
    this.trigger(IrqIndex.MSIX, 0); // after the write: the library holds it until DMA messages are answered
  }
}

/**
 * The device factory `vfio-user serve ./examples/dma-device.js` and spawnDevice() call: the
 * device logs through serve's logger (its messages show with -v), and it takes a --max-len
 * option (checked by serve before create runs).
 */
export default defineDevice({
  description: 'example copy engine with DMA and MSI-X',
  options: { 'max-len': { type: 'size', max: MAX_LEN, help: `longest copy (default and most ${MAX_LEN} bytes)` } },
  create: (opts, ctx) => new DmaDevice({ log: (msg) => ctx.log('debug', msg), maxLen: opts['max-len'] }),
});
