/**
 * vfio-user protocol codec: pure functions, no I/O (pg-protocol style).
 *
 * Conventions
 * - A "payload" is the message bytes AFTER the 16-byte header (see header.ts). For every
 *   command X there are XRequest/XReply types and encodeXRequest, decodeXRequest,
 *   encodeXReply, decodeXReply. Encoders return a fresh Uint8Array; a few take an extra
 *   argument (the client's argsz for GET_REGION_INFO / GET_REGION_IO_FDS replies).
 * - Numbers: every u64 field is a `bigint` (addresses, IOVAs, sizes, fd offsets, flags),
 *   EXCEPT region offsets of REGION_READ/WRITE/WRITE_MULTI and u64 counts (DMA_READ/WRITE
 *   count, WRITE_MULTI wr_cnt), which are `number`s because they are the hot path; a
 *   decoder throws (VFU_BAD_OFFSET / VFU_BAD_COUNT) if such a value exceeds
 *   Number.MAX_SAFE_INTEGER. u32/u16 fields are numbers.
 * - Zero-copy: every decoded `data`/`bitmap`/`rest` field is a subarray of the payload you
 *   passed in; copy it if you keep it beyond the life of the receive buffer.
 * - Errors: decoders check every length, count and offset before reading and throw only
 *   ProtocolError (stable `code`, `errno` for the error reply). Bytes after the described
 *   layout are ignored (real peers send some); lengths that drive reads are strict.
 *   Encoders throw ProtocolError('VFU_BAD_VALUE'/...) for values they cannot represent.
 * - Encoder inputs: fields the encoder can compute or default (argsz, count/size matching
 *   a data array, zero-must fields of requests) may be omitted; see each encoder's type.
 * - Every binary layout lives in layout.ts (exported as LAYOUTS).
 */
export * from './header.js';
export * from './errors.js';
export * from './constants.js';
export { LAYOUTS, type LayoutName, type StructLayout } from './layout.js';
export type { Init } from './wire.js';

export * from './messages/version.js';
export * from './messages/dma.js';
export * from './messages/device.js';
export * from './messages/region-info.js';
export * from './messages/region-io-fds.js';
export * from './messages/irq.js';
export * from './messages/region-rw.js';
export * from './messages/feature.js';
export * from './messages/migration.js';
export * from './dispatch.js';
