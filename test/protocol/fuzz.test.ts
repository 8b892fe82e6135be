/**
 * Bounded, seeded fuzzing of every decoder. Inputs: mutations of the valid fixtures (bit
 * flips, truncation, extension, corrupted count/argsz/offset fields) and random payloads,
 * for every command in both directions. A decoder may return a result or throw
 * ProtocolError; anything else (TypeError, RangeError, a hang) fails with the seed.
 * Reproduce with VFU_FUZZ_SEED=<seed>.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as P from '../../src/protocol/index.js';
import { FIXTURES } from './fixture-table.js';
import { Rng, toHex } from './helpers.js';
import { flipBits } from '../helpers.js';

const SEED = Number(process.env.VFU_FUZZ_SEED ?? 0xf0221);
const MUTATIONS_PER_FIXTURE = 1500;
const RANDOM_PER_COMMAND = 1500;
// a decoder that hangs or goes quadratic shows as one slow input (a whole-run budget would
// fail on a busy machine instead)
const INPUT_BUDGET_MS = 2000;

type Direction = 'request' | 'reply';

function interesting32(r: Rng, len: number): number {
  const v = r.pick([0, 1, 2, 3, 4, 7, 8, 12, 15, 16, 20, 23, 24, 28, 31, 32, 33, 40, 47, 48, 56, 64, 80, 96, 0x7f, 0x80, 0xff, 0x100,
    0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffff0, 0xfffffff8, 0xffffffff, len, len - 1, len + 1, len - 8, len - 16, len - 32, r.u32()]);
  return v >>> 0;
}

function interesting64(r: Rng, len: number): bigint {
  return r.pick([0n, 1n, 8n, BigInt(len), 1n << 32n, (1n << 53n) - 1n, 1n << 53n, (1n << 63n) + 5n, (1n << 64n) - 1n, r.u64()]);
}

function mutateOnce(r: Rng, b: Uint8Array): Uint8Array {
  const len = b.length;
  switch (r.int(7)) {
    case 0: {
      const out = b.slice();
      for (let i = 1 + r.int(8); i > 0 && len > 0; i--) flipBits(out, r.int(len), 1 << r.int(8));
      return out;
    }
    case 1:
      return b.slice(0, r.int(len + 1));
    case 2: {
      const out = new Uint8Array(len + 1 + r.int(64));
      out.set(b);
      out.set(r.bytes(out.length - len), len);
      return out;
    }
    case 3: {
      if (len < 4) return b.slice();
      const out = b.slice();
      new DataView(out.buffer).setUint32(4 * r.int(len >> 2), interesting32(r, len), true);
      return out;
    }
    case 4: {
      if (len < 8) return b.slice();
      const out = b.slice();
      new DataView(out.buffer).setBigUint64(8 * r.int(len >> 3), interesting64(r, len), true);
      return out;
    }
    case 5: {
      if (len < 4) return b.slice();
      const out = b.slice();
      // unaligned field corruption
      new DataView(out.buffer).setUint32(r.int(len - 3), interesting32(r, len), true);
      return out;
    }
    default: {
      const out = b.slice();
      if (len > 0) out[r.int(len)] = r.u32() & 0xff;
      return out;
    }
  }
}

function mutate(r: Rng, b: Uint8Array): Uint8Array {
  let out = mutateOnce(r, b);
  while (r.int(3) === 0) out = mutateOnce(r, out);
  return out;
}

/** Places the payload at an odd offset inside a larger buffer with junk around it. */
function embed(r: Rng, p: Uint8Array): Uint8Array {
  const pre = r.int(8);
  const buf = r.bytes(pre + p.length + r.int(8));
  buf.set(p, pre);
  return buf.subarray(pre, pre + p.length);
}

/** data/count and data/size pairs must agree (a clamped subarray would not). */
function checkInvariants(command: number, msg: unknown, where: string): void {
  if (typeof msg !== 'object' || msg === null) return;
  if (Array.isArray(msg)) {
    for (const m of msg) checkInvariants(command, m, where);
    return;
  }
  const o = msg as Record<string, unknown>;
  if (o.data instanceof Uint8Array && command !== P.Command.DEVICE_SET_IRQS) {
    if (typeof o.count === 'number') assert.equal(o.data.length, o.count, `${where}: data.length != count`);
    else if (typeof o.size === 'number') assert.equal(o.data.length, o.size, `${where}: data.length != size`);
  }
  for (const v of Object.values(o)) if (typeof v === 'object' && !(v instanceof Uint8Array)) checkInvariants(command, v, where);
}

function unexpected(e: unknown, where: string): never {
  const err = e as Error;
  return assert.fail(`${where}: threw ${err?.name}: ${err?.message}\n${err?.stack}`);
}

