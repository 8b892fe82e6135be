/**
 * Shared pieces of the fuzz targets (fuzz/targets/*.ts, run by Jazzer.js through
 * scripts/fuzz.mjs): a cursor over the fuzzer's bytes, and the rule for what a target may
 * throw. A target returns normally, or fails with an Error that Jazzer reports as a finding
 * (with the input saved); expected refusals (ProtocolError, VfioUserError, NVMe status
 * errors) are caught by the target, anything else is a bug.
 */
import { readdirSync } from 'node:fs';
import { ProtocolError } from '../src/protocol/errors.js';
import { VfioUserError } from '../src/errors.js';
import { NvmeStatusError } from '../src/devices/nvme/constants.js';

/** Reads the fuzzer's bytes front to back; past the end every read returns zeros/empty. */
export class Bytes {
  private p = 0;
  constructor(readonly data: Uint8Array) {}
  get left(): number {
    return this.data.length - this.p;
  }
  u8(): number {
    return this.p < this.data.length ? this.data[this.p++]! : 0;
  }
  u16(): number {
    return this.u8() | (this.u8() << 8);
  }
  u32(): number {
    return (this.u16() | (this.u16() << 16)) >>> 0;
  }
  u64(): bigint {
    return BigInt(this.u32()) | (BigInt(this.u32()) << 32n);
  }
  bool(): boolean {
    return (this.u8() & 1) === 1;
  }
  /** up to n bytes (fewer at the end of the input) */
  take(n: number): Uint8Array {
    const out = this.data.subarray(this.p, Math.min(this.data.length, this.p + n));
    this.p += out.length;
    return out;
  }
  rest(): Uint8Array {
    return this.take(this.left);
  }
}

/** An error a peer may legitimately cause: a refusal, not a bug. */
export function expected(e: unknown): boolean {
  return e instanceof ProtocolError || e instanceof VfioUserError || e instanceof NvmeStatusError;
}

/** Rethrows anything that is not an expected refusal, with context. */
export function onlyExpected(e: unknown, where: string): void {
  if (expected(e)) return;
  const err = e instanceof Error ? e : new Error(String(e));
  err.message = `${where}: ${err.message}`;
  throw err;
}

/** Fails when the process holds more fds than `baseline` after a settle time. */
export async function checkFds(baseline: number, what: string): Promise<void> {
  const end = Date.now() + 2000;
  for (let turns = 0; ; turns++) {
    const n = readdirSync('/proc/self/fd').length;
    if (n <= baseline) return;
    if (Date.now() > end) throw new Error(`fd leak after ${what}: ${n} open fds, baseline ${baseline}`);
    // fds are closed a loop turn or two late (libuv closes a polled fd in a close callback):
    // poll by turns first, then by timer
    await new Promise((r) => (turns < 16 ? setImmediate(r) : setTimeout(r, 1)));
  }
}
