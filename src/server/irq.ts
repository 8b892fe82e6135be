/**
 * Interrupt state of a device: per index (INTx, MSI, MSI-X, ERR, REQ) the vector count, the
 * client's trigger eventfds, mask/unmask notification eventfds, and mask and pending bits.
 *
 * SET_IRQS semantics (spec "VFIO_USER_DEVICE_SET_IRQS", matching the reference C library):
 * - DATA_EVENTFD + TRIGGER with count fds assigns them; with no fds it de-assigns the range.
 * - DATA_NONE + TRIGGER with start = count = 0 disables the whole index.
 * - DATA_NONE/BOOL + TRIGGER is a loopback: it signals the vectors' eventfds whatever the mask
 *   state, with no automask and no pending bit (as Linux VFIO and libvfio-user do).
 * - DATA_NONE/BOOL + MASK/UNMASK masks or unmasks; unmasking delivers what is pending.
 * - DATA_EVENTFD + MASK/UNMASK registers fds signalled when the vector gets (un)masked.
 * INTx is level-triggered and automasked: each delivery masks it until the client unmasks;
 * a level still high at unmask is delivered again.
 *
 * The fds come from the client and are untrusted. Only eventfds are accepted (as Linux VFIO
 * does): anything else (a pipe, a socket, a file) is refused with EINVAL when handed over.
 * Signalling never waits, whatever the client does to its eventfd (a full counter, O_NONBLOCK
 * cleared): native.eventfdSignal. A full counter is not an error (the eventfd is readable, the
 * client is signalled already); a write that fails otherwise is the client's problem: it is
 * counted (deliveryFailures), logged once per client, and the device goes on.
 */
import { native } from '../native/index.js';
import { VfioUserError, Errno } from '../errors.js';
import { closeFds } from '../transport/connection.js';
import { PciIrq, IrqInfoFlags, SetIrqsFlags } from '../protocol/constants.js';

/** IRQ indexes (vfio-pci's): INTX, MSI, MSIX, ERR, REQ. */
export const IrqIndex = PciIrq;
export const IRQ_INDEX_COUNT = PciIrq.NUM;

const { EVENTFD: INFO_EVENTFD, MASKABLE: INFO_MASKABLE, AUTOMASKED: INFO_AUTOMASKED, NORESIZE: INFO_NORESIZE } = IrqInfoFlags;
const { DATA_NONE, DATA_BOOL, DATA_EVENTFD, ACTION_MASK, ACTION_TRIGGER } = SetIrqsFlags;
const DATA_MASK = SetIrqsFlags.DATA_TYPE_MASK;
const ACTION_MASK_ALL = SetIrqsFlags.ACTION_TYPE_MASK;

class IrqLine {
  readonly count: number;
  readonly triggers: number[];
  readonly maskFds: number[];
  readonly unmaskFds: number[];
  readonly masked: Uint8Array;
  readonly pending: Uint8Array;
  readonly level: Uint8Array;
  constructor(count: number) {
    this.count = count;
    this.triggers = new Array<number>(count).fill(-1);
    this.maskFds = new Array<number>(count).fill(-1);
    this.unmaskFds = new Array<number>(count).fill(-1);
    this.masked = new Uint8Array(count);
    this.pending = new Uint8Array(count);
    this.level = new Uint8Array(count);
  }
}

export interface SetIrqsArgs {
  flags: number;
  index: number;
  start: number;
  count: number;
  /** the bool array for DATA_BOOL */
  data?: Uint8Array;
}

function irqError(message: string, errno: number = Errno.EINVAL): VfioUserError {
  return new VfioUserError('VFU_INVALID_ARGUMENT', message, errno);
}

export class IrqController {
  private readonly lines: IrqLine[];
  /** interrupt writes that failed (the client's eventfd refused it); the device goes on */
  deliveryFailures = 0;
  /** interrupt writes that found the client's eventfd counter full (already signalled) */
  counterFull = 0;
  private failureLogged = false;
  /** where the first delivery failure of a client is reported */
  log: ((level: 'warn', msg: string) => void) | undefined;
  /** the device's own masking (e.g. MSI per-vector mask or the MSI-X table); masked → pending */
  deviceMasked: ((index: number, vector: number) => boolean) | undefined;
  /** called when pending bits change (for a PBA) */
  onPendingChange: ((index: number, vector: number, pending: boolean) => void) | undefined;
  /** called after the client enabled or disabled triggers of an index */
  onTriggersChange: ((index: number) => void) | undefined;

  constructor(counts: readonly number[]) {
    this.lines = [];
    for (let i = 0; i < IRQ_INDEX_COUNT; i++) this.lines.push(new IrqLine(counts[i] ?? 0));
  }

  count(index: number): number {
    return this.lines[index]?.count ?? 0;
  }

