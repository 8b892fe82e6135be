/**
 * PCI configuration-space register offsets and bit definitions, in one place.
 *
 * Names follow Linux's include/uapi/linux/pci_regs.h so they can be checked against it.
 * Sources: PCI Local Bus 3.0 (type-0 header), PCI Bus Power Management 1.2, PCI Express
 * Base (capability structure, version 2), MSI/MSI-X as in PCI 3.0 section 6.8.
 */

/* ---- sizes ---- */
export const PCI_CFG_SPACE_SIZE = 256;
export const PCI_CFG_SPACE_EXP_SIZE = 4096;
export const PCI_STD_HEADER_SIZEOF = 0x40;
/** vfio-user region index of config space (spec: VFIO_PCI_CONFIG_REGION_INDEX). */
export const VFU_PCI_DEV_CFG_REGION_IDX = 7;

/* ---- type-0 header ---- */
export const PCI_VENDOR_ID = 0x00; // u16
export const PCI_DEVICE_ID = 0x02; // u16
export const PCI_COMMAND = 0x04; // u16
export const PCI_STATUS = 0x06; // u16
export const PCI_REVISION_ID = 0x08; // u8
export const PCI_CLASS_PROG = 0x09; // u8 prog-if
export const PCI_CLASS_DEVICE = 0x0a; // u8 sub-class, then u8 base class at 0x0b
export const PCI_CACHE_LINE_SIZE = 0x0c; // u8
export const PCI_LATENCY_TIMER = 0x0d; // u8
export const PCI_HEADER_TYPE = 0x0e; // u8
export const PCI_BIST = 0x0f; // u8
export const PCI_BASE_ADDRESS_0 = 0x10; // 6 x u32
export const PCI_CARDBUS_CIS = 0x28; // u32
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c; // u16
export const PCI_SUBSYSTEM_ID = 0x2e; // u16
export const PCI_ROM_ADDRESS = 0x30; // u32
export const PCI_CAPABILITY_LIST = 0x34; // u8
export const PCI_INTERRUPT_LINE = 0x3c; // u8
export const PCI_INTERRUPT_PIN = 0x3d; // u8
export const PCI_MIN_GNT = 0x3e; // u8
export const PCI_MAX_LAT = 0x3f; // u8

export const PCI_HEADER_TYPE_NORMAL = 0x00;
export const PCI_NUM_BARS = 6;

/* command register */
export const PCI_COMMAND_IO = 0x0001;
export const PCI_COMMAND_MEMORY = 0x0002;
export const PCI_COMMAND_MASTER = 0x0004;
export const PCI_COMMAND_SPECIAL = 0x0008; // hardwired 0
export const PCI_COMMAND_INVALIDATE = 0x0010; // hardwired 0
export const PCI_COMMAND_VGA_PALETTE = 0x0020; // hardwired 0
export const PCI_COMMAND_PARITY = 0x0040;
export const PCI_COMMAND_WAIT = 0x0080; // hardwired 0
export const PCI_COMMAND_SERR = 0x0100;
export const PCI_COMMAND_FAST_BACK = 0x0200; // hardwired 0
export const PCI_COMMAND_INTX_DISABLE = 0x0400;
/** Bits of the command register this model implements (all others read 0). */
export const PCI_COMMAND_WRITABLE =
  PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_PARITY | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE;

