/**
 * What the server keeps about a device, out of the device author's object (in the spirit of
 * libvfio-user's opaque vfu_ctx_t): which server serves it, whether a client is attached, the
 * emulated MSI-X table and whether the client drives it, a pending FLR. Device code never
 * sees it; the server, its sessions and the library's own PciDevice code reach it with
 * served(dev). Not part of the public API.
 */
import type { PciDevice } from './device.js';
import type { MsixTable } from './pci/index.js';

export interface MsixState {
  table: MsixTable;
  location: { tableBar: number; tableOffset: number; pbaBar: number; pbaOffset: number };
  /** set once the client writes the MSI-X table (it forwards table accesses to us) */
  tableDriven: boolean;
}

export class Served {
  /** the server serving the device (one at a time) */
  server: object | undefined;
  /** a client completed VERSION and has not gone yet */
  attached = false;
  /** the MSI-X table the library emulates (PciDevice.addMsix) */
  msix: MsixState | undefined;
  /** an FLR the client requested through config space, for the server to carry out */
  flrRequested = false;
}

const states = new WeakMap<PciDevice, Served>();

/** The server-side state of a device (made on first use). */
export function served(dev: PciDevice): Served {
  let s = states.get(dev);
  if (!s) {
    s = new Served();
    states.set(dev, s);
  }
  return s;
}

/** If [offset, offset+length) of a BAR is the MSI-X table or PBA, handles the access and returns true. */
export function msixAccess(dev: PciDevice, region: number, offset: number, data: Uint8Array, write: boolean): boolean {
  const m = served(dev).msix;
  if (!m) return false;
  const loc = m.location;
  const t = m.table;
  if (region === loc.tableBar && offset >= loc.tableOffset && offset + data.length <= loc.tableOffset + t.tableSize) {
    if (write) {
      m.tableDriven = true;
      t.writeTable(offset - loc.tableOffset, data);
    } else data.set(t.readTable(offset - loc.tableOffset, data.length));
    return true;
  }
  if (region === loc.pbaBar && offset >= loc.pbaOffset && offset + data.length <= loc.pbaOffset + t.pbaSize) {
    if (!write) data.set(t.readPba(offset - loc.pbaOffset, data.length));
    return true;
  }
  return false;
}
