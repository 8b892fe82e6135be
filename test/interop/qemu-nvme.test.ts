/**
 * Interop: QEMU's vfio-user-pci with a Linux guest drives our NVMe controller with the
 * in-kernel nvme driver, in the QEMU configurations people run: guest RAM shared by memfd,
 * QEMU's default unshared RAM (every DMA a message), a vIOMMU in strict mode (the guest maps
 * and unmaps every buffer), doorbells in a mappable BAR page, and two vCPUs. In each, the
 * namespace appears, gets an ext4 filesystem, files are written and read back intact, and
 * after the guest powers off the data is in the image file.
 *
 * With the vIOMMU, the test also checks isolation from the host side: once the guest has
 * switched its IOMMU on, an address that the device could reach before (QEMU's first map
 * covered all guest RAM) is refused unless the guest mapped it.
 *
 * Needs VFU_GUEST_RUN (see test/interop/README.md); without it the tests are reported as
 * skipped. The server runs in this process, so the test can look at its DMA maps.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NvmeDevice } from '../../src/devices/nvme/index.js';
import { VfioUserServer } from '../../src/server/server.js';
import { DmaError } from '../../src/server/dma.js';
import { sockPath } from '../helpers.js';
import { noGuest, guestScript, runGuest, runnerArgs, readAt, type GuestSetup } from './guest-run.js';

interface NvmeSetup extends GuestSetup {
  doorbells?: 'trap' | 'mmap';
}

const SETUPS: NvmeSetup[] = [
  { name: 'guest RAM shared by memfd', sharedRam: true },
  { name: "QEMU's default unshared RAM (DMA by message)", sharedRam: false },
  { name: 'vIOMMU (intel-iommu, iommu.strict=1), shared RAM', sharedRam: true, viommu: true },
  { name: 'vIOMMU (intel-iommu, iommu.strict=1), unshared RAM', sharedRam: false, viommu: true },
  { name: 'doorbells in a mappable BAR page (--doorbells=mmap), 2 vCPUs', sharedRam: true, doorbells: 'mmap', cpus: 2 },
];

for (const setup of SETUPS) {
  test(`QEMU + Linux guest, ${setup.name}: nvme binds, ext4 made and mounted, files intact, data in the image`, { skip: noGuest, timeout: 900_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-interop-'));
    const image = join(dir, 'disk.img');
    const logs: string[] = [];
    const dev = new NvmeDevice({ image, size: 64 << 20, doorbells: setup.doorbells ?? 'trap', log: (m) => logs.push(m) });
    const server = new VfioUserServer(dev, { log: (level, m) => level !== 'debug' && logs.push(`${level}: ${m}`) });
    const path = sockPath('nvme-qemu');
    server.listen(path);
    // every map the guest's IOMMU (or QEMU's RAM layout) made, to check isolation afterwards
    const maps: { iova: number; size: number }[] = [];
    let unmaps = 0;
    dev.dma.onChange = (what, iova, size) => {
      if (what === 'map') maps.push({ iova, size });
      else unmaps++;
    };
    let isolation: string | undefined;
    const checkIsolation = (): void => {
      // the first map QEMU made before the guest switched its IOMMU on covers guest RAM from 0
      const first = maps[0];
      if (!first) return;
      for (let iova = 0x100000; iova < Math.min(first.iova + first.size, 0x20000000); iova += 0x100000) {
        if (dev.dma.regionAt(iova)) continue; // the guest maps this one now
        try {
          dev.dma.readSync(iova, 4);
          isolation = `0x${iova.toString(16)} is still reachable`;
        } catch (e) {
          assert.ok(e instanceof DmaError, String(e));
          isolation = `0x${iova.toString(16)} refused (${e.message})`;
        }
        return;
      }
    };
    try {
      const watch = setInterval(() => {
        if (setup.viommu && isolation === undefined && unmaps > 0 && maps.length > 50) checkIsolation();
      }, 200);
      const r = await runGuest([path], guestScript('nvme.sh'), runnerArgs(setup), 840).finally(() => clearInterval(watch));
      const lines = r.lines('NVMETEST');
      process.stdout.write(`[${setup.name}]\n${lines.join('\n')}\n`);
      assert.equal(r.code, 0, `guest failed:\n${r.out.slice(-6000)}\nserver log:\n${logs.join('\n')}`);
      assert.ok(lines.some((l) => /NVMETEST: driver=nvme/.test(l)));
      assert.ok(lines.some((l) => /NVMETEST: mkfs.ext4 ok/.test(l)));
      if (setup.viommu) {
        process.stdout.write(`[${setup.name}] DMA maps ${maps.length}, unmaps ${unmaps}; first map [0x${maps[0]?.iova.toString(16)}, +0x${maps[0]?.size.toString(16)}); isolation: ${isolation}\n`);
        assert.ok(maps.length > 100, `the guest's IOMMU mapped its buffers (${maps.length} maps)`);
        assert.match(isolation ?? 'never checked', /refused/, 'an address reachable before the IOMMU switch is refused after it');
      }
      // after power-off: the raw pattern is in the image, and the ext4 superblock too
      const pattern = Buffer.from('NVME-VFIO-USER-PATTERN\n'.repeat(46000)).subarray(0, 1 << 20);
      assert.ok(readAt(image, 60 << 20, 1 << 20).equals(pattern), 'raw pattern at 60 MiB in the image');
      assert.equal(readAt(image, 1024 + 56, 2).readUInt16LE(0), 0xef53, 'ext4 superblock magic in the image');
    } finally {
      server.close();
      dev.destroy();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
