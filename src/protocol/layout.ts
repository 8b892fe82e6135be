/**
 * Every binary layout of the protocol, defined once. Offsets are relative to the start of
 * the structure (for a message: the first byte after the 16-byte header); `size` is the
 * fixed part (a trailing flexible array starts at `size`). Field names follow the spec and
 * <linux/vfio.h>. The encoders and decoders read offsets from here, and
 * test/protocol/layout.test.ts compares them with the real kernel header.
 */

export interface StructLayout<F extends string = string> {
  readonly size: number;
  readonly fields: Readonly<Record<F, number>>;
}

function struct<F extends string>(size: number, fields: Record<F, number>): StructLayout<F> {
  return Object.freeze({ size, fields: Object.freeze(fields) });
}

/** VFIO_USER_VERSION request and reply; `data` is the optional NUL-terminated JSON. */
export const VERSION = struct(4, { major: 0, minor: 2, data: 4 });

/** VFIO_USER_DMA_MAP request (vfio_iommu_type1_dma_map with vaddr replaced by the fd offset). */
export const DMA_MAP = struct(32, { argsz: 0, flags: 4, offset: 8, address: 16, size: 24 });

/** VFIO_USER_DMA_UNMAP request and reply (vfio_iommu_type1_dma_unmap; address = iova). */
export const DMA_UNMAP = struct(24, { argsz: 0, flags: 4, address: 8, size: 16 });

/**
 * With DMA_UNMAP's GET_DIRTY_BITMAP flag, this follows the unmap struct in the request, and in
 * the reply with `size` bytes of bitmap at `data` (libvfio-user's struct vfio_user_bitmap:
 * the kernel's struct vfio_bitmap without its user pointer).
 */
export const DMA_UNMAP_BITMAP = struct(16, { pgsize: 0, size: 8, data: 16 });

/** VFIO_USER_DEVICE_GET_INFO (vfio_device_info without the kernel's cap_offset). */
export const DEVICE_INFO = struct(16, { argsz: 0, flags: 4, num_regions: 8, num_irqs: 12 });

/** VFIO_USER_DEVICE_GET_REGION_INFO (struct vfio_region_info). */
export const REGION_INFO = struct(32, { argsz: 0, flags: 4, index: 8, cap_offset: 12, size: 16, offset: 24 });

/** struct vfio_info_cap_header; `next` is relative to the start of the region info. */
export const CAP_HEADER = struct(8, { id: 0, version: 2, next: 4 });

/** struct vfio_region_info_cap_sparse_mmap (header included); areas follow at `areas`. */
export const CAP_SPARSE_MMAP = struct(16, { header: 0, nr_areas: 8, reserved: 12, areas: 16 });

/** struct vfio_region_sparse_mmap_area. */
export const SPARSE_MMAP_AREA = struct(16, { offset: 0, size: 8 });

/** struct vfio_region_info_cap_type (header included). */
export const CAP_TYPE = struct(16, { header: 0, type: 8, subtype: 12 });

/** VFIO_USER_DEVICE_GET_REGION_IO_FDS request, and the fixed part of its reply. */
export const REGION_IO_FDS = struct(16, { argsz: 0, flags: 4, index: 8, count: 12, sub_regions: 16 });

/** Spec sub-region entry, ioeventfd flavour (40 bytes). */
export const SUB_REGION_IOEVENTFD = struct(40, {
  offset: 0,
  size: 8,
  fd_index: 16,
  type: 20,
  flags: 24,
  padding: 28,
  datamatch: 32,
});

/** Spec sub-region entry, ioregionfd flavour (40 bytes; also used inside 48-byte strides). */
export const SUB_REGION_IOREGIONFD = struct(40, {
  offset: 0,
  size: 8,
  fd_index: 16,
  type: 20,
  flags: 24,
  padding: 28,
  user_data: 32,
});

/** libvfio-user's ioeventfd entry (vfio_user_sub_region_ioeventfd, 48 bytes). */
export const SUB_REGION_IOEVENTFD_48 = struct(48, {
  offset: 0,
  size: 8,
  fd_index: 16,
  type: 20,
  flags: 24,
  shadow_mem_fd_index: 28,
  shadow_offset: 32,
  datamatch: 40,
});