/* status register */
export const PCI_STATUS_INTERRUPT = 0x0008; // RO, device-driven
export const PCI_STATUS_CAP_LIST = 0x0010; // RO
export const PCI_STATUS_66MHZ = 0x0020;
export const PCI_STATUS_FAST_BACK = 0x0080;
export const PCI_STATUS_PARITY = 0x0100; // RW1C master data parity error
export const PCI_STATUS_DEVSEL_MASK = 0x0600;
export const PCI_STATUS_SIG_TARGET_ABORT = 0x0800; // RW1C
export const PCI_STATUS_REC_TARGET_ABORT = 0x1000; // RW1C
export const PCI_STATUS_REC_MASTER_ABORT = 0x2000; // RW1C
export const PCI_STATUS_SIG_SYSTEM_ERROR = 0x4000; // RW1C
export const PCI_STATUS_DETECTED_PARITY = 0x8000; // RW1C
export const PCI_STATUS_RW1C =
  PCI_STATUS_PARITY |
  PCI_STATUS_SIG_TARGET_ABORT |
  PCI_STATUS_REC_TARGET_ABORT |
  PCI_STATUS_REC_MASTER_ABORT |
  PCI_STATUS_SIG_SYSTEM_ERROR |
  PCI_STATUS_DETECTED_PARITY;

/* base address registers */
export const PCI_BASE_ADDRESS_SPACE_IO = 0x01;
export const PCI_BASE_ADDRESS_MEM_TYPE_32 = 0x00;
export const PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04;
export const PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08;
export const PCI_BASE_ADDRESS_MEM_MASK = 0xfffffff0; // as unsigned
export const PCI_BASE_ADDRESS_IO_MASK = 0xfffffffc;
export const PCI_BAR_MEM_MIN_SIZE = 16;
export const PCI_BAR_IO_MIN_SIZE = 4;
export const PCI_BAR_IO_MAX_SIZE = 256;

/* expansion ROM */
export const PCI_ROM_ADDRESS_ENABLE = 0x01;
export const PCI_ROM_ADDRESS_MASK = 0xfffff800;
export const PCI_ROM_MIN_SIZE = 2048;
export const PCI_ROM_MAX_SIZE = 16 * 1024 * 1024;

/* ---- capability list ---- */
export const PCI_CAP_LIST_ID = 0; // u8
export const PCI_CAP_LIST_NEXT = 1; // u8
export const PCI_CAP_FIRST = 0x40;

export const PCI_CAP_ID_PM = 0x01;
export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;

/* vendor-specific capability */
export const PCI_CAP_VNDR_LEN = 2; // u8, whole capability length incl. the 3-byte header
export const PCI_CAP_VNDR_HDR = 3;

/* ---- power management (PCI PM 1.2) ---- */
export const PCI_PM_PMC = 2; // u16
export const PCI_PM_CTRL = 4; // u16 PMCSR
export const PCI_PM_PPB_EXTENSIONS = 6; // u8 PMCSR_BSE
export const PCI_PM_DATA_REGISTER = 7; // u8
export const PCI_PM_SIZEOF = 8;

export const PCI_PM_CAP_VER_1_2 = 0x0003;
export const PCI_PM_CAP_D1 = 0x0200;
export const PCI_PM_CAP_D2 = 0x0400;
export const PCI_PM_CAP_PME_SHIFT = 11; // 5 bits: PME from D0, D1, D2, D3hot, D3cold
export const PCI_PM_CTRL_STATE_MASK = 0x0003;
export const PCI_PM_CTRL_NO_SOFT_RESET = 0x0008;
export const PCI_PM_CTRL_PME_ENABLE = 0x0100;
export const PCI_PM_CTRL_PME_STATUS = 0x8000; // RW1C

/* ---- MSI ---- */
export const PCI_MSI_FLAGS = 2; // u16 message control
export const PCI_MSI_ADDRESS_LO = 4; // u32
export const PCI_MSI_ADDRESS_HI = 8; // u32, 64-bit only
export const PCI_MSI_DATA_32 = 8; // u16
export const PCI_MSI_DATA_64 = 12; // u16
export const PCI_MSI_MASK_32 = 12; // u32
export const PCI_MSI_MASK_64 = 16; // u32
export const PCI_MSI_PENDING_32 = 16; // u32
export const PCI_MSI_PENDING_64 = 20; // u32

