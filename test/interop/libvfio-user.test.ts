/**
 * Interop with libvfio-user's samples (https://github.com/nutanix/libvfio-user), when
 * VFU_LIBVFIO_USER_SAMPLES names a directory holding the built `server`, `client`,
 * `gpio-pci-idio-16` and `null` samples; skipped otherwise.
 *
 *   our client   -> their `server`, `gpio-pci-idio-16`, `null`
 *   our `info`   -> their `server`, compared with what their own `client` prints
 *   their client -> our server (`vfio-user serve gpio`)
 *
 * Quirks (see the samples' sources): `server` serves one client and exits when it leaves;
 * `gpio-pci-idio-16` re-attaches forever (killed at the end); `null` exits on EOF of stdin,
 * so its stdin is kept open.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import * as P from '../../src/protocol/index.js';
import { serveChild, sockPath, CLI, waitFor } from '../helpers.js';
import { within } from '../client/util.js';

const DIR = process.env.VFU_LIBVFIO_USER_SAMPLES;
const SAMPLES = ['server', 'client', 'gpio-pci-idio-16', 'null'];
const skip = !DIR
  ? 'VFU_LIBVFIO_USER_SAMPLES is not set (a directory with libvfio-user built samples)'
  : SAMPLES.find((s) => !existsSync(join(DIR, s)))
    ? `VFU_LIBVFIO_USER_SAMPLES=${DIR} lacks one of ${SAMPLES.join(', ')}`
    : false;

interface Peer {
  child: ChildProcess;
  path: string;
  out(): string;
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

/** starts a sample on a fresh socket path and waits for the socket */
async function sample(name: string, args: string[] = []): Promise<Peer> {
  const path = sockPath(name);
  const child = spawn(join(DIR!, name), [...args, path], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code, sig) => r(code ?? (sig ? -1 : null))));
  let gone = false;
  void exited.then(() => (gone = true));
  await waitFor(() => existsSync(path) || gone, `${name} listening or gone`, 10000);
  assert.ok(existsSync(path), `${name} listening: ${out}`);
  return {
    child,
    path,
    out: () => out,
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exited;
    },
  };
}

function run(cmd: string, args: string[], timeoutMs = 60000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} timed out: ${stdout} ${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

const le64 = (v: bigint): Uint8Array => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigInt64(0, v, true);
  return b;
};

