/**
 * `vfio-user serve ./module.js`: a device module served with the conventions the built-in
 * devices get (socket or --fd, SIGTERM, logs, JSON description, option checking), and the
 * built-in devices' JSON descriptions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/index.js';
import { VfioUserClient } from '../../src/client/client.js';
import { serveChild, CLI } from '../helpers.js';
import { spawnServer } from '../../src/testing/index.js';
import { u32, rd32 } from '../client/util.js';

const MODULE = new URL('./fixtures/my-device.js', import.meta.url).pathname;
const EXAMPLE = new URL('../../../examples/mmio-device.js', import.meta.url).pathname;
const SHARE = new URL('../../../share/vfio-user/', import.meta.url).pathname;

function run(args: string[], opts: { cwd?: string } = {}): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30000, ...opts });
}

test('serve ./module.js: options reach the factory, events and logs flow, info describes it, SIGTERM removes the socket', async () => {
  const srv = await serveChild(MODULE, ['--fill=0x11223344']);
  try {
    assert.ok(existsSync(srv.path));
    const info = spawnSync(process.execPath, [CLI, 'info', srv.path], { encoding: 'utf8', timeout: 30000 });
    assert.equal(info.status, 0, info.stderr);
    assert.match(info.stdout, /Vendor 1234 Device 5678/);
    assert.match(info.stdout, /Region 0: Memory \[size=256\]/);
    assert.match(info.stdout, /IRQ INTx: count=1/);
    await srv.waitEvent('disconnect');
    const c = await VfioUserClient.connect(srv.path);
    try {
      assert.equal(rd32(await c.read(0, 8, 4)), 0x11223344, '--fill reached create()');
      await c.write(0, 8, u32(7));
      assert.deepEqual(await srv.waitEvent('written'), { event: 'written', offset: 8, length: 4 });
      assert.equal(rd32(await c.read(0, 8, 4)), 7);
    } finally {
      c.close();
    }
    assert.match(srv.stderr(), /vfio-user\[my-device\] info: listening on /);
  } finally {
    assert.equal(await srv.stop(), 0);
  }
  assert.ok(!existsSync(srv.path), 'SIGTERM removed the socket file');
});

test('serve ./examples/mmio-device.js (a plain function factory) serves the example that info describes', async () => {
  const srv = await serveChild(EXAMPLE);
  try {
    const info = spawnSync(process.execPath, [CLI, 'info', srv.path], { encoding: 'utf8', timeout: 30000 });
    assert.equal(info.status, 0, info.stderr);
    assert.match(info.stdout, /Vendor 1234 Device 11e1/);
    assert.match(info.stdout, /IRQ INTx: count=1/);
  } finally {
    assert.equal(await srv.stop(), 0);
  }
  assert.ok(!existsSync(srv.path));
});

test('serve ./module.js --fd=N serves the client on that fd', async () => {
  const [a, b] = native.socketpair();
  const child = spawn(process.execPath, [CLI, 'serve', MODULE, '--fd=3', '-q'], { stdio: ['pipe', 'pipe', 'pipe', b] });
  native.close(b);
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  try {
    const c = await VfioUserClient.connect({ fd: a });
    assert.equal(rd32(await c.read(0, 0, 4)), 0);
    c.close();
  } finally {
    child.kill('SIGTERM');
  }
  assert.equal(await exited, 0);
});

test('serve ./module.js refuses options it does not declare, and bad values of those it does', () => {
  const r = run(['serve', MODULE, '--socket-path=/tmp/never.sock', '--size=64M']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /unknown option --size \(device my-device takes --fill/);
  const v = run(['serve', MODULE, '--socket-path=/tmp/never.sock', '--fill=lots']);
  assert.equal(v.status, 2);
  assert.match(v.stderr, /--fill: 'lots' is not an integer/);
  const h = run(['serve', MODULE, '--help']);
  assert.equal(h.status, 0);
  assert.match(h.stdout, /device .*my-device\.js: a scratch register device\n {2}--fill=N\n {6}initial register value/);
  assert.ok(!existsSync('/tmp/never.sock'));
});

test('serve: a module that is missing, fails to load or exports no factory is reported', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfu-mod-'));
  try {
    const missing = run(['serve', './nope.js', '--socket-path=x.sock'], { cwd: dir });
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /device module .*nope\.js not found/);
    writeFileSync(join(dir, 'bad.mjs'), 'export default { description: "no create" };\n');
    const bad = run(['serve', './bad.mjs', '--socket-path=x.sock'], { cwd: dir });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /bad\.mjs: the factory has no create/);
    writeFileSync(join(dir, 'clash.mjs'), 'export default { description: "d", options: { fd: { type: "string", help: "" } }, create() {} };\n');
    const clash = run(['serve', './clash.mjs', '--socket-path=x.sock'], { cwd: dir });
    assert.equal(clash.status, 2);
    assert.match(clash.stderr, /option --fd is one of serve's own options/);
    writeFileSync(join(dir, 'throws.mjs'), 'throw new Error("module body failed");\n');
    const throws = run(['serve', './throws.mjs', '--socket-path=x.sock'], { cwd: dir });
    assert.equal(throws.status, 1);
    assert.match(throws.stderr, /throws\.mjs failed to load: Error: module body failed/);
    writeFileSync(join(dir, 'notdev.mjs'), 'export default function createDevice() { return {}; }\n');
    const notdev = run(['serve', './notdev.mjs', '--socket-path=x.sock'], { cwd: dir });
    assert.equal(notdev.status, 1);
    assert.match(notdev.stderr, /device notdev: the factory returned object, not a PciDevice/);
    const opt = run(['serve', './notdev.mjs', '--socket-path=x.sock', '--speed=3'], { cwd: dir });
    assert.equal(opt.status, 2, 'a plain function declares no options');
    assert.match(opt.stderr, /unknown option --speed \(device notdev takes no options of its own/);
    writeFileSync(join(dir, 'create.mjs'), 'export default { description: "d", create() { throw new Error("no hardware"); } };\n');
    const create = run(['serve', './create.mjs', '--socket-path=x.sock'], { cwd: dir });
    assert.equal(create.status, 1);
    assert.match(create.stderr, /^vfio-user serve: device create: no hardware\n$/);
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.sock')), [], 'no socket left behind');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('serve --print-description / --install-description: the JSON description, for modules and built-in devices', () => {
  const p = run(['serve', MODULE, '--print-description', '--fill=3']);
  assert.equal(p.status, 0, p.stderr);
  assert.deepEqual(JSON.parse(p.stdout), { description: 'a scratch register device', type: 'my-device', binary: 'vfio-user', args: ['serve', MODULE, '--fill=3'] });
  const dir = mkdtempSync(join(tmpdir(), 'vfu-share-'));
  try {
    const i = run(['serve', MODULE, `--install-description=${dir}`]);
    assert.equal(i.status, 0, i.stderr);
    assert.deepEqual(JSON.parse(readFileSync(join(dir, '50-vfio-user-my-device.json'), 'utf8')).args, ['serve', MODULE]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // the shipped files are what the command prints
  const shipped = readdirSync(SHARE).sort();
  assert.deepEqual(shipped, ['50-vfio-user-gpio.json', '50-vfio-user-null.json', '50-vfio-user-nvme.json', '50-vfio-user-virtio-blk.json']);
  for (const f of shipped) {
    const name = /^50-vfio-user-(.*)\.json$/.exec(f)![1]!;
    const r = run(['serve', name, '--print-description']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readFileSync(join(SHARE, f), 'utf8'), r.stdout, `${f} is out of date (regenerate with vfio-user serve ${name} --install-description=share/vfio-user)`);
  }
});

test('serve: the stats control command counts the session\'s messages by command, CPU time and the device\'s counters', async () => {
  const srv = await serveChild('nvme', ['--size=1M']);
  try {
    srv.send('stats');
    const idle = await srv.waitEvent('stats');
    assert.equal(typeof idle.cpuUs, 'number');
    assert.equal(idle.conn, undefined, 'no session yet');
    const c = await VfioUserClient.connect(srv.path);
    try {
      for (let i = 0; i < 5; i++) await c.read(0, 0, 4);
      srv.send('stats');
      const s = (await srv.waitEvent('stats')) as { conn: { commandsIn: number[] }; device: { commands: number; pollWakeups: number } };
      assert.equal(s.conn.commandsIn[1], 1, 'one VERSION');
      assert.equal(s.conn.commandsIn[9], 5, 'five REGION_READs');
      assert.equal(s.device.commands, 0);
      assert.equal(typeof s.device.pollWakeups, 'number');
    } finally {
      c.close();
    }
  } finally {
    assert.equal(await srv.stop(), 0);
  }
});

test('serve --fast-path=on|off and --spin-us=N override VFU_FAST_PATH / VFU_SPIN_US; ready says how it serves; off, each request is a wake-up', async () => {
  const cases = [
    { args: [], env: {}, want: { fastPath: true, spinUs: 50 } },
    { args: ['--fast-path=off', '--spin-us=0'], env: {}, want: { fastPath: false, spinUs: 0 } },
    { args: [], env: { VFU_FAST_PATH: '0', VFU_SPIN_US: '7' }, want: { fastPath: false, spinUs: 7 } },
    { args: ['--fast-path=on', '--spin-us=0'], env: { VFU_FAST_PATH: '0', VFU_SPIN_US: '7' }, want: { fastPath: true, spinUs: 0 } },
  ];
  for (const c of cases) {
    const srv = await spawnServer([CLI, 'serve', 'gpio', ...c.args], { name: 'fp', env: c.env });
    try {
      assert.deepEqual({ fastPath: srv.ready.fastPath, spinUs: srv.ready.spinUs }, c.want, `${c.args.join(' ')} ${JSON.stringify(c.env)}`);
      const client = await VfioUserClient.connect(srv.path);
      try {
        for (let i = 0; i < 200; i++) await client.read(2, 0, 1);
        srv.send('stats');
        const s = (await srv.waitEvent('stats')) as { conn: { commandsIn: number[]; polls: number } };
        assert.equal(s.conn.commandsIn[9], 200);
        // off: every request wakes the event loop; on: the server waits for them in the fast path
        if (c.want.fastPath) assert.ok(s.conn.polls < 100, `${s.conn.polls} wake-ups for 200 requests with the fast path`);
        else assert.ok(s.conn.polls >= 200, `${s.conn.polls} wake-ups for 200 requests without the fast path`);
      } finally {
        client.close();
      }
    } finally {
      assert.equal(await srv.stop(), 0);
    }
  }
});

test('serve: bad --fast-path and --spin-us values are usage errors, with one device or several', () => {
  for (const [args, why] of [
    [['gpio', '--socket-path=/tmp/x.sock', '--fast-path=maybe'], /--fast-path must be on or off/],
    [['gpio', '--socket-path=/tmp/x.sock', '--spin-us=-1'], /--spin-us/],
    [['gpio', '--socket-path=/tmp/x.sock', '--spin-us=2000000'], /--spin-us/],
    [['--device=gpio --socket-path=/tmp/x.sock --fast-path=yes'], /--fast-path must be on or off/],
  ] as const) {
    const r = spawnSync(process.execPath, [CLI, 'serve', ...args], { encoding: 'utf8', timeout: 60000 });
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, why);
  }
});
