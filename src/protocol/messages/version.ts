/**
 * VFIO_USER_VERSION (spec "VFIO_USER_VERSION"): request and reply share one format,
 *
 *   0  u16 major
 *   2  u16 minor
 *   4  optional UTF-8 JSON {"capabilities": {...}}, NUL-terminated
 *
 * Decoding requires the NUL when there is JSON, as the spec does (bytes after it are
 * ignored). The encoder always writes the JSON and its NUL (QEMU rejects a reply without it).
 */
import { ProtocolError } from '../errors.js';
import { VERSION } from '../layout.js';
import { parseJson, setOwn, stringifyJson } from '../json.js';
import { checkU16, need, newPayload, viewOf } from '../wire.js';

export interface MigrationCapability {
  /** migration.pgsize: the dirty-tracking page size. */
  pgsize?: number;
  /** migration.max_bitmap_size: largest dirty bitmap, in bytes. */
  maxBitmapSize?: number;
}

export interface TwinSocketCapability {
  /** twin_socket.supported (defaults to false when the object omits it). */
  supported: boolean;
  /** twin_socket.fd_index: index of the server-to-client socket in the reply's fds. */
  fdIndex?: number;
}

/**
 * The "capabilities" object, typed. Absent members mean "not specified" (see
 * DEFAULT_CAPABILITIES / resolveCapabilities for the spec defaults). `raw` is the parsed
 * capabilities object with every member, known or not; decoders always set it, and the
 * encoder starts from it (so unknown members survive) and then writes the typed members.
 */
export interface VersionCapabilities {
  maxMsgFds?: number;
  maxDataXferSize?: number;
  maxDmaMaps?: number;
  pgsizes?: bigint;
  migration?: MigrationCapability;
  twinSocket?: TwinSocketCapability;
  writeMultiple?: boolean;
  raw?: Record<string, unknown>;
}

export interface VersionRequest {
  major: number;
  minor: number;
  capabilities: VersionCapabilities;
}

export type VersionReply = VersionRequest;

/**
 * The smallest max_data_xfer_size our server accepts from a client: 0 would split DMA by
 * message into 0-byte pieces forever, and tiny values into thousands of messages per page.
 * (libvfio-user's sample client proposes 1024, so the bound stays below that.)
 */
export const MIN_DATA_XFER_SIZE = 512;

/** The values a peer must assume for capabilities the other side did not send (spec). */
export const DEFAULT_CAPABILITIES = Object.freeze({
  maxMsgFds: 1,
  maxDataXferSize: 1048576,
  maxDmaMaps: 65535,
  pgsizes: 4096n,
});

export interface ResolvedCapabilities {
  maxMsgFds: number;
  maxDataXferSize: number;
  maxDmaMaps: number;
  pgsizes: bigint;
  migration?: MigrationCapability;
  twinSocket: TwinSocketCapability;
  writeMultiple: boolean;
}

/** Fills in the spec defaults for members the peer omitted. */
export function resolveCapabilities(c: VersionCapabilities): ResolvedCapabilities {
  const r: ResolvedCapabilities = {
    maxMsgFds: c.maxMsgFds ?? DEFAULT_CAPABILITIES.maxMsgFds,
    maxDataXferSize: c.maxDataXferSize ?? DEFAULT_CAPABILITIES.maxDataXferSize,
    maxDmaMaps: c.maxDmaMaps ?? DEFAULT_CAPABILITIES.maxDmaMaps,
    pgsizes: c.pgsizes ?? DEFAULT_CAPABILITIES.pgsizes,
    twinSocket: c.twinSocket ?? { supported: false },
    writeMultiple: c.writeMultiple ?? false,
  };
  if (c.migration) r.migration = c.migration;
  return r;
}

// JSON member names (spec "Capabilities").
const K = {
  maxMsgFds: 'max_msg_fds',
  maxDataXferSize: 'max_data_xfer_size',
  maxDmaMaps: 'max_dma_maps',
  pgsizes: 'pgsizes',
  migration: 'migration',
  pgsize: 'pgsize',
  maxBitmapSize: 'max_bitmap_size',
  twinSocket: 'twin_socket',
  supported: 'supported',
  fdIndex: 'fd_index',
  writeMultiple: 'write_multiple',
} as const;

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

