/**
 * Virtio 1.2 constants for the modern PCI transport and split virtqueues (OASIS virtio 1.2,
 * sections 2, 4.1 and 6; Linux include/uapi/linux/virtio_{config,pci,ring}.h use the same
 * names and values).
 */

/** Device status bits (2.1). */
export const Status = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** Transport feature bits (6). Device-type bits are 0..23. */
export const Feature = {
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  SR_IOV: 37,
  NOTIFICATION_DATA: 38,
  RING_RESET: 40,
} as const;

/** The bit of a feature as a bigint mask. */
export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** PCI vendor and device IDs (4.1.2): modern devices are 0x1040 + the device type. */
export const VIRTIO_PCI_VENDOR = 0x1af4;
export const VIRTIO_PCI_DEVICE_BASE = 0x1040;

/** Virtio structure PCI capability types (4.1.4, cfg_type). */
export const CapType = {
  COMMON: 1,
  NOTIFY: 2,
  ISR: 3,
  DEVICE: 4,
  PCI_CFG: 5,
} as const;

/** struct virtio_pci_cap field offsets (relative to the capability). */
export const Cap = {
  CFG_TYPE: 3,
  BAR: 4,
  ID: 5,
  OFFSET: 8,
  LENGTH: 12,
  /** virtio_pci_notify_cap */
  NOTIFY_OFF_MULTIPLIER: 16,
  /** virtio_pci_cfg_cap */
  PCI_CFG_DATA: 16,
} as const;

/** struct virtio_pci_common_cfg register offsets (4.1.4.3). */
export const Common = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  CONFIG_MSIX_VECTOR: 0x10,
  NUM_QUEUES: 0x12,
  DEVICE_STATUS: 0x14,
  CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_MSIX_VECTOR: 0x1a,
  QUEUE_ENABLE: 0x1c,
  QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC: 0x20,
  QUEUE_DRIVER: 0x28,
  QUEUE_DEVICE: 0x30,
  QUEUE_NOTIF_CONFIG_DATA: 0x38,
  QUEUE_RESET: 0x3a,
  /** bytes of registers (the rest of the structure's area reads as zero) */
  SIZE: 0x3c,
} as const;

/** "no MSI-X vector" for config_msix_vector and queue_msix_vector */
export const NO_VECTOR = 0xffff;

/** ISR status bits (4.1.4.5). */
export const Isr = {
  QUEUE: 1,
  CONFIG: 2,
} as const;

/** Split virtqueue layout (2.7). */
export const Desc = {
  SIZE: 16,
  F_NEXT: 1,
  F_WRITE: 2,
  F_INDIRECT: 4,
} as const;
/** avail ring flags: the driver does not want interrupts */
export const AVAIL_F_NO_INTERRUPT = 1;
/** used ring flags: the device does not want notifications */
export const USED_F_NO_NOTIFY = 1;
/** largest queue a driver may configure (2.7: Queue Size is at most 32768) */
export const MAX_QUEUE_SIZE = 32768;

/** Device types (5). */
export const DeviceType = {
  NET: 1,
  BLOCK: 2,
  CONSOLE: 3,
  ENTROPY: 4,
} as const;
