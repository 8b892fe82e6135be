/**
 * Interop: QEMU's vfio-user-pci with a Linux guest drives our virtio-blk device with the
 * in-kernel virtio_pci and virtio_blk drivers: ext4 is made and mounted, files are written and
 * verified (after dropping caches and after a remount), a raw pattern is written outside the
 * filesystem; after power-off the host finds the pattern in the image and `e2fsck -f` finds
 * the filesystem clean. Three setups: guest RAM shared by memfd (-M) with two queues and two
 * vCPUs; unshared RAM (every access by DMA messages); and a vIOMMU (-I, shared RAM).
 *
 * Needs VFU_GUEST_RUN (contract in test/interop/README.md, with -M, -I, -c, -k and -T) and
 * e2fsck on the host. Without the runner the tests are reported as skipped.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serveChild } from '../helpers.js';
import { noGuest, guestScript, runGuest, runnerArgs, readAt, type GuestSetup } from './guest-run.js';

const script = guestScript('virtio-blk.sh');
const e2fsck = ['/usr/sbin/e2fsck', '/sbin/e2fsck', 'e2fsck'].find((p) => spawnSync(p, ['-V']).status === 0);

const setups: (GuestSetup & { queues: number })[] = [
  { name: 'shared guest RAM, 2 queues, 2 vCPUs', sharedRam: true, cpus: 2, queues: 2 },
  { name: 'unshared guest RAM (DMA messages)', sharedRam: false, queues: 1 },
  { name: 'vIOMMU', sharedRam: true, viommu: true, queues: 1 },
];

for (const s of setups) {
  test(`QEMU + Linux guest, virtio-blk (${s.name}): ext4 made, mounted, files intact after remount, image clean under e2fsck -f`, {
    skip: noGuest || (!e2fsck ? 'e2fsck not found on the host' : false),
    timeout: 600_000,
  }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfu-virtio-interop-'));
    const image = join(dir, 'disk.img');
    const srv = await serveChild('virtio-blk', [`--image=${image}`, '--size=64M', `--queues=${s.queues}`, '--serial=VFU-INTEROP']);
    try {
      const g = await runGuest([srv.path], script, [...runnerArgs(s), '-k', `vblk_queues=${s.queues}`], 540);
      const { code, out } = g;
      process.stdout.write(g.lines('VBLKTEST').join('\n') + '\n');
      assert.equal(code, 0, `guest failed:\n${out.slice(-6000)}\nserver stderr:\n${srv.stderr()}`);
      assert.match(out, /VBLKTEST: driver=virtio-pci/);
      assert.match(out, /VBLKTEST: virtio driver=virtio_blk/);
      assert.match(out, /serial=VFU-INTEROP/);
      assert.match(out, /VBLKTEST: mkfs.ext4 ok/);
      const pattern = Buffer.from('VIRTIO-BLK-VFIO-USER-PATTERN\n'.repeat(40000)).subarray(0, 1 << 20);
      assert.ok(readAt(image, 60 << 20, 1 << 20).equals(pattern), 'raw pattern at 60 MiB in the image');
      await srv.stop();
      const fsck = spawnSync(e2fsck!, ['-f', '-n', image], { encoding: 'utf8' });
      assert.equal(fsck.status, 0, `e2fsck -f: ${fsck.stdout}${fsck.stderr}`);
    } finally {
      await srv.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
