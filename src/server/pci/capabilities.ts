/**
 * Images of the capability structures this model supports: initial bytes plus the
 * per-byte writable and RW1C masks, all relative to the capability start. ConfigSpace
 * places them, fills in the ID/next header and links them into the list.
 */
import { ConfigSpaceError } from './errors.js';
import * as R from './registers.js';

export interface CapImage {
  /** capability ID (8-bit standard, 16-bit extended) */
  id: number;
  /** extended capability version (ignored for standard capabilities) */
  version: number;
  /** structure length in bytes (allocation is rounded up to a dword) */
  size: number;
  init: Uint8Array;
  wmask: Uint8Array;
  w1c: Uint8Array;
}

class Image implements CapImage {
  readonly init: Uint8Array;
  readonly wmask: Uint8Array;
  readonly w1c: Uint8Array;
  constructor(
    readonly id: number,
    readonly size: number,
    readonly version = 0,
  ) {
    this.init = new Uint8Array(size);
    this.wmask = new Uint8Array(size);
    this.w1c = new Uint8Array(size);
  }
  set(off: number, len: 1 | 2 | 4, value: number): this {
    put(this.init, off, len, value);
    return this;
  }
  writable(off: number, len: 1 | 2 | 4, mask: number): this {
    put(this.wmask, off, len, mask);
    return this;
  }
  rw1c(off: number, len: 1 | 2 | 4, mask: number): this {
    put(this.w1c, off, len, mask);
    return this;
  }
}

function put(a: Uint8Array, off: number, len: number, value: number): void {
  for (let i = 0; i < len; i++) a[off + i] = (value >>> (8 * i)) & 0xff;
}

function bad(msg: string): never {
  throw new ConfigSpaceError('VFU_CONFIG_BAD_ARG', msg);
}

export interface PowerManagementOptions {
  d1?: boolean;
  d2?: boolean;
  /** PMCSR No_Soft_Reset: D3hot->D0 keeps the device's state */
  noSoftReset?: boolean;
  /** PMC PME_Support, 5 bits (D0, D1, D2, D3hot, D3cold); default 0. Non-zero makes PME_En writable. */
  pmeSupport?: number;
}

export function pmImage(o: PowerManagementOptions = {}): CapImage {
  const pme = o.pmeSupport ?? 0;
  if (!Number.isInteger(pme) || pme < 0 || pme > 0x1f) bad(`pmeSupport ${pme} is not a 5-bit mask`);
  const pmc =
    R.PCI_PM_CAP_VER_1_2 | (o.d1 ? R.PCI_PM_CAP_D1 : 0) | (o.d2 ? R.PCI_PM_CAP_D2 : 0) | (pme << R.PCI_PM_CAP_PME_SHIFT);
  return new Image(R.PCI_CAP_ID_PM, R.PCI_PM_SIZEOF)
    .set(R.PCI_PM_PMC, 2, pmc)
    .set(R.PCI_PM_CTRL, 2, o.noSoftReset ? R.PCI_PM_CTRL_NO_SOFT_RESET : 0)
    .writable(R.PCI_PM_CTRL, 2, R.PCI_PM_CTRL_STATE_MASK | (pme !== 0 ? R.PCI_PM_CTRL_PME_ENABLE : 0))
    .rw1c(R.PCI_PM_CTRL, 2, R.PCI_PM_CTRL_PME_STATUS);
}

export interface MsiOptions {
  vectors: 1 | 2 | 4 | 8 | 16 | 32;
  address64?: boolean;
  perVectorMask?: boolean;
}

/** Register offsets of one MSI capability layout (relative to the capability). */
export interface MsiLayout {
  address64: boolean;
  perVectorMask: boolean;
  vectors: number;
  /** log2(vectors) = Multiple Message Capable */
  mmc: number;
  data: number;
  mask: number; // 0 when absent
  pending: number; // 0 when absent
}

