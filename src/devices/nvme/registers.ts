/**
 * The NVMe controller registers at the start of BAR0 (CAP, VS, INTMS/INTMC, CC, CSTS, AQA,
 * ASQ, ACQ): their values, dword reads, and the writes without side effects. Writes with side
 * effects (CC enables, resets and shuts down; INTMS/INTMC move the INTx level) are the
 * controller's.
 */
import { Reg, CAP } from './constants.js';

/** maximum queue entries, 0's based: 1024 entries per queue */
export const MQES = 1023;

/** CAP: MQES, CQR, TO = 20 (10 s), DSTRD 0, CSS NVM, MPSMIN 0 (4 KiB), MPSMAX 4 (64 KiB) */
const CAP_VALUE =
  (BigInt(MQES) << CAP.MQES_SHIFT) | CAP.CQR | (20n << CAP.TO_SHIFT) | (0n << CAP.DSTRD_SHIFT) | CAP.CSS_NVM | (0n << CAP.MPSMIN_SHIFT) | (4n << CAP.MPSMAX_SHIFT);

/** VS: NVMe 1.4 */
const VERSION = 0x00010400;

export class Registers {
  cc = 0;
  csts = 0;
  aqa = 0;
  asq = 0;
  acq = 0;
  intms = 0;
  /** the memory page size CC.MPS selected at enable */
  pageSize = 4096;

  /** The dword at `off` (dword-aligned; reserved and doorbell space read 0). */
  read32(off: number): number {
    switch (off) {
      case Reg.CAP: return Number(CAP_VALUE & 0xffffffffn);
      case Reg.CAP + 4: return Number(CAP_VALUE >> 32n);
      case Reg.VS: return VERSION;
      case Reg.INTMS:
      case Reg.INTMC: return this.intms;
      case Reg.CC: return this.cc;
      case Reg.CSTS: return this.csts;
      case Reg.AQA: return this.aqa;
      case Reg.ASQ: return this.asq % 2 ** 32;
      case Reg.ASQ + 4: return Math.floor(this.asq / 2 ** 32);
      case Reg.ACQ: return this.acq % 2 ** 32;
      case Reg.ACQ + 4: return Math.floor(this.acq / 2 ** 32);
      default: return 0;
    }
  }

  /** Writes the admin queue registers (AQA, ASQ, ACQ); false for any other offset. */
  writeAdminQueue(off: number, v: number): boolean {
    switch (off) {
      case Reg.AQA:
        this.aqa = v & 0x0fff0fff;
        return true;
      case Reg.ASQ:
        this.asq = Math.floor(this.asq / 2 ** 32) * 2 ** 32 + ((v & ~0xfff) >>> 0);
        return true;
      case Reg.ASQ + 4:
        this.asq = v * 2 ** 32 + (this.asq % 2 ** 32);
        return true;
      case Reg.ACQ:
        this.acq = Math.floor(this.acq / 2 ** 32) * 2 ** 32 + ((v & ~0xfff) >>> 0);
        return true;
      case Reg.ACQ + 4:
        this.acq = v * 2 ** 32 + (this.acq % 2 ** 32);
        return true;
      default:
        return false;
    }
  }

  /** Power-on values (PCI-level reset). */
  reset(): void {
    this.cc = 0;
    this.csts = 0;
    this.aqa = 0;
    this.asq = 0;
    this.acq = 0;
    this.intms = 0;
    this.pageSize = 4096;
  }
}
