/**
 * The 16-byte vfio-user message header (spec: "Header").
 *
 *   0  u16 msg_id
 *   2  u16 command
 *   4  u32 message size, header included
 *   8  u32 flags: bits 0-3 type (0 command, 1 reply), bit 4 NO_REPLY, bit 5 ERROR
 *  12  u32 error (errno, valid when ERROR is set)
 */
import { ProtocolError } from './errors.js';

export const HEADER_SIZE = 16;

export const MSG_TYPE_MASK = 0xf;
export const MSG_TYPE_COMMAND = 0;
export const MSG_TYPE_REPLY = 1;
export const FLAG_NO_REPLY = 1 << 4;
export const FLAG_ERROR = 1 << 5;
const KNOWN_FLAGS = MSG_TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR;

export interface Header {
  msgId: number;
  command: number;
  /** total message size including the header */
  size: number;
  flags: number;
  error: number;
}

export function isReply(h: Header): boolean {
  return (h.flags & MSG_TYPE_MASK) === MSG_TYPE_REPLY;
}

/** Reads a header; checks only what can be checked without knowing the command. */
export function decodeHeader(buf: Uint8Array, offset = 0): Header {
  if (buf.length - offset < HEADER_SIZE) {
    throw new ProtocolError('VFU_SHORT_MESSAGE', `header needs ${HEADER_SIZE} bytes, have ${buf.length - offset}`);
  }
  const dv = new DataView(buf.buffer, buf.byteOffset + offset, HEADER_SIZE);
  const h: Header = {
    msgId: dv.getUint16(0, true),
    command: dv.getUint16(2, true),
    size: dv.getUint32(4, true),
    flags: dv.getUint32(8, true),
    error: dv.getUint32(12, true),
  };
  if (h.size < HEADER_SIZE) throw new ProtocolError('VFU_BAD_HEADER', `message size ${h.size} is smaller than the header`);
  const type = h.flags & MSG_TYPE_MASK;
  if (type !== MSG_TYPE_COMMAND && type !== MSG_TYPE_REPLY) {
    throw new ProtocolError('VFU_BAD_HEADER', `unknown message type ${type}`);
  }
  if ((h.flags & ~KNOWN_FLAGS) !== 0) throw new ProtocolError('VFU_BAD_FLAGS', `unknown header flags 0x${h.flags.toString(16)}`);
  return h;
}

/**
 * Why a message that is not a reply cannot be run as a command, or undefined when it can:
 * reserved flag bits, the ERROR bit, a non-zero error field, or an unknown type. The framing
 * of such a message is intact (its size is valid), so the receiver answers it with an error
 * reply and goes on.
 */
export function commandHeaderProblem(h: Header): string | undefined {
  const type = h.flags & MSG_TYPE_MASK;
  if (type !== MSG_TYPE_COMMAND) return `unknown message type ${type}`;
  if (h.flags & ~KNOWN_FLAGS) return `reserved header flags 0x${(h.flags & ~KNOWN_FLAGS).toString(16)} set`;
  if (h.flags & FLAG_ERROR) return 'ERROR flag set on a command';
  if (h.error !== 0) return `error field ${h.error} set on a command`;
  return undefined;
}

export function encodeHeader(buf: Uint8Array, offset: number, h: Header): void {
  const dv = new DataView(buf.buffer, buf.byteOffset + offset, HEADER_SIZE);
  dv.setUint16(0, h.msgId, true);
  dv.setUint16(2, h.command, true);
  dv.setUint32(4, h.size, true);
  dv.setUint32(8, h.flags, true);
  dv.setUint32(12, h.error, true);
}
