/**
 * NVMe namespaces: an LBA format over a block backend (src/devices/backend.ts), plus their
 * identifiers. Flush and write-through mode (volatile write cache off) use the backend's
 * flush() (fdatasync).
 */
import { createHash } from 'node:crypto';
import type { Backend } from '../backend.js';

export { FileBackend, MemoryBackend, parseSize, type Backend } from '../backend.js';

/** A namespace: LBA format over a backend, plus its identifiers and counters. */
export class Namespace {
  readonly nsid: number;
  readonly backend: Backend;
  readonly lbaShift: number;
  readonly lbaSize: number;
  /** number of LBAs */
  readonly blocks: number;
  readonly nguid: Uint8Array;
  readonly eui64: Uint8Array;
  readonly uuid: Uint8Array;

  constructor(nsid: number, backend: Backend, opts: { lbaSize?: 512 | 4096 | undefined; identity: string }) {
    this.nsid = nsid;
    this.backend = backend;
    this.lbaSize = opts.lbaSize ?? 512;
    this.lbaShift = Math.log2(this.lbaSize);
    this.blocks = Math.floor(backend.size / this.lbaSize);
    // stable identifiers derived from the identity (e.g. the image path): the same image gets
    // the same identity on every start and on both sides of a migration
    const h = createHash('sha256').update(`${opts.identity}/ns${nsid}`).digest();
    this.nguid = new Uint8Array(h.subarray(0, 16));
    this.eui64 = new Uint8Array(h.subarray(16, 24));
    this.uuid = new Uint8Array(h.subarray(0, 16));
    this.uuid[6] = (this.uuid[6]! & 0x0f) | 0x40; // version 4 layout
    this.uuid[8] = (this.uuid[8]! & 0x3f) | 0x80;
  }

  /** true when [slba, slba+nlb) lies in the namespace */
  inRange(slba: bigint, nlb: number): boolean {
    return slba >= 0n && slba + BigInt(nlb) <= BigInt(this.blocks);
  }
}
