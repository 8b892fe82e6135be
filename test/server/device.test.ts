/**
 * Device API pieces over a real socket: ioeventfds, ROM and VGA regions, I/O BARs, config
 * hooks; and the backend program conventions (SIGTERM, --fd).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { PciDevice } from '../../src/server/device.js';
import { VfioUserClient } from '../../src/client/client.js';
import { decodeConfig } from '../../src/client/pci-decode.js';
import { native } from '../../src/native/index.js';
import { serveChild, CLI, waitFor } from '../helpers.js';
import { serveDevice } from '../../src/testing/index.js';

test('ioeventfds: GET_REGION_IO_FDS hands them out, writing one runs the device handler', async () => {
  const dev = new PciDevice({ vendorId: 0x1234, deviceId: 0x11, classCode: 0xff0000 });
  dev.addRegion(0, { size: 4096, access: { read: (_o, n) => new Uint8Array(n), write: () => {} } });
  const kicks: bigint[] = [];
  dev.addIoEventFd(0, 0x100, 4, undefined, (n) => kicks.push(n));
  dev.addIoEventFd(0, 0x104, 4, 7n, () => kicks.push(-1n));
  await using h = await serveDevice(dev, { name: 'iofd' });
  const c = h.client;
  const { reply, fds } = await c.regionIoFds(0);
  assert.equal(reply.count, 2);
  assert.equal(fds.length, 2);
  const sr = reply.subRegions;
  assert.equal(sr[0]!.offset, 0x100n);
  assert.equal(sr[1]!.kind === 'ioeventfd' && sr[1]!.datamatch, 7n);
  native.eventfdWrite(fds[sr[0]!.fdIndex]!, 1);
  native.eventfdWrite(fds[sr[1]!.fdIndex]!, 1);
  await waitFor(() => kicks.length === 2, 'both ioeventfd handlers');
  assert.deepEqual(kicks.sort(), [-1n, 1n]);
  for (const fd of fds) native.close(fd);
  const none = await c.regionIoFds(7);
  assert.equal(none.reply.count, 0);
});

test('ROM, VGA and I/O BAR regions and config-space hooks', async () => {
  const dev = new PciDevice({ vendorId: 0x1234, deviceId: 0x12, classCode: 0x030000 });
  const rom = new Uint8Array(2048).fill(0x55);
  rom[0] = 0x55;
  rom[1] = 0xaa;
  dev.addRegion(6, { size: 2048, access: { read: (o, n) => rom.slice(o, o + n) } });
  dev.addRegion(8, { size: 0x20000, access: { read: (_o, n) => new Uint8Array(n).fill(1) } });
  dev.addRegion(4, { size: 32, bar: { kind: 'io' }, access: { read: (_o, n) => new Uint8Array(n).fill(2), write: () => {} } });
  const seen: number[] = [];
  dev.config.hook({ offset: 0x40, length: 4 }, { read: (_o, d) => d.fill(0xab), write: (o) => (seen.push(o), true) });
  await using h = await serveDevice(dev, { name: 'rom' });
  const c = h.client;
  const r6 = await c.regionInfo(6);
  assert.equal(r6.size, 2048);
  assert.equal(r6.writable, false, 'ROM is read-only');
  assert.deepEqual([...(await c.read(6, 0, 2))], [0x55, 0xaa]);
  await assert.rejects(c.write(6, 0, Uint8Array.of(0)));
  assert.equal((await c.regionInfo(8)).size, 0x20000);
  const cfg = decodeConfig(await c.read(7, 0, 256));
  assert.equal(cfg.bars[4]!.kind, 'io');
  await c.write(7, 0x20, Uint8Array.of(0xff, 0xff, 0xff, 0xff));
  const io = Buffer.from(await c.read(7, 0x20, 4)).readUInt32LE(0);
  assert.equal(io, 0xffffffe1 >>> 0, 'io BAR of 32 bytes sizes as ~31 | 1');
  await c.write(7, 0x30, Uint8Array.of(0xfe, 0xff, 0xff, 0xff));
  const romBar = Buffer.from(await c.read(7, 0x30, 4)).readUInt32LE(0);
  assert.equal(romBar, 0xfffff800 >>> 0);
  assert.deepEqual([...(await c.read(7, 0x40, 2))], [0xab, 0xab]);
  await c.write(7, 0x41, Uint8Array.of(1));
  assert.deepEqual(seen, [0x41]);
});

test('backend conventions: SIGTERM exits cleanly and removes the socket; --fd serves an inherited socket', async () => {
  const s = await serveChild('null');
  const c = await VfioUserClient.connect(s.path);
  await c.write(0, 0, Uint8Array.of(1, 2, 3));
  assert.equal(await s.stop(), 0, 'exit code 0 on SIGTERM');
  const { existsSync } = await import('node:fs');
  assert.equal(existsSync(s.path), false);
  c.close();

  const [a, b] = native.socketpair();
  native.setCloexec(b, false);
  const child = spawn(process.execPath, [CLI, 'serve', 'gpio', '--fd=3', '-q'], { stdio: ['pipe', 'pipe', 'pipe', b] });
  native.close(b);
  const client = await VfioUserClient.connect({ fd: a });
  assert.equal((await client.read(2, 0, 1))[0], 0);
  client.close();
  child.kill('SIGTERM');
  const code = await new Promise((r) => child.on('exit', r));
  assert.equal(code, 0);
});

test('serve refuses bad usage with a clear message', async () => {
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, [CLI, 'serve', 'gpio'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--socket-path/);
  const u = spawnSync(process.execPath, [CLI, 'serve', 'nosuch', '--socket-path=/tmp/x'], { encoding: 'utf8' });
  assert.equal(u.status, 2);
  assert.match(u.stderr, /unknown device/);
});
