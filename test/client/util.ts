/**
 * Helpers for the client tests: an in-process server with the test device, byte helpers.
 */
import assert from 'node:assert/strict';
import { VfioUserError, type VfioUserErrorCode } from '../../src/errors.js';

export { u32, u64, rd32, withServer, within } from '../helpers.js';

/** asserts a VfioUserError with that code (and errno, for remote errors) */
export function isCode(code: VfioUserErrorCode, errno?: number): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof VfioUserError, `expected VfioUserError ${code}, got ${String(e)}`);
    assert.equal(e.code, code, `${e.code}: ${e.message}`);
    if (errno !== undefined) assert.equal(e.errno, errno);
    return true;
  };
}

