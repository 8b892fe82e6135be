/**
 * Virtio over the modern PCI transport: the framework (VirtioPciDevice, split virtqueues)
 * and the virtio-blk device.
 */
export { VirtioPciDevice, Layout, type VirtioDeviceOptions } from './device.js';
export { Virtqueue, VirtioRequest, VirtqError, needEvent, MAX_INDIRECT, type QueueState } from './virtqueue.js';
export { VirtioBlkDevice, BlkFeature, BlkType, BlkStatus, BlkConfig, SECTOR, ID_BYTES, type VirtioBlkOptions } from './blk.js';
export * from './constants.js';