export function msiLayout(o: MsiOptions): MsiLayout {
  const v = o.vectors;
  const mmc = [1, 2, 4, 8, 16, 32].indexOf(v);
  if (mmc < 0) bad(`MSI vectors ${v} is not one of 1, 2, 4, 8, 16, 32`);
  const a64 = !!o.address64;
  const pvm = !!o.perVectorMask;
  return {
    address64: a64,
    perVectorMask: pvm,
    vectors: v,
    mmc,
    data: a64 ? R.PCI_MSI_DATA_64 : R.PCI_MSI_DATA_32,
    mask: pvm ? (a64 ? R.PCI_MSI_MASK_64 : R.PCI_MSI_MASK_32) : 0,
    pending: pvm ? (a64 ? R.PCI_MSI_PENDING_64 : R.PCI_MSI_PENDING_32) : 0,
  };
}

export function msiImage(l: MsiLayout): CapImage {
  const flags = (l.mmc << 1) | (l.address64 ? R.PCI_MSI_FLAGS_64BIT : 0) | (l.perVectorMask ? R.PCI_MSI_FLAGS_MASKBIT : 0);
  const img = new Image(R.PCI_CAP_ID_MSI, R.msiCapSize(l.address64, l.perVectorMask))
    .set(R.PCI_MSI_FLAGS, 2, flags)
    .writable(R.PCI_MSI_FLAGS, 2, R.PCI_MSI_FLAGS_ENABLE | R.PCI_MSI_FLAGS_QSIZE)
    .writable(R.PCI_MSI_ADDRESS_LO, 4, R.PCI_MSI_ADDRESS_LO_MASK)
    .writable(l.data, 2, 0xffff);
  if (l.address64) img.writable(R.PCI_MSI_ADDRESS_HI, 4, 0xffffffff);
  if (l.perVectorMask) img.writable(l.mask, 4, l.vectors === 32 ? 0xffffffff : (1 << l.vectors) - 1);
  return img;
}

export interface MsixOptions {
  /** number of vectors, 1..2048 */
  tableSize: number;
  tableBar: number;
  tableOffset: number;
  pbaBar: number;
  pbaOffset: number;
}

export function msixImage(o: MsixOptions): CapImage {
  return new Image(R.PCI_CAP_ID_MSIX, R.PCI_MSIX_SIZEOF)
    .set(R.PCI_MSIX_FLAGS, 2, o.tableSize - 1)
    .set(R.PCI_MSIX_TABLE, 4, (o.tableOffset | o.tableBar) >>> 0)
    .set(R.PCI_MSIX_PBA, 4, (o.pbaOffset | o.pbaBar) >>> 0)
    .writable(R.PCI_MSIX_FLAGS, 2, R.PCI_MSIX_FLAGS_ENABLE | R.PCI_MSIX_FLAGS_MASKALL);
}

export type PcieDeviceType = 'endpoint' | 'rc-integrated' | 'legacy-endpoint';
/** Link speed as a generation: 1 = 2.5 GT/s, 2 = 5, 3 = 8, 4 = 16, 5 = 32 GT/s. */
export type PcieLinkSpeed = 1 | 2 | 3 | 4 | 5;
export type PcieLinkWidth = 1 | 2 | 4 | 8 | 12 | 16 | 32;

export interface PciExpressOptions {
  /** default 'endpoint' */
  deviceType?: PcieDeviceType;
  /** advertise Function Level Reset in Device Capabilities (default false) */
  flr?: boolean;
  /** Max_Payload_Size Supported in bytes, 128..4096 (default 128) */
  maxPayload?: number;
  /** default 1 (2.5 GT/s) */
  linkSpeed?: PcieLinkSpeed;
  /** default 1 (x1) */
  linkWidth?: PcieLinkWidth;
}

