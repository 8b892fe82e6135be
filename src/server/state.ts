/**
 * A standard way for a device to serialize its migration state: a versioned JSON document,
 * validated field by field on load (a destination must refuse what it does not understand).
 */
import { VfioUserError, Errno } from '../errors.js';

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

export function encodeState(kind: string, version: number, state: Record<string, unknown>): Uint8Array {
  return enc.encode(JSON.stringify({ kind, version, state }));
}

export type FieldType = 'number' | 'boolean' | 'string';

/** Parses state written by encodeState, checking kind, version and every field's type. */
export function decodeState<T extends Record<string, unknown>>(
  data: Uint8Array,
  kind: string,
  version: number,
  fields: Record<keyof T & string, FieldType>,
): T {
  let doc: unknown;
  try {
    doc = JSON.parse(dec.decode(data));
  } catch {
    throw new VfioUserError('VFU_BAD_STATE', `${kind} state: not valid JSON`, Errno.EINVAL);
  }
  const d = doc as { kind?: unknown; version?: unknown; state?: unknown };
  if (!d || typeof d !== 'object' || d.kind !== kind) throw new VfioUserError('VFU_BAD_STATE', `state is not for a ${kind} device`, Errno.EINVAL);
  if (d.version !== version) throw new VfioUserError('VFU_BAD_STATE', `${kind} state version ${String(d.version)} unsupported`, Errno.EINVAL);
  const s = d.state as Record<string, unknown>;
  if (!s || typeof s !== 'object') throw new VfioUserError('VFU_BAD_STATE', `${kind} state missing`, Errno.EINVAL);
  for (const [k, t] of Object.entries(fields)) {
    if (typeof s[k] !== t || (t === 'number' && !Number.isFinite(s[k]))) {
      throw new VfioUserError('VFU_BAD_STATE', `${kind} state: field ${k} must be a ${t}`, Errno.EINVAL);
    }
  }
  return s as T;
}