export const PCI_MSI_FLAGS_ENABLE = 0x0001;
export const PCI_MSI_FLAGS_QMASK = 0x000e; // multiple message capable (log2)
export const PCI_MSI_FLAGS_QSIZE = 0x0070; // multiple message enable (log2)
export const PCI_MSI_FLAGS_64BIT = 0x0080;
export const PCI_MSI_FLAGS_MASKBIT = 0x0100;
export const PCI_MSI_ADDRESS_LO_MASK = 0xfffffffc;

/** Size in bytes of the MSI capability for a given layout. */
export function msiCapSize(address64: boolean, perVectorMask: boolean): number {
  if (perVectorMask) return address64 ? 0x18 : 0x14;
  return address64 ? 0x0e : 0x0a;
}

/* ---- MSI-X ---- */
export const PCI_MSIX_FLAGS = 2; // u16
export const PCI_MSIX_TABLE = 4; // u32 offset | BIR
export const PCI_MSIX_PBA = 8; // u32 offset | BIR
export const PCI_MSIX_SIZEOF = 12;
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff;
export const PCI_MSIX_FLAGS_MASKALL = 0x4000;
export const PCI_MSIX_FLAGS_ENABLE = 0x8000;
export const PCI_MSIX_BIR_MASK = 0x7;
export const PCI_MSIX_OFFSET_MASK = 0xfffffff8;
export const PCI_MSIX_MAX_VECTORS = 2048;

/* MSI-X table entry (in a BAR) */
export const PCI_MSIX_ENTRY_SIZE = 16;
export const PCI_MSIX_ENTRY_LOWER_ADDR = 0;
export const PCI_MSIX_ENTRY_UPPER_ADDR = 4;
export const PCI_MSIX_ENTRY_DATA = 8;
export const PCI_MSIX_ENTRY_VECTOR_CTRL = 12;
export const PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1;

/* ---- PCI Express capability (version 2, 0x3c bytes) ---- */
export const PCI_EXP_FLAGS = 0x02; // u16
export const PCI_EXP_DEVCAP = 0x04; // u32
export const PCI_EXP_DEVCTL = 0x08; // u16
export const PCI_EXP_DEVSTA = 0x0a; // u16
export const PCI_EXP_LNKCAP = 0x0c; // u32
export const PCI_EXP_LNKCTL = 0x10; // u16
export const PCI_EXP_LNKSTA = 0x12; // u16
export const PCI_EXP_SLTCAP = 0x14;
export const PCI_EXP_SLTCTL = 0x18;
export const PCI_EXP_SLTSTA = 0x1a;
export const PCI_EXP_RTCTL = 0x1c;
export const PCI_EXP_RTCAP = 0x1e;
export const PCI_EXP_RTSTA = 0x20;
export const PCI_EXP_DEVCAP2 = 0x24; // u32
export const PCI_EXP_DEVCTL2 = 0x28; // u16
export const PCI_EXP_DEVSTA2 = 0x2a;
export const PCI_EXP_LNKCAP2 = 0x2c; // u32
export const PCI_EXP_LNKCTL2 = 0x30; // u16
export const PCI_EXP_LNKSTA2 = 0x32; // u16
export const PCI_EXP_SLTCAP2 = 0x34;
export const PCI_EXP_SLTCTL2 = 0x38;
export const PCI_EXP_SLTSTA2 = 0x3a;
export const PCI_CAP_EXP_ENDPOINT_SIZEOF_V2 = 0x3c;

export const PCI_EXP_FLAGS_VERS_2 = 0x0002;
export const PCI_EXP_FLAGS_TYPE_SHIFT = 4;
export const PCI_EXP_TYPE_ENDPOINT = 0x0;
export const PCI_EXP_TYPE_LEG_END = 0x1;
export const PCI_EXP_TYPE_RC_END = 0x9;

export const PCI_EXP_DEVCAP_PAYLOAD = 0x00000007;
export const PCI_EXP_DEVCAP_RBER = 0x00008000;
export const PCI_EXP_DEVCAP_FLR = 0x10000000;

