/**
 * Read-only DMA maps (issue 10): a device storing into memory the client mapped read-only must
 * never crash the server. Writes through the API are refused (EFAULT); a store through a view
 * asked for reading (a device bug) lands in a private copy, never in the client's memory, and
 * does not fault (the map used to be mmapped PROT_READ: SIGSEGV, exit 139). Run in a child
 * process, so a crash shows as a failure rather than killing the test runner.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

test('a device store into a read-only map is refused or harmless, never a SIGSEGV', () => {
  const dma = new URL('../../src/server/dma.js', import.meta.url).href;
  const nat = new URL('../../src/native/index.js', import.meta.url).href;
  const script = `
    const { DmaController, DmaError } = await import(${JSON.stringify(dma)});
    const { native } = await import(${JSON.stringify(nat)});
    const fd = native.memfdCreate('ro');
    native.ftruncate(fd, 65536);
    const client = new Uint8Array(native.mmap(fd, 0, 65536, 3));
    client.fill(0x11);
    const dma = new DmaController();
    dma.map(0, 65536, 1, native.dup(fd), 0); // read-only for the device
    const refused = [];
    const expectEfault = (what, fn) => {
      try { fn(); refused.push(what + ': not refused'); } catch (e) { refused.push(e instanceof DmaError && e.errno === 14 ? 'EFAULT' : String(e)); }
    };
    expectEfault('views(write)', () => dma.views(0x100, 16, true));
    expectEfault('writeSync', () => dma.writeSync(0x100, new Uint8Array(4)));
    let asyncWrite = 'not refused';
    await dma.write(0x100, new Uint8Array(4)).catch((e) => (asyncWrite = e instanceof DmaError && e.errno === 14 ? 'EFAULT' : String(e)));
    // a buggy device stores through a view it asked for reading
    const v = dma.views(0x100, 16)[0];
    v.fill(0xee);
    client[0x2000] = 0x22; // the client's later writes to other pages are still seen
    console.log(JSON.stringify({ refused, asyncWrite, clientByte: client[0x100], seen: dma.readSync(0x2000, 1)[0] }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30000 });
  assert.equal(r.signal, null, `the process died with ${r.signal}: ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
  assert.deepEqual(out.refused, ['EFAULT', 'EFAULT']);
  assert.equal(out.asyncWrite, 'EFAULT');
  assert.equal(out.clientByte, 0x11, "the store never reached the client's memory");
  assert.equal(out.seen, 0x22, 'and the device still sees what the client writes');
});