  /** GET_IRQ_INFO flags for an index. Every index supports eventfds and masking. */
  infoFlags(index: number): number {
    const line = this.lines[index];
    if (!line || line.count === 0) return 0;
    let f = INFO_EVENTFD | INFO_MASKABLE;
    if (index === IrqIndex.INTX) f |= INFO_AUTOMASKED;
    if (index === IrqIndex.MSI || index === IrqIndex.MSIX) f |= INFO_NORESIZE;
    return f;
  }

  /** Whether the client has an eventfd for this vector. */
  enabled(index: number, vector = 0): boolean {
    return (this.lines[index]?.triggers[vector] ?? -1) >= 0;
  }

  isMasked(index: number, vector = 0): boolean {
    return this.lines[index]?.masked[vector] === 1;
  }

  isPending(index: number, vector = 0): boolean {
    return this.lines[index]?.pending[vector] === 1;
  }

  /**
   * Applies a SET_IRQS request. Takes ownership of fds (closed on error or when replaced).
   * Throws VfioUserError(EINVAL) for requests the index cannot take.
   * @internal
   */
  setIrqs(a: SetIrqsArgs, fds: number[]): void {
    try {
      this.validate(a, fds);
    } catch (e) {
      closeFds(fds);
      throw e;
    }
    const line = this.lines[a.index]!;
    const data = a.flags & DATA_MASK;
    const action = a.flags & ACTION_MASK_ALL;
    const start = a.start;
    const count = a.count;
    const sel = (j: number): boolean => data !== DATA_BOOL || a.data![j] !== 0;

    if (action === ACTION_TRIGGER) {
      if (data === DATA_NONE && count === 0) {
        this.disable(a.index, 0, line.count);
      } else if (data === DATA_EVENTFD) {
        if (fds.length === 0) {
          this.disable(a.index, start, count);
        } else {
          for (let j = 0; j < count; j++) {
            const v = start + j;
            if (line.triggers[v]! >= 0) closeFds([line.triggers[v]!]);
            line.triggers[v] = fds[j]!;
          }
          // interrupts that became pending while nobody listened are not replayed: the
          // device raised them for an earlier client (or none)
        }
        this.onTriggersChange?.(a.index);
      } else {
        // loopback: the eventfd is signalled whatever the masks; nothing gets masked or pending
        for (let j = 0; j < count; j++) {
          const fd = line.triggers[start + j]!;
          if (sel(j) && fd >= 0) this.deliver(fd, a.index, start + j);
        }
      }
      return;
    }
    const fdsArr = action === ACTION_MASK ? line.maskFds : line.unmaskFds;
    if (data === DATA_EVENTFD) {
      for (let j = 0; j < count; j++) {
        const v = start + j;
        if (fdsArr[v]! >= 0) closeFds([fdsArr[v]!]);
        fdsArr[v] = fds.length ? fds[j]! : -1;
      }
      return;
    }
    for (let j = 0; j < count; j++) {
      if (!sel(j)) continue;
      const v = start + j;
      if (action === ACTION_MASK) this.mask(a.index, v);
      else this.unmask(a.index, v);
    }
  }

  private validate(a: SetIrqsArgs, fds: number[]): void {
    const line = this.lines[a.index];
    if (!line || line.count === 0) throw irqError(`IRQ index ${a.index} does not exist`);
    const data = a.flags & DATA_MASK;
    const action = a.flags & ACTION_MASK_ALL;
    if ((a.flags & ~(DATA_MASK | ACTION_MASK_ALL)) !== 0) throw irqError(`unknown SET_IRQS flags 0x${a.flags.toString(16)}`);
    if (popcount(data) !== 1 || popcount(action) !== 1) throw irqError('SET_IRQS needs exactly one DATA and one ACTION flag');
    if (a.count === 0) {
      if (a.start !== 0) throw irqError('SET_IRQS count 0 needs start 0');
      if (action !== ACTION_TRIGGER || data !== DATA_NONE) throw irqError('SET_IRQS count 0 is only valid to disable (DATA_NONE|TRIGGER)');
    }
    if (a.start >= line.count && a.count !== 0) throw irqError(`SET_IRQS start ${a.start} beyond ${line.count} vectors`);
    if (a.start + a.count > line.count) throw irqError(`SET_IRQS range ${a.start}+${a.count} beyond ${line.count} vectors`);
    if (data === DATA_BOOL && (!a.data || a.data.length !== a.count)) throw irqError('SET_IRQS DATA_BOOL needs count bools');
    if (data !== DATA_EVENTFD && fds.length) throw irqError('SET_IRQS carries fds without DATA_EVENTFD');
    if (data === DATA_EVENTFD && fds.length !== 0 && fds.length !== a.count) {
      throw irqError(`SET_IRQS DATA_EVENTFD with ${fds.length} fds for ${a.count} vectors`);
    }
    for (const fd of fds) if (!isEventfd(fd)) throw irqError('SET_IRQS fds must be eventfds');
    if (a.index === IrqIndex.ERR || a.index === IrqIndex.REQ) {
      if (a.count > 1) throw irqError('ERR/REQ have a single vector');
    }
  }

