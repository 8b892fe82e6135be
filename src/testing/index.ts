/**
 * `vfio-user/testing`: drive a device from a test, without QEMU or a guest.
 *
 * - {@link serveDevice} serves a `PciDevice` in this process, {@link spawnDevice} a device
 *   module in a child process; both return a connected client and clean up on `close()` or
 *   `await using`.
 * - {@link GuestRam}: guest memory (a memfd shared with the server, or served by DMA
 *   messages) with an allocator and views by IOVA.
 * - {@link IrqRecorder}: wait for an interrupt vector with a timeout, count them, assert none.
 * - {@link NvmeDriver} and {@link VirtioDriver} (with {@link BlkDriver}): host drivers for the
 *   NVMe controller and virtio devices.
 *
 * Nothing here depends on a test runner: use it with `node:test`, or any other.
 *
 * @module
 */
export { GuestRam, GUARD, PAGE } from './memory.js';
export type { GuestRamOptions } from './memory.js';
export { serveDevice, listenDevice, spawnDevice, spawnServer, socketPath } from './harness.js';
export type { InProcessHarness, InProcessServer, ChildHarness, ServerProcess, ServeDeviceOptions, SpawnDeviceOptions, SpawnOptions } from './harness.js';
export { IrqRecorder, waitUntil, WaitTimeoutError } from './irq.js';
export type { WaitOptions, IrqSource } from './irq.js';
export { findCapability, enableMsix, disableMsix, armMsixVectors } from './pci.js';
export { NvmeDriver, ADMIN, sc, setU64, sglDesc } from './nvme.js';
export type { Completion, Command, DriverOptions as NvmeDriverOptions } from './nvme.js';
export { VirtioDriver, DriverQueue, BlkDriver } from './virtio.js';
export type { VirtioDriverOptions, CapLocation, Buf, Used, BlkResult } from './virtio.js';
export { pattern, u32, u64, rd32 } from './data.js';