function exercise(command: number, direction: Direction, payload: Uint8Array, where: () => string): void {
  // CPU time, not wall time: a busy machine (or an idle-priority run) may leave the test
  // descheduled for seconds while the decoder itself takes microseconds
  const t0 = process.cpuUsage();
  try {
    exerciseOnce(command, direction, payload, where);
  } finally {
    const used = process.cpuUsage(t0);
    const ms = (used.user + used.system) / 1000;
    if (ms > INPUT_BUDGET_MS) assert.fail(`${where()}: took ${ms.toFixed(0)} ms of CPU time`);
  }
}

function exerciseOnce(command: number, direction: Direction, payload: Uint8Array, where: () => string): void {
  try {
    // describePayload renders malformed input instead of throwing
    assert.equal(typeof P.describePayload(command, payload, direction), 'string');
  } catch (e) {
    unexpected(e, where());
  }
  let d: P.DecodedRequest | P.DecodedReply;
  try {
    d = direction === 'request' ? P.decodeRequest(command, payload) : P.decodeReply(command, payload);
  } catch (e) {
    if (e instanceof P.ProtocolError) return;
    unexpected(e, where());
  }
  checkInvariants(command, d.msg, where());
  try {
    P.describe(command, d.msg, direction);
    if (command === P.Command.DEVICE_FEATURE) P.decodeFeatureData(d.msg as P.DeviceFeatureRequest, direction);
    if (command === P.Command.DMA_READ && direction === 'reply') {
      P.decodeDmaReadReply(payload, undefined, 'spec');
      P.decodeDmaReadReply(payload, 7, 'qemu');
    }
  } catch (e) {
    if (!(e instanceof P.ProtocolError)) unexpected(e, where());
  }
  try {
    // whatever decodes must re-encode or be refused with a ProtocolError
    if (direction === 'request') P.encodeRequest(command as P.Command, d.msg as never);
    else P.encodeReply(command as P.Command, d.msg as never);
  } catch (e) {
    if (!(e instanceof P.ProtocolError)) unexpected(e, where());
  }
}

test(`fuzz: mutated fixtures (seed ${SEED})`, () => {
  const r = new Rng(SEED);
  for (const f of FIXTURES) {
    for (let i = 0; i < MUTATIONS_PER_FIXTURE; i++) {
      const input = embed(r, mutate(r, f.bytes));
      exercise(f.command, f.direction, input, () => `seed ${SEED} fixture "${f.name}" mutation #${i} payload ${toHex(input)}`);
    }
  }
});

test(`fuzz: random payloads for every command (seed ${SEED})`, () => {
  const r = new Rng(SEED ^ 0x9e3779b9);
  const commands = [...P.ALL_COMMANDS, 0, 14, 19, 0xffff];
  for (const command of commands) {
    for (const direction of ['request', 'reply'] as const) {
      for (let i = 0; i < RANDOM_PER_COMMAND; i++) {
        const len = r.pick([0, 1, 4, 8, 12, 15, 16, 20, 24, 31, 32, 40, 48, 64, 96, 128, 200, r.int(300)]);
        const p = r.bytes(len);
        // make argsz/count plausible now and then so the decoders get past the first checks
        if (len >= 4 && r.bool()) new DataView(p.buffer).setUint32(0, r.bool() ? len : interesting32(r, len), true);
        if (len >= 16 && r.bool()) new DataView(p.buffer).setUint32(12, r.int(4), true);
        const input = embed(r, p);
        exercise(command, direction, input, () => `seed ${SEED} command ${command} ${direction} random #${i} payload ${toHex(input)}`);
      }
    }
  }
});

test('fuzz: region capability chains that loop or point anywhere terminate', () => {
  const r = new Rng(SEED ^ 0xcafe);
  for (let i = 0; i < 2000; i++) {
    const n = 1 + r.int(6);
    const len = 32 + n * 16 + r.int(16);
    const p = new Uint8Array(len);
    const dv = new DataView(p.buffer);
    dv.setUint32(0, len, true);
    dv.setUint32(4, P.RegionInfoFlags.CAPS, true);
    dv.setUint32(12, 32 + 16 * r.int(n), true);
    for (let k = 0; k < n; k++) {
      const at = 32 + 16 * k;
      dv.setUint16(at, r.pick([1, 2, 3, 0xffff]), true);
      dv.setUint32(at + 4, r.pick([0, 32 + 16 * r.int(n), at, r.int(len + 8), interesting32(r, len)]), true);
      dv.setUint32(at + 8, r.int(3), true);
    }
    exercise(P.Command.DEVICE_GET_REGION_INFO, 'reply', p, () => `seed ${SEED} cap chain #${i} payload ${toHex(p)}`);
  }
});
