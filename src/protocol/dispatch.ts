/**
 * Command-indexed codec tables: decodeRequest/decodeReply/encodeRequest/encodeReply by
 * command number (for tracing tools, fuzzing and generic plumbing), and describe(), a
 * short human-readable rendering of a decoded message (`vfio-user trace`).
 */
import {
  Command,
  DeviceFeature,
  DeviceFeatureFlags,
  DeviceInfoFlags,
  DmaMapFlags,
  DmaUnmapFlags,
  IrqInfoFlags,
  RegionInfoFlags,
  SetIrqsFlags,
  commandName,
  isCommand,
} from './constants.js';
import { ProtocolError } from './errors.js';
import * as device from './messages/device.js';
import * as dma from './messages/dma.js';
import * as feature from './messages/feature.js';
import * as irq from './messages/irq.js';
import * as mig from './messages/migration.js';
import * as ioFds from './messages/region-io-fds.js';
import * as regionInfo from './messages/region-info.js';
import * as rw from './messages/region-rw.js';
import * as version from './messages/version.js';

export interface RequestMap {
  [Command.VERSION]: version.VersionRequest;
  [Command.DMA_MAP]: dma.DmaMapRequest;
  [Command.DMA_UNMAP]: dma.DmaUnmapRequest;
  [Command.DEVICE_GET_INFO]: device.DeviceGetInfoRequest;
  [Command.DEVICE_GET_REGION_INFO]: regionInfo.RegionInfoRequest;
  [Command.DEVICE_GET_REGION_IO_FDS]: ioFds.RegionIoFdsRequest;
  [Command.DEVICE_GET_IRQ_INFO]: irq.IrqInfoRequest;
  [Command.DEVICE_SET_IRQS]: irq.SetIrqsRequest;
  [Command.REGION_READ]: rw.RegionReadRequest;
  [Command.REGION_WRITE]: rw.RegionWriteRequest;
  [Command.DMA_READ]: dma.DmaReadRequest;
  [Command.DMA_WRITE]: dma.DmaWriteRequest;
  [Command.DEVICE_RESET]: device.DeviceResetRequest;
  [Command.REGION_WRITE_MULTI]: rw.RegionWriteMultiRequest;
  [Command.DEVICE_FEATURE]: feature.DeviceFeatureRequest;
  [Command.MIG_DATA_READ]: mig.MigDataReadRequest;
  [Command.MIG_DATA_WRITE]: mig.MigDataWriteRequest;
}

export interface ReplyMap {
  [Command.VERSION]: version.VersionReply;
  [Command.DMA_MAP]: dma.DmaMapReply;
  [Command.DMA_UNMAP]: dma.DmaUnmapReply;
  [Command.DEVICE_GET_INFO]: device.DeviceGetInfoReply;
  [Command.DEVICE_GET_REGION_INFO]: regionInfo.RegionInfoReply;
  [Command.DEVICE_GET_REGION_IO_FDS]: ioFds.RegionIoFdsReply;
  [Command.DEVICE_GET_IRQ_INFO]: irq.IrqInfoReply;
  [Command.DEVICE_SET_IRQS]: irq.SetIrqsReply;
  [Command.REGION_READ]: rw.RegionReadReply;
  [Command.REGION_WRITE]: rw.RegionWriteReply;
  [Command.DMA_READ]: dma.DmaReadReply;
  [Command.DMA_WRITE]: dma.DmaWriteReply;
  [Command.DEVICE_RESET]: device.DeviceResetReply;
  [Command.REGION_WRITE_MULTI]: rw.RegionWriteMultiReply;
  [Command.DEVICE_FEATURE]: feature.DeviceFeatureReply;
  [Command.MIG_DATA_READ]: mig.MigDataReadReply;
  [Command.MIG_DATA_WRITE]: mig.MigDataWriteReply;
}

/** `{ command, msg }` with `msg` typed by `command`. */
export type DecodedRequest = { [C in Command]: { command: C; msg: RequestMap[C] } }[Command];
export type DecodedReply = { [C in Command]: { command: C; msg: ReplyMap[C] } }[Command];