/** VFIO_USER_DEVICE_GET_IRQ_INFO (struct vfio_irq_info). */
export const IRQ_INFO = struct(16, { argsz: 0, flags: 4, index: 8, count: 12 });

/** VFIO_USER_DEVICE_SET_IRQS request (struct vfio_irq_set). */
export const IRQ_SET = struct(20, { argsz: 0, flags: 4, index: 8, start: 12, count: 16, data: 20 });

/** VFIO_USER_REGION_READ/WRITE requests and replies. */
export const REGION_ACCESS = struct(16, { offset: 0, region: 8, count: 12, data: 16 });

/** VFIO_USER_DMA_READ/WRITE as the spec lays them out (u64 count, data at 16). */
export const DMA_ACCESS = struct(16, { address: 0, count: 8, data: 16 });

/** QEMU's DMA_READ reply / DMA_WRITE request (u32 count, data at 12). */
export const DMA_ACCESS_QEMU = struct(12, { address: 0, count: 8, data: 12 });

/** VFIO_USER_DMA_WRITE reply (u64 address, u32 count). */
export const DMA_WRITE_REPLY = struct(12, { address: 0, count: 8 });

/** VFIO_USER_REGION_WRITE_MULTI request fixed part; entries follow at `wrs`. */
export const WRITE_MULTI = struct(8, { wr_cnt: 0, wrs: 8 });

/** One REGION_WRITE_MULTI entry: data is a fixed 8-byte field. */
export const WRITE_MULTI_ENTRY = struct(24, { offset: 0, region: 8, count: 12, data: 16 });

/** VFIO_USER_REGION_WRITE_MULTI reply. */
export const WRITE_MULTI_REPLY = struct(8, { wr_cnt: 0 });

/** VFIO_USER_DEVICE_FEATURE request and reply (struct vfio_device_feature). */
export const DEVICE_FEATURE = struct(8, { argsz: 0, flags: 4, data: 8 });

/** struct vfio_device_feature_migration. */
export const FEATURE_MIGRATION = struct(8, { flags: 0 });

/** struct vfio_device_feature_mig_state. */
export const FEATURE_MIG_STATE = struct(8, { device_state: 0, data_fd: 4 });

/** vfio_device_feature_dma_logging_control with the ranges inline (not a pointer). */
export const DMA_LOGGING_CONTROL = struct(16, { page_size: 0, num_ranges: 8, reserved: 12, ranges: 16 });

/** struct vfio_device_feature_dma_logging_range. */
export const DMA_LOGGING_RANGE = struct(16, { iova: 0, length: 8 });

/** vfio_device_feature_dma_logging_report with the bitmap inline (reply only). */
export const DMA_LOGGING_REPORT = struct(24, { iova: 0, length: 8, page_size: 16, bitmap: 24 });

/** VFIO_USER_MIG_DATA_READ/WRITE. */
export const MIG_DATA = struct(8, { argsz: 0, size: 4, data: 8 });

/** Every layout above, keyed by its constant's name (for layout tests and tooling). */
export const LAYOUTS = Object.freeze({
  VERSION,
  DMA_MAP,
  DMA_UNMAP,
  DMA_UNMAP_BITMAP,
  DEVICE_INFO,
  REGION_INFO,
  CAP_HEADER,
  CAP_SPARSE_MMAP,
  SPARSE_MMAP_AREA,
  CAP_TYPE,
  REGION_IO_FDS,
  SUB_REGION_IOEVENTFD,
  SUB_REGION_IOREGIONFD,
  SUB_REGION_IOEVENTFD_48,
  IRQ_INFO,
  IRQ_SET,
  REGION_ACCESS,
  DMA_ACCESS,
  DMA_ACCESS_QEMU,
  DMA_WRITE_REPLY,
  WRITE_MULTI,
  WRITE_MULTI_ENTRY,
  WRITE_MULTI_REPLY,
  DEVICE_FEATURE,
  FEATURE_MIGRATION,
  FEATURE_MIG_STATE,
  DMA_LOGGING_CONTROL,
  DMA_LOGGING_RANGE,
  DMA_LOGGING_REPORT,
  MIG_DATA,
} satisfies Record<string, StructLayout>);

export type LayoutName = keyof typeof LAYOUTS;
