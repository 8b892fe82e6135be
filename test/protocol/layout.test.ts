/**
 * Checks the codec's layouts (src/protocol/layout.ts) and constants against the real
 * <linux/vfio.h>: compiles test/protocol/fixtures/vfio_layout.c with `cc`, runs it and
 * compares. A missing compiler is a failure, not a skip (CI has gcc).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as P from '../../src/protocol/index.js';

interface CLayout {
  structs: Record<string, { size: number; fields: Record<string, number> }>;
  consts: Record<string, number>;
}

// dist/test/protocol/layout.test.js -> <repo>/test/protocol/fixtures/vfio_layout.c
const SOURCE = fileURLToPath(new URL('../../../test/protocol/fixtures/vfio_layout.c', import.meta.url));

function probe(): CLayout {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-layout-'));
  try {
    const exe = join(dir, 'vfio_layout');
    const cc = spawnSync('cc', ['-std=gnu11', '-Wall', '-o', exe, SOURCE], { encoding: 'utf8' });
    assert.ifError(cc.error); // ENOENT when there is no compiler: fail, do not skip
    assert.equal(cc.status, 0, `cc failed:\n${cc.stderr}`);
    const run = spawnSync(exe, [], { encoding: 'utf8' });
    assert.ifError(run.error);
    assert.equal(run.status, 0, run.stderr);
    return JSON.parse(run.stdout) as CLayout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Our layout -> kernel struct. `fields` maps each of our field names to the kernel's
 * (every field of our layout must be listed). `size`: 'equal' when the fixed parts match;
 * otherwise the kernel field where our fixed part ends (vfio-user drops cap_offset from
 * vfio_device_info, and carries DMA-logging ranges/bitmap inline instead of a pointer).
 */
const STRUCTS: { ours: P.LayoutName; kernel: string; fields: Record<string, string>; size: 'equal' | { endsAt: string } }[] = [
  {
    ours: 'DEVICE_INFO',
    kernel: 'vfio_device_info',
    fields: { argsz: 'argsz', flags: 'flags', num_regions: 'num_regions', num_irqs: 'num_irqs' },
    size: { endsAt: 'cap_offset' },
  },
  {
    ours: 'REGION_INFO',
    kernel: 'vfio_region_info',
    fields: { argsz: 'argsz', flags: 'flags', index: 'index', cap_offset: 'cap_offset', size: 'size', offset: 'offset' },
    size: 'equal',
  },
  { ours: 'CAP_HEADER', kernel: 'vfio_info_cap_header', fields: { id: 'id', version: 'version', next: 'next' }, size: 'equal' },
  {
    ours: 'CAP_SPARSE_MMAP',
    kernel: 'vfio_region_info_cap_sparse_mmap',
    fields: { header: 'header', nr_areas: 'nr_areas', reserved: 'reserved', areas: 'areas' },
    size: 'equal',
  },
  { ours: 'SPARSE_MMAP_AREA', kernel: 'vfio_region_sparse_mmap_area', fields: { offset: 'offset', size: 'size' }, size: 'equal' },
  { ours: 'CAP_TYPE', kernel: 'vfio_region_info_cap_type', fields: { header: 'header', type: 'type', subtype: 'subtype' }, size: 'equal' },
  { ours: 'IRQ_INFO', kernel: 'vfio_irq_info', fields: { argsz: 'argsz', flags: 'flags', index: 'index', count: 'count' }, size: 'equal' },
  {
    ours: 'IRQ_SET',
    kernel: 'vfio_irq_set',
    fields: { argsz: 'argsz', flags: 'flags', index: 'index', start: 'start', count: 'count', data: 'data' },
    size: 'equal',
  },
  { ours: 'DEVICE_FEATURE', kernel: 'vfio_device_feature', fields: { argsz: 'argsz', flags: 'flags', data: 'data' }, size: 'equal' },
  { ours: 'FEATURE_MIGRATION', kernel: 'vfio_device_feature_migration', fields: { flags: 'flags' }, size: 'equal' },
  {
    ours: 'FEATURE_MIG_STATE',
    kernel: 'vfio_device_feature_mig_state',
    fields: { device_state: 'device_state', data_fd: 'data_fd' },
    size: 'equal',
  },
  {
    ours: 'DMA_LOGGING_CONTROL',
    kernel: 'vfio_device_feature_dma_logging_control',
    fields: { page_size: 'page_size', num_ranges: 'num_ranges', reserved: '__reserved', ranges: 'ranges' },
    size: { endsAt: 'ranges' },
  },
  { ours: 'DMA_LOGGING_RANGE', kernel: 'vfio_device_feature_dma_logging_range', fields: { iova: 'iova', length: 'length' }, size: 'equal' },
  {
    ours: 'DMA_LOGGING_REPORT',
    kernel: 'vfio_device_feature_dma_logging_report',
    fields: { iova: 'iova', length: 'length', page_size: 'page_size', bitmap: 'bitmap' },
    size: { endsAt: 'bitmap' },
  },
  {
    ours: 'DMA_MAP',
    kernel: 'vfio_iommu_type1_dma_map',
    fields: { argsz: 'argsz', flags: 'flags', offset: 'vaddr', address: 'iova', size: 'size' },
    size: 'equal',
  },
  {
    ours: 'DMA_UNMAP',
    kernel: 'vfio_iommu_type1_dma_unmap',
    fields: { argsz: 'argsz', flags: 'flags', address: 'iova', size: 'size' },
    size: 'equal',
  },
  // the kernel's vfio_bitmap carries a user pointer at `data`; on the wire the bitmap itself starts there
  { ours: 'DMA_UNMAP_BITMAP', kernel: 'vfio_bitmap', fields: { pgsize: 'pgsize', size: 'size', data: 'data' }, size: { endsAt: 'data' } },
];

