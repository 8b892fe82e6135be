/**
 * The example in docs/virtio-guide.md is this directory's guide-example.ts (the test fails when
 * they differ), and it works: a driver negotiates with it and gets random bytes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { VirtioDriver, serveDevice } from '../../src/testing/index.js';
import { VirtioRng } from './guide-example.js';

const root = new URL('../../../', import.meta.url).pathname; // from dist/test/virtio

test('docs/virtio-guide.md: the example is the tested code', () => {
  const doc = readFileSync(`${root}docs/virtio-guide.md`, 'utf8');
  const m = /```ts\n(import { randomFillSync }[\s\S]*?)```/.exec(doc);
  assert.ok(m, 'the example block is in the guide');
  const file = readFileSync(`${root}test/virtio/guide-example.ts`, 'utf8');
  assert.equal(m[1]!.replace("from 'vfio-user'", "from '../../src/index.js'"), file);
});

test('docs/virtio-guide.md: the example device serves random bytes', async () => {
  await using s = await serveDevice(new VirtioRng(), { name: 'virtio-rng' });
  const { client } = s;
  const d = await VirtioDriver.attach(client);
  try {
    const cfg = await client.readConfig(0, 4);
    assert.deepEqual([...cfg], [0xf4, 0x1a, 0x44, 0x10], 'virtio vendor, entropy device 0x1044');
    await d.init({ size: 8 });
    for (const indirect of [false, true]) {
      const a = d.alloc(4096);
      const b = d.alloc(100);
      const u = await d.submit(0, [{ iova: a, len: 4096, write: true }, { iova: b, len: 100, write: true }], { indirect });
      assert.equal(u.len, 4196);
      assert.ok(d.at(a, 4096).some((x) => x !== 0) && d.at(b, 100).some((x) => x !== 0), 'random bytes arrived');
    }
    assert.ok((d.interrupts.get(1) ?? 0) >= 2, 'queue interrupts');
  } finally {
    d.close();
    client.close();
    d.mem.free();
  }
});
