/**
 * DMA files that cannot be sealed (issue 10): a file in /dev/shm shared as guest memory that
 * the client then truncates must never kill the server (SIGBUS). Refused by default; accepted
 * with --allow-unsealed-dma, and then the I/O touching the vanished pages fails, the server
 * keeps serving. Against `vfio-user serve nvme` in a child process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ftruncateSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import { VfioUserError } from '../../src/errors.js';
import { serveChild } from '../helpers.js';
import { NvmeDriver, sc } from '../../src/testing/index.js';

const SHM_IOVA = 0x2_0000_0000;

test('an unsealable DMA file: refused by default; with --allow-unsealed-dma, truncating it fails the I/O, never the server', { timeout: 60000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-unsealed-'));
  const image = join(dir, 'disk.img');
  const shmPath = `/dev/shm/vfu-unsealed-${process.pid}`;
  const fd = openSync(shmPath, 'w+'); // tmpfs, but a plain file: it cannot be sealed
  ftruncateSync(fd, 1 << 20);
  const shm = GuestMemory.fromFd(fd, 1 << 20);
  try {
    // by default the map is refused (EPERM)
    let srv = await serveChild('nvme', [`--image=${image}`, '--size=8M', '-q']);
    let client = await VfioUserClient.connect(srv.path);
    await assert.rejects(client.dmaMap(shm, SHM_IOVA), (e) => e instanceof VfioUserError && e.errno === 1);
    client.close();
    assert.equal(await srv.stop(), 0);

    srv = await serveChild('nvme', [`--image=${image}`, '--allow-unsealed-dma', '-q']);
    client = await VfioUserClient.connect(srv.path);
    const d = await NvmeDriver.attach(client, { memSize: 8 << 20 });
    await d.init({ queues: 1 });
    await client.dmaMap(shm, SHM_IOVA);
    const buf = d.alloc(4096);
    d.at(buf, 4096).fill(0x5a);
    assert.equal(sc(await d.rw('write', 1, 0, 8, { prp1: buf })), 0);
    // while the file is whole, the device reads into it and writes from it
    assert.equal(sc(await d.rw('read', 1, 0, 8, { prp1: SHM_IOVA + 0x8000 })), 0);
    const check = new Uint8Array(4096);
    readSync(fd, check, 0, 4096, 0x8000);
    assert.ok(check.every((b) => b === 0x5a), 'the data reached the unsealed file');
    // the client shrinks it under the server's map: the next DMA faults
    ftruncateSync(fd, 0);
    assert.notEqual(sc(await d.rw('read', 1, 0, 8, { prp1: SHM_IOVA + 0x8000 })), 0, 'a read into the vanished pages fails');
    assert.notEqual(sc(await d.rw('write', 1, 8, 8, { prp1: SHM_IOVA + 0x8000 })), 0, 'a write from them fails');
    // and the server keeps serving
    const again = d.alloc(4096);
    assert.equal(sc(await d.rw('read', 1, 0, 8, { prp1: again })), 0);
    assert.ok(d.at(again, 4096).every((b) => b === 0x5a));
    assert.equal(srv.child.exitCode, null, 'the server is alive');
    d.close();
    client.close();
    assert.equal(await srv.stop(), 0, `server stderr: ${srv.stderr()}`);
  } finally {
    shm.free(); // unmaps and closes fd
    rmSync(shmPath, { force: true });
    rmSync(dir, { recursive: true, force: true });
  }
});
