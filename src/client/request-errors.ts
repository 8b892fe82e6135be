/**
 * The client's errors for a failed request: a reply the codec refuses becomes VFU_PROTOCOL,
 * an error reply or a timeout names the request it answers (`REGION_READ region 3 +0x10 4B:
 * EINVAL`).
 */
import * as P from '../protocol/index.js';
import { VfioUserError, Errno, errnoName } from '../errors.js';
import { ProtocolError } from '../protocol/errors.js';

/** Turns a codec failure on a reply into the client's typed error. */
export function decoded<T>(what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof ProtocolError) {
      throw new VfioUserError('VFU_PROTOCOL', `bad ${what} reply: ${e.message}`, Errno.EPROTO, { cause: e });
    }
    throw e;
  }
}

/**
 * A failed request's error, naming the request: `REGION_READ region 3 +0x10 4B: EINVAL` (and
 * the reason the server sent, if any); timeouts likewise. Other errors pass unchanged.
 */
export function named(e: unknown, command: number, payload: Uint8Array | null): unknown {
  if (!(e instanceof VfioUserError)) return e;
  if (e.code === 'VFU_REMOTE_ERROR') {
    const reason = / \(.*\)$/.exec(e.message)?.[0] ?? '';
    return new VfioUserError('VFU_REMOTE_ERROR', `${describeRequest(command, payload)}: ${errnoName(e.errno)}${reason}`, e.errno, { cause: e });
  }
  if (e.code === 'VFU_TIMEOUT') return new VfioUserError('VFU_TIMEOUT', `${describeRequest(command, payload)}: ${e.message}`, e.errno, { cause: e });
  return e;
}

/**
 * A request as an error names it: `REGION_READ region 3 +0x10 4B`, other commands with their
 * decoded fields (the codec's one-line rendering).
 */
export function describeRequest(command: number, payload: Uint8Array | null): string {
  const bytes = payload ?? new Uint8Array(0);
  try {
    if (command === P.Command.REGION_READ) {
      const r = P.decodeRegionReadRequest(bytes);
      return `REGION_READ region ${r.region} +0x${r.offset.toString(16)} ${r.count}B`;
    }
    if (command === P.Command.REGION_WRITE) {
      const r = P.decodeRegionWriteRequest(bytes);
      return `REGION_WRITE region ${r.region} +0x${r.offset.toString(16)} ${r.count}B`;
    }
  } catch {
    // not decodable: described below like any other
  }
  const text = P.describePayload(command, bytes, 'request');
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

export function protocolError(msg: string): VfioUserError {
  return new VfioUserError('VFU_PROTOCOL', msg, Errno.EPROTO);
}
