/**
 * Protocol constants: command numbers (spec "Commands") and the flag/index values the
 * messages carry. Values that come from <linux/vfio.h> keep the kernel's names (minus the
 * VFIO_ prefix and the group prefix); test/protocol/layout.test.ts checks them against the
 * real header.
 */

/** VFIO_USER_* command numbers. 14 (the old DIRTY_PAGES) is gone. */
export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;
export type Command = (typeof Command)[keyof typeof Command];

const COMMAND_NAMES = new Map<number, string>(Object.entries(Command).map(([k, v]) => [v, k]));

/** All defined command numbers, ascending. */
export const ALL_COMMANDS: readonly Command[] = Object.freeze(
  (Object.values(Command) as Command[]).slice().sort((a, b) => a - b),
);

export function isCommand(n: number): n is Command {
  return COMMAND_NAMES.has(n);
}

/** "REGION_WRITE" for 10; "UNKNOWN(14)" for numbers that are not commands. */
export function commandName(n: number): string {
  return COMMAND_NAMES.get(n) ?? `UNKNOWN(${n})`;
}

/** VFIO_USER_DMA_MAP flags (VFIO_DMA_MAP_FLAG_*). */
export const DmaMapFlags = {
  READ: 1 << 0,
  WRITE: 1 << 1,
} as const;

/** VFIO_USER_DMA_UNMAP flags (VFIO_DMA_UNMAP_FLAG_*). The spec calls the field unused;
 * libvfio-user and QEMU use ALL (address and size must then be 0). */
export const DmaUnmapFlags = {
  GET_DIRTY_BITMAP: 1 << 0,
  ALL: 1 << 1,
} as const;

/** vfio_device_info.flags (VFIO_DEVICE_FLAGS_*). */
export const DeviceInfoFlags = {
  RESET: 1 << 0,
  PCI: 1 << 1,
  PLATFORM: 1 << 2,
  AMBA: 1 << 3,
  CCW: 1 << 4,
  AP: 1 << 5,
  FSL_MC: 1 << 6,
  CAPS: 1 << 7,
} as const;

/** vfio_region_info.flags (VFIO_REGION_INFO_FLAG_*). */
export const RegionInfoFlags = {
  READ: 1 << 0,
  WRITE: 1 << 1,
  MMAP: 1 << 2,
  CAPS: 1 << 3,
} as const;

/** Region capability ids (VFIO_REGION_INFO_CAP_*). */
export const RegionCapId = {
  SPARSE_MMAP: 1,
  TYPE: 2,
} as const;

/** Fixed vfio-pci region indexes (VFIO_PCI_*_REGION_INDEX); NUM = VFIO_PCI_NUM_REGIONS. */
export const PciRegion = {
  BAR0: 0,
  BAR1: 1,
  BAR2: 2,
  BAR3: 3,
  BAR4: 4,
  BAR5: 5,
  ROM: 6,
  CONFIG: 7,
  VGA: 8,
  NUM: 9,
} as const;

/** vfio-pci IRQ indexes (VFIO_PCI_*_IRQ_INDEX); NUM = VFIO_PCI_NUM_IRQS. */
export const PciIrq = {
  INTX: 0,
  MSI: 1,
  MSIX: 2,
  ERR: 3,
  REQ: 4,
  NUM: 5,
} as const;

/** vfio_irq_info.flags (VFIO_IRQ_INFO_*). */
export const IrqInfoFlags = {
  EVENTFD: 1 << 0,
  MASKABLE: 1 << 1,
  AUTOMASKED: 1 << 2,
  NORESIZE: 1 << 3,
} as const;

/** vfio_irq_set.flags (VFIO_IRQ_SET_*): exactly one DATA_* and one ACTION_* bit. */
export const SetIrqsFlags = {
  DATA_NONE: 1 << 0,
  DATA_BOOL: 1 << 1,
  DATA_EVENTFD: 1 << 2,
  ACTION_MASK: 1 << 3,
  ACTION_UNMASK: 1 << 4,
  ACTION_TRIGGER: 1 << 5,
  DATA_TYPE_MASK: (1 << 0) | (1 << 1) | (1 << 2),
  ACTION_TYPE_MASK: (1 << 3) | (1 << 4) | (1 << 5),
} as const;

/** Sub-region types in a GET_REGION_IO_FDS reply (VFIO_USER_IO_FD_TYPE_*).
 * IOEVENTFD_SHADOW is libvfio-user's extension (48-byte entries only). */
export const IoFdType = {
  IOEVENTFD: 0,
  IOREGIONFD: 1,
  IOEVENTFD_SHADOW: 2,
} as const;

/** Flags of an ioeventfd sub-region (KVM_IOEVENTFD_FLAG_*, <linux/kvm.h>). */
export const IoEventFdFlags = {
  DATAMATCH: 1 << 0,
  PIO: 1 << 1,
  VIRTIO_CCW_NOTIFY: 1 << 3,
} as const;

/** Flags of an ioregionfd sub-region (KVM_IOREGION_*, from the ioregionfd proposal). */
export const IoRegionFdFlags = {
  PIO: 1 << 0,
  POSTED_WRITES: 1 << 1,
} as const;

/** vfio_device_feature.flags (VFIO_DEVICE_FEATURE_*): feature index in the low 16 bits. */
export const DeviceFeatureFlags = {
  MASK: 0xffff,
  GET: 1 << 16,
  SET: 1 << 17,
  PROBE: 1 << 18,
} as const;

/** Feature indexes usable with VFIO_USER_DEVICE_FEATURE (VFIO_DEVICE_FEATURE_*). */
export const DeviceFeature = {
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
} as const;

/** vfio_device_feature_migration.flags (VFIO_MIGRATION_*). */
export const MigrationFlags = {
  STOP_COPY: 1 << 0,
  P2P: 1 << 1,
  PRE_COPY: 1 << 2,
} as const;

/** enum vfio_device_mig_state (VFIO_DEVICE_STATE_*). */
export const DeviceState = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
} as const;

/** Per-entry data limit of REGION_WRITE_MULTI (the entry's data field is 8 bytes). */
export const WRITE_MULTI_MAX_DATA = 8;