/** Our constant tables -> kernel macro names. */
const CONSTS: { name: string; table: Readonly<Record<string, number>>; cName: (key: string) => string }[] = [
  { name: 'DmaMapFlags', table: P.DmaMapFlags, cName: (k) => `VFIO_DMA_MAP_FLAG_${k}` },
  { name: 'DmaUnmapFlags', table: P.DmaUnmapFlags, cName: (k) => `VFIO_DMA_UNMAP_FLAG_${k}` },
  { name: 'DeviceInfoFlags', table: P.DeviceInfoFlags, cName: (k) => `VFIO_DEVICE_FLAGS_${k}` },
  { name: 'RegionInfoFlags', table: P.RegionInfoFlags, cName: (k) => `VFIO_REGION_INFO_FLAG_${k}` },
  { name: 'RegionCapId', table: P.RegionCapId, cName: (k) => `VFIO_REGION_INFO_CAP_${k}` },
  { name: 'PciRegion', table: P.PciRegion, cName: (k) => (k === 'NUM' ? 'VFIO_PCI_NUM_REGIONS' : `VFIO_PCI_${k}_REGION_INDEX`) },
  { name: 'PciIrq', table: P.PciIrq, cName: (k) => (k === 'NUM' ? 'VFIO_PCI_NUM_IRQS' : `VFIO_PCI_${k}_IRQ_INDEX`) },
  { name: 'IrqInfoFlags', table: P.IrqInfoFlags, cName: (k) => `VFIO_IRQ_INFO_${k}` },
  { name: 'SetIrqsFlags', table: P.SetIrqsFlags, cName: (k) => `VFIO_IRQ_SET_${k}` },
  { name: 'DeviceFeatureFlags', table: P.DeviceFeatureFlags, cName: (k) => `VFIO_DEVICE_FEATURE_${k}` },
  { name: 'DeviceFeature', table: P.DeviceFeature, cName: (k) => `VFIO_DEVICE_FEATURE_${k}` },
  { name: 'MigrationFlags', table: P.MigrationFlags, cName: (k) => `VFIO_MIGRATION_${k}` },
  { name: 'DeviceState', table: P.DeviceState, cName: (k) => `VFIO_DEVICE_STATE_${k}` },
  { name: 'IoEventFdFlags', table: P.IoEventFdFlags, cName: (k) => `KVM_IOEVENTFD_FLAG_${k}` },
];

/** Added in Linux 6.2; older installed headers lack them (the probe then omits them). */
const MAY_BE_MISSING = new Set(['VFIO_MIGRATION_PRE_COPY', 'VFIO_DEVICE_STATE_PRE_COPY', 'VFIO_DEVICE_STATE_PRE_COPY_P2P']);

test('layouts and constants match <linux/vfio.h>', async (t) => {
  const c = probe();

  await t.test('struct layouts', () => {
    for (const s of STRUCTS) {
      const ours = P.LAYOUTS[s.ours];
      const kernel = c.structs[s.kernel];
      assert.ok(kernel, `probe did not report struct ${s.kernel}`);
      assert.deepStrictEqual(Object.keys(s.fields).sort(), Object.keys(ours.fields).sort(), `${s.ours}: every field must be mapped`);
      for (const [mine, theirs] of Object.entries(s.fields)) {
        assert.ok(theirs in kernel.fields, `${s.kernel}.${theirs} not probed`);
        assert.equal(
          (ours.fields as Record<string, number>)[mine],
          kernel.fields[theirs],
          `${s.ours}.${mine} vs offsetof(struct ${s.kernel}, ${theirs})`,
        );
      }
      const expected = s.size === 'equal' ? kernel.size : kernel.fields[s.size.endsAt];
      assert.equal(ours.size, expected, `${s.ours} size vs struct ${s.kernel}`);
    }
  });

  await t.test('constants', () => {
    let checked = 0;
    for (const group of CONSTS) {
      for (const [key, value] of Object.entries(group.table)) {
        const name = group.cName(key);
        if (!(name in c.consts)) {
          assert.ok(MAY_BE_MISSING.has(name), `${group.name}.${key}: ${name} is not in the installed header`);
          continue;
        }
        assert.equal(value, c.consts[name], `${group.name}.${key} vs ${name}`);
        checked++;
      }
    }
    assert.ok(checked >= 60, `only ${checked} constants checked`);
  });

  await t.test('the same layouts drive the encoders', () => {
    // A region info reply is exactly one REGION_INFO, and its fields land where the layout says.
    const b = P.encodeRegionInfoReply({ flags: 3, index: 7, size: 0x1234n, offset: 0x5678n });
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const F = P.LAYOUTS.REGION_INFO.fields;
    assert.equal(b.length, P.LAYOUTS.REGION_INFO.size);
    assert.equal(dv.getUint32(F.index, true), 7);
    assert.equal(dv.getBigUint64(F.size, true), 0x1234n);
    assert.equal(dv.getBigUint64(F.offset, true), 0x5678n);
    const s = P.encodeSetIrqsRequest({ flags: 0x22, index: 1, start: 2, count: 2, data: new Uint8Array([1, 0]) });
    assert.equal(s.length, P.LAYOUTS.IRQ_SET.size + 2);
    assert.equal(s[P.LAYOUTS.IRQ_SET.fields.data], 1);
  });
});