const REQUEST_DECODERS: { [C in Command]: (p: Uint8Array) => RequestMap[C] } = {
  [Command.VERSION]: version.decodeVersionRequest,
  [Command.DMA_MAP]: dma.decodeDmaMapRequest,
  [Command.DMA_UNMAP]: dma.decodeDmaUnmapRequest,
  [Command.DEVICE_GET_INFO]: device.decodeDeviceGetInfoRequest,
  [Command.DEVICE_GET_REGION_INFO]: regionInfo.decodeRegionInfoRequest,
  [Command.DEVICE_GET_REGION_IO_FDS]: ioFds.decodeRegionIoFdsRequest,
  [Command.DEVICE_GET_IRQ_INFO]: irq.decodeIrqInfoRequest,
  [Command.DEVICE_SET_IRQS]: irq.decodeSetIrqsRequest,
  [Command.REGION_READ]: rw.decodeRegionReadRequest,
  [Command.REGION_WRITE]: rw.decodeRegionWriteRequest,
  [Command.DMA_READ]: dma.decodeDmaReadRequest,
  [Command.DMA_WRITE]: (p) => dma.decodeDmaWriteRequest(p),
  [Command.DEVICE_RESET]: device.decodeDeviceResetRequest,
  [Command.REGION_WRITE_MULTI]: rw.decodeRegionWriteMultiRequest,
  [Command.DEVICE_FEATURE]: feature.decodeDeviceFeatureRequest,
  [Command.MIG_DATA_READ]: mig.decodeMigDataReadRequest,
  [Command.MIG_DATA_WRITE]: mig.decodeMigDataWriteRequest,
};

const REPLY_DECODERS: { [C in Command]: (p: Uint8Array) => ReplyMap[C] } = {
  [Command.VERSION]: version.decodeVersionReply,
  [Command.DMA_MAP]: dma.decodeDmaMapReply,
  [Command.DMA_UNMAP]: dma.decodeDmaUnmapReply,
  [Command.DEVICE_GET_INFO]: device.decodeDeviceGetInfoReply,
  [Command.DEVICE_GET_REGION_INFO]: regionInfo.decodeRegionInfoReply,
  [Command.DEVICE_GET_REGION_IO_FDS]: ioFds.decodeRegionIoFdsReply,
  [Command.DEVICE_GET_IRQ_INFO]: irq.decodeIrqInfoReply,
  [Command.DEVICE_SET_IRQS]: irq.decodeSetIrqsReply,
  [Command.REGION_READ]: rw.decodeRegionReadReply,
  [Command.REGION_WRITE]: rw.decodeRegionWriteReply,
  [Command.DMA_READ]: (p) => dma.decodeDmaReadReply(p),
  [Command.DMA_WRITE]: dma.decodeDmaWriteReply,
  [Command.DEVICE_RESET]: device.decodeDeviceResetReply,
  [Command.REGION_WRITE_MULTI]: rw.decodeRegionWriteMultiReply,
  [Command.DEVICE_FEATURE]: feature.decodeDeviceFeatureReply,
  [Command.MIG_DATA_READ]: mig.decodeMigDataReadReply,
  [Command.MIG_DATA_WRITE]: mig.decodeMigDataWriteReply,
};

const REQUEST_ENCODERS: { [C in Command]: (m: RequestMap[C]) => Uint8Array } = {
  [Command.VERSION]: version.encodeVersionRequest,
  [Command.DMA_MAP]: dma.encodeDmaMapRequest,
  [Command.DMA_UNMAP]: dma.encodeDmaUnmapRequest,
  [Command.DEVICE_GET_INFO]: device.encodeDeviceGetInfoRequest,
  [Command.DEVICE_GET_REGION_INFO]: regionInfo.encodeRegionInfoRequest,
  [Command.DEVICE_GET_REGION_IO_FDS]: ioFds.encodeRegionIoFdsRequest,
  [Command.DEVICE_GET_IRQ_INFO]: irq.encodeIrqInfoRequest,
  [Command.DEVICE_SET_IRQS]: irq.encodeSetIrqsRequest,
  [Command.REGION_READ]: rw.encodeRegionReadRequest,
  [Command.REGION_WRITE]: rw.encodeRegionWriteRequest,
  [Command.DMA_READ]: dma.encodeDmaReadRequest,
  [Command.DMA_WRITE]: dma.encodeDmaWriteRequest,
  [Command.DEVICE_RESET]: device.encodeDeviceResetRequest,
  [Command.REGION_WRITE_MULTI]: rw.encodeRegionWriteMultiRequest,
  [Command.DEVICE_FEATURE]: feature.encodeDeviceFeatureRequest,
  [Command.MIG_DATA_READ]: mig.encodeMigDataReadRequest,
  [Command.MIG_DATA_WRITE]: mig.encodeMigDataWriteRequest,
};

