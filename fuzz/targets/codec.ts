/**
 * Fuzz target: the protocol codec (src/protocol). Every decoder of both directions, the
 * header decoder, describe/describePayload, the DEVICE_FEATURE data decoders and the DMA_READ
 * reply variants; whatever decodes must re-encode or be refused with a ProtocolError.
 * Input: u8 direction (bit 0: reply), u16 command selector, then the payload.
 * A decoder may return or throw ProtocolError; anything else is a finding.
 */
import * as P from '../../src/protocol/index.js';
import { Bytes, onlyExpected } from '../lib.js';

const COMMANDS = [...P.ALL_COMMANDS, 0, 14, 19, 0xffff];

export function commandOf(sel: number): number {
  return COMMANDS[sel % COMMANDS.length]!;
}

/** data/count and data/size pairs must agree (a clamped subarray would not). */
function checkInvariants(command: number, msg: unknown): void {
  if (typeof msg !== 'object' || msg === null) return;
  if (Array.isArray(msg)) {
    for (const m of msg) checkInvariants(command, m);
    return;
  }
  const o = msg as Record<string, unknown>;
  if (o.data instanceof Uint8Array && command !== P.Command.DEVICE_SET_IRQS) {
    if (typeof o.count === 'number' && o.data.length !== o.count) throw new Error(`command ${command}: data.length ${o.data.length} != count ${o.count}`);
    if (typeof o.count !== 'number' && typeof o.size === 'number' && o.data.length !== o.size) throw new Error(`command ${command}: data.length ${o.data.length} != size ${o.size}`);
  }
  for (const v of Object.values(o)) if (typeof v === 'object' && !(v instanceof Uint8Array)) checkInvariants(command, v);
}

export function fuzz(data: Buffer): void {
  const b = new Bytes(data);
  const reply = (b.u8() & 1) === 1;
  const direction = reply ? 'reply' : 'request';
  const command = commandOf(b.u16());
  // the payload at an odd offset inside a larger buffer, as a receive buffer would hold it
  const rest = b.rest();
  const buf = new Uint8Array(rest.length + 3);
  buf.set(rest, 1);
  const payload = buf.subarray(1, 1 + rest.length);
  const where = `${direction} command ${command}`;

  if (payload.length >= P.HEADER_SIZE) {
    try {
      const h = P.decodeHeader(payload, 0);
      const out = new Uint8Array(P.HEADER_SIZE);
      P.encodeHeader(out, 0, h);
    } catch (e) {
      onlyExpected(e, 'header');
    }
  }
  if (typeof P.describePayload(command, payload, direction) !== 'string') throw new Error(`${where}: describePayload did not return a string`);
  let d: P.DecodedRequest | P.DecodedReply;
  try {
    d = reply ? P.decodeReply(command, payload) : P.decodeRequest(command, payload);
  } catch (e) {
    onlyExpected(e, `${where} decode`);
    return;
  }
  checkInvariants(command, d.msg);
  try {
    P.describe(command, d.msg, direction);
    if (command === P.Command.DEVICE_FEATURE) P.decodeFeatureData(d.msg as P.DeviceFeatureRequest, direction);
    if (command === P.Command.DMA_READ && reply) {
      P.decodeDmaReadReply(payload, undefined, 'spec');
      P.decodeDmaReadReply(payload, 7, 'qemu');
    }
  } catch (e) {
    onlyExpected(e, `${where} describe/feature`);
  }
  try {
    if (reply) P.encodeReply(command as P.Command, d.msg as never);
    else P.encodeRequest(command as P.Command, d.msg as never);
  } catch (e) {
    onlyExpected(e, `${where} re-encode`);
  }
}

/** The input that makes fuzz() decode `payload` as `command` in `direction` (for seeds). */
export function codecInput(command: number, direction: 'request' | 'reply', payload: Uint8Array): Uint8Array {
  const sel = COMMANDS.indexOf(command);
  const out = new Uint8Array(3 + payload.length);
  out[0] = direction === 'reply' ? 1 : 0;
  out[1] = sel & 0xff;
  out[2] = sel >> 8;
  out.set(payload, 3);
  return out;
}
