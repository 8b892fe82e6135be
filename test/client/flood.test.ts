/**
 * The client's brake: a hostile server (a child process) floods commands and never reads the
 * answers. The client must stay bounded in memory and drop the server, as our server does with
 * a client that floods it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import { VfioUserError } from '../../src/errors.js';
import { sockPath } from '../helpers.js';

const SERVER = new URL('./fixtures/flood-server.js', import.meta.url).pathname;
const MiB = 1 << 20;

for (const mode of ['dma-read', 'unknown'] as const) {
  test(`a server flooding ${mode === 'dma-read' ? '1 MiB DMA_READs' : 'unknown commands'} without reading: dropped, memory bounded`, { timeout: 60000 }, async () => {
    const path = sockPath('flood');
    const child = spawn(process.execPath, [SERVER, path, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = once(child, 'exit');
    const lines = createInterface({ input: child.stdout });
    const next = (): Promise<string> => new Promise((r) => lines.once('line', r));
    let c: VfioUserClient | undefined;
    const mem = new GuestMemory(MiB);
    try {
      assert.equal(await next(), 'ready');
      c = await VfioUserClient.connect(path, { timeout: 5000 });
      const flooding = next();
      await c.dmaMap(mem, 0x100000, { shared: false });
      assert.equal(await flooding, 'flooding');
      const closed = once(c, 'close');
      const base = process.memoryUsage().arrayBuffers;
      let peak = 0;
      const deadline = Date.now() + 20000;
      let gone = false;
      void closed.then(() => (gone = true));
      while (!gone) {
        const grown = process.memoryUsage().arrayBuffers - base;
        peak = Math.max(peak, grown);
        assert.ok(grown < 512 * MiB, `the client grew by ${grown / MiB} MiB`);
        assert.ok(Date.now() < deadline, `still connected after 20 s, ${grown / MiB} MiB grown`);
        await new Promise((r) => setTimeout(r, 20));
      }
      const [err] = (await closed) as [VfioUserError | undefined];
      assert.ok(err instanceof VfioUserError && err.code === 'VFU_PROTOCOL', `dropped for flooding: ${String(err)}`);
      assert.ok(peak < 96 * MiB, `peak growth ${peak / MiB} MiB`);
      await exited;
    } finally {
      c?.close();
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
}
