/**
 * `vfio-user serve --device=... --device=...` (and --config=FILE): several devices in one
 * process, each on its own worker thread: all served, control lines and events carry the
 * device's name, a device that throws (or whose thread dies) is reported and restarted while
 * the others serve, SIGTERM stops them all and removes their sockets, bad specs exit 2.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { VfioUserClient } from '../../src/client/client.js';
import { CLI, sockPath } from '../helpers.js';
import { u32, rd32 } from '../client/util.js';

const MODULE = new URL('./fixtures/my-device.js', import.meta.url).pathname;
const THREAD_DEVICE = new URL('../server/fixtures/thread-device.js', import.meta.url).pathname;
const T = { timeout: 120000 };

interface Many {
  child: ChildProcess;
  events: Record<string, unknown>[];
  next(pred: (e: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stderr(): string;
  exited: Promise<number | null>;
}

function serveMany(args: string[]): Many {
  const child = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: Record<string, unknown>[] = [];
  const waiters: { pred: (e: Record<string, unknown>) => boolean; resolve: (e: Record<string, unknown>) => void }[] = [];
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  createInterface({ input: child.stdout }).on('line', (l) => {
    const e = JSON.parse(l) as Record<string, unknown>;
    events.push(e);
    for (const w of waiters.splice(0)) {
      if (w.pred(e)) w.resolve(e);
      else waiters.push(w);
    }
  });
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  return {
    child,
    events,
    stderr: () => err,
    exited,
    next: (pred, timeoutMs = 30000) => {
      const seen = events.find(pred);
      if (seen) {
        events.splice(events.indexOf(seen), 1);
        return Promise.resolve(seen);
      }
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no such event; got ${JSON.stringify(events)}; stderr ${err}`)), timeoutMs);
        waiters.push({
          pred,
          resolve: (e) => {
            clearTimeout(t);
            events.splice(events.indexOf(e), 1);
            resolve(e);
          },
        });
      });
    },
  };
}

const ev = (event: string, device?: string) => (e: Record<string, unknown>) => e.event === event && (device === undefined || e.device === device);

test('two built-in devices and a module: each served on its own thread, controls and events by name, SIGTERM stops all and removes the sockets', T, async () => {
  const g1 = sockPath('g1');
  const g2 = sockPath('g2');
  const m = sockPath('m');
  const s = serveMany([`--device=gpio --socket-path=${g1} --inputs=0x00ff`, `--device=gpio --socket-path=${g2}`, `--device=${MODULE} --socket-path=${m} --fill=7`, '-q']);
  try {
    for (const [name, path] of [['gpio', g1], ['gpio-2', g2], ['my-device', m]] as const) {
      assert.deepEqual(await s.next(ev('ready', name)), { event: 'ready', device: name, socket: path, fastPath: true, spinUs: 50 });
    }
    const c1 = await VfioUserClient.connect(g1);
    const c2 = await VfioUserClient.connect(g2);
    const cm = await VfioUserClient.connect(m);
    assert.equal((await c1.read(2, 1, 1))[0], 0xff, 'gpio: --inputs reached its factory');
    assert.equal((await c2.read(2, 1, 1))[0], 0x00);
    assert.equal(rd32(await cm.read(0, 8, 4)), 7, 'module: --fill reached its factory');
    await cm.write(0, 8, u32(9));
    assert.deepEqual(await s.next(ev('written', 'my-device')), { event: 'written', device: 'my-device', offset: 8, length: 4 });
    s.child.stdin!.write('gpio-2 inputs 0x0300\n');
    assert.deepEqual(await s.next(ev('inputs', 'gpio-2')), { event: 'inputs', device: 'gpio-2', value: 0x300 });
    assert.equal((await c2.read(2, 5, 1))[0], 0x03, 'inputs 8-15');
    s.child.stdin!.write('gpio bogus\n');
    assert.match(String((await s.next(ev('error', 'gpio'))).message), /unknown control command 'bogus'/);
    s.child.stdin!.write('nosuch state\n');
    assert.match(String((await s.next(ev('error'))).message), /unknown device 'nosuch'/);
    s.child.kill('SIGTERM');
    assert.equal(await s.exited, 0, s.stderr());
    for (const c of [c1, c2, cm]) {
      await assert.rejects(c.read(0, 0, 1), 'disconnected');
      c.close();
    }
    for (const p of [g1, g2, m]) assert.ok(!existsSync(p), `${p} removed`);
  } finally {
    s.child.kill('SIGKILL');
  }
});

test('a device that throws on its thread: reported, restarted; the other device serves throughout', T, async () => {
  const bad = sockPath('bad');
  const good = sockPath('good');
  const config = sockPath('config') + '.json';
  writeFileSync(config, JSON.stringify({ devices: [[THREAD_DEVICE, `--socket-path=${bad}`], `gpio --socket-path=${good} --inputs=0x0042`] }));
  const s = serveMany([`--config=${config}`]);
  try {
    await s.next(ev('ready', 'thread-device'));
    await s.next(ev('ready', 'gpio'));
    const cb = await VfioUserClient.connect(bad);
    const cg = await VfioUserClient.connect(good);
    await cb.write(0, 0, u32(1)); // throw from a timer on its thread
    const exit = await s.next(ev('device-exit', 'thread-device'));
    assert.match(String(exit.error), /device bug on its thread/);
    assert.equal((await cg.read(2, 1, 1))[0], 0x42, 'the gpio device serves meanwhile');
    await s.next(ev('device-restart', 'thread-device'));
    await s.next(ev('ready', 'thread-device'));
    cb.close();
    const cb2 = await VfioUserClient.connect(bad);
    assert.equal(rd32(await cb2.read(0, 0, 4)), 0, 'the restarted device serves, fresh');
    await cb2.write(0, 0, u32(2)); // its worker exits
    assert.equal((await s.next(ev('device-exit', 'thread-device'))).code, 3);
    await s.next(ev('ready', 'thread-device'));
    cb2.close();
    cg.close();
    assert.match(s.stderr(), /vfio-user\[thread-device\] warn: its thread died/);
    s.child.kill('SIGTERM');
    assert.equal(await s.exited, 0);
    assert.ok(!existsSync(bad) && !existsSync(good));
  } finally {
    s.child.kill('SIGKILL');
  }
});

test('bad multi-device command lines exit 2 and start nothing', T, () => {
  const a = sockPath('a');
  for (const [args, why] of [
    [[`--device=gpio`], /--socket-path=PATH is missing/],
    [[`--device=gpio --socket-path=${a}`, `--device=null --socket-path=${a}`], /two devices on/],
    [[`--device=gpio --socket-path=${a} --bogus=1`], /unknown option --bogus/],
    [[`--device=gpio --fd=3`], /only --socket-path/],
    [[`--device=gpio --socket-path=${a}`, 'null'], /unexpected argument 'null'/],
    [[`--config=/nonexistent.json`], /cannot read/],
  ] as const) {
    const r = spawnSync(process.execPath, [CLI, 'serve', ...args], { encoding: 'utf8', timeout: 30000 });
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, why);
    assert.ok(!existsSync(a));
  }
});

test('--fast-path and --spin-us per device: each thread serves as its --device says (ready tells), both serve', T, async () => {
  const a = sockPath('fpa');
  const b = sockPath('fpb');
  const s = serveMany([`--device=gpio --socket-path=${a} --fast-path=off --spin-us=0`, `--device=gpio --socket-path=${b} --spin-us=9`, '-q']);
  try {
    assert.deepEqual(await s.next(ev('ready', 'gpio')), { event: 'ready', device: 'gpio', socket: a, fastPath: false, spinUs: 0 });
    assert.deepEqual(await s.next(ev('ready', 'gpio-2')), { event: 'ready', device: 'gpio-2', socket: b, fastPath: true, spinUs: 9 });
    for (const path of [a, b]) {
      const c = await VfioUserClient.connect(path);
      for (let i = 0; i < 50; i++) assert.equal((await c.read(2, 7, 1))[0], 0);
      c.close();
    }
    s.child.kill('SIGTERM');
    assert.equal(await s.exited, 0, s.stderr());
  } finally {
    s.child.kill('SIGKILL');
  }
});
