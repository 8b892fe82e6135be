/**
 * The CLI refuses bad input with a message that says what is wrong, on stderr, exit code 2
 * (usage) — before touching a device or a server — and its client commands name the socket
 * they could not use.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serveChild, sockPath, CLI } from '../helpers.js';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(...args: string[]): Run {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60000 });
}

/** exit code 2, nothing on stdout, the message on stderr */
function usageError(r: Run, message: RegExp): void {
  assert.equal(r.status, 2, `exit code (stderr: ${r.stderr})`);
  assert.equal(r.stdout, '', 'usage errors go to stderr');
  assert.match(r.stderr, message);
}

/** the CLI without blocking this process (a server in it must answer) */
function cliAsync(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    const ch = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    ch.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    ch.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    ch.on('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

const PKG = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };

describe('vfio-user (top level)', () => {
  test('--version, --help, no command, an unknown command', () => {
    const v = cli('--version');
    assert.equal(v.status, 0);
    assert.equal(v.stdout, `vfio-user ${PKG.version}\n`);
    const h = cli('--help');
    assert.equal(h.status, 0);
    assert.match(h.stdout, /^usage: vfio-user <command>/);
    usageError(cli(), /^vfio-user: no command given\nusage: vfio-user <command>/);
    usageError(cli('frobnicate'), /^vfio-user: unknown command 'frobnicate'/);
  });
});

describe('vfio-user serve: options', () => {
  const sock = '/nonexistent-dir/never.sock'; // never reached: the options are refused first
  test('numeric options are checked', () => {
    usageError(cli('serve', 'gpio', `--socket-path=${sock}`, '--inputs=zzz'), /--inputs: 'zzz' is not an integer/);
    usageError(cli('serve', 'gpio', `--socket-path=${sock}`, '--inputs=0x10000'), /--inputs: 0x10000 is out of range \(0\.\.65535\)/);
    usageError(cli('serve', 'gpio', '--fd=abc'), /--fd: 'abc' is not an integer/);
    usageError(cli('serve', 'gpio', '--fd=-1'), /--fd: -1 is out of range/);
    usageError(cli('serve', 'null', `--socket-path=${sock}`, '--max-dma-maps=0'), /--max-dma-maps: 0 is out of range/);
    usageError(cli('serve', 'null', `--socket-path=${sock}`, '--max-dma-bytes=lots'), /--max-dma-bytes: 'lots' is not a size/);
    usageError(cli('serve', 'nvme', `--socket-path=${sock}`, '--poll-us=1.5'), /--poll-us: '1\.5' is not an integer/);
    usageError(cli('serve', 'nvme', `--socket-path=${sock}`, '--lba-size=1024'), /--lba-size must be 512 or 4096/);
    usageError(cli('serve', 'nvme', `--socket-path=${sock}`, '--doorbells=sometimes'), /--doorbells must be trap or mmap/);
    usageError(cli('serve', 'virtio-blk', `--socket-path=${sock}`, '--queues=65'), /--queues: 65 is out of range \(1\.\.64\)/);
  });

  test('sizes: whole blocks, and what memory can hold', () => {
    usageError(cli('serve', 'nvme', `--socket-path=${sock}`, '--size=1'), /--size: 1 is not a whole number of 512-byte blocks/);
    usageError(cli('serve', 'nvme', `--socket-path=${sock}`, '--size=6K', '--lba-size=4096'), /not a whole number of 4096-byte blocks/);
    usageError(cli('serve', 'virtio-blk', `--socket-path=${sock}`, '--size=1000'), /--size: 1000 is not a whole number of 512-byte blocks/);
    usageError(cli('serve', 'nvme', `--socket-path=${sock}`, '--size=1T'), /--size: 1099511627776 bytes do not fit in memory .*--image=FILE/);
    usageError(cli('serve', 'nvme', `--socket-path=${sock}`, '--size=0'), /--size: '0' is not a size/);
    const dir = mkdtempSync(join(tmpdir(), 'vfu-img-'));
    try {
      const odd = join(dir, 'odd.img');
      writeFileSync(odd, Buffer.alloc(1000));
      usageError(cli('serve', 'nvme', `--socket-path=${sock}`, `--image=${odd}`), /--image: .*odd\.img is 1000 bytes, not a whole number of 512-byte blocks/);
      usageError(cli('serve', 'virtio-blk', `--socket-path=${sock}`, `--image=${odd}`, '--read-only'), /not a whole number of 512-byte blocks/);
      assert.equal(readFileSync(odd).length, 1000, 'the image is untouched');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('options a device does not take, values where none belong, extra arguments, no device', () => {
    usageError(cli('serve', 'gpio', `--socket-path=${sock}`, '--size=64M'), /unknown option --size \(device gpio takes --inputs/);
    usageError(cli('serve', 'null', `--socket-path=${sock}`, '--image=x'), /unknown option --image \(device null takes no options of its own/);
    usageError(cli('serve', 'virtio-blk', `--socket-path=${sock}`, '--read-only=yes'), /option --read-only takes no value/);
    usageError(cli('serve', 'gpio', '--socket-path'), /option --socket-path needs a value/);
    usageError(cli('serve', 'gpio', 'null', `--socket-path=${sock}`), /unexpected argument 'null' \(one device only\)/);
    usageError(cli('serve', 'gpio'), /give exactly one of --socket-path=PATH or --fd=N/);
    usageError(cli('serve', 'gpio', `--socket-path=${sock}`, '--fd=3'), /give exactly one of/);
    usageError(cli('serve'), /no device given\nusage: vfio-user serve/);
    usageError(cli('serve', 'nosuch', `--socket-path=${sock}`), /unknown device 'nosuch' \(built-in: gpio, nvme, virtio-blk, null/);
  });

  test('a socket path it cannot listen on is named', () => {
    const r = cli('serve', 'null', `--socket-path=${sock}`);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^vfio-user serve: cannot serve on \/nonexistent-dir\/never\.sock: /m);
  });

  test('stdin control lines are checked (gpio: input 99 1, inputs zzz)', async () => {
    const srv = await serveChild('gpio');
    try {
      srv.send('input 99 1');
      assert.match(String((await srv.waitEvent('error')).message), /--line: 99 is out of range \(0\.\.15\)/);
      srv.send('input 3 2');
      assert.match(String((await srv.waitEvent('error')).message), /usage: input <line 0-15> <0\|1>/);
      srv.send('inputs zzz');
      assert.match(String((await srv.waitEvent('error')).message), /'zzz' is not an integer/);
      srv.send('frob');
      assert.match(String((await srv.waitEvent('error')).message), /unknown control command 'frob'/);
      srv.send('input 3 1');
      assert.equal((await srv.waitEvent('inputs')).value, 8, 'still serving, and a good line works');
    } finally {
      assert.equal(await srv.stop(), 0);
    }
  });
});

describe('client commands: info, bench, migrate', () => {
  test('info names a socket it cannot reach, and refuses extra arguments and a bad --timeout', () => {
    const r = cli('info', '/nonexistent.sock');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot connect to \/nonexistent\.sock: .*No such file or directory/);
    usageError(cli('info', 'a.sock', 'b.sock'), /unexpected argument 'b\.sock' \(one socket only\)/);
    usageError(cli('info', 'a.sock', '--timeout=0'), /--timeout: '0' is not a number of seconds/);
    usageError(cli('info', 'a.sock', '--timeout=abc'), /--timeout: 'abc'/);
    usageError(cli('info'), /no socket given/);
  });

  test('info: a peer that is not a vfio-user server gets a hint (garbage answer; silence until --timeout)', async () => {
    const servers: Server[] = [];
    const listen = async (onData: (s: import('node:net').Socket) => void): Promise<string> => {
      const path = sockPath('notvfu');
      const s = createServer((c) => c.on('data', () => onData(c))).listen(path);
      servers.push(s);
      await new Promise((r) => s.once('listening', r));
      return path;
    };
    try {
      const http = await listen((c) => c.end('HTTP/1.0 400 Bad Request\r\n\r\n'));
      const g = await cliAsync('info', http);
      assert.equal(g.status, 1);
      assert.match(g.stderr, new RegExp(`${http}: its answer to VERSION is not vfio-user .*; is it a vfio-user server\\?`));
      const silent = await listen(() => {});
      const t0 = Date.now();
      const s = await cliAsync('info', silent, '--timeout=0.5');
      assert.equal(s.status, 1);
      assert.match(s.stderr, new RegExp(`${silent}: no answer to VERSION within 0\\.5 s; is it a vfio-user server\\? .*--timeout=SECONDS`));
      assert.ok(Date.now() - t0 < 30000);
    } finally {
      for (const s of servers) s.close();
    }
  });

  test('bench: numbers checked; the default region is one the device has; a region it lacks is refused', async () => {
    usageError(cli('bench', 'a.sock', '-n', 'abc'), /--n: 'abc' is not an integer/);
    usageError(cli('bench', 'a.sock', '--depth=0'), /--depth: 0 is out of range/);
    usageError(cli('bench', 'a.sock', '--count=0'), /--count: 0 is out of range/);
    usageError(cli('bench', 'a.sock', '--offset=-4'), /--offset: -4 is out of range/);
    usageError(cli('bench', 'a.sock', 'b.sock'), /unexpected argument 'b\.sock'/);
    const srv = await serveChild('gpio', ['-q']); // BAR2 only (I/O ports, 256 bytes)
    try {
      const r = cli('bench', srv.path, '-n', '50', '--count=1', '--json');
      assert.equal(r.status, 0, r.stderr);
      assert.equal(JSON.parse(r.stdout).region, 2, 'BAR2, the one the card has');
      usageError(cli('bench', srv.path, '-n', '5', '--region=0'), /--region=0: the device has no such region \(it has BAR2 \(256 bytes, rw\), CONFIG/);
      usageError(cli('bench', srv.path, '-n', '5', '--region=2', '--offset=255', '--count=4'), /--region=2: BAR2 is 256 bytes; the access ends at 259/);
    } finally {
      await srv.stop();
    }
  });

  test('migrate: the same socket twice, different devices, bad numbers', async () => {
    usageError(cli('migrate', '--from=/tmp/a.sock', '--to=/tmp/../tmp/a.sock'), /--from and --to are the same socket/);
    usageError(cli('migrate', '--from=a.sock', '--to=b.sock', '--threshold=abc'), /--threshold: 'abc' is not an integer/);
    usageError(cli('migrate', '--from=a.sock', '--to=b.sock', '--chunk=0'), /--chunk: 0 is out of range/);
    usageError(cli('migrate', '--from=a.sock'), /give both --from=SOCKET and --to=SOCKET/);
    usageError(cli('migrate', '--from=a.sock', '--to=b.sock', 'c.sock'), /Unexpected argument 'c\.sock'|unexpected argument/i);
    const gpio = await serveChild('gpio', ['-q']);
    const nul = await serveChild('null', ['-q']);
    const dir = mkdtempSync(join(tmpdir(), 'vfu-mig-'));
    try {
      const link = join(dir, 'other-name.sock');
      symlinkSync(gpio.path, link);
      usageError(cli('migrate', `--from=${gpio.path}`, `--to=${link}`), /same socket/);
      const r = cli('migrate', `--from=${gpio.path}`, `--to=${nul.path}`);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /the devices differ: --from .* is 494f:0dc8 subsystem 494f:0dc8 class ff0000 rev 00, --to .* is (?!494f:0dc8)[0-9a-f]{4}:[0-9a-f]{4} .*\(--force migrates anyway\)/);
      assert.doesNotMatch(r.stderr, /migrate: (precopy|stop-copy)/, 'checked before it started');
    } finally {
      rmSync(dir, { recursive: true, force: true });
      await gpio.stop();
      await nul.stop();
    }
    assert.ok(!existsSync(gpio.path));
  });
});

describe('trace: options', () => {
  test('both --listen and --connect are needed; a path it cannot listen on is named', () => {
    usageError(cli('trace', '--listen=/tmp/x.sock'), /give both --listen=PATH and --connect=SERVER_PATH/);
    const r = cli('trace', '--listen=/nonexistent-dir/t.sock', '--connect=/tmp/y.sock');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot listen on \/nonexistent-dir\/t\.sock: /);
  });
});
