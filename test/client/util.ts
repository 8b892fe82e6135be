/**
 * Helpers for the client tests: an in-process server with the test device, byte helpers.
 */
import assert from 'node:assert/strict';
import { VfioUserError, type VfioUserErrorCode } from '../../src/errors.js';

export { u32, u64, rd32, withServer } from '../helpers.js';

/** asserts a VfioUserError with that code (and errno, for remote errors) */
export function isCode(code: VfioUserErrorCode, errno?: number): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof VfioUserError, `expected VfioUserError ${code}, got ${String(e)}`);
    assert.equal(e.code, code, `${e.code}: ${e.message}`);
    if (errno !== undefined) assert.equal(e.errno, errno);
    return true;
  };
}

/** rejects if p does not settle within ms (a hang is a failure, not a stuck test) */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms);
    }),
  ]);
}
