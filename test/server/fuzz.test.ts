/**
 * Bounded, seeded fuzzing of a running VfioUserServer session (TestDevice, in-process) over
 * a real socket: valid requests from the codec's encoders with random corruptions, garbage,
 * random splits and random fds. After every case the server must still serve a fresh client
 * correctly, and the process's fd count must be back to its baseline; no exception may
 * escape, no case may hang. Reproduce with VFU_FUZZ_SEED=<seed>.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient } from '../../src/client/client.js';
import { connectPath } from '../../src/transport/socket.js';
import { closeFds } from '../../src/transport/connection.js';
import { TestDevice } from './testdev.js';
import { sockPath, u32, within } from '../helpers.js';
import { Rng, fuzzSeed, openFds, fdsBackTo, waitFor } from '../transport/util.js';
import { hostileStream, sendWrites } from '../transport/gen.js';

const SEED = fuzzSeed();
const TIME_BUDGET_MS = 5000;
const MAX_CASES = 300;
const CASE_TIMEOUT_MS = 4000;

/** Reads and drops whatever the server sent (closing any fds). */
function drain(fd: number): void {
  const buf = new Uint8Array(1 << 20);
  const fdsOut = new Int32Array(1 + 253);
  for (;;) {
    let n: number;
    try {
      n = native.recvmsg(fd, buf, 0, buf.length, fdsOut);
    } catch {
      return;
    }
    closeFds(Array.from(fdsOut.subarray(1, 1 + fdsOut[0]!)));
    fdsOut[0] = 0;
    if (n <= 0) return;
  }
}


test(`server fuzz: hostile sessions against a running server (seed ${SEED})`, async () => {
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown): void => void uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
  const dev = new TestDevice();
  const warnings: string[] = [];
  const server = new VfioUserServer(dev, { log: (level, msg) => level === 'warn' && warnings.push(msg) });
  const path = sockPath('fuzz');
  server.listen(path);
  // baseline with the server listening and one client served once (lazy allocations done)
  const warm = await VfioUserClient.connect(path);
  warm.close();
  await waitFor(() => server.session === undefined, 'warm-up session end');
  // sessions end with a 'disconnect' (with or without VERSION): count them, since a session
  // can be accepted, run and end between two looks at server.session
  let ended = 0;
  server.on('disconnect', () => ended++);
  const base = openFds();
  const start = Date.now();
  let cases = 0;
  try {
    for (; cases < MAX_CASES && Date.now() - start < TIME_BUDGET_MS; cases++) {
      const r = new Rng(SEED + cases);
      const endedBefore = ended;
      const fd = connectPath(path);
      const writes = hostileStream(r, { frames: 10, saneHeaders: 92, versionFirst: r.chance(0.9), maxMessageSize: 16 + 1048576 + 4096 });
      const run = async (): Promise<void> => {
        await sendWrites(r, fd, writes, async () => {
          drain(fd);
          await new Promise((res) => setTimeout(res, r.chance(0.5) ? 0 : 1));
        });
        if (r.chance(0.5)) {
          // let the server work on it (and maybe block on our unread replies) before we vanish
          await new Promise((res) => setTimeout(res, r.int(3)));
          if (r.chance(0.5)) drain(fd);
        }
        native.close(fd);
        await waitFor(() => ended === endedBefore + 1, 'hostile session end', CASE_TIMEOUT_MS);
        // a well-behaved client is served correctly
        const c = await VfioUserClient.connect(path, { timeout: 2000, twinSocket: r.chance(0.5) });
        try {
          const v = (cases * 2654435761) >>> 0;
          await c.write(0, 0, u32(v));
          const back = await c.read(0, 0, 4);
          assert.equal(new DataView(back.buffer, back.byteOffset).getUint32(0, true), v, 'scratch register round trip');
          assert.equal((await c.deviceInfo()).numRegions, 10);
        } finally {
          c.close();
        }
        await waitFor(() => ended === endedBefore + 2, 'fresh client session end', CASE_TIMEOUT_MS);
      };
      try {
        await within(run(), CASE_TIMEOUT_MS, `case ${cases}`);
        await fdsBackTo(base, `fds after case ${cases}`);
        assert.equal(dev.dma.count, 0, 'no DMA map survives its session');
        assert.deepEqual(uncaught, [], `uncaught exception in case ${cases}`);
      } catch (e) {
        throw new Error(`server fuzz failed at case ${cases}; reproduce with VFU_FUZZ_SEED=${SEED}: ${(e as Error).stack}`);
      }
    }
  } finally {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
    server.close();
    dev.destroy();
  }
  assert.ok(cases >= 30, `only ${cases} cases ran`);
  // device code must not have thrown unexpected errors (anything not a VfioUserError)
  const bugs = warnings.filter((w) => w.startsWith('device error in '));
  assert.deepEqual(bugs, [], 'device/handler bugs logged as warnings');
});
