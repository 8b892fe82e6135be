/**
 * What the test kit's host drivers (NVMe, virtio) share: the client they drive and the guest
 * RAM their queues and buffers live in, with the address helpers over it.
 */
import type { VfioUserClient, GuestMemory } from '../client/client.js';
import { GuestRam, PAGE, type GuestRamOptions } from './memory.js';
import { findCapability } from './pci.js';

export abstract class GuestDriver<O> {
  /** the client driving the device (replaced by `moveTo` after a migration) */
  readonly client: VfioUserClient;
  /** guest RAM: queues, descriptor/PRP lists and data buffers live there */
  readonly ram: GuestRam;
  readonly opts: O;

  protected constructor(client: VfioUserClient, ram: GuestRam, opts: O) {
    this.client = client;
    this.ram = ram;
    this.opts = opts;
  }

  /** Guest RAM mapped from a driver's options (memSize with the driver's default, iova, shared, mem). */
  protected static mapRam(
    client: VfioUserClient,
    opts: Omit<GuestRamOptions, 'size'> & { memSize?: number | undefined },
    defaultSize: number,
  ): Promise<GuestRam> {
    return GuestRam.map(client, { size: opts.memSize ?? defaultSize, iova: opts.iova, shared: opts.shared, mem: opts.mem });
  }

  /** the memory object of guest RAM */
  get mem(): GuestMemory {
    return this.ram.mem;
  }

  /** IOVA of the first mapped byte of guest RAM */
  get iova(): number {
    return this.ram.iova;
  }

  /** IOVA of a byte of guest memory (by memfd offset) */
  iovaOf(memOffset: number): number {
    return this.ram.iovaOf(memOffset);
  }

  /** the guest memory bytes at an IOVA */
  at(iova: number, len: number): Uint8Array {
    return this.ram.at(iova, len);
  }

  /** Allocates guest memory (page aligned by default); returns its IOVA. */
  alloc(len: number, align = PAGE): number {
    return this.ram.alloc(len, align);
  }

  /** Config-space offset of a PCI capability (0 when absent). */
  async findCap(id: number): Promise<number> {
    return findCapability(this.client, id);
  }

  /** Points the driver at another client (the same guest RAM mapped there). */
  protected setClient(client: VfioUserClient): void {
    (this as { client: VfioUserClient }).client = client;
  }
}
