/**
 * vfio-user: server library, client library and devices.
 */
export { PciDevice, Region, RegionIndex } from './server/device.js';
export type { RegionOptions, RegionAccess, PciDeviceOptions, IoEventFd, ResetReason } from './server/device.js';
export { VfioUserServer } from './server/server.js';
export type { ServerOptions } from './server/server.js';
export { IrqIndex } from './server/irq.js';
export type { IrqController } from './server/irq.js';
export { DmaController, DmaError } from './server/dma.js';
export type { DmaRegion, DmaOptions, Iova } from './server/dma.js';
export { MigState, migStateName, migrationPath } from './server/migration.js';
export type { MigrationHooks } from './server/migration.js';
export { encodeState, decodeState } from './server/state.js';
export type { FieldType } from './server/state.js';
export * as pci from './server/pci/index.js';
export { VfioUserClient, GuestMemory, describeRegion } from './client/client.js';
export type { ClientOptions, RegionDescription, MappedRegion, IrqHandle, IrqWaitOptions, WriteBatch, ReconnectOptions } from './client/client.js';
export { migrate } from './client/migrate.js';
export type { MigrateOptions, MigrationResult, MigrationProgress, MigrationEndpoint, MigrationDestination } from './client/migrate.js';
export { SwitchoverProxy } from './client/proxy.js';
export type { ProxyOptions, SwitchOptions, SwitchResult } from './client/proxy.js';
export { decodeConfig } from './client/pci-decode.js';
export type { DecodedConfig, DecodedCapability } from './client/pci-decode.js';
export { GpioDevice } from './devices/gpio.js';
export type { GpioState } from './devices/gpio.js';
export type { Backend } from './devices/backend.js';
export type { Segment } from './devices/guest.js';
export { NullDevice } from './devices/null.js';
export { VirtioPciDevice, Virtqueue, VirtioRequest, VirtqError, VirtioBlkDevice } from './devices/virtio/index.js';
export type { VirtioDeviceOptions, VirtioBlkOptions } from './devices/virtio/index.js';
export * as virtio from './devices/virtio/index.js';
export { VfioUserError, Errno, errnoName } from './errors.js';
export type { ErrorCode, VfioUserErrorCode, ProtocolErrorCode, ConfigSpaceErrorCode } from './errors.js';
export { ProtocolError } from './protocol/errors.js';
export { ConfigSpaceError } from './server/pci/errors.js';
export * as protocol from './protocol/index.js';
export { defineDevice, UsageError } from './cli/factory.js';
export type { DeviceFactory, DeviceOption, DeviceOptions, DeviceContext, ControlCommand, ParsedOptions, OptionValue } from './cli/factory.js';
