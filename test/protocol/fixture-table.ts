/**
 * Byte-exact payload fixtures (bytes after the 16-byte header), little-endian, written by
 * hand from the spec tables. Each is checked both ways by fixtures.test.ts and used as a
 * seed corpus by fuzz.test.ts.
 */
import * as P from '../../src/protocol/index.js';
import { ascii, concat, h } from './helpers.js';

export interface Fixture {
  name: string;
  command: P.Command;
  direction: 'request' | 'reply';
  bytes: Uint8Array;
  /** The decoded form. */
  msg: unknown;
  /** Encoder to use instead of encodeRequest/encodeReply(command, msg). */
  encode?: () => Uint8Array;
  /** Decoder to use instead of decodeRequest/decodeReply(command, bytes).msg. */
  decode?: (p: Uint8Array) => unknown;
  /** Only check this direction (the other one is not byte-identical by design). */
  only?: 'decode' | 'encode';
}

const C = P.Command;

// ---------------------------------------------------------------- VERSION

const QEMU_CAPS_JSON =
  '{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,' +
  '"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}';

const SERVER_CAPS_JSON =
  '{"capabilities":{"max_msg_fds":1,"max_data_xfer_size":65536,"pgsizes":18446744073709547520,' +
  '"twin_socket":{"supported":true,"fd_index":0},"x_vendor":{"a":[1,"b",null,-2.5e3,"\\u00e9\\n"]}}}';

// ---------------------------------------------------------------- GET_REGION_INFO

const BAR0_INFO: P.RegionInfoReply = {
  argsz: 112,
  flags: P.RegionInfoFlags.READ | P.RegionInfoFlags.WRITE | P.RegionInfoFlags.MMAP | P.RegionInfoFlags.CAPS,
  index: 0,
  capOffset: 32,
  size: 0x4000n,
  offset: 0n,
  caps: [
    {
      kind: 'sparse-mmap',
      version: 1,
      areas: [
        { offset: 0x1000n, size: 0x1000n },
        { offset: 0x3000n, size: 0x1000n },
      ],
    },
    { kind: 'type', version: 1, type: 0x80008086, subtype: 1 },
    { kind: 'unknown', id: 9, version: 2, data: h('0102030405060708') },
  ],
  truncated: false,
};

// ---------------------------------------------------------------- GET_REGION_IO_FDS

const IO_FDS_40: P.RegionIoFdsReply = {
  argsz: 96,
  flags: 0,
  index: 0,
  count: 2,
  subRegions: [
    { kind: 'ioeventfd', offset: 0x1000n, size: 4n, fdIndex: 0, flags: P.IoEventFdFlags.DATAMATCH, datamatch: 0x1234n },
    { kind: 'ioregionfd', offset: 0x2000n, size: 8n, fdIndex: 1, flags: P.IoRegionFdFlags.POSTED_WRITES, userData: 0xdeadbeefn },
  ],
  entrySize: 40,
  truncated: false,
};