describe('libvfio-user interop', () => {
  test('our client against their `server`: version, regions, sparse mmap, IRQs, DMA (fd and messages), dirty log, migration', { skip }, async () => {
    const srv = await sample('server', ['-v']);
    try {
      const c = await VfioUserClient.connect(srv.path, { timeout: 10000 });
      assert.deepEqual(c.version, { major: 0, minor: 0 });
      assert.equal(c.twinSocket, true, 'libvfio-user offers the twin socket');
      assert.equal(c.serverCaps.maxMsgFds, 8);
      assert.equal(c.serverCaps.writeMultiple, false);
      assert.ok(c.serverCaps.migration);
      const di = await c.deviceInfo();
      assert.deepEqual([di.flags, di.numRegions, di.numIrqs], [3, 9, 5]);
      const regions = await c.regions();
      assert.deepEqual(
        regions.map((r) => r.size),
        [8, 0x4000, 0, 0, 0, 0, 0, 256, 0],
      );
      assert.ok(regions[0]!.readable && regions[0]!.writable && !regions[0]!.mappable);
      assert.ok(regions[1]!.mappable);
      assert.deepEqual(regions[1]!.sparseAreas, [
        { offset: 0, size: 0x1000 },
        { offset: 0x2000, size: 0x1000 },
      ]);
      const irqs = [];
      for (let i = 0; i < di.numIrqs; i++) irqs.push(await c.irqInfo(i));
      assert.deepEqual(
        irqs.map((i) => i.count),
        [1, 0, 0, 1, 1],
      );
      assert.ok(irqs.every((i) => i.flags & P.IrqInfoFlags.EVENTFD));
      const { decoded } = await c.config();
      assert.deepEqual([decoded.vendorId, decoded.deviceId, decoded.subsystemVendorId, decoded.subsystemId], [0xdead, 0xbeef, 0xcafe, 0xbabe]);
      // BAR1: the sparse areas are the server's memory, reachable by message as well
      const bar1 = await c.mapRegion(1);
      assert.equal(bar1.areas.length, 2);
      bar1.areas[0]!.bytes.set([0xde, 0xad, 0xbe, 0xef]);
      assert.deepEqual([...(await c.read(1, 0, 4))], [0xde, 0xad, 0xbe, 0xef]);
      await c.write(1, 0x2000 + 8, Uint8Array.of(0x42));
      assert.equal(bar1.areas[1]!.bytes[8], 0x42);
      // a bad BAR0 access is refused (it takes exactly 8 bytes at 0)
      await assert.rejects(c.read(0, 0, 4), (e) => (e as { code?: string }).code === 'VFU_REMOTE_ERROR');
      // DMA: map 0 is private (the server uses DMA_READ/WRITE messages), map 1 shared by fd
      const priv = new GuestMemory(0x1000);
      const shared = new GuestMemory(0x1000);
      await c.dmaMap(priv, 0x100000, { shared: false });
      await c.dmaMap(shared, 0x200000);
      await c.dmaLoggingStart(4096, []);
      const irq = await c.enableIrqs(P.PciIrq.INTX, 1);
      // writing a time to BAR0 arms a timer: at that time INTx fires and the server does DMA
      const when = BigInt(Math.floor(Date.now() / 1000) + 2);
      await c.write(0, 0, le64(when));
      assert.equal(await within(irq.next(), 5000, 'INTx from their timer'), 0);
      await waitFor(() => priv.bytes[0xfff] === 0x44, 'their DMA into guest memory', 2000);
      for (const [name, mem] of [
        ['message DMA', priv],
        ['direct DMA', shared],
      ] as const) {
        for (let k = 0; k < 4; k++) assert.equal(mem.bytes[k * 1024 + 7], 0x41 + k, `${name}: 'A'..'D' in 1 KiB runs`);
      }
      const bm = await c.dmaLoggingReport(0x200000, 0x1000, 4096);
      assert.equal(bm[0]! & 1, 1, 'the server logged its direct write');
      await c.dmaLoggingStop();
      await c.dmaUnmap(0x100000, 0x1000);
      assert.deepEqual(c.dmaMaps.map((m) => m.iova), [0x200000]);
      const age = new DataView((await c.read(0, 0, 8)).buffer).getBigInt64(0, true);
      assert.ok(age >= -5n && age <= 5n, `BAR0 reads the time since the written time (${age})`);
      // migration: PRE_COPY gives BAR1; STOP_COPY gives BAR1 then BAR0
      const F = P.DeviceFeatureFlags;
      assert.equal(await c.probeFeature(P.DeviceFeature.MIGRATION, F.GET), true);
      assert.equal(await c.probeFeature(P.DeviceFeature.MIG_DEVICE_STATE, F.SET), true);
      const flags = await c.migrationFlags();
      assert.equal(flags & 1n, 1n, 'STOP_COPY');
      assert.equal(flags & 4n, 4n, 'PRE_COPY');
      assert.equal(await c.getDeviceState(), P.DeviceState.RUNNING);
      const S = P.DeviceState;
      assert.equal(await c.setDeviceState(S.PRE_COPY), S.PRE_COPY);
      let pre = 0;
      for await (const d of c.migDataStream(4096)) pre += d.length;
      assert.equal(pre, 0x4000);
      assert.equal(await c.setDeviceState(S.STOP_COPY), S.STOP_COPY);
      const parts: Uint8Array[] = [];
      for await (const d of c.migDataStream(4096)) parts.push(d);
      const all = Buffer.concat(parts);
      assert.equal(all.length, 0x4000 + 8);
      assert.deepEqual([...all.subarray(0, 4)], [0xde, 0xad, 0xbe, 0xef]);
      assert.equal(all[0x2008], 0x42);
      assert.equal(all.readBigInt64LE(0x4000), when);
      assert.equal(await c.setDeviceState(S.STOP), S.STOP);
      // libvfio-user refuses DMA_UNMAP while the device is stopped
      await assert.rejects(c.dmaUnmap(0x100000, 0x1000), (e) => (e as { code?: string }).code === 'VFU_REMOTE_ERROR');
      bar1.unmap();
      c.close();
      priv.free();
      shared.free();
      assert.equal(await within(srv.exited, 5000, 'server exits after its client'), 0, srv.out());
    } finally {
      await srv.stop();
    }
  });

  test('`vfio-user info` on their `server` matches what their own `client` reports', { skip }, async () => {
    const a = await sample('server');
    const b = await sample('server');
    try {
      const info = await run(process.execPath, [CLI, 'info', a.path, '--json']);
      assert.equal(info.code, 0, info.stderr);
      const r = JSON.parse(info.stdout);
      // their client runs its whole scenario (it execs a second `server` for the migration target)
      const theirs = await run(join(DIR!, 'client'), [b.path]);
      assert.equal(theirs.code, 0, theirs.stderr);
      const out = theirs.stdout + theirs.stderr;
      const dev = /devinfo: flags (0x[0-9a-f]+), num_regions (\d+), num_irqs (\d+)/.exec(out)!;
      assert.ok(dev, out);
      assert.deepEqual([r.device.flags, r.device.numRegions, r.device.numIrqs], [Number(dev[1]), Number(dev[2]), Number(dev[3])]);
      const regs = [...out.matchAll(/region_info\[(\d+)\] offset (0x[0-9a-f]+|0) flags (0x[0-9a-f]+|0) size (\d+)/g)];
      assert.equal(regs.length, r.device.numRegions);
      for (const m of regs) {
        const ours = r.regions[Number(m[1])];
        assert.deepEqual([ours.offset, ours.flags, ours.size], [`0x${Number(m[2]).toString(16)}`, Number(m[3]), Number(m[4])], `region ${m[1]}`);
      }
      const areas = [...out.matchAll(/area \d+ offset (0x[0-9a-f]+|0) size (\d+)/g)].map((m) => ({ offset: Number(m[1]), size: Number(m[2]) }));
      assert.deepEqual(r.regions[1].sparseAreas, areas);
      const irqs = [...out.matchAll(/IRQ (\S+): count=(\d+) flags=(0x[0-9a-f]+)/g)];
      assert.ok(irqs.length >= 3);
      for (const m of irqs) {
        const ours = r.irqs.find((i: { name: string }) => i.name === m[1]);
        assert.deepEqual([ours.count, ours.flags], [Number(m[2]), Number(m[3])], `IRQ ${m[1]}`);
      }
      // the IDs their client asserts
      assert.deepEqual([r.config.vendorId, r.config.deviceId, r.config.subsystemVendorId, r.config.subsystemId], [0xdead, 0xbeef, 0xcafe, 0xbabe]);
      // and the text form
      const text = await run(process.execPath, [CLI, 'info', (await sample('server')).path]);
      assert.match(text.stdout, /Vendor dead Device beef/);
      assert.match(text.stdout, /Region 1: I\/O ports \[size=16K\] \(rwm\)\n\t\tSparse mmap area: offset=0x0 size=4K\n\t\tSparse mmap area: offset=0x2000 size=4K/);
      assert.match(text.stdout, /IRQ ERR: count=1 eventfd/);
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test('our client against their `gpio-pci-idio-16`: inputs follow its write-count rule; reconnect after its re-attach', { skip }, async () => {
    const g = await sample('gpio-pci-idio-16');
    try {
      const c = await VfioUserClient.connect(g.path, { timeout: 5000 });
      const { decoded } = await c.config();
      assert.deepEqual([decoded.vendorId, decoded.deviceId], [0x494f, 0x0dc8]);
      const bar2 = await c.regionInfo(2);
      assert.equal(bar2.size, 256);
      assert.equal((await c.irqInfo(P.PciIrq.INTX)).count, 1);
      const inputs = async (): Promise<number> => {
        const lo = await c.read(2, 1, 1);
        const hi = await c.read(2, 5, 1);
        return lo[0]! | (hi[0]! << 8);
      };
      // pin i reads 1 iff the writes with output bit i set number a multiple of 3
      assert.equal(await inputs(), 0xffff);
      await c.write(2, 0, Uint8Array.of(0x01));
      assert.equal(await inputs(), 0xfffe);
      await c.write(2, 4, Uint8Array.of(0x80));
      assert.equal(await inputs(), 0x7ffe);
      // batched (no write_multiple here: the batch falls back to REGION_WRITE, in order)
      const b = c.batch();
      void b.write(2, 0, Uint8Array.of(0x03));
      void b.write(2, 0, Uint8Array.of(0x01));
      await b.flush();
      assert.equal(b.messages, 0);
      assert.equal(await inputs(), 0x7ffd, 'pin 0 at 3 writes, pin 1 at 1');
      const irq = await c.enableIrqs(P.PciIrq.INTX, 1);
      assert.equal(await c.probeFeature(P.DeviceFeature.MIGRATION, P.DeviceFeatureFlags.GET), true);
      // it re-attaches after a disconnect and keeps its pin counts
      c.close();
      assert.equal(irq.state, 'detached');
      const c2 = await c.reconnect({ waitMs: 5000 });
      assert.equal(irq.state, 'active', 'the INTx handle is re-bound');
      assert.equal((await c2.read(2, 1, 1))[0], 0xfd);
      c2.close();
    } finally {
      await g.stop();
    }
  });

  test('our client and `vfio-user info` against their `null` device', { skip }, async () => {
    // `null` serves a single connection (no re-attach): one instance per client
    const n = await sample('null'); // stdin stays open (a pipe) so it does not exit
    const n2 = await sample('null');
    try {
      const c = await VfioUserClient.connect(n.path, { timeout: 5000 });
      const di = await c.deviceInfo();
      assert.ok(di.flags & P.DeviceInfoFlags.PCI);
      const regions = await c.regions();
      assert.deepEqual(
        regions.filter((r) => r.size > 0).map((r) => r.index),
        [P.PciRegion.CONFIG],
      );
      const { decoded } = await c.config();
      assert.deepEqual([decoded.vendorId, decoded.deviceId], [0, 0]);
      await assert.rejects(c.read(0, 0, 4), (e) => (e as { code?: string }).code === 'VFU_REMOTE_ERROR');
      c.close();
      const info = await run(process.execPath, [CLI, 'info', n2.path, '--json']);
      assert.equal(info.code, 0, info.stderr);
      const r = JSON.parse(info.stdout);
      assert.equal(r.config.vendorId, 0);
      assert.deepEqual(
        r.regions.filter((x: { size: number }) => x.size > 0).map((x: { name: string }) => x.name),
        ['CONFIG'],
      );
    } finally {
      await n.stop();
      await n2.stop();
    }
  });

  test('their sample `client` against our server: generic steps pass, then it asserts its own device IDs', { skip }, async () => {
    const srv = await serveChild('gpio', ['-v']);
    try {
      const r = await run(join(DIR!, 'client'), [srv.path], 20000);
      const out = r.stdout + r.stderr;
      // VERSION, the bogus-region EINVAL check, DEVICE_GET_INFO, every GET_REGION_INFO and the
      // config-space read all succeed against our server; its next step asserts 0xdead:0xbeef
      // (the layout of its own `server` sample), which our devices are not.
      assert.match(out, /failed to read from region -559038737 0-0x3: Invalid argument/);
      assert.match(out, /Assertion `config_space.id.vid == 0xdead' failed/);
      assert.notEqual(r.code, 0);
      const log = srv.stderr();
      const refused = /REGION_READ -> EINVAL \(VFU_INVALID_ARGUMENT\): no region 3735928559/;
      assert.match(log, refused);
      assert.doesNotMatch(log.replace(refused, ''), / -> E[A-Z]+ /, 'no other command failed');
    } finally {
      await srv.stop();
    }
  });
});