function badCap(name: string, why: string): never {
  throw new ProtocolError('VFU_BAD_VERSION', `capability ${name}: ${why}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function has(o: Record<string, unknown>, k: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, k);
}

function safeInt(o: Record<string, unknown>, k: string, path: string): number | undefined {
  if (!has(o, k)) return undefined;
  const v = o[k];
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  // stringifyJson: the parsed value may hold bigints anywhere (JSON.stringify throws on them)
  const got = stringifyJson(v);
  return badCap(path + k, `expected a non-negative integer, got ${got.length > 64 ? `${got.slice(0, 64)}...` : got}`);
}

function u64Int(o: Record<string, unknown>, k: string, path: string): bigint | undefined {
  if (!has(o, k)) return undefined;
  const v = o[k];
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v === 'bigint' && v >= 0n && v < 1n << 64n) return v;
  return badCap(path + k, 'expected an integer in [0, 2^64-1]');
}

function bool(o: Record<string, unknown>, k: string, path: string): boolean | undefined {
  if (!has(o, k)) return undefined;
  const v = o[k];
  if (typeof v === 'boolean') return v;
  return badCap(path + k, 'expected a boolean');
}

/** Types the members of a parsed "capabilities" object (unknown members stay in `raw`). */
export function capabilitiesFromJson(raw: Record<string, unknown>): VersionCapabilities {
  const c: VersionCapabilities = {};
  const maxMsgFds = safeInt(raw, K.maxMsgFds, '');
  if (maxMsgFds !== undefined) c.maxMsgFds = maxMsgFds;
  const maxDataXferSize = safeInt(raw, K.maxDataXferSize, '');
  if (maxDataXferSize !== undefined) c.maxDataXferSize = maxDataXferSize;
  const maxDmaMaps = safeInt(raw, K.maxDmaMaps, '');
  if (maxDmaMaps !== undefined) c.maxDmaMaps = maxDmaMaps;
  const pgsizes = u64Int(raw, K.pgsizes, '');
  if (pgsizes !== undefined) c.pgsizes = pgsizes;
  if (has(raw, K.migration)) {
    const m = raw[K.migration];
    if (!isObject(m)) badCap(K.migration, 'expected an object');
    const mig: MigrationCapability = {};
    const pgsize = safeInt(m, K.pgsize, 'migration.');
    if (pgsize !== undefined) mig.pgsize = pgsize;
    const maxBitmapSize = safeInt(m, K.maxBitmapSize, 'migration.');
    if (maxBitmapSize !== undefined) mig.maxBitmapSize = maxBitmapSize;
    c.migration = mig;
  }
  if (has(raw, K.twinSocket)) {
    const t = raw[K.twinSocket];
    if (!isObject(t)) badCap(K.twinSocket, 'expected an object');
    const twin: TwinSocketCapability = { supported: bool(t, K.supported, 'twin_socket.') ?? false };
    const fdIndex = safeInt(t, K.fdIndex, 'twin_socket.');
    if (fdIndex !== undefined) twin.fdIndex = fdIndex;
    c.twinSocket = twin;
  }
  const writeMultiple = bool(raw, K.writeMultiple, '');
  if (writeMultiple !== undefined) c.writeMultiple = writeMultiple;
  c.raw = raw;
  return c;
}

function copyObject(src: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (isObject(src)) for (const [k, v] of Object.entries(src)) setOwn(out, k, v);
  return out;
}

/** Builds the "capabilities" JSON object: `raw` first, then the typed members on top. */
export function capabilitiesToJson(c: VersionCapabilities): Record<string, unknown> {
  const o = copyObject(c.raw);
  const put = (k: string, v: unknown): void => {
    if (v !== undefined) setOwn(o, k, v);
  };
  put(K.maxMsgFds, c.maxMsgFds);
  put(K.maxDataXferSize, c.maxDataXferSize);
  put(K.maxDmaMaps, c.maxDmaMaps);
  put(K.pgsizes, c.pgsizes);
  if (c.migration) {
    const m = copyObject(o[K.migration]);
    if (c.migration.pgsize !== undefined) setOwn(m, K.pgsize, c.migration.pgsize);
    if (c.migration.maxBitmapSize !== undefined) setOwn(m, K.maxBitmapSize, c.migration.maxBitmapSize);
    setOwn(o, K.migration, m);
  }
  if (c.twinSocket) {
    const t = copyObject(o[K.twinSocket]);
    setOwn(t, K.supported, c.twinSocket.supported);
    if (c.twinSocket.fdIndex !== undefined) setOwn(t, K.fdIndex, c.twinSocket.fdIndex);
    setOwn(o, K.twinSocket, t);
  }
  put(K.writeMultiple, c.writeMultiple);
  // Validate what we are about to send with the same rules the decoder applies.
  capabilitiesFromJson(o);
  return o;
}

export function encodeVersionRequest(msg: VersionRequest): Uint8Array {
  let json: Uint8Array;
  try {
    json = utf8Encoder.encode(stringifyJson({ capabilities: capabilitiesToJson(msg.capabilities ?? {}) }));
  } catch (e) {
    if (e instanceof ProtocolError && e.code === 'VFU_BAD_VERSION') throw new ProtocolError('VFU_BAD_VALUE', e.message);
    throw e;
  }
  const F = VERSION.fields;
  const { buf, dv } = newPayload(VERSION.size + json.length + 1);
  dv.setUint16(F.major, checkU16(msg.major, 'version major'), true);
  dv.setUint16(F.minor, checkU16(msg.minor, 'version minor'), true);
  buf.set(json, F.data);
  // the trailing NUL is already 0
  return buf;
}

export function decodeVersionRequest(payload: Uint8Array): VersionRequest {
  need(payload, VERSION.size, 'VERSION');
  const F = VERSION.fields;
  const dv = viewOf(payload);
  const major = dv.getUint16(F.major, true);
  const minor = dv.getUint16(F.minor, true);
  const data = payload.subarray(F.data);
  const nul = data.indexOf(0);
  if (nul < 0 && data.length > 0) throw new ProtocolError('VFU_BAD_VERSION', 'version data is not NUL-terminated');
  const jsonBytes = nul >= 0 ? data.subarray(0, nul) : data;
  if (jsonBytes.length === 0) return { major, minor, capabilities: { raw: {} } };
  let text: string;
  try {
    text = utf8Decoder.decode(jsonBytes);
  } catch {
    throw new ProtocolError('VFU_BAD_VERSION', 'version data is not valid UTF-8');
  }
  const root = parseJson(text);
  if (!isObject(root)) throw new ProtocolError('VFU_BAD_VERSION', 'version data is not a JSON object');
  if (!has(root, 'capabilities')) return { major, minor, capabilities: { raw: {} } };
  const caps = root.capabilities;
  if (!isObject(caps)) throw new ProtocolError('VFU_BAD_VERSION', '"capabilities" is not a JSON object');
  return { major, minor, capabilities: capabilitiesFromJson(caps) };
}

export const encodeVersionReply: (msg: VersionReply) => Uint8Array = encodeVersionRequest;
export const decodeVersionReply: (payload: Uint8Array) => VersionReply = decodeVersionRequest;