const REPLY_ENCODERS: { [C in Command]: (m: ReplyMap[C]) => Uint8Array } = {
  [Command.VERSION]: version.encodeVersionReply,
  [Command.DMA_MAP]: dma.encodeDmaMapReply,
  [Command.DMA_UNMAP]: dma.encodeDmaUnmapReply,
  [Command.DEVICE_GET_INFO]: device.encodeDeviceGetInfoReply,
  [Command.DEVICE_GET_REGION_INFO]: (m) => regionInfo.encodeRegionInfoReply(m),
  [Command.DEVICE_GET_REGION_IO_FDS]: (m) => ioFds.encodeRegionIoFdsReply(m),
  [Command.DEVICE_GET_IRQ_INFO]: irq.encodeIrqInfoReply,
  [Command.DEVICE_SET_IRQS]: irq.encodeSetIrqsReply,
  [Command.REGION_READ]: rw.encodeRegionReadReply,
  [Command.REGION_WRITE]: rw.encodeRegionWriteReply,
  [Command.DMA_READ]: dma.encodeDmaReadReply,
  [Command.DMA_WRITE]: dma.encodeDmaWriteReply,
  [Command.DEVICE_RESET]: device.encodeDeviceResetReply,
  [Command.REGION_WRITE_MULTI]: rw.encodeRegionWriteMultiReply,
  [Command.DEVICE_FEATURE]: feature.encodeDeviceFeatureReply,
  [Command.MIG_DATA_READ]: mig.encodeMigDataReadReply,
  [Command.MIG_DATA_WRITE]: mig.encodeMigDataWriteReply,
};

function known(command: number): Command {
  if (!isCommand(command)) throw new ProtocolError('VFU_UNKNOWN_COMMAND', `unknown command ${command}`, 38 /* ENOSYS */);
  return command;
}

/** Decodes a request payload (bytes after the header). Unknown command: VFU_UNKNOWN_COMMAND. */
export function decodeRequest(command: number, payload: Uint8Array): DecodedRequest {
  const c = known(command);
  return { command: c, msg: (REQUEST_DECODERS[c] as (p: Uint8Array) => unknown)(payload) } as DecodedRequest;
}

/** Decodes a (non-error) reply payload. DMA_READ replies use the 'auto' layout rule. */
export function decodeReply(command: number, payload: Uint8Array): DecodedReply {
  const c = known(command);
  return { command: c, msg: (REPLY_DECODERS[c] as (p: Uint8Array) => unknown)(payload) } as DecodedReply;
}

export function encodeRequest<C extends Command>(command: C, msg: RequestMap[C]): Uint8Array {
  return (REQUEST_ENCODERS[known(command)] as (m: unknown) => Uint8Array)(msg);
}

/** Replies needing the client's argsz (region info, IO fds) are encoded in full here; call
 * their own encoders to honour a client's argsz. */
export function encodeReply<C extends Command>(command: C, msg: ReplyMap[C]): Uint8Array {
  return (REPLY_ENCODERS[known(command)] as (m: unknown) => Uint8Array)(msg);
}

// ---------------------------------------------------------------- describe

const MAX_BYTES = 16;
const MAX_ITEMS = 4;
const HEX_KEYS = new Set(['offset', 'address', 'iova', 'datamatch', 'userData', 'shadowOffset', 'pageSize', 'pgsizes']);

type FlagTable = Readonly<Record<string, number>>;

function flagNames(v: number, table: FlagTable): string {
  const names: string[] = [];
  let rest = v;
  for (const [name, bit] of Object.entries(table)) {
    if (bit !== 0 && (bit & (bit - 1)) === 0 && (v & bit) !== 0) {
      names.push(name);
      rest &= ~bit;
    }
  }
  if (rest !== 0 || names.length === 0) names.push(`0x${(rest >>> 0).toString(16)}`);
  return names.join('|');
}

