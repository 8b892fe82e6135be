/**
 * examples/: the client script drives both example devices (served here, the script in its
 * own process) and prints what it found. The examples are type-checked with the rest
 * (tsconfig.json: checkJs) and their own tests (examples/*.test.js) run with the others.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { listenDevice } from '../../src/testing/index.js';
import { MmioDevice } from '../../examples/mmio-device.js';
import { DmaDevice } from '../../examples/dma-device.js';

const root = new URL('../../../', import.meta.url).pathname; // from dist/test/examples
const run = promisify(execFile);

test('examples/client.js drives the MMIO example: registers and an interrupt', async () => {
  const s = listenDevice(new MmioDevice(), { name: 'ex-mmio' });
  try {
    const { stdout } = await run(process.execPath, [join(root, 'examples/client.js'), s.path], { timeout: 30000 });
    assert.equal(
      stdout,
      ['device 0x1234:0x11e1, 9 regions, 5 IRQ types', 'BAR0: 4096 bytes', 'BAR2: 8192 bytes', 'ID 0x31554656', 'SCRATCH 0xc0ffee', 'interrupt on vector 2', ''].join('\n'),
    );
    assert.equal(s.device.count, 1);
  } finally {
    await s.close();
  }
});

test('examples/client.js drives the DMA example: shared memory, a copy, its interrupt', async () => {
  const s = listenDevice(new DmaDevice(), { name: 'ex-dma' });
  try {
    const { stdout } = await run(process.execPath, [join(root, 'examples/client.js'), s.path], { timeout: 30000 });
    assert.match(stdout, /^device 0x1234:0x11e2, /);
    assert.match(stdout, /\nSTATUS 0, copied: hello through DMA\n$/);
  } finally {
    await s.close();
  }
});

test('examples/client.js without a socket prints its usage and exits 2', async () => {
  await assert.rejects(run(process.execPath, [join(root, 'examples/client.js')]), (e: { code?: number; stderr?: string }) => e.code === 2 && /usage: node examples\/client\.js <socket>/.test(e.stderr ?? ''));
});

test('docs/testing.md: its example is examples/mmio-device.test.js, which npm test runs', () => {
  const doc = readFileSync(join(root, 'docs/testing.md'), 'utf8');
  const m = /## A test\n[\s\S]*?```js\n([\s\S]*?)```/.exec(doc);
  assert.ok(m, 'the example block is in the guide');
  assert.equal(m[1], readFileSync(join(root, 'examples/mmio-device.test.js'), 'utf8'));
});
