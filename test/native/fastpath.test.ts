/**
 * native.waitReadable (native/fastpath.c): waits for a socket, but never past the moment the
 * event loop has something to do. The waits run in a worker (fixtures/fastpath-worker.ts),
 * whose event loop holds only what each scenario sets up.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { native } from '../../src/native/index.js';

interface Wait {
  name: string;
  r: number;
  ms: number;
}

test('waitReadable: socket readable, maxMs, timers, immediates, new watchers, other fds, thread messages', { timeout: 60000 }, async () => {
  const w = new Worker(new URL('./fixtures/fastpath-worker.js', import.meta.url));
  const got = new Map<string, Wait>();
  await new Promise<void>((resolve, reject) => {
    w.on('message', (m: Wait) => {
      got.set(m.name, m);
      if (m.name === 'done') resolve();
    });
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`worker exited (${code}) early; got ${[...got.keys()].join(', ')}`)));
  });
  await w.terminate();
  const at = (name: string): Wait => {
    const m = got.get(name);
    assert.ok(m, `no result for ${name}`);
    return m;
  };
  const empty = at('empty, maxMs 30');
  assert.equal(empty.r, 0);
  assert.ok(empty.ms >= 25, `waited ${empty.ms} ms for maxMs 30`);
  const spun = at('empty, spin bounded by maxMs 30');
  assert.equal(spun.r, 0);
  assert.ok(spun.ms < 1000, `spun ${spun.ms} ms with maxMs 30`);
  assert.equal(at('readable').r, 1);
  assert.equal(at('readable, spinning').r, 2);
  const timer = at('a timer due in 40 ms');
  assert.equal(timer.r, 0);
  assert.ok(timer.ms >= 20 && timer.ms < 4000, `waited ${timer.ms} ms for a 40 ms timer`);
  for (const name of ['an immediate pending', 'a watcher just started']) {
    assert.equal(at(name).r, 0, name);
    assert.ok(at(name).ms < 1000, `${name}: waited ${at(name).ms} ms`);
  }
  for (const name of ['another watched fd becomes readable', 'a message from another thread']) {
    assert.equal(at(name).r, 0, name);
    assert.ok(at(name).ms >= 10 && at(name).ms < 8000, `${name}: woken after ${at(name).ms} ms (it waited, then was woken well before maxMs)`);
  }
  assert.equal(at('its callback ran').r, 1, 'the loop ran the other fd callback after the wait');
});

test('waitReadable: bad arguments', () => {
  assert.throws(() => native.waitReadable(-1), TypeError);
  assert.throws(() => (native.waitReadable as (x: unknown) => number)('3'), TypeError);
});
