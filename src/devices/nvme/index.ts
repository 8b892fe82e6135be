/**
 * The NVMe controller device: an NVMe 1.4 controller with file- or memory-backed namespaces.
 */
export { NvmeDevice, type NvmeOptions } from './controller.js';
export { Namespace, FileBackend, MemoryBackend, parseSize, type Backend } from './namespace.js';
export * from './constants.js';