export function pcieImage(o: PciExpressOptions = {}): CapImage {
  const type = o.deviceType ?? 'endpoint';
  const typeCode =
    type === 'endpoint'
      ? R.PCI_EXP_TYPE_ENDPOINT
      : type === 'legacy-endpoint'
        ? R.PCI_EXP_TYPE_LEG_END
        : type === 'rc-integrated'
          ? R.PCI_EXP_TYPE_RC_END
          : bad(`unknown PCIe device type ${String(type)}`);
  const mps = o.maxPayload ?? 128;
  const mpsCode = [128, 256, 512, 1024, 2048, 4096].indexOf(mps);
  if (mpsCode < 0) bad(`maxPayload ${mps} is not a power of two in 128..4096`);
  const speed = o.linkSpeed ?? 1;
  if (![1, 2, 3, 4, 5].includes(speed)) bad(`linkSpeed ${speed} is not a generation 1..5`);
  const width = o.linkWidth ?? 1;
  if (![1, 2, 4, 8, 12, 16, 32].includes(width)) bad(`linkWidth ${width} is not a PCIe link width`);

  const img = new Image(R.PCI_CAP_ID_EXP, R.PCI_CAP_EXP_ENDPOINT_SIZEOF_V2)
    .set(R.PCI_EXP_FLAGS, 2, R.PCI_EXP_FLAGS_VERS_2 | (typeCode << R.PCI_EXP_FLAGS_TYPE_SHIFT))
    .set(R.PCI_EXP_DEVCAP, 4, (mpsCode | R.PCI_EXP_DEVCAP_RBER | (o.flr ? R.PCI_EXP_DEVCAP_FLR : 0)) >>> 0)
    .set(R.PCI_EXP_DEVCTL, 2, R.PCI_EXP_DEVCTL_DEFAULT)
    .writable(R.PCI_EXP_DEVCTL, 2, R.PCI_EXP_DEVCTL_WRITABLE | (o.flr ? R.PCI_EXP_DEVCTL_BCR_FLR : 0))
    .rw1c(R.PCI_EXP_DEVSTA, 2, R.PCI_EXP_DEVSTA_RW1C);
  // Root-complex integrated endpoints have no link: Link registers are reserved (0).
  if (type !== 'rc-integrated') {
    img
      .set(R.PCI_EXP_LNKCAP, 4, speed | (width << R.PCI_EXP_LNKCAP_MLW_SHIFT) | R.PCI_EXP_LNKCAP_ASPM_COMP)
      .writable(R.PCI_EXP_LNKCTL, 2, R.PCI_EXP_LNKCTL_WRITABLE)
      .set(R.PCI_EXP_LNKSTA, 2, speed | (width << R.PCI_EXP_LNKSTA_NLW_SHIFT))
      // Supported Link Speeds Vector: bit n = generation n
      .set(R.PCI_EXP_LNKCAP2, 4, ((1 << (speed + 1)) - 2) & 0xfe)
      .set(R.PCI_EXP_LNKCTL2, 2, speed);
  }
  return img;
}

export function vendorSpecificImage(payload: Uint8Array): CapImage {
  const size = R.PCI_CAP_VNDR_HDR + payload.length;
  if (size > 0xff) bad(`vendor-specific capability payload of ${payload.length} bytes exceeds 252`);
  const img = new Image(R.PCI_CAP_ID_VNDR, size).set(R.PCI_CAP_VNDR_LEN, 1, size);
  img.init.set(payload, R.PCI_CAP_VNDR_HDR);
  return img;
}

export function serialNumberImage(serial: bigint): CapImage {
  if (typeof serial !== 'bigint' || serial < 0n || serial > 0xffffffffffffffffn) bad('serial number must be a 64-bit bigint');
  return new Image(R.PCI_EXT_CAP_ID_DSN, R.PCI_EXT_CAP_DSN_SIZEOF, 1)
    .set(4, 4, Number(serial & 0xffffffffn))
    .set(8, 4, Number(serial >> 32n));
}

export function vendorSpecificExtendedImage(vsecId: number, rev: number, payload: Uint8Array): CapImage {
  if (!Number.isInteger(vsecId) || vsecId < 0 || vsecId > 0xffff) bad(`VSEC ID ${vsecId} is not 16-bit`);
  if (!Number.isInteger(rev) || rev < 0 || rev > 0xf) bad(`VSEC revision ${rev} is not 4-bit`);
  const size = R.PCI_EXT_CAP_VNDR_HDR_SIZEOF + payload.length;
  if (size > 0xfff) bad(`VSEC payload of ${payload.length} bytes exceeds ${0xfff - R.PCI_EXT_CAP_VNDR_HDR_SIZEOF}`);
  const img = new Image(R.PCI_EXT_CAP_ID_VNDR, size, 1).set(
    R.PCI_EXT_CAP_VNDR_HEADER,
    4,
    (vsecId | (rev << 16) | (size << 20)) >>> 0,
  );
  img.init.set(payload, R.PCI_EXT_CAP_VNDR_HDR_SIZEOF);
  return img;
}
