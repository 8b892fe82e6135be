/**
 * PCI helpers for drivers built on the client: capabilities in config space, MSI-X.
 */
import type { VfioUserClient, IrqHandle } from '../client/client.js';
import { IrqIndex } from '../server/irq.js';

/** Offset of the first capability with this ID in the device's standard config space (0 when there is none). */
export async function findCapability(client: VfioUserClient, id: number): Promise<number> {
  const cfg = await client.readConfig(0, 256);
  if (!(cfg[0x06]! & 0x10)) return 0; // Status: no capabilities list
  let p = cfg[0x34]! & 0xfc;
  for (let n = 0; p && n < 48; n++) {
    if (cfg[p] === id) return p;
    p = cfg[p + 1]! & 0xfc;
  }
  return 0;
}

/** Turns MSI-X on in config space (Enable set, Function Mask clear); resolves with the table size. */
export async function enableMsix(client: VfioUserClient): Promise<number> {
  const cap = await findCapability(client, 0x11);
  if (!cap) throw new Error('no MSI-X capability');
  const ctl = await client.readConfig(cap + 2, 2);
  await client.writeConfig(cap + 2, Uint8Array.of(ctl[0]!, (ctl[1]! & 0x3f) | 0x80));
  return ((ctl[0]! | (ctl[1]! << 8)) & 0x7ff) + 1;
}

/** Turns MSI-X off in config space (for INTx); does nothing when the device has no MSI-X. */
export async function disableMsix(client: VfioUserClient): Promise<void> {
  const cap = await findCapability(client, 0x11);
  if (!cap) return;
  const ctl = await client.readConfig(cap + 3, 1);
  await client.writeConfig(cap + 3, Uint8Array.of(ctl[0]! & 0x3f));
}

/**
 * Gives MSI-X vectors 0..vectors-1 eventfds (SET_IRQS in chunks of the server's max_msg_fds,
 * one message per chunk) and calls `onIrq` with the vector each time one fires.
 */
export async function armMsixVectors(client: VfioUserClient, vectors: number, onIrq: (vector: number, count: bigint) => void): Promise<IrqHandle[]> {
  const max = client.serverCaps.maxMsgFds || 16;
  const handles: IrqHandle[] = [];
  try {
    for (let start = 0; start < vectors; start += max) {
      const h = await client.enableIrqs(IrqIndex.MSIX, Math.min(max, vectors - start), start);
      h.on('irq', onIrq);
      handles.push(h);
    }
  } catch (e) {
    for (const h of handles) h.close();
    throw e;
  }
  return handles;
}
