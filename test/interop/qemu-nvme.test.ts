/**
 * Interop: QEMU's vfio-user-pci with a Linux guest drives our NVMe controller with the
 * in-kernel nvme driver: the namespace appears, gets an ext4 filesystem, files are written
 * and read back intact, and after the guest powers off the data is in the image file.
 *
 * Needs VFU_GUEST_RUN: a program taking `-s SOCKET -t GUEST_SCRIPT -M` that boots QEMU 10.1+
 * with `-device vfio-user-pci` on SOCKET and guest RAM shared by memfd (-M), and a Linux
 * guest (nvme driver, busybox, mkfs.ext4) that runs GUEST_SCRIPT and exits with its status.
 * See test/interop/README.md. Without it the test is reported as skipped.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readSync, closeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serveChild } from '../helpers.js';

const runner = process.env.VFU_GUEST_RUN;
const script = new URL('../../../test/interop/guest/nvme.sh', import.meta.url).pathname;
// The runner's guest must load nvme and ext4 (see test/interop/README.md).

function readAt(path: string, pos: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, pos);
    return b;
  } finally {
    closeSync(fd);
  }
}

test('QEMU + Linux guest: nvme binds, ext4 made and mounted, files intact, data in the image', { skip: runner ? false : 'VFU_GUEST_RUN not set (no QEMU guest runner)', timeout: 400_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-nvme-interop-'));
  const image = join(dir, 'disk.img');
  const srv = await serveChild('nvme', [`--image=${image}`, '--size=64M']);
  try {
    const guest = spawn(runner!, ['-s', srv.path, '-t', script, '-M', '-T', '360'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    guest.stdout!.on('data', (d) => (out += d));
    guest.stderr!.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((r) => guest.on('exit', r));
    process.stdout.write(out.split('\n').filter((l) => l.includes('NVMETEST')).join('\n') + '\n');
    assert.equal(code, 0, `guest failed:\n${out.slice(-6000)}\nserver stderr:\n${srv.stderr()}`);
    assert.match(out, /NVMETEST: driver=nvme/);
    assert.match(out, /NVMETEST: mkfs.ext4 ok/);
    // after power-off: the raw pattern is in the image, and the ext4 superblock too
    const pattern = Buffer.from('NVME-VFIO-USER-PATTERN\n'.repeat(46000)).subarray(0, 1 << 20);
    assert.ok(readAt(image, 60 << 20, 1 << 20).equals(pattern), 'raw pattern at 60 MiB in the image');
    assert.equal(readAt(image, 1024 + 56, 2).readUInt16LE(0), 0xef53, 'ext4 superblock magic in the image');
  } finally {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
