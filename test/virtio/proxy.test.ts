/**
 * The switchover proxy: a client's session, forwarded to server A, moves to server B while
 * the client's writers run. Two virtio-blk server processes on one image, the test kit's
 * virtio driver as the client (its twin socket stripped by the proxy), shared memory and DMA
 * by message. Every block written before, during and after the move reads back, interrupts
 * keep arriving on the same eventfds, and the device state (features, rings, indexes) is the
 * one A had.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserError, Errno } from '../../src/errors.js';
import { native } from '../../src/native/index.js';
import { SwitchoverProxy } from '../../src/client/proxy.js';
import * as P from '../../src/protocol/index.js';
import { VirtioDriver, BlkDriver, pattern } from '../../src/testing/index.js';
import { serveChild, sockPath, CLI } from '../helpers.js';

const BLOCK = 4096;
const SECTORS = BLOCK / 512;

type Server = Awaited<ReturnType<typeof serveChild>>;

/** Servers A and B of `device` on one image in a scratch folder (A's arguments create it); stopped after `fn`. */
async function withServers(device: string, aArgs: string[], bArgs: string[], fn: (s: { image: string; a: Server; b: Server }) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-proxy-'));
  const image = join(dir, 'disk.img');
  const a = await serveChild(device, [`--image=${image}`, ...aArgs]);
  const b = await serveChild(device, [`--image=${image}`, ...bArgs]);
  try {
    await fn({ image, a, b });
  } finally {
    await a.stop();
    await b.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The same with virtio-blk servers and a SwitchoverProxy to A listening at `path` (closed after `fn`). */
async function withProxy(aArgs: string[], bArgs: string[], fn: (s: { image: string; a: Server; b: Server; proxy: SwitchoverProxy; path: string }) => Promise<void>): Promise<void> {
  await withServers('virtio-blk', aArgs, bArgs, async (s) => {
    const proxy = new SwitchoverProxy(s.a.path);
    const path = sockPath('proxy');
    proxy.listen(path);
    try {
      await fn({ ...s, proxy, path });
    } finally {
      proxy.close();
    }
  });
}

for (const shared of [true, false]) {
  test(`switchover proxy: virtio-blk moved from server A to B under running writers (${shared ? 'shared memory' : 'DMA by message'}); every block reads back`, { timeout: 120_000 }, async () => {
    await withProxy(['--size=8M', '--queues=2'], ['--queues=2'], async ({ image, a, b, proxy, path }) => {
      const c = await VfioUserClient.connect(path);
      assert.equal(c.twinSocket, false, 'the proxy keeps server commands on the main socket');
      const d = await VirtioDriver.attach(c, { memSize: 4 << 20, shared });
      await d.init({ queues: 2 });
      const blk = new BlkDriver(d);
      const writers = 4;
      const perWriter = 48;
      let done = 0;
      let switched = false;
      let afterSwitch = 0;
      const run = async (w: number): Promise<void> => {
        const buf = d.alloc(BLOCK);
        for (let i = 0; i < perWriter; i++) {
          const block = w * perWriter + i;
          d.at(buf, BLOCK).set(pattern(BLOCK, block + 1));
          const r = await blk.write(w % 2, block * SECTORS, [{ iova: buf, len: BLOCK }]);
          assert.equal(r.status, 0, `write of block ${block}`);
          done++;
          if (switched) afterSwitch++;
        }
      };
      const all = Promise.all(Array.from({ length: writers }, (_, w) => run(w)));
      while (done < (writers * perWriter) / 3) await new Promise((r) => setTimeout(r, 1));
      const before = done;
      const res = await proxy.switchTo(b.path);
      switched = true;
      await all;
      assert.equal(res.migrated, true);
      assert.ok(res.migration!.totalBytes > 0, 'device state moved');
      assert.ok(res.maps >= 1 && res.irqSettings >= 1, `maps ${res.maps}, interrupt settings ${res.irqSettings} replayed`);
      assert.ok(before > 0 && afterSwitch > 0, `writes before (${before}) and after (${afterSwitch}) the move`);
      assert.equal(proxy.server, b.path);
      // the writers may need no command at all after the move (B looks at the rings after a
      // request instead of asking for notifies): a command of our own shows where they go
      assert.equal((await c.deviceInfo()).numRegions > 0, true);
      assert.ok((proxy.forwarded[b.path] ?? 0) > 0, 'commands went to B after the move');

      // read back through B, on both queues, and on the host
      const rbuf = d.alloc(BLOCK);
      for (let block = 0; block < writers * perWriter; block++) {
        d.at(rbuf, BLOCK).fill(0);
        assert.equal((await blk.read(block % 2, block * SECTORS, [{ iova: rbuf, len: BLOCK, write: true }])).status, 0);
        assert.deepEqual(d.at(rbuf, BLOCK), pattern(BLOCK, block + 1), `block ${block} through B`);
      }
      assert.ok((d.interrupts.get(1) ?? 0) > 0 && (d.interrupts.get(2) ?? 0) > 0, 'interrupts on both queue vectors');
      const img = readFileSync(image);
      for (let block = 0; block < writers * perWriter; block++) {
        assert.ok(img.subarray(block * BLOCK, (block + 1) * BLOCK).equals(pattern(BLOCK, block + 1)), `block ${block} in the image`);
      }
      // a second move, back to A (reset when the proxy let it go): the same again
      const back = await proxy.switchTo(a.path);
      assert.equal(back.migrated, true);
      d.at(rbuf, BLOCK).set(pattern(BLOCK, 999));
      assert.equal((await blk.write(0, 1000 * SECTORS, [{ iova: rbuf, len: BLOCK }])).status, 0);
      assert.ok(readFileSync(image).subarray(1000 * BLOCK, 1001 * BLOCK).equals(pattern(BLOCK, 999)), 'written through A again');
      d.close();
      c.close();
    });
  });
}

test('switchover proxy: a failed move (B cannot take the state) leaves the client on A, running', async () => {
  // B has one queue: A's state does not fit
  await withProxy(['--size=4M', '--queues=2'], ['--queues=1'], async ({ a, b, proxy, path }) => {
    const c = await VfioUserClient.connect(path);
    const d = await VirtioDriver.attach(c, { memSize: 2 << 20 });
    await d.init({ queues: 2 });
    const blk = new BlkDriver(d);
    const buf = d.alloc(BLOCK);
    d.at(buf, BLOCK).set(pattern(BLOCK, 7));
    assert.equal((await blk.write(1, 0, [{ iova: buf, len: BLOCK }])).status, 0);
    await assert.rejects(proxy.switchTo(b.path));
    assert.equal(proxy.server, a.path);
    d.at(buf, BLOCK).fill(0);
    assert.equal((await blk.read(1, 0, [{ iova: buf, len: BLOCK, write: true }])).status, 0);
    assert.deepEqual(d.at(buf, BLOCK), pattern(BLOCK, 7), 'still served by A');
    d.close();
    c.close();
  });
});

test('switchover proxy: regions without mmap, no ioeventfds; the CLI moves a session on a stdin command', async () => {
  await withServers('nvme', ['--size=4M', '--doorbells=mmap'], ['--doorbells=mmap'], async ({ a, b }) => {
    const path = sockPath('proxy');
    const child = spawn(process.execPath, [CLI, 'proxy', `--listen=${path}`, `--connect=${a.path}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    const events: Record<string, unknown>[] = [];
    let wake = (): void => {};
    createInterface({ input: child.stdout }).on('line', (l) => {
      events.push(JSON.parse(l) as Record<string, unknown>);
      wake();
    });
    const next = async (name: string): Promise<Record<string, unknown>> => {
      for (;;) {
        const i = events.findIndex((e) => e.event === name);
        if (i >= 0) return events.splice(i, 1)[0]!;
        await new Promise<void>((r) => (wake = r));
      }
    };
    try {
      await next('ready');
      const direct = await VfioUserClient.connect(a.path);
      const raw = await direct.regionInfoRaw(0);
      if (raw.fd !== undefined) native.close(raw.fd);
      const mmapped = raw.info;
      direct.close();
      assert.ok(mmapped.flags & P.RegionInfoFlags.MMAP, 'the server offers BAR0 doorbells by mmap');
      const c = await VfioUserClient.connect(path);
      const { info, fd } = await c.regionInfoRaw(0);
      assert.equal(info.flags & P.RegionInfoFlags.MMAP, 0, 'no mmap through the proxy');
      assert.equal(fd, undefined, 'and no fd');
      assert.ok(!info.caps.some((x) => x.kind === 'sparse-mmap'));
      await assert.rejects(c.regionIoFds(0), (e) => e instanceof VfioUserError && e.errno === Errno.ENOTSUP);
      const cap = await c.read(0, 0, 8); // CAP through A
      child.stdin.write(`switch ${b.path}\n`);
      const sw = await next('switched');
      assert.equal(sw.migrated, true);
      assert.equal(sw.to, b.path);
      assert.deepEqual(await c.read(0, 0, 8), cap, 'the same controller, now through B');
      c.close();
    } finally {
      const exited = child.exitCode !== null || new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });
});
