/**
 * Interop: live migration of our virtio-blk device, and of our NVMe controller, between two
 * server processes under a running Linux guest. QEMU 10.1's vfio-user client cannot migrate a device itself, so QEMU
 * connects to a switchover proxy (src/client/proxy.ts) that forwards its session to server A;
 * while the guest's writers run (files on ext4 and numbered raw blocks, each fsynced), the
 * test moves the device to server B (both serve the same image). The guest then sees the
 * host's mark, writes as much again, and checks every file after dropping caches and after a
 * remount, and runs e2fsck; the host finds every raw block in the image and the image clean
 * under e2fsck -f.
 *
 * Setups: virtio-blk with shared guest RAM, with unshared guest RAM (every DMA a message, which
 * the proxy forwards to whichever server sent it) and with a vIOMMU (strict: the guest maps and
 * unmaps around each request, so the maps the new server gets are the ones live at the move);
 * NVMe with shared guest RAM.
 *
 * Needs VFU_GUEST_RUN (with -M, -I, -c) and e2fsck on the host; skipped, saying why, without them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SwitchoverProxy, type SwitchResult } from '../../src/client/proxy.js';
import { serveChild, sockPath } from '../helpers.js';
import { noGuest, guestScript, runGuest, runnerArgs, readAt, type GuestSetup } from './guest-run.js';

const script = guestScript('switchover.sh');
const e2fsck = ['/usr/sbin/e2fsck', '/sbin/e2fsck', 'e2fsck'].find((p) => spawnSync(p, ['-V']).status === 0);
const MARK_AT = 63 << 20;
const RAW_AT = 58 << 20;

const virtio = { name: 'virtio-blk', kind: 'virtio', a: ['--size=64M', '--queues=2'], b: ['--queues=2'] };
const nvme = { name: 'nvme', kind: 'nvme', a: ['--size=64M'], b: [] };
const cases: { dev: typeof virtio; setup: GuestSetup }[] = [
  { dev: virtio, setup: { name: 'shared guest RAM', sharedRam: true, cpus: 2 } },
  { dev: virtio, setup: { name: 'unshared guest RAM: DMA by message', sharedRam: false, cpus: 2 } },
  { dev: virtio, setup: { name: 'vIOMMU, shared guest RAM', sharedRam: true, viommu: true, cpus: 2 } },
  { dev: virtio, setup: { name: 'vIOMMU, unshared guest RAM', sharedRam: false, viommu: true, cpus: 2 } },
  { dev: nvme, setup: { name: 'shared guest RAM', sharedRam: true, cpus: 2 } },
];

for (const { dev, setup } of cases) test(`QEMU + Linux guest (${setup.name}): ${dev.name} moved between two servers (switchover proxy) with the guest writing; every block reads back, image clean`, {
  skip: noGuest || (!e2fsck ? 'e2fsck not found on the host' : false),
  timeout: 900_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-switchover-'));
  const image = join(dir, 'disk.img');
  const a = await serveChild(dev.name, [`--image=${image}`, ...dev.a]);
  const b = await serveChild(dev.name, [`--image=${image}`, ...dev.b]);
  const proxy = new SwitchoverProxy(a.path);
  const path = sockPath('proxy');
  proxy.listen(path);
  let writes = 0;
  let started = false;
  let switching: Promise<SwitchResult> | undefined;
  let writesAtSwitch = -1;
  let rawAtSwitch = -1;
  let lastRaw = -1;
  const onLine = (l: string): void => {
    if (l.includes('VMIG: writers started')) started = true;
    const raw = /VMIG: raw (\d+)/.exec(l);
    if (raw) lastRaw = Number(raw[1]);
    if (!/VMIG: (wrote|raw)/.test(l)) return;
    writes++;
    if (started && !switching && writes >= 12) {
      writesAtSwitch = writes;
      rawAtSwitch = lastRaw;
      switching = proxy.switchTo(b.path).then((r) => {
        // tell the guest: a mark it reads through the device (now B)
        const fd = openSync(image, 'r+');
        writeSync(fd, Buffer.from('SWITCHED\n'.repeat(455)), 0, 4095, MARK_AT);
        closeSync(fd);
        return r;
      });
    }
  };
  try {
    const g = await runGuest([path], script, [...runnerArgs(setup), '-k', `mig_dev=${dev.kind}`], 840, [], onLine);
    process.stdout.write(g.lines('VMIG').filter((l) => !/wrote|raw \d/.test(l)).join('\n') + '\n');
    // what QEMU said about the device (its vfio-user errors, e.g. a reply that timed out)
    const qemuSaid = g.out.split('\n').filter((l) => /qemu-system|vfio/i.test(l) && !l.includes('VMIG'));
    if (qemuSaid.length) process.stdout.write(`QEMU:\n${qemuSaid.slice(0, 20).join('\n')}\n`);
    assert.ok(switching, `the guest never wrote enough to move the device:\n${g.out.slice(-4000)}`);
    const r = await switching;
    process.stdout.write(`switchover: ${JSON.stringify(r)}\nguest writes (files and raw blocks) before the move: ${writesAtSwitch}, after: ${writes - writesAtSwitch}; raw blocks ${rawAtSwitch + 1} before, ${lastRaw - rawAtSwitch} after\n`);
    assert.equal(g.code, 0, `guest failed:\n${g.out.slice(-6000)}\nA stderr:\n${a.stderr()}\nB stderr:\n${b.stderr()}`);
    assert.equal(r.migrated, true);
    // a device stopped for seconds means QEMU and a server waited on each other until QEMU's reply timeout (5 s)
    assert.ok(r.stoppedMs < 5000, `the device was stopped for ${r.stoppedMs.toFixed(0)} ms`);
    assert.ok(r.migration!.totalBytes > 0);
    assert.match(g.out, /VMIG: files ok after drop_caches/);
    assert.match(g.out, /VMIG: files ok after remount/);
    assert.match(g.out, /VMIG: e2fsck clean/);
    assert.ok(writes - writesAtSwitch > 12, `writes after the move: ${writes - writesAtSwitch}`);
    assert.ok(lastRaw > rawAtSwitch && rawAtSwitch >= 0, `raw blocks before (${rawAtSwitch + 1}) and after (${lastRaw - rawAtSwitch}) the move`);
    // every raw block, before and after the move, in the image
    for (let n = 0; n <= lastRaw; n++) {
      const want = Buffer.from(`RAW-BLOCK-${n}\n`.repeat(4096)).subarray(0, 4096);
      assert.ok(readAt(image, RAW_AT + n * 4096, 4096).equals(want), `raw block ${n} in the image`);
    }
    proxy.close();
    await a.stop();
    await b.stop();
    const fsck = spawnSync(e2fsck!, ['-f', '-n', image], { encoding: 'utf8' });
    assert.equal(fsck.status, 0, `e2fsck -f: ${fsck.stdout}${fsck.stderr}`);
  } finally {
    proxy.close();
    await a.stop();
    await b.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
