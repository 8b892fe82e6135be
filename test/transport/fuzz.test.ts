/**
 * Bounded, seeded fuzzing of a Connection over a real socketpair: valid protocol messages
 * with random corruptions, garbage, random sizes and splits, random fds. The Connection may
 * dispatch, reply, fail the connection with a VfioUserError; it must never throw out of its
 * poll callback, hang, or leak an fd. Reproduce with VFU_FUZZ_SEED=<seed>.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/native/index.js';
import { Connection, takeFds, closeFds } from '../../src/transport/connection.js';
import { VfioUserError } from '../../src/errors.js';
import { Rng, fuzzSeed, openFds, fdsBackTo, tick } from './util.js';
import { hostileStream, sendWrites } from './gen.js';
import { within } from '../helpers.js';

const SEED = fuzzSeed();
const TIME_BUDGET_MS = 4000;
const MAX_CASES = 1500;
const CASE_TIMEOUT_MS = 3000;

test(`transport fuzz: hostile streams into a Connection (seed ${SEED})`, async () => {
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown): void => void uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
  const base = openFds();
  const start = Date.now();
  let cases = 0;
  let failedConns = 0;
  try {
    for (; cases < MAX_CASES && Date.now() - start < TIME_BUDGET_MS; cases++) {
      const r = new Rng(SEED + cases);
      const maxMessageSize = r.pick([64, 4096, 16 + 1048576 + 4096]);
      const [a, b] = native.socketpair();
      let closed: VfioUserError | undefined | null = null;
      const conn = new Connection(a, {
        maxMessageSize,
        maxFdsPerMessage: r.pick([0, 1, 4, 16, 253]),
        highWaterMark: r.pick([1, 65536]),
        onCommand: (m, c) => {
          // handlers of every kind: take fds or not, reply, error-reply, reply with fds, close
          const fds = r.chance(0.5) ? takeFds(m) : [];
          closeFds(fds);
          switch (r.int(6)) {
            case 0:
              c.reply(m.header, m.payload.subarray(0, Math.min(m.payload.length, maxMessageSize - 16)));
              break;
            case 1:
              c.replyError(m.header, r.int(200));
              break;
            case 2: {
              const ev = native.eventfd(0, false);
              c.reply(m.header, null, [ev]);
              native.close(ev);
              break;
            }
            case 3:
              if (r.chance(0.05)) c.close();
              break;
            default:
              break;
          }
        },
        onClose: (e) => {
          assert.equal(closed, null, 'onClose runs once');
          closed = e;
        },
      });
      // requests of our own, so that replies in the stream may match (some time out)
      const reqs: Promise<unknown>[] = [];
      for (let i = r.int(4); i > 0; i--) {
        reqs.push(conn.request(r.pick([5, 9, 10]), null, { timeout: r.pick([1, 50, 5000]), expectFds: r.chance(0.5) }).then(
          (m) => closeFds(m.fds),
          (e) => assert.ok(e instanceof VfioUserError, `request rejected with ${String(e)}`),
        ));
      }
      const writes = hostileStream(r, { frames: 12, saneHeaders: 80, versionFirst: false, maxMessageSize });
      const run = async (): Promise<void> => {
        await sendWrites(r, b, writes, tick);
        if (r.chance(0.5)) {
          native.close(b); // hang-up (maybe with our replies unread)
          await tick();
          conn.close();
        } else {
          await tick();
          conn.close();
          native.close(b);
        }
        await Promise.all(reqs);
      };
      try {
        await within(run(), CASE_TIMEOUT_MS, `case ${cases}`);
        assert.equal(conn.isClosed, true);
        assert.notEqual(closed, null, 'onClose ran');
        if (closed) failedConns++;
        await fdsBackTo(base, `fds after case ${cases}`);
        assert.deepEqual(uncaught, [], `uncaught exception in case ${cases}`);
      } catch (e) {
        throw new Error(`transport fuzz failed at case ${cases}; reproduce with VFU_FUZZ_SEED=${SEED}: ${(e as Error).stack}`);
      }
    }
  } finally {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
  }
  assert.ok(cases >= 50, `only ${cases} cases ran`);
  assert.ok(failedConns > 0, 'some cases broke framing (the generator works)');
});