function featureFlags(v: number): string {
  const idx = v & DeviceFeatureFlags.MASK;
  const name = Object.entries(DeviceFeature).find(([, n]) => n === idx)?.[0] ?? `feature${idx}`;
  const { MASK: _mask, ...ops } = DeviceFeatureFlags;
  return `${flagNames(v & ~DeviceFeatureFlags.MASK, ops)} ${name}`;
}

const FLAG_RENDERERS: Partial<Record<Command, (v: number) => string>> = {
  [Command.DMA_MAP]: (v) => flagNames(v, DmaMapFlags),
  [Command.DMA_UNMAP]: (v) => (v === 0 ? '0' : flagNames(v, DmaUnmapFlags)),
  [Command.DEVICE_GET_INFO]: (v) => (v === 0 ? '0' : flagNames(v, DeviceInfoFlags)),
  [Command.DEVICE_GET_REGION_INFO]: (v) => (v === 0 ? '0' : flagNames(v, RegionInfoFlags)),
  [Command.DEVICE_GET_IRQ_INFO]: (v) => (v === 0 ? '0' : flagNames(v, IrqInfoFlags)),
  [Command.DEVICE_SET_IRQS]: (v) => flagNames(v, SetIrqsFlags),
  [Command.DEVICE_FEATURE]: featureFlags,
};

function hexBytes(b: Uint8Array): string {
  let s = '';
  const n = Math.min(b.length, MAX_BYTES);
  for (const x of b.subarray(0, n)) s += x.toString(16).padStart(2, '0');
  return `[${b.length}B${b.length ? ' ' : ''}${s}${b.length > MAX_BYTES ? '…' : ''}]`;
}

function fmt(v: unknown, key: string, depth: number): string {
  if (typeof v === 'bigint') return `0x${v.toString(16)}`;
  if (typeof v === 'number') return HEX_KEYS.has(key) ? `0x${v.toString(16)}` : String(v);
  if (v instanceof Uint8Array) return hexBytes(v);
  if (Array.isArray(v)) {
    const items = v.slice(0, MAX_ITEMS).map((x) => fmt(x, key, depth + 1));
    if (v.length > MAX_ITEMS) items.push(`…+${v.length - MAX_ITEMS}`);
    return `[${items.join(', ')}]`;
  }
  if (typeof v === 'object' && v !== null) {
    if (depth > 3) return '{…}';
    return `{${fields(v as Record<string, unknown>, depth + 1).join(' ')}}`;
  }
  return String(v);
}

function fields(o: Record<string, unknown>, depth: number, flags?: (v: number) => string): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined || k === 'raw') continue;
    if (k === 'flags' && flags && typeof v === 'number') out.push(`flags=${flags(v)}`);
    else out.push(`${k}=${fmt(v, k, depth)}`);
  }
  return out;
}

/**
 * One-line rendering of a decoded request or reply, e.g.
 * `REGION_WRITE offset=0x1000 region=0 count=4 data=[4B 01000000]`. `direction` only helps
 * DEVICE_FEATURE show its typed data.
 */
export function describe(command: number, msg: unknown, direction?: 'request' | 'reply'): string {
  const name = commandName(command);
  if (typeof msg !== 'object' || msg === null) return name;
  const parts = fields(msg as Record<string, unknown>, 0, isCommand(command) ? FLAG_RENDERERS[command] : undefined);
  if (command === Command.DEVICE_FEATURE) {
    const m = msg as Partial<feature.DeviceFeatureRequest>;
    if (typeof m.flags === 'number' && m.data instanceof Uint8Array) {
      try {
        const typed = feature.decodeFeatureData({ flags: m.flags, data: m.data }, direction ?? 'request');
        if (typed) parts.push(`value=${fmt(typed.value, 'value', 1)}`);
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        // malformed feature data: the raw bytes are already shown
      }
    }
  }
  return parts.length ? `${name} ${parts.join(' ')}` : name;
}

/** Decodes and describes; a malformed payload is described, not thrown. */
export function describePayload(command: number, payload: Uint8Array, direction: 'request' | 'reply'): string {
  try {
    const d = direction === 'request' ? decodeRequest(command, payload) : decodeReply(command, payload);
    return describe(command, d.msg, direction);
  } catch (e) {
    if (e instanceof ProtocolError) return `${commandName(command)} <malformed ${e.code}: ${e.message}>`;
    throw e;
  }
}
