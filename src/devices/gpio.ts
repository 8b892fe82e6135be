/**
 * A GPIO device register-compatible with the ACCES PCI-IDIO-16 (vendor 0x494f, device 0x0dc8),
 * so Linux's gpio-pci-idio-16 driver binds to it: 16 optically isolated inputs, 16 FET outputs,
 * and a change-of-state interrupt on the inputs.
 *
 * BAR2 (256 bytes of I/O ports, as on the card) — the layout Linux's driver uses (drivers/gpio/gpio-idio-16.c):
 *   0x0  R/W  outputs 0-7 (a read returns what was written)
 *   0x1  R    inputs 0-7            W  any value: clear the pending interrupt
 *   0x2  R    enable the interrupt  W  any value: disable the interrupt
 *   0x3  R    activate input filters  W  deactivate input filters
 *   0x4  R/W  outputs 8-15
 *   0x5  R    inputs 8-15
 *   0x6  R    interrupt status (non-zero while an input change is pending)  W  ignored
 *   0x7  R    0
 * Inputs are set from the host side (setInputs); a change while the interrupt is enabled
 * latches the status and raises INTx (level) until the driver clears it.
 */
import { PciDevice } from '../server/device.js';
import { IrqIndex } from '../server/irq.js';
import { encodeState, decodeState } from '../server/state.js';

export const IDIO16_VENDOR = 0x494f;
export const IDIO16_DEVICE = 0x0dc8;

export interface GpioState {
  outputs: number;
  inputs: number;
  irqEnabled: boolean;
  irqStatus: number;
  filtersActive: boolean;
}

export class GpioDevice extends PciDevice {
  private state: GpioState = { outputs: 0, inputs: 0, irqEnabled: false, irqStatus: 0, filtersActive: false };
  /** called when the guest changes the outputs */
  onOutputs: ((outputs: number) => void) | undefined;
  private readonly reg = new Uint8Array(1);

  constructor() {
    super({
      name: 'gpio (PCI-IDIO-16)',
      vendorId: IDIO16_VENDOR,
      deviceId: IDIO16_DEVICE,
      subsystemVendorId: IDIO16_VENDOR,
      subsystemId: IDIO16_DEVICE,
      classCode: 0xff0000, // unclassified device, as the card reports
      interruptPin: 1,
      irqs: { intx: 1 },
    });
    this.addRegion(2, {
      size: 256,
      bar: { kind: 'io' },
      access: {
        // a 1-byte read (what the driver does) answers from one reused byte: the server copies it at once
        read: (offset, length) => (length === 1 ? this.read1(offset) : this.read(offset, length)),
        write: (offset, data) => this.write(offset, data),
      },
    });
    this.migration = {
      save: () => encodeState('pci-idio-16', 1, { ...this.state }),
      load: (data) => {
        const s = decodeState<GpioState & Record<string, unknown>>(data, 'pci-idio-16', 1, {
          outputs: 'number',
          inputs: 'number',
          irqEnabled: 'boolean',
          irqStatus: 'number',
          filtersActive: 'boolean',
        });
        this.loadState({ outputs: s.outputs & 0xffff, inputs: s.inputs & 0xffff, irqEnabled: s.irqEnabled, irqStatus: s.irqStatus ? 1 : 0, filtersActive: s.filtersActive });
      },
    };
    this.onReset = () => {
      this.state = { outputs: 0, inputs: this.state.inputs, irqEnabled: false, irqStatus: 0, filtersActive: false };
      this.setIrqLevel(false);
    };
  }

  get outputs(): number {
    return this.state.outputs;
  }

  get inputs(): number {
    return this.state.inputs;
  }

  get irqEnabled(): boolean {
    return this.state.irqEnabled;
  }

  /** Sets the 16 input lines (bit i = input i). A change raises the change-of-state interrupt. */
  setInputs(value: number): void {
    const v = value & 0xffff;
    if (v === this.state.inputs) return;
    this.state.inputs = v;
    if (this.state.irqEnabled) {
      this.state.irqStatus = 1;
      this.setIrqLevel(true);
    }
  }

  setInput(line: number, high: boolean): void {
    const bit = 1 << (line & 15);
    this.setInputs(high ? this.state.inputs | bit : this.state.inputs & ~bit);
  }

  /** onOutputs hears about changes only (a driver rewriting the same value is common) */
  private setOutputs(v: number): void {
    if (v === this.state.outputs) return;
    this.state.outputs = v;
    this.onOutputs?.(v);
  }

  private readByte(off: number): number {
    const s = this.state;
    switch (off) {
      case 0: return s.outputs & 0xff;
      case 1: return s.inputs & 0xff;
      case 2:
        s.irqEnabled = true;
        return 0;
      case 3:
        s.filtersActive = true;
        return 0;
      case 4: return (s.outputs >> 8) & 0xff;
      case 5: return (s.inputs >> 8) & 0xff;
      case 6: return s.irqStatus ? 0x3f : 0;
      default: return 0;
    }
  }

  private writeByte(off: number, v: number): void {
    const s = this.state;
    switch (off) {
      case 0:
        this.setOutputs((s.outputs & 0xff00) | v);
        break;
      case 1:
        s.irqStatus = 0;
        this.setIrqLevel(false);
        break;
      case 2:
        s.irqEnabled = false;
        break;
      case 3:
        s.filtersActive = false;
        break;
      case 4:
        this.setOutputs((s.outputs & 0x00ff) | (v << 8));
        break;
      default:
        break;
    }
  }

  private read1(offset: number): Uint8Array {
    this.reg[0] = this.readByte(offset);
    return this.reg;
  }

  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.readByte(offset + i);
    return out;
  }

  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) this.writeByte(offset + i, data[i]!);
  }

  /** Device state for migration. */
  saveState(): GpioState {
    return { ...this.state };
  }

  loadState(s: GpioState): void {
    this.state = { ...s };
    this.setIrqLevel(s.irqEnabled && s.irqStatus !== 0);
  }
}

export { IrqIndex };