export const FIXTURES: Fixture[] = [
  // VERSION ------------------------------------------------------------------------
  {
    name: 'VERSION request (QEMU-style capabilities)',
    command: C.VERSION,
    direction: 'request',
    bytes: concat(h('0000 0000'), ascii(QEMU_CAPS_JSON), h('00')),
    msg: {
      major: 0,
      minor: 0,
      capabilities: {
        maxMsgFds: 16,
        maxDataXferSize: 1048576,
        maxDmaMaps: 65535,
        pgsizes: 4096n,
        migration: { pgsize: 4096, maxBitmapSize: 268435456 },
        writeMultiple: true,
        raw: {
          migration: { pgsize: 4096, max_bitmap_size: 268435456 },
          max_msg_fds: 16,
          max_data_xfer_size: 1048576,
          pgsizes: 4096,
          max_dma_maps: 65535,
          write_multiple: true,
        },
      },
    },
  },
  {
    name: 'VERSION reply (twin socket, 64-bit pgsizes, unknown member kept)',
    command: C.VERSION,
    direction: 'reply',
    bytes: concat(h('0100 0000'), ascii(SERVER_CAPS_JSON), h('00')),
    msg: {
      major: 1,
      minor: 0,
      capabilities: {
        maxMsgFds: 1,
        maxDataXferSize: 65536,
        pgsizes: 0xfffffffffffff000n,
        twinSocket: { supported: true, fdIndex: 0 },
        raw: {
          max_msg_fds: 1,
          max_data_xfer_size: 65536,
          pgsizes: 0xfffffffffffff000n,
          twin_socket: { supported: true, fd_index: 0 },
          x_vendor: { a: [1, 'b', null, -2500, 'é\n'] },
        },
      },
    },
    // JSON.stringify writes -2500 and "é\n", not -2.5e3 and "\u00e9\n".
    only: 'decode',
  },
  {
    name: 'VERSION reply (re-encoded form of the above)',
    command: C.VERSION,
    direction: 'reply',
    bytes: concat(
      h('0100 0000'),
      ascii(
        '{"capabilities":{"max_msg_fds":1,"max_data_xfer_size":65536,"pgsizes":18446744073709547520,' +
          '"twin_socket":{"supported":true,"fd_index":0},"x_vendor":{"a":[1,"b",null,-2500,"é\\n"]}}}',
      ),
      h('00'),
    ),
    msg: {
      major: 1,
      minor: 0,
      capabilities: {
        maxMsgFds: 1,
        maxDataXferSize: 65536,
        pgsizes: 0xfffffffffffff000n,
        twinSocket: { supported: true, fdIndex: 0 },
        raw: {
          max_msg_fds: 1,
          max_data_xfer_size: 65536,
          pgsizes: 0xfffffffffffff000n,
          twin_socket: { supported: true, fd_index: 0 },
          x_vendor: { a: [1, 'b', null, -2500, 'é\n'] },
        },
      },
    },
  },
  {
    name: 'VERSION request without version data',
    command: C.VERSION,
    direction: 'request',
    bytes: h('0100 0200'),
    msg: { major: 1, minor: 2, capabilities: { raw: {} } },
    only: 'decode',
  },
  {
    name: 'VERSION request, no NUL, then bytes after a NUL are ignored',
    command: C.VERSION,
    direction: 'request',
    bytes: concat(h('0100 0000'), ascii('{"capabilities":{"write_multiple":false}}'), h('00 ff ff 7b')),
    msg: { major: 1, minor: 0, capabilities: { writeMultiple: false, raw: { write_multiple: false } } },
    only: 'decode',
  },
  {
    name: 'VERSION request, empty capabilities (encoder output for no members)',
    command: C.VERSION,
    direction: 'request',
    bytes: concat(h('0000 0000'), ascii('{"capabilities":{}}'), h('00')),
    msg: { major: 0, minor: 0, capabilities: { raw: {} } },
  },

  // DMA_MAP / DMA_UNMAP ------------------------------------------------------------
  {
    name: 'DMA_MAP request',
    command: C.DMA_MAP,
    direction: 'request',
    //           argsz    flags    offset           address          size
    bytes: h('20000000 03000000 0010000000000000 0000000001000000 0000200000000000'),
    msg: { argsz: 32, flags: 3, offset: 0x1000n, address: 0x1_0000_0000n, size: 0x200000n },
  },
  { name: 'DMA_MAP reply', command: C.DMA_MAP, direction: 'reply', bytes: h(''), msg: {} },
  {
    name: 'DMA_UNMAP request',
    command: C.DMA_UNMAP,
    direction: 'request',
    //           argsz    flags    address          size
    bytes: h('18000000 00000000 0000000001000000 0000200000000000'),
    msg: { argsz: 24, flags: 0, address: 0x1_0000_0000n, size: 0x200000n },
  },
  {
    name: 'DMA_UNMAP request (ALL)',
    command: C.DMA_UNMAP,
    direction: 'request',
    bytes: h('18000000 02000000 0000000000000000 0000000000000000'),
    msg: { argsz: 24, flags: P.DmaUnmapFlags.ALL, address: 0n, size: 0n },
  },
  {
    name: 'DMA_UNMAP request (GET_DIRTY_BITMAP)',
    command: C.DMA_UNMAP,
    direction: 'request',
    //           argsz    flags    address          size             pgsize           bitmap size
    bytes: h('30000000 01000000 0000000001000000 0000010000000000 0010000000000000 0800000000000000'),
    msg: { argsz: 48, flags: P.DmaUnmapFlags.GET_DIRTY_BITMAP, address: 0x1_0000_0000n, size: 0x10000n, bitmap: { pgsize: 4096n, size: 8n } },
  },
  {
    name: 'DMA_UNMAP reply (GET_DIRTY_BITMAP, with the bitmap)',
    command: C.DMA_UNMAP,
    direction: 'reply',
    bytes: h('30000000 01000000 0000000001000000 0000010000000000 0010000000000000 0800000000000000 0580000000000000'),
    msg: {
      argsz: 48,
      flags: P.DmaUnmapFlags.GET_DIRTY_BITMAP,
      address: 0x1_0000_0000n,
      size: 0x10000n,
      bitmap: { pgsize: 4096n, size: 8n, data: h('0580000000000000') },
    },
  },
  {
    name: 'DMA_UNMAP reply (echo)',
    command: C.DMA_UNMAP,
    direction: 'reply',
    bytes: h('18000000 00000000 0000000001000000 0000200000000000'),
    msg: { argsz: 24, flags: 0, address: 0x1_0000_0000n, size: 0x200000n },
  },

  // DEVICE_GET_INFO ------------------------------------------------------------------
  {
    name: 'DEVICE_GET_INFO request',
    command: C.DEVICE_GET_INFO,
    direction: 'request',
    bytes: h('10000000 00000000 00000000 00000000'),
    msg: { argsz: 16, flags: 0, numRegions: 0, numIrqs: 0 },
  },
  {
    name: 'DEVICE_GET_INFO reply',
    command: C.DEVICE_GET_INFO,
    direction: 'reply',
    //           argsz    flags    regions  irqs
    bytes: h('10000000 03000000 09000000 05000000'),
    msg: { argsz: 16, flags: P.DeviceInfoFlags.RESET | P.DeviceInfoFlags.PCI, numRegions: 9, numIrqs: 5 },
  },

  // GET_REGION_INFO -----------------------------------------------------------------
  {
    name: 'GET_REGION_INFO request',
    command: C.DEVICE_GET_REGION_INFO,
    direction: 'request',
    //           argsz    flags    index    cap_off  size             offset
    bytes: h('20000000 00000000 07000000 00000000 0000000000000000 0000000000000000'),
    msg: { argsz: 32, flags: 0, index: 7, capOffset: 0, size: 0n, offset: 0n },
  },
  {
    name: 'GET_REGION_INFO reply (no caps)',
    command: C.DEVICE_GET_REGION_INFO,
    direction: 'reply',
    bytes: h('20000000 03000000 07000000 00000000 0010000000000000 0000000000070000'),
    msg: { argsz: 32, flags: 3, index: 7, capOffset: 0, size: 0x1000n, offset: 0x70000000000n, caps: [], truncated: false },
  },
  {
    name: 'GET_REGION_INFO reply (sparse mmap + type + unknown caps)',
    command: C.DEVICE_GET_REGION_INFO,
    direction: 'reply',
    bytes: h(`
      70000000 0f000000 00000000 20000000 0040000000000000 0000000000000000
      | 0100 0100 50000000 02000000 00000000
      |   0010000000000000 0010000000000000 0030000000000000 0010000000000000
      | 0200 0100 60000000 86800080 01000000
      | 0900 0200 00000000 0102030405060708`),
    msg: BAR0_INFO,
  },
  {
    name: 'GET_REGION_INFO reply truncated to the client argsz (32)',
    command: C.DEVICE_GET_REGION_INFO,
    direction: 'reply',
    // no CAPS flag in the short reply (QEMU rejects CAPS with a cap_offset outside the data)
    bytes: h('70000000 07000000 00000000 00000000 0040000000000000 0000000000000000'),
    msg: { ...BAR0_INFO, flags: BAR0_INFO.flags & ~P.RegionInfoFlags.CAPS, capOffset: 0, caps: [], truncated: true },
    encode: () => P.encodeRegionInfoReply(BAR0_INFO, 32),
  },

  // GET_REGION_IO_FDS ----------------------------------------------------------------
  {
    name: 'GET_REGION_IO_FDS request',
    command: C.DEVICE_GET_REGION_IO_FDS,
    direction: 'request',
    bytes: h('60000000 00000000 00000000 00000000'),
    msg: { argsz: 96, flags: 0, index: 0, count: 0 },
  },
  {
    name: 'GET_REGION_IO_FDS reply (spec 40-byte entries)',
    command: C.DEVICE_GET_REGION_IO_FDS,
    direction: 'reply',
    bytes: h(`
      60000000 00000000 00000000 02000000
      | 0010000000000000 0400000000000000 00000000 00000000 01000000 00000000 3412000000000000
      | 0020000000000000 0800000000000000 01000000 01000000 02000000 00000000 efbeadde00000000`),
    msg: IO_FDS_40,
  },
  {
    name: 'GET_REGION_IO_FDS reply (libvfio-user 48-byte entries, shadow ioeventfd)',
    command: C.DEVICE_GET_REGION_IO_FDS,
    direction: 'reply',
    bytes: h(`
      70000000 00000000 00000000 02000000
      | 0010000000000000 0400000000000000 00000000 00000000 01000000 00000000 0000000000000000 3412000000000000
      | 0810000000000000 0400000000000000 01000000 02000000 00000000 02000000 4000000000000000 0000000000000000`),
    msg: {
      argsz: 112,
      flags: 0,
      index: 0,
      count: 2,
      subRegions: [
        { kind: 'ioeventfd', offset: 0x1000n, size: 4n, fdIndex: 0, flags: 1, datamatch: 0x1234n },
        { kind: 'ioeventfd-shadow', offset: 0x1008n, size: 4n, fdIndex: 1, flags: 0, datamatch: 0n, shadowMemFdIndex: 2, shadowOffset: 0x40n },
      ],
      entrySize: 48,
      truncated: false,
    },
  },
  {
    name: 'GET_REGION_IO_FDS reply truncated to the client argsz (16)',
    command: C.DEVICE_GET_REGION_IO_FDS,
    direction: 'reply',
    bytes: h('60000000 00000000 00000000 02000000'),
    msg: { argsz: 96, flags: 0, index: 0, count: 2, subRegions: [], entrySize: 0, truncated: true },
    encode: () => P.encodeRegionIoFdsReply(IO_FDS_40, 16),
  },

  // GET_IRQ_INFO / SET_IRQS ---------------------------------------------------------
  {
    name: 'GET_IRQ_INFO request',
    command: C.DEVICE_GET_IRQ_INFO,
    direction: 'request',
    bytes: h('10000000 00000000 02000000 00000000'),
    msg: { argsz: 16, flags: 0, index: P.PciIrq.MSIX, count: 0 },
  },
  {
    name: 'GET_IRQ_INFO reply',
    command: C.DEVICE_GET_IRQ_INFO,
    direction: 'reply',
    bytes: h('10000000 09000000 02000000 20000000'),
    msg: { argsz: 16, flags: P.IrqInfoFlags.EVENTFD | P.IrqInfoFlags.NORESIZE, index: 2, count: 32 },
  },
  {
    name: 'SET_IRQS request (DATA_EVENTFD|ACTION_TRIGGER, fds out of band)',
    command: C.DEVICE_SET_IRQS,
    direction: 'request',
    //           argsz    flags    index    start    count
    bytes: h('14000000 24000000 02000000 00000000 03000000'),
    msg: { argsz: 20, flags: 0x24, index: 2, start: 0, count: 3, data: h('') },
  },
  {
    name: 'SET_IRQS request (DATA_BOOL|ACTION_MASK)',
    command: C.DEVICE_SET_IRQS,
    direction: 'request',
    bytes: h('17000000 0a000000 00000000 01000000 03000000 010001'),
    msg: { argsz: 23, flags: 0x0a, index: 0, start: 1, count: 3, data: h('010001') },
  },
  {
    name: 'SET_IRQS request (DATA_NONE|ACTION_TRIGGER, count 0: disable the index)',
    command: C.DEVICE_SET_IRQS,
    direction: 'request',
    bytes: h('14000000 21000000 01000000 00000000 00000000'),
    msg: { argsz: 20, flags: 0x21, index: 1, start: 0, count: 0, data: h('') },
  },
  { name: 'SET_IRQS reply', command: C.DEVICE_SET_IRQS, direction: 'reply', bytes: h(''), msg: {} },

  // REGION_READ / REGION_WRITE / REGION_WRITE_MULTI ----------------------------------
  {
    name: 'REGION_READ request',
    command: C.REGION_READ,
    direction: 'request',
    //           offset           region   count
    bytes: h('1000000000000000 07000000 04000000'),
    msg: { offset: 0x10, region: 7, count: 4 },
  },
  {
    name: 'REGION_READ reply',
    command: C.REGION_READ,
    direction: 'reply',
    bytes: h('1000000000000000 07000000 04000000 86801110'),
    msg: { offset: 0x10, region: 7, count: 4, data: h('86801110') },
  },
  {
    name: 'REGION_WRITE request',
    command: C.REGION_WRITE,
    direction: 'request',
    bytes: h('0010000000000000 00000000 02000000 abcd'),
    msg: { offset: 0x1000, region: 0, count: 2, data: h('abcd') },
  },
  {
    name: 'REGION_WRITE reply',
    command: C.REGION_WRITE,
    direction: 'reply',
    bytes: h('0010000000000000 00000000 02000000'),
    msg: { offset: 0x1000, region: 0, count: 2 },
  },
  {
    name: 'REGION_WRITE_MULTI request',
    command: C.REGION_WRITE_MULTI,
    direction: 'request',
    bytes: h(`
      0200000000000000
      | 1000000000000000 00000000 04000000 0102030400000000
      | 0020000000000000 02000000 08000000 1122334455667788`),
    msg: {
      entries: [
        { offset: 0x10, region: 0, count: 4, data: h('01020304') },
        { offset: 0x2000, region: 2, count: 8, data: h('1122334455667788') },
      ],
    },
  },
  { name: 'REGION_WRITE_MULTI reply', command: C.REGION_WRITE_MULTI, direction: 'reply', bytes: h('0200000000000000'), msg: { wrCnt: 2 } },

  // DMA_READ / DMA_WRITE --------------------------------------------------------------
  {
    name: 'DMA_READ request',
    command: C.DMA_READ,
    direction: 'request',
    //           address          count
    bytes: h('0000001000000000 0800000000000000'),
    msg: { address: 0x10000000n, count: 8 },
  },
  {
    name: 'DMA_READ reply (spec: u64 count, data at 16)',
    command: C.DMA_READ,
    direction: 'reply',
    bytes: h('0000001000000000 0800000000000000 0102030405060708'),
    msg: { address: 0x10000000n, count: 8, data: h('0102030405060708'), layout: 'spec' },
  },
  {
    name: 'DMA_READ reply (QEMU: u32 count, data at 12, 4 pad bytes)',
    command: C.DMA_READ,
    direction: 'reply',
    bytes: h('0000001000000000 08000000 0102030405060708 00000000'),
    msg: { address: 0x10000000n, count: 8, data: h('0102030405060708'), layout: 'qemu' },
  },
  {
    name: 'DMA_READ reply (12-byte header without padding)',
    command: C.DMA_READ,
    direction: 'reply',
    bytes: h('0000001000000000 08000000 0102030405060708'),
    msg: { address: 0x10000000n, count: 8, data: h('0102030405060708'), layout: 'qemu' },
    only: 'decode',
  },
  {
    name: 'DMA_WRITE request (spec)',
    command: C.DMA_WRITE,
    direction: 'request',
    bytes: h('0020000000000000 0400000000000000 deadbeef'),
    msg: { address: 0x2000n, count: 4, data: h('deadbeef'), layout: 'spec' },
  },
  {
    name: 'DMA_WRITE request (QEMU layout)',
    command: C.DMA_WRITE,
    direction: 'request',
    bytes: h('0020000000000000 04000000 deadbeef 00000000'),
    msg: { address: 0x2000n, count: 4, data: h('deadbeef'), layout: 'qemu' },
  },
  {
    name: 'DMA_WRITE reply (spec: u64 address, u32 count)',
    command: C.DMA_WRITE,
    direction: 'reply',
    bytes: h('0020000000000000 04000000'),
    msg: { address: 0x2000n, count: 4 },
  },
  { name: 'DMA_WRITE reply (QEMU: empty)', command: C.DMA_WRITE, direction: 'reply', bytes: h(''), msg: {} },
  {
    name: 'DMA_WRITE reply (libvfio-user: u64 count)',
    command: C.DMA_WRITE,
    direction: 'reply',
    bytes: h('0020000000000000 0400000000000000'),
    msg: { address: 0x2000n, count: 4 },
    only: 'decode',
  },

  // DEVICE_RESET ---------------------------------------------------------------------
  { name: 'DEVICE_RESET request', command: C.DEVICE_RESET, direction: 'request', bytes: h(''), msg: {} },
  { name: 'DEVICE_RESET reply', command: C.DEVICE_RESET, direction: 'reply', bytes: h(''), msg: {} },

  // DEVICE_FEATURE -------------------------------------------------------------------
  {
    name: 'DEVICE_FEATURE request GET MIGRATION',
    command: C.DEVICE_FEATURE,
    direction: 'request',
    //           argsz    flags
    bytes: h('10000000 01000100'),
    msg: { argsz: 16, flags: P.DeviceFeature.MIGRATION | P.DeviceFeatureFlags.GET, data: h('') },
  },
  {
    name: 'DEVICE_FEATURE reply GET MIGRATION (STOP_COPY|PRE_COPY)',
    command: C.DEVICE_FEATURE,
    direction: 'reply',
    bytes: h('10000000 01000100 0500000000000000'),
    msg: { argsz: 16, flags: 0x10001, data: h('0500000000000000') },
  },
  {
    name: 'DEVICE_FEATURE request SET MIG_DEVICE_STATE (STOP_COPY)',
    command: C.DEVICE_FEATURE,
    direction: 'request',
    bytes: h('10000000 02000200 03000000 00000000'),
    msg: { argsz: 16, flags: P.DeviceFeature.MIG_DEVICE_STATE | P.DeviceFeatureFlags.SET, data: h('03000000 00000000') },
  },
  {
    name: 'DEVICE_FEATURE reply SET MIG_DEVICE_STATE',
    command: C.DEVICE_FEATURE,
    direction: 'reply',
    bytes: h('10000000 02000200 03000000 00000000'),
    msg: { argsz: 16, flags: 0x20002, data: h('03000000 00000000') },
  },
  {
    name: 'DEVICE_FEATURE request PROBE|SET DMA_LOGGING_START',
    command: C.DEVICE_FEATURE,
    direction: 'request',
    bytes: h('08000000 06000600'),
    msg: { argsz: 8, flags: 6 | P.DeviceFeatureFlags.SET | P.DeviceFeatureFlags.PROBE, data: h('') },
  },
  {
    name: 'DEVICE_FEATURE request SET DMA_LOGGING_START (2 ranges)',
    command: C.DEVICE_FEATURE,
    direction: 'request',
    bytes: h(`
      38000000 06000200
      | 0010000000000000 02000000 00000000
      | 0000000000000000 0000100000000000 0000000001000000 0000200000000000`),
    msg: {
      argsz: 56,
      flags: 0x20006,
      data: h('0010000000000000 02000000 00000000 0000000000000000 0000100000000000 0000000001000000 0000200000000000'),
    },
  },
  {
    name: 'DEVICE_FEATURE request GET DMA_LOGGING_REPORT',
    command: C.DEVICE_FEATURE,
    direction: 'request',
    bytes: h('30000000 08000100 0000000001000000 0000080000000000 0010000000000000'),
    msg: { argsz: 48, flags: 0x10008, data: h('0000000001000000 0000080000000000 0010000000000000') },
  },
  {
    name: 'DEVICE_FEATURE reply GET DMA_LOGGING_REPORT (128 pages, 16-byte bitmap)',
    command: C.DEVICE_FEATURE,
    direction: 'reply',
    bytes: h('30000000 08000100 0000000001000000 0000080000000000 0010000000000000 0500000000000000 0000000000000080'),
    msg: {
      argsz: 48,
      flags: 0x10008,
      data: h('0000000001000000 0000080000000000 0010000000000000 0500000000000000 0000000000000080'),
    },
  },

  // MIG_DATA_READ / MIG_DATA_WRITE ---------------------------------------------------------
  {
    name: 'MIG_DATA_READ request',
    command: C.MIG_DATA_READ,
    direction: 'request',
    //           argsz    size
    bytes: h('08100000 00100000'),
    msg: { argsz: 4104, size: 4096 },
  },
  {
    name: 'MIG_DATA_READ reply',
    command: C.MIG_DATA_READ,
    direction: 'reply',
    bytes: h('0c000000 04000000 cafef00d'),
    msg: { argsz: 12, size: 4, data: h('cafef00d') },
  },
  {
    name: 'MIG_DATA_READ reply (libvfio-user: buffer sized for the request)',
    command: C.MIG_DATA_READ,
    direction: 'reply',
    bytes: h('0c000000 04000000 cafef00d 00000000 00000000'),
    msg: { argsz: 12, size: 4, data: h('cafef00d') },
    only: 'decode',
  },
  {
    name: 'MIG_DATA_WRITE request',
    command: C.MIG_DATA_WRITE,
    direction: 'request',
    bytes: h('0d000000 05000000 0102030405'),
    msg: { argsz: 13, size: 5, data: h('0102030405') },
  },
  { name: 'MIG_DATA_WRITE reply', command: C.MIG_DATA_WRITE, direction: 'reply', bytes: h(''), msg: {} },
];
