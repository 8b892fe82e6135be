/**
 * Turns fuzzer bytes into a stream of vfio-user messages (shared by the server and client
 * targets): each record picks a command, a payload and how the header is framed, so the
 * fuzzer reaches the handlers instead of dying on the framing, while still trying bad sizes,
 * flags, garbage and fds. Seeds are written by fuzz/seed.ts from the codec's byte fixtures.
 *
 * record := u8 kind, then by kind % 4:
 *   0, 1  message: u8 command selector, u8 mode, u16 payload length, payload. For a peer
 *         that answers (FrameOptions.reply), kind 0 is the reply to the oldest request
 *         (its command and id) and kind 1 a request of its own (selector's command).
 *         mode bit 0: header size from a u32 in the input (else exact); bit 1: flags byte
 *         from the input (else command/reply); bits 2-3: memfds attached (0-3);
 *         bit 4: error reply with a u32 errno (replies only)
 *   2     raw bytes: u16 length, bytes (garbage, split frames)
 *   3     pause: the peer processes what it has (u8 & 3 event loop turns)
 */
import { ALL_COMMANDS, HEADER_SIZE, encodeHeader, FLAG_ERROR, MSG_TYPE_REPLY } from '../src/protocol/index.js';
import { Bytes } from './lib.js';

const COMMANDS = [...ALL_COMMANDS, 0, 0xffff];

export type Step = { kind: 'send'; bytes: Uint8Array; fds: number } | { kind: 'pause'; turns: number };

export function commandIndex(command: number): number {
  const i = COMMANDS.indexOf(command);
  return i < 0 ? COMMANDS.length - 1 : i;
}

export interface FrameOptions {
  /** a request's message id (a counter) */
  msgId: () => number;
  /** kind 0 messages answer this request (undefined: kind 0 is a request too) */
  reply?: () => { command: number; msgId: number } | undefined;
}

/** One message or step from the input; undefined at the end of input. */
export function nextStep(b: Bytes, o: FrameOptions): Step | undefined {
  if (b.left === 0) return undefined;
  const kind = b.u8() & 3;
  if (kind === 3) return { kind: 'pause', turns: b.u8() & 3 };
  if (kind === 2) return { kind: 'send', bytes: b.take(b.u16() & 0x3fff), fds: 0 };
  const sel = b.u8();
  const answers = kind === 0 ? o.reply?.() : undefined;
  const reply = kind === 0 && o.reply !== undefined;
  const command = answers?.command ?? COMMANDS[sel % COMMANDS.length]!;
  const msgId = answers?.msgId ?? o.msgId();
  const mode = b.u8();
  const len = b.u16() & 0x3fff;
  const size = mode & 1 ? b.u32() : undefined;
  const flagsIn = mode & 2 ? b.u8() : undefined;
  const errno = reply && mode & 16 ? b.u32() : 0;
  const payload = b.take(len);
  const bytes = new Uint8Array(HEADER_SIZE + payload.length);
  let flags = flagsIn ?? (reply ? MSG_TYPE_REPLY : 0);
  if (errno) flags |= FLAG_ERROR;
  encodeHeader(bytes, 0, { msgId: msgId & 0xffff, command: command & 0xffff, size: (size ?? bytes.length) >>> 0, flags: flags >>> 0, error: errno >>> 0 });
  bytes.set(payload, HEADER_SIZE);
  return { kind: 'send', bytes, fds: (mode >> 2) & 3 };
}

/** Encodes one message record (for seeds): kind 0, exact size, no fds. */
export function messageRecord(command: number, payload: Uint8Array, mode = 0): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  out[0] = 0;
  out[1] = commandIndex(command);
  out[2] = mode;
  new DataView(out.buffer).setUint16(3, payload.length, true);
  out.set(payload, 5);
  return out;
}