export const PCI_EXP_DEVCTL_CERE = 0x0001;
export const PCI_EXP_DEVCTL_NFERE = 0x0002;
export const PCI_EXP_DEVCTL_FERE = 0x0004;
export const PCI_EXP_DEVCTL_URRE = 0x0008;
export const PCI_EXP_DEVCTL_RELAX_EN = 0x0010;
export const PCI_EXP_DEVCTL_PAYLOAD = 0x00e0;
export const PCI_EXP_DEVCTL_NOSNOOP_EN = 0x0800;
export const PCI_EXP_DEVCTL_READRQ = 0x7000;
export const PCI_EXP_DEVCTL_READRQ_512B = 0x2000;
export const PCI_EXP_DEVCTL_BCR_FLR = 0x8000;
/** Device-control bits a driver may change (FLR handled separately). */
export const PCI_EXP_DEVCTL_WRITABLE =
  PCI_EXP_DEVCTL_CERE |
  PCI_EXP_DEVCTL_NFERE |
  PCI_EXP_DEVCTL_FERE |
  PCI_EXP_DEVCTL_URRE |
  PCI_EXP_DEVCTL_RELAX_EN |
  PCI_EXP_DEVCTL_PAYLOAD |
  PCI_EXP_DEVCTL_NOSNOOP_EN |
  PCI_EXP_DEVCTL_READRQ;
/** Power-on device control: relaxed ordering + no snoop enabled, MRRS 512 (PCIe base spec defaults). */
export const PCI_EXP_DEVCTL_DEFAULT = PCI_EXP_DEVCTL_RELAX_EN | PCI_EXP_DEVCTL_NOSNOOP_EN | PCI_EXP_DEVCTL_READRQ_512B;

export const PCI_EXP_DEVSTA_CED = 0x0001;
export const PCI_EXP_DEVSTA_NFED = 0x0002;
export const PCI_EXP_DEVSTA_FED = 0x0004;
export const PCI_EXP_DEVSTA_URD = 0x0008;
export const PCI_EXP_DEVSTA_RW1C = PCI_EXP_DEVSTA_CED | PCI_EXP_DEVSTA_NFED | PCI_EXP_DEVSTA_FED | PCI_EXP_DEVSTA_URD;

export const PCI_EXP_LNKCAP_SLS = 0x0000000f;
export const PCI_EXP_LNKCAP_MLW_SHIFT = 4;
export const PCI_EXP_LNKCAP_ASPM_COMP = 0x00400000;

export const PCI_EXP_LNKCTL_ASPMC = 0x0003;
export const PCI_EXP_LNKCTL_RCB = 0x0008;
export const PCI_EXP_LNKCTL_CCC = 0x0040;
export const PCI_EXP_LNKCTL_ES = 0x0080;
export const PCI_EXP_LNKCTL_WRITABLE = PCI_EXP_LNKCTL_ASPMC | PCI_EXP_LNKCTL_RCB | PCI_EXP_LNKCTL_CCC | PCI_EXP_LNKCTL_ES;

export const PCI_EXP_LNKSTA_CLS = 0x000f;
export const PCI_EXP_LNKSTA_NLW_SHIFT = 4;

/* ---- extended capabilities (from 0x100) ---- */
export const PCI_EXT_CAP_FIRST = 0x100;
export const PCI_EXT_CAP_ID_DSN = 0x0003;
export const PCI_EXT_CAP_ID_VNDR = 0x000b;
export const PCI_EXT_CAP_DSN_SIZEOF = 12;
export const PCI_EXT_CAP_VNDR_HEADER = 4; // u32: id[15:0] rev[19:16] len[31:20]
export const PCI_EXT_CAP_VNDR_HDR_SIZEOF = 8;
export const PCI_EXT_CAP_NEXT_SHIFT = 20;
export const PCI_EXT_CAP_VER_SHIFT = 16;
