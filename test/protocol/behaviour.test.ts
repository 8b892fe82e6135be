/** Message-specific rules: argsz handling, layout variants, validation and error codes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as P from '../../src/protocol/index.js';
import { ascii, concat, h, toHex } from './helpers.js';

function throwsCode(fn: () => unknown, code: P.ProtocolErrorCode): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof P.ProtocolError, `expected ProtocolError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  });
}

const version = (json: string | Uint8Array): Uint8Array =>
  concat(h('0100 0000'), typeof json === 'string' ? ascii(json) : json, h('00'));

// ------------------------------------------------------------------------------ constants

test('commands and names', () => {
  assert.equal(P.Command.MIG_DATA_WRITE, 18);
  assert.equal(P.commandName(10), 'REGION_WRITE');
  assert.equal(P.commandName(14), 'UNKNOWN(14)');
  assert.equal(P.isCommand(14), false);
  assert.equal(P.ALL_COMMANDS.length, 17);
  throwsCode(() => P.decodeRequest(14, new Uint8Array(0)), 'VFU_UNKNOWN_COMMAND');
  throwsCode(() => P.decodeReply(0, new Uint8Array(0)), 'VFU_UNKNOWN_COMMAND');
});

// ------------------------------------------------------------------------------ VERSION

test('VERSION: malformed capability JSON is VFU_BAD_VERSION', () => {
  const bad = [
    '{',
    '{"capabilities":{}}x',
    '[1,2]',
    '"str"',
    '{"capabilities":[]}',
    '{"capabilities":{"max_msg_fds":"8"}}',
    '{"capabilities":{"max_msg_fds":-1}}',
    '{"capabilities":{"max_data_xfer_size":1.5}}',
    '{"capabilities":{"pgsizes":18446744073709551616}}',
    '{"capabilities":{"write_multiple":1}}',
    '{"capabilities":{"twin_socket":true}}',
    '{"capabilities":{"twin_socket":{"supported":"yes"}}}',
    '{"capabilities":{"twin_socket":{"supported":true,"fd_index":-1}}}',
    '{"capabilities":{"migration":[]}}',
    '{"capabilities":{"migration":{"pgsize":"4k"}}}',
    '{"capabilities":{"s":"\\x"}}',
    '{"capabilities":{"s":"a\u0001b"}}',
    '{"a":' + '['.repeat(100) + ']'.repeat(100) + '}',
    // a wrong-typed member holding a big integer (parsed as a bigint), found by the codec fuzz target
    '{"capabilities":{"max_data_xfer_size":{"a":[1,"b",null,25077777777777777777777]}}}',
    '{"capabilities":{"max_msg_fds":[18446744073709551615]}}',
  ];
  for (const json of bad) {
    throwsCode(() => P.decodeVersionRequest(version(json)), 'VFU_BAD_VERSION');
    assert.equal(typeof P.describePayload(P.Command.VERSION, version(json), 'reply'), 'string');
  }
  throwsCode(() => P.decodeVersionRequest(version(h('7b ff fe 7d'))), 'VFU_BAD_VERSION'); // invalid UTF-8
  throwsCode(() => P.decodeVersionRequest(h('0100')), 'VFU_SHORT_MESSAGE');
  // the spec requires the NUL after the JSON
  const noNul = concat(h('0000 0000'), new TextEncoder().encode('{"capabilities":{}}'));
  throwsCode(() => P.decodeVersionRequest(noNul), 'VFU_BAD_VERSION');
  assert.deepEqual(P.decodeVersionRequest(concat(noNul, h('00'))).major, 0);
  assert.deepEqual(P.decodeVersionRequest(h('0000 0000')).capabilities, { raw: {} }, 'no JSON at all is fine');
});

test('VERSION: defaults, absent members and unknown members', () => {
  assert.deepStrictEqual(
    { ...P.DEFAULT_CAPABILITIES },
    { maxMsgFds: 1, maxDataXferSize: 1048576, maxDmaMaps: 65535, pgsizes: 4096n },
  );
  const v = P.decodeVersionRequest(version('{"capabilities":{"twin_socket":{},"__proto__":{"x":1}},"other":2}'));
  assert.deepStrictEqual(v.capabilities.twinSocket, { supported: false });
  assert.equal(Object.getPrototypeOf(v.capabilities.raw), Object.prototype);
  assert.deepStrictEqual(Object.keys(v.capabilities.raw ?? {}), ['twin_socket', '__proto__']);
  const r = P.resolveCapabilities(v.capabilities);
  assert.equal(r.maxMsgFds, 1);
  assert.equal(r.maxDataXferSize, 1048576);
  assert.equal(r.writeMultiple, false);
  assert.deepStrictEqual(P.decodeVersionRequest(version('{}')).capabilities, { raw: {} });
});

test('VERSION: the encoder NUL-terminates and rejects unrepresentable values', () => {
  const b = P.encodeVersionRequest({ major: 0, minor: 0, capabilities: { maxMsgFds: 8, raw: { vendor_x: true } } });
  assert.equal(b[b.length - 1], 0);
  assert.equal(new TextDecoder().decode(b.subarray(4, b.length - 1)), '{"capabilities":{"vendor_x":true,"max_msg_fds":8}}');
  throwsCode(() => P.encodeVersionRequest({ major: 0, minor: 0, capabilities: { maxMsgFds: -1 } }), 'VFU_BAD_VALUE');
  throwsCode(() => P.encodeVersionRequest({ major: 0x10000, minor: 0, capabilities: {} }), 'VFU_BAD_VALUE');
  throwsCode(() => P.encodeVersionRequest({ major: 0, minor: 0, capabilities: { raw: { f: () => 1 } } }), 'VFU_BAD_VALUE');
});

// ------------------------------------------------------------------------------ DMA

test('DMA_MAP/UNMAP: argsz and flags', () => {
  const map = P.encodeDmaMapRequest({ flags: 3, offset: 0n, address: 0x1000n, size: 0x1000n });
  const dv = new DataView(map.buffer);
  dv.setUint32(0, 31, true);
  throwsCode(() => P.decodeDmaMapRequest(map), 'VFU_BAD_ARGSZ');
  dv.setUint32(0, 33, true);
  throwsCode(() => P.decodeDmaMapRequest(map), 'VFU_BAD_ARGSZ');
  throwsCode(() => P.decodeDmaUnmapRequest(h('17000000 00000000 0000000000000000 0000000000000000')), 'VFU_BAD_ARGSZ');
  throwsCode(() => P.decodeDmaUnmapRequest(h('18000000 03000000 0000000000000000 0000000000000000')), 'VFU_BAD_FLAGS');
  throwsCode(() => P.encodeDmaUnmapRequest({ flags: 3, address: 0n, size: 0n }), 'VFU_BAD_FLAGS');
  throwsCode(() => P.encodeDmaMapRequest({ flags: 3, offset: -1n, address: 0n, size: 0n }), 'VFU_BAD_VALUE');
  throwsCode(() => P.encodeDmaMapRequest({ flags: 3, offset: 1n << 64n, address: 0n, size: 0n }), 'VFU_BAD_VALUE');
});

test('DMA_READ reply: layout detection and expected count', () => {
  // QEMU's padded form whose first data bytes are zero cannot be told from the spec form
  const ambiguous = h('0010000000000000 08000000 00000000 01020304 00000000');
  assert.equal(P.decodeDmaReadReply(ambiguous).layout, 'spec');
  assert.deepStrictEqual(P.decodeDmaReadReply(ambiguous).data, h('01020304 00000000'));
  const q = P.decodeDmaReadReply(ambiguous, 8, 'qemu');
  assert.deepStrictEqual(q.data, h('00000000 01020304'));
  throwsCode(() => P.decodeDmaReadReply(h('0010000000000000 0800000000000000 0102030405060708'), 4), 'VFU_BAD_COUNT');
  throwsCode(() => P.decodeDmaReadReply(h('0010000000000000 0800000000000000 01')), 'VFU_BAD_COUNT');
  // 12 + count bytes can only be the unpadded 12-byte form
  assert.deepStrictEqual(P.decodeDmaReadReply(h('0010000000000000 0800000000000000 01020304')).data, h('00000000 01020304'));
  throwsCode(() => P.decodeDmaReadReply(h('0010000000000000 08000000')), 'VFU_BAD_COUNT');
  throwsCode(() => P.decodeDmaReadReply(h('0010000000000000 0800')), 'VFU_SHORT_MESSAGE');
  throwsCode(() => P.decodeDmaReadReply(h('0010000000000000 0000000000000001'), undefined, 'spec'), 'VFU_BAD_COUNT');
  // QEMU checks the message holds sizeof(VFIOUserDMARW) + count, so the QEMU layout is padded
  assert.equal(P.encodeDmaWriteRequest({ address: 0n, data: h('aabb'), layout: 'qemu' }).length, 16 + 2);
  throwsCode(() => P.encodeDmaReadReply({ address: 0n, count: 3, data: h('aabb') }), 'VFU_BAD_COUNT');
});

test('DMA request counts above 2^53 are VFU_BAD_COUNT', () => {
  throwsCode(() => P.decodeDmaReadRequest(h('0000000000000000 0000000000002000')), 'VFU_BAD_COUNT');
  throwsCode(() => P.encodeDmaReadRequest({ address: 0n, count: 2 ** 53 }), 'VFU_BAD_VALUE');
});

// ------------------------------------------------------------------------------ REGION_INFO

const CAPS: P.RegionCap[] = [
  { kind: 'sparse-mmap', version: 1, areas: [{ offset: 0n, size: 0x1000n }] },
  { kind: 'type', version: 1, type: 1, subtype: 2 },
];

test('GET_REGION_INFO reply honours the client argsz', () => {
  const needed = P.regionInfoReplySize(CAPS);
  assert.equal(needed, 32 + 32 + 16);
  const msg = { flags: P.RegionInfoFlags.READ, index: 1, size: 0x2000n, offset: 0x10000n, caps: CAPS };
  const full = P.encodeRegionInfoReply(msg, needed);
  assert.equal(full.length, needed);
  const d = P.decodeRegionInfoReply(full);
  assert.equal(d.truncated, false);
  assert.equal(d.flags, P.RegionInfoFlags.READ | P.RegionInfoFlags.CAPS);
  assert.deepStrictEqual(d.caps, CAPS);
  const short = P.encodeRegionInfoReply(msg, needed - 1);
  assert.equal(short.length, 32);
  const t = P.decodeRegionInfoReply(short);
  assert.deepStrictEqual([t.truncated, t.argsz, t.capOffset, t.caps.length], [true, needed, 0, 0]);
  // QEMU checks that CAPS comes with a cap_offset inside the data: a short reply has neither
  assert.equal(t.flags & P.RegionInfoFlags.CAPS, 0);
  // no caps: CAPS is cleared even if the caller set it
  const none = P.decodeRegionInfoReply(P.encodeRegionInfoReply({ flags: 0xf, index: 0, size: 0n, offset: 0n }, 32));
  assert.deepStrictEqual([none.flags, none.argsz, none.truncated], [7, 32, false]);
  // libvfio-user sends min(full, argsz) bytes with the caps zeroed when they do not fit
  const lvu = P.decodeRegionInfoReply(concat(short, new Uint8Array(8)));
  assert.equal(lvu.truncated, true);
  throwsCode(() => P.decodeRegionInfoRequest(h('1f000000 00000000 00000000 00000000 0000000000000000 0000000000000000')), 'VFU_BAD_ARGSZ');
  throwsCode(() => P.decodeRegionInfoReply(h('1f000000 00000000 00000000 00000000 0000000000000000 0000000000000000')), 'VFU_BAD_ARGSZ');
});

function regionInfoWithCaps(capBytes: string, capOffset = 32, flags = P.RegionInfoFlags.CAPS): Uint8Array {
  const caps = h(capBytes);
  const p = new Uint8Array(32 + caps.length);
  const dv = new DataView(p.buffer);
  dv.setUint32(0, p.length, true);
  dv.setUint32(4, flags, true);
  dv.setUint32(12, capOffset, true);
  p.set(caps, 32);
  return p;
}

test('GET_REGION_INFO capability chain: loops, bounds and counts', () => {
  throwsCode(() => P.decodeRegionInfoReply(regionInfoWithCaps('0200 0100 20000000 00000000 00000000')), 'VFU_BAD_OFFSET'); // self loop
  throwsCode(
    () => P.decodeRegionInfoReply(regionInfoWithCaps('0200 0100 30000000 00000000 00000000 | 0200 0100 20000000 00000000 00000000')),
    'VFU_BAD_OFFSET',
  ); // a -> b -> a
  throwsCode(() => P.decodeRegionInfoReply(regionInfoWithCaps('0200 0100 f0000000 00000000 00000000')), 'VFU_BAD_OFFSET'); // next past the end
  throwsCode(() => P.decodeRegionInfoReply(regionInfoWithCaps('0200 0100 00000000 00000000 00000000', 8)), 'VFU_BAD_OFFSET'); // inside the struct
  throwsCode(() => P.decodeRegionInfoReply(regionInfoWithCaps('0200 0100 00000000 0000', 32)), 'VFU_BAD_OFFSET'); // type cap cut short
  throwsCode(() => P.decodeRegionInfoReply(regionInfoWithCaps('0100 0100 00000000 02000000 00000000 0000000000000000 0000000000000000')), 'VFU_BAD_COUNT');
  // CAPS clear, or cap_offset 0: no chain is walked
  assert.deepStrictEqual(P.decodeRegionInfoReply(regionInfoWithCaps('0200 0100 20000000 00000000 00000000', 32, 0)).caps, []);
  assert.deepStrictEqual(P.decodeRegionInfoReply(regionInfoWithCaps('0200 0100 20000000 00000000 00000000', 0)).caps, []);
  // an unknown capability keeps its bytes up to the next capability
  const d = P.decodeRegionInfoReply(regionInfoWithCaps('0700 0300 30000000 aabbccdd eeff0011 | 0200 0100 00000000 05000000 06000000'));
  assert.deepStrictEqual(d.caps, [
    { kind: 'unknown', id: 7, version: 3, data: h('aabbccdd eeff0011') },
    { kind: 'type', version: 1, type: 5, subtype: 6 },
  ]);
});

// ------------------------------------------------------------------------------ REGION_IO_FDS

test('GET_REGION_IO_FDS: entry stride from argsz', () => {
  const entry = (type: number, stride: number): string => {
    const e = new Uint8Array(stride);
    const dv = new DataView(e.buffer);
    dv.setBigUint64(0, 0x100n, true);
    dv.setBigUint64(8, 4n, true);
    dv.setUint32(20, type, true);
    dv.setUint32(24, 1, true);
    if (stride >= 40) dv.setBigUint64(32, 0x1111n, true);
    if (stride >= 48) dv.setBigUint64(40, 0x2222n, true);
    return toHex(e);
  };
  const reply = (stride: number, type: number, count = 1, argsz = 16 + count * stride): Uint8Array =>
    concat(h(`${toHex(new Uint8Array(new Uint32Array([argsz, 0, 3, count]).buffer))}`), h(entry(type, stride).repeat(count)));
  const spec = P.decodeRegionIoFdsReply(reply(44, 0));
  assert.equal(spec.entrySize, 44);
  assert.deepStrictEqual(spec.subRegions[0], { kind: 'ioeventfd', offset: 0x100n, size: 4n, fdIndex: 0, flags: 1, datamatch: 0x1111n });
  const lvu = P.decodeRegionIoFdsReply(reply(56, 0, 2));
  assert.equal(lvu.entrySize, 56);
  assert.equal((lvu.subRegions[1] as P.IoEventFdSubRegion).datamatch, 0x2222n);
  const rfd = P.decodeRegionIoFdsReply(reply(48, 1));
  assert.deepStrictEqual(rfd.subRegions[0], { kind: 'ioregionfd', offset: 0x100n, size: 4n, fdIndex: 0, flags: 1, userData: 0x1111n });
  const unk = P.decodeRegionIoFdsReply(reply(40, 9));
  assert.equal(unk.subRegions[0]?.kind, 'unknown');
  assert.equal((unk.subRegions[0]).rest.length, 12);
  // shadow entries need the 48-byte layout: in 40-byte entries they are unknown
  assert.equal(P.decodeRegionIoFdsReply(reply(40, 2)).subRegions[0]?.kind, 'unknown');
  throwsCode(() => P.decodeRegionIoFdsReply(reply(40, 0, 2, 16 + 79)), 'VFU_BAD_ARGSZ'); // not a whole stride
  assert.equal(P.decodeRegionIoFdsReply(reply(40, 0, 2, 16 + 81)).truncated, true); // argsz beyond the payload
  throwsCode(() => P.decodeRegionIoFdsReply(reply(32, 0, 1)), 'VFU_BAD_ARGSZ'); // stride below 40
  throwsCode(() => P.decodeRegionIoFdsReply(h('0f000000 00000000 00000000 00000000')), 'VFU_BAD_ARGSZ');
  throwsCode(
    () =>
      P.encodeRegionIoFdsReply({
        flags: 0,
        index: 0,
        subRegions: [{ kind: 'ioeventfd-shadow', offset: 0n, size: 0n, fdIndex: 0, flags: 0, datamatch: 0n, shadowMemFdIndex: 1, shadowOffset: 0n }],
      }),
    'VFU_BAD_VALUE',
  );
  assert.equal(P.regionIoFdsReplySize(3), 16 + 120);
  assert.equal(P.regionIoFdsReplySize(3, 48), 16 + 144);
});

// ------------------------------------------------------------------------------ IRQs

test('SET_IRQS: flags, argsz, data and expected fds', () => {
  const req = (flags: number, count: number, data = '', argsz?: number): Uint8Array => {
    const d = h(data);
    const p = new Uint8Array(20 + d.length);
    const dv = new DataView(p.buffer);
    dv.setUint32(0, argsz ?? p.length, true);
    dv.setUint32(4, flags, true);
    dv.setUint32(16, count, true);
    p.set(d, 20);
    return p;
  };
  for (const flags of [0, 0x01, 0x08, 0x03 | 0x08, 0x01 | 0x18, 0x21 | 0x40, 0x80000021]) {
    throwsCode(() => P.decodeSetIrqsRequest(req(flags, 0)), 'VFU_BAD_FLAGS');
  }
  throwsCode(() => P.decodeSetIrqsRequest(req(0x22, 3, '0101')), 'VFU_BAD_COUNT');
  throwsCode(() => P.decodeSetIrqsRequest(req(0x21, 0, '', 19)), 'VFU_BAD_ARGSZ');
  throwsCode(() => P.decodeSetIrqsRequest(req(0x21, 0, '', 21)), 'VFU_BAD_ARGSZ');
  throwsCode(() => P.encodeSetIrqsRequest({ flags: 0x22, index: 0, start: 0, count: 2, data: h('01') }), 'VFU_BAD_COUNT');
  throwsCode(() => P.encodeSetIrqsRequest({ flags: 0x24, index: 0, start: 0, count: 1, data: h('01') }), 'VFU_BAD_COUNT');
  throwsCode(() => P.encodeSetIrqsRequest({ flags: 0x06 | 0x20, index: 0, start: 0, count: 1 }), 'VFU_BAD_FLAGS');
  const ev = P.decodeSetIrqsRequest(req(P.SetIrqsFlags.DATA_EVENTFD | P.SetIrqsFlags.ACTION_TRIGGER, 4));
  assert.equal(P.setIrqsExpectedFds(ev), 4);
  assert.equal(P.setIrqsExpectedFds(P.decodeSetIrqsRequest(req(0x22, 2, '0100'))), 0);
  throwsCode(() => P.decodeIrqInfoRequest(h('0f000000 00000000 00000000 00000000')), 'VFU_BAD_ARGSZ');
});

// ------------------------------------------------------------------------------ region access

test('REGION_READ/WRITE/WRITE_MULTI bounds', () => {
  throwsCode(() => P.decodeRegionReadRequest(h('0000000000002000 00000000 04000000')), 'VFU_BAD_OFFSET');
  assert.equal(P.decodeRegionReadRequest(h('ffffffffffff1f00 00000000 04000000')).offset, Number.MAX_SAFE_INTEGER);
  throwsCode(() => P.decodeRegionWriteRequest(h('0000000000000000 00000000 05000000 01020304')), 'VFU_BAD_COUNT');
  throwsCode(() => P.decodeRegionReadReply(h('0000000000000000 00000000 ffffffff')), 'VFU_BAD_COUNT');
  throwsCode(() => P.decodeRegionWriteRequest(h('0000000000000000 00000000')), 'VFU_SHORT_MESSAGE');
  throwsCode(() => P.encodeRegionWriteRequest({ offset: 2 ** 53, region: 0, data: h('00') }), 'VFU_BAD_VALUE');
  throwsCode(() => P.encodeRegionWriteRequest({ offset: 0, region: -1, data: h('00') }), 'VFU_BAD_VALUE');
  // WRITE_MULTI
  throwsCode(() => P.decodeRegionWriteMultiRequest(h('0100000000000000 0000000000000000 00000000 09000000 0000000000000000')), 'VFU_BAD_COUNT');
  throwsCode(() => P.decodeRegionWriteMultiRequest(h('0200000000000000 0000000000000000 00000000 01000000 0000000000000000')), 'VFU_BAD_COUNT');
  throwsCode(() => P.decodeRegionWriteMultiRequest(h('ffffffffffffffff')), 'VFU_BAD_COUNT');
  throwsCode(() => P.encodeRegionWriteMultiRequest({ entries: [{ offset: 0, region: 0, data: new Uint8Array(9) }] }), 'VFU_BAD_COUNT');
  assert.deepStrictEqual(P.decodeRegionWriteMultiRequest(h('0000000000000000')), { entries: [] });
});

// ------------------------------------------------------------------------------ DEVICE_FEATURE

test('DEVICE_FEATURE: flags validation', () => {
  const f = (flags: number): Uint8Array => new Uint8Array(new Uint32Array([8, flags]).buffer);
  throwsCode(() => P.decodeDeviceFeatureRequest(f(1)), 'VFU_BAD_FLAGS'); // no operation
  throwsCode(() => P.decodeDeviceFeatureRequest(f(1 | 0x30000)), 'VFU_BAD_FLAGS'); // GET|SET
  throwsCode(() => P.decodeDeviceFeatureRequest(f(1 | 0x90000)), 'VFU_BAD_FLAGS'); // unknown bit 19
  assert.equal(P.decodeDeviceFeatureRequest(f(1 | 0x70000)).flags, 0x70001); // GET|SET|PROBE is fine
  throwsCode(() => P.decodeDeviceFeatureRequest(new Uint8Array(new Uint32Array([7, 0x10001]).buffer)), 'VFU_BAD_ARGSZ');
  assert.equal(P.featureIndex(0x10008), P.DeviceFeature.DMA_LOGGING_REPORT);
});

test('DEVICE_FEATURE: default request argsz covers the whole reply', () => {
  const argsz = (b: Uint8Array): number => new DataView(b.buffer, b.byteOffset).getUint32(0, true);
  const G = P.DeviceFeatureFlags.GET;
  assert.equal(argsz(P.encodeDeviceFeatureRequest({ flags: P.DeviceFeature.MIGRATION | G })), 16);
  assert.equal(argsz(P.encodeDeviceFeatureRequest({ flags: P.DeviceFeature.MIG_DEVICE_STATE | G })), 16);
  const report = P.encodeFeatureDmaLoggingReportRequest({ iova: 0n, length: 0x80000n, pageSize: 4096n });
  assert.equal(argsz(P.encodeDeviceFeatureRequest({ flags: P.DeviceFeature.DMA_LOGGING_REPORT | G, data: report })), 8 + 24 + 16);
  const state = P.encodeFeatureMigDeviceState({ deviceState: P.DeviceState.STOP });
  assert.equal(argsz(P.encodeDeviceFeatureRequest({ flags: P.DeviceFeature.MIG_DEVICE_STATE | P.DeviceFeatureFlags.SET, data: state })), 16);
  assert.equal(argsz(P.encodeDeviceFeatureRequest({ flags: 6 | P.DeviceFeatureFlags.PROBE | P.DeviceFeatureFlags.SET })), 8);
  assert.equal(argsz(P.encodeDeviceFeatureRequest({ flags: P.DeviceFeature.MIGRATION | G, argsz: 100 })), 100);
});

test('DEVICE_FEATURE: typed feature data', () => {
  const mig = P.encodeFeatureMigration({ flags: BigInt(P.MigrationFlags.STOP_COPY | P.MigrationFlags.PRE_COPY) });
  assert.equal(toHex(mig), '0500000000000000');
  assert.deepStrictEqual(P.decodeFeatureMigration(mig), { flags: 5n });
  const st = P.encodeFeatureMigDeviceState({ deviceState: P.DeviceState.RESUMING });
  assert.equal(toHex(st), '0400000000000000');
  assert.deepStrictEqual(P.decodeFeatureMigDeviceState(st), { deviceState: 4, dataFd: 0 });
  const ctl = { pageSize: 4096n, ranges: [{ iova: 0x1000n, length: 0x2000n }] };
  assert.equal(toHex(P.encodeFeatureDmaLoggingControl(ctl)), '0010000000000000010000000000000000100000000000000020000000000000');
  assert.deepStrictEqual(P.decodeFeatureDmaLoggingControl(P.encodeFeatureDmaLoggingControl(ctl)), ctl);
  throwsCode(() => P.decodeFeatureDmaLoggingControl(h('0010000000000000 02000000 00000000 0000000000000000 0000000000000000')), 'VFU_BAD_COUNT');

  assert.equal(P.dmaLoggingBitmapSize(0x80000n, 4096n), 16);
  assert.equal(P.dmaLoggingBitmapSize(1n, 4096n), 8);
  assert.equal(P.dmaLoggingBitmapSize(4096n * 64n, 4096n), 8);
  assert.equal(P.dmaLoggingBitmapSize(4096n * 64n + 1n, 4096n), 16);
  assert.equal(P.dmaLoggingBitmapSize(0n, 4096n), 0);
  throwsCode(() => P.dmaLoggingBitmapSize(4096n, 3000n), 'VFU_BAD_VALUE');
  throwsCode(() => P.dmaLoggingBitmapSize(4096n, 0n), 'VFU_BAD_VALUE');
  throwsCode(() => P.dmaLoggingBitmapSize((1n << 64n) - 1n, 1n), 'VFU_BAD_SIZE');

  const rep = { iova: 0x100000000n, length: 0x80000n, pageSize: 4096n };
  const repBytes = P.encodeFeatureDmaLoggingReportRequest(rep);
  assert.deepStrictEqual(P.decodeFeatureDmaLoggingReportRequest(repBytes), rep);
  const bitmap = h('0500000000000000 0000000000000080');
  const reply = P.encodeFeatureDmaLoggingReportReply({ ...rep, bitmap });
  assert.deepStrictEqual(P.decodeFeatureDmaLoggingReportReply(reply), { ...rep, bitmap });
  throwsCode(() => P.decodeFeatureDmaLoggingReportReply(reply.subarray(0, reply.length - 1)), 'VFU_BAD_SIZE');
  throwsCode(() => P.encodeFeatureDmaLoggingReportReply({ ...rep, bitmap: new Uint8Array(8) }), 'VFU_BAD_SIZE');
  throwsCode(() => P.decodeFeatureDmaLoggingReportRequest(h('0000000000000000 0010000000000000 0300000000000000')), 'VFU_BAD_VALUE');

  const typed = P.decodeFeatureData({ flags: 0x10008, data: reply }, 'reply');
  assert.equal(typed?.feature, P.DeviceFeature.DMA_LOGGING_REPORT);
  assert.equal(P.decodeFeatureData({ flags: 0x10001, data: new Uint8Array(0) }, 'request'), undefined);
});

// ------------------------------------------------------------------------------ migration data

test('MIG_DATA_READ/WRITE: size and argsz', () => {
  throwsCode(() => P.decodeMigDataReadReply(h('0c000000 05000000 cafef00d')), 'VFU_BAD_SIZE');
  throwsCode(() => P.decodeMigDataWriteRequest(h('0d000000 05000000 01020304')), 'VFU_BAD_SIZE');
  throwsCode(() => P.decodeMigDataReadRequest(h('07000000 00000000')), 'VFU_BAD_ARGSZ');
  throwsCode(() => P.decodeMigDataReadRequest(h('08000000')), 'VFU_SHORT_MESSAGE');
  assert.equal(toHex(P.encodeMigDataReadRequest({ size: 16 })), '1800000010000000');
});

// ------------------------------------------------------------------------------ describe

test('describe renders one line per message', () => {
  assert.equal(
    P.describe(P.Command.REGION_WRITE, P.decodeRegionWriteRequest(h('0010000000000000 00000000 02000000 abcd'))),
    'REGION_WRITE offset=0x1000 region=0 count=2 data=[2B abcd]',
  );
  assert.equal(
    P.describe(P.Command.DEVICE_SET_IRQS, P.decodeSetIrqsRequest(h('14000000 24000000 02000000 00000000 03000000'))),
    'DEVICE_SET_IRQS argsz=20 flags=DATA_EVENTFD|ACTION_TRIGGER index=2 start=0 count=3 data=[0B]',
  );
  assert.equal(
    P.describe(P.Command.DEVICE_FEATURE, P.decodeDeviceFeatureReply(h('10000000 01000100 0500000000000000')), 'reply'),
    'DEVICE_FEATURE argsz=16 flags=GET MIGRATION data=[8B 0500000000000000] value={flags=0x5}',
  );
  assert.equal(P.describe(P.Command.DEVICE_RESET, {}), 'DEVICE_RESET');
  const long = P.describe(P.Command.REGION_READ, { offset: 0, region: 1, count: 100, data: new Uint8Array(100) });
  assert.match(long, /data=\[100B 0{32}…\]$/);
  assert.match(P.describePayload(P.Command.REGION_WRITE, h('00'), 'request'), /^REGION_WRITE <malformed VFU_SHORT_MESSAGE: /);
  assert.match(P.describePayload(14, h(''), 'request'), /^UNKNOWN\(14\) <malformed VFU_UNKNOWN_COMMAND/);
});