  private disable(index: number, start: number, count: number): void {
    const line = this.lines[index]!;
    for (let v = start; v < start + count; v++) {
      for (const arr of [line.triggers, line.maskFds, line.unmaskFds]) {
        if (arr[v]! >= 0) closeFds([arr[v]!]);
        arr[v] = -1;
      }
      line.masked[v] = 0;
      this.setPending(line, index, v, false);
      line.level[v] = 0;
    }
    this.onTriggersChange?.(index);
  }

  private setPending(line: IrqLine, index: number, v: number, on: boolean): void {
    const val = on ? 1 : 0;
    if (line.pending[v] === val) return;
    line.pending[v] = val;
    this.onPendingChange?.(index, v, on);
  }

  /** Delivers or records one interrupt. */
  private signal(line: IrqLine, index: number, v: number): boolean {
    if (line.masked[v] || this.deviceMasked?.(index, v)) {
      this.setPending(line, index, v, true);
      return false;
    }
    const fd = line.triggers[v]!;
    if (fd < 0) return false;
    this.deliver(fd, index, v);
    if (index === IrqIndex.INTX) this.mask(index, v); // automasked
    return true;
  }

  /** Signals a client eventfd without ever waiting or throwing. */
  private deliver(fd: number, index: number, v: number): void {
    try {
      if (!native.eventfdSignal(fd, 1)) this.counterFull++;
    } catch (e) {
      this.deliveryFailures++;
      if (!this.failureLogged) {
        this.failureLogged = true;
        this.log?.('warn', `interrupt ${index}/${v}: the client's eventfd refused the write (${(e as { code?: string }).code ?? 'error'}: ${(e as Error).message}); counting further failures silently`);
      }
    }
  }

  /**
   * Raises an interrupt from device code: returns true when delivered to the client, false
   * when it was recorded as pending (masked) or nobody listens.
   */
  trigger(index: number, vector = 0): boolean {
    const line = this.lines[index];
    if (!line || vector < 0 || vector >= line.count) {
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `no IRQ vector ${index}/${vector}`, Errno.EINVAL);
    }
    return this.signal(line, index, vector);
  }

  /** Level-triggered interrupts (INTx): raising delivers; a level still high at unmask is delivered again. */
  setLevel(index: number, vector: number, high: boolean): void {
    const line = this.lines[index];
    if (!line || vector < 0 || vector >= line.count) {
      throw new VfioUserError('VFU_INVALID_ARGUMENT', `no IRQ vector ${index}/${vector}`, Errno.EINVAL);
    }
    const was = line.level[vector] === 1;
    line.level[vector] = high ? 1 : 0;
    if (high && !was) this.signal(line, index, vector);
    if (!high) this.setPending(line, index, vector, false);
  }

  mask(index: number, v: number): void {
    const line = this.lines[index]!;
    if (line.masked[v]) return;
    line.masked[v] = 1;
    if (line.maskFds[v]! >= 0) this.deliver(line.maskFds[v]!, index, v);
  }

  unmask(index: number, v: number): void {
    const line = this.lines[index]!;
    if (!line.masked[v]) {
      if (line.level[v] && index === IrqIndex.INTX) this.redeliver(line, index, v);
      return;
    }
    line.masked[v] = 0;
    if (line.unmaskFds[v]! >= 0) this.deliver(line.unmaskFds[v]!, index, v);
    this.redeliver(line, index, v);
  }

  /** Re-evaluates a vector after the device's own mask changed (MSI/MSI-X masks in config space or the table). */
  deviceUnmasked(index: number, v: number): void {
    const line = this.lines[index];
    if (line) this.redeliver(line, index, v);
  }

  private redeliver(line: IrqLine, index: number, v: number): void {
    if (line.pending[v] || line.level[v]) {
      if (line.masked[v] || this.deviceMasked?.(index, v) || line.triggers[v]! < 0) return;
      this.setPending(line, index, v, false);
      this.signal(line, index, v);
    }
  }

  /** Client went away: close every fd it gave, forget masks it set. Pending and level state stay. @internal */
  clientGone(): void {
    for (let i = 0; i < this.lines.length; i++) {
      const line = this.lines[i]!;
      for (const arr of [line.triggers, line.maskFds, line.unmaskFds]) {
        for (let v = 0; v < arr.length; v++) {
          if (arr[v]! >= 0) closeFds([arr[v]!]);
          arr[v] = -1;
        }
      }
      line.masked.fill(0);
    }
    this.failureLogged = false;
  }

  /** Device reset: everything off, masks cleared, nothing pending (fds stay assigned, as in vfio). */
  reset(): void {
    for (let i = 0; i < this.lines.length; i++) {
      const line = this.lines[i]!;
      line.masked.fill(0);
      for (let v = 0; v < line.count; v++) this.setPending(line, i, v, false);
      line.level.fill(0);
    }
  }
}

function isEventfd(fd: number): boolean {
  try {
    return native.isEventfd(fd);
  } catch {
    return false;
  }
}

function popcount(x: number): number {
  let n = 0;
  while (x) {
    n += x & 1;
    x >>>= 1;
  }
  return n;
}
