/**
 * PCI configuration-space emulation for vfio-user servers: the type-0 header, BARs,
 * expansion ROM, standard (PM, MSI, MSI-X, PCIe, vendor) and extended (DSN, VSEC)
 * capabilities, plus the MSI-X table/PBA that lives in a BAR.
 */
export {
  ConfigSpace,
  type BarDefinition,
  type BarInfo,
  type BarKind,
  type CapabilityInfo,
  type ConfigEvents,
  type ConfigHook,
  type ConfigSpaceOptions,
  type MsiState,
  type MsixControlState,
  type MsixInfo,
  type PowerState,
} from './config-space.js';
export { MsixTable } from './msix.js';
export { ConfigSpaceError, type ConfigSpaceErrorCode } from './errors.js';
export type {
  MsiOptions,
  MsixOptions,
  PciExpressOptions,
  PcieDeviceType,
  PcieLinkSpeed,
  PcieLinkWidth,
  PowerManagementOptions,
} from './capabilities.js';
export * as regs from './registers.js';
