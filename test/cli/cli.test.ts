/**
 * The `vfio-user info` and `vfio-user trace` commands, run as child processes
 * (node dist/src/cli/main.js ...) against `vfio-user serve` children and in-process servers.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient, GuestMemory } from '../../src/client/client.js';
import * as P from '../../src/protocol/index.js';
import { TestDevice } from '../server/testdev.js';
import type { TraceRecord } from '../../src/cli/trace.js';
import { serveChild, sockPath, delay, waitFor, CLI } from '../helpers.js';
import { u32, u64, rd32, within } from '../client/util.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** runs the CLI asynchronously (an in-process server may be on the other end) */
function cli(args: string[], timeoutMs = 15000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`vfio-user ${args.join(' ')} timed out; stderr: ${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** starts a long-running CLI command and waits for a line on stderr */
async function startCli(args: string[], readyText: string): Promise<{ child: ChildProcess; out: () => string; err: () => string; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await waitFor(() => stderr.includes(readyText) || child.exitCode !== null, `'${readyText}' or an exit`, 10000);
  assert.ok(stderr.includes(readyText), `ready: ${stderr}`);
  return { child, out: () => stdout, err: () => stderr, exited };
}

describe('vfio-user info', () => {
  test('text and --json against `vfio-user serve gpio`', async () => {
    const srv = await serveChild('gpio');
    try {
      const text = await cli(['info', srv.path]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /Vendor 494f Device 0dc8/);
      assert.match(text.stdout, /Subsystem: 494f:0dc8/);
      assert.match(text.stdout, /Region 2: I\/O ports \[size=256\] \(rw-\)/, 'an I/O BAR, as on the card');
      assert.match(text.stdout, /Status: Cap- /, 'the card has no capability list');
      assert.match(text.stdout, /Interrupt: pin A/);
      assert.match(text.stdout, /IRQ INTx: count=1 eventfd maskable automasked/);
      assert.doesNotMatch(text.stdout, /IRQ MSI/);
      assert.match(text.stdout, /Protocol: .*max_data_xfer_size=1048576.*twin_socket/);
      const json = await cli(['info', srv.path, '--json']);
      assert.equal(json.code, 0, json.stderr);
      const r = JSON.parse(json.stdout);
      assert.equal(r.config.vendorId, 0x494f);
      assert.equal(r.config.deviceId, 0x0dc8);
      assert.equal(r.config.interruptPin, 1);
      assert.deepEqual(r.config.capabilities, []);
      const bar2 = r.regions.find((x: { name: string }) => x.name === 'BAR2');
      assert.equal(bar2.size, 256);
      assert.equal(bar2.readable && bar2.writable, true);
      assert.equal(r.regions.find((x: { name: string }) => x.name === 'CONFIG').size, 256);
      assert.deepEqual(
        r.irqs.map((i: { name: string; count: number }) => [i.name, i.count]),
        [
          ['INTx', 1],
          ['MSI', 0],
          ['MSI-X', 0],
          ['ERR', 0],
          ['REQ', 0],
        ],
      );
      assert.equal(r.capabilities.pgsizes, 4096);
      assert.equal(r.configBytes.slice(0, 8), '4f49c80d');
    } finally {
      await srv.stop();
    }
  });

  test('capabilities, sparse areas, typed regions and 64-bit BARs (test device, in-process server)', async () => {
    const dev = new TestDevice();
    const path = sockPath('info');
    const server = new VfioUserServer(dev).listen(path);
    try {
      const r = await cli(['info', path, '--no-twin-socket']);
      assert.equal(r.code, 0, r.stderr);
      const out = r.stdout;
      assert.match(out, /Vendor 1af4 Device 10ff \(rev 02\)/);
      assert.match(out, /Class 0580 prog-if 00/);
      assert.match(out, /Region 1: Memory \[size=16K\] .*\(rwm\)\n\t\tSparse mmap area: offset=0x0 size=4K\n\t\tSparse mmap area: offset=0x2000 size=4K/);
      assert.match(out, /Region 2: Memory \[size=8K\] 64-bit, prefetchable/);
      assert.match(out, /VGA|region9 \[size=4K\].*\n\t\tType 32902 subtype 1/);
      assert.match(out, /Capabilities: \[[0-9a-f]{2}\] Power Management/);
      assert.match(out, /Capabilities: \[[0-9a-f]{2}\] MSI: enabled=- count=1\/4 address64=\+ perVectorMask=\+/);
      assert.match(out, /Capabilities: \[[0-9a-f]{2}\] MSI-X: enabled=- functionMask=- count=8 table=BAR=2 offset=0x00000000 pba=BAR=2 offset=0x00001000/);
      assert.match(out, /Capabilities: \[[0-9a-f]{2}\] Express: .*flr=\+/);
      assert.match(out, /Capabilities: \[100 v1\] Device Serial Number: version=1 serial=0123456789abcdef/);
      assert.match(out, /IRQ MSI-X: count=8/);
      assert.match(out, /twin_socket=\{"supported":false\}|Protocol: /);
    } finally {
      server.close();
      dev.destroy();
    }
  });

  test('errors: no server, bad usage', async () => {
    const r = await cli(['info', sockPath('nothing')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /\[VFU_DISCONNECTED\] cannot connect/);
    const u = await cli(['info']);
    assert.equal(u.code, 2);
    assert.match(u.stderr, /usage: vfio-user info/, 'usage errors go to stderr');
    assert.equal(u.stdout, '');
  });
});


describe('vfio-user trace', () => {
  test('--json --once between our client and a server: twin socket, DMA messages, IRQ fds; every message decoded with rtt', async () => {
    const dev = new TestDevice();
    const serverPath = sockPath('tsrv');
    const listen = sockPath('tproxy');
    const server = new VfioUserServer(dev).listen(serverPath);
    const tr = await startCli(['trace', `--listen=${listen}`, `--connect=${serverPath}`, '--json', '--once'], 'trace: listening');
    try {
      const c = await VfioUserClient.connect(listen, { twinSocket: true });
      assert.equal(c.twinSocket, true, 'the twin socket is proxied');
      await c.deviceInfo();
      await c.regionInfo(1);
      await c.irqInfo(P.PciIrq.MSIX);
      await c.write(0, 0, u32(77));
      assert.equal(rd32(await c.read(0, 0, 4)), 77);
      await c.write(0, 0, u32(78), { posted: true });
      await c.writeMulti([{ region: 0, offset: 0x100, data: Uint8Array.of(1, 2) }]);
      const mem = new GuestMemory(1 << 16);
      await c.dmaMap(mem, 0x10000, { shared: false });
      dev.buffer.fill(0x21);
      await c.write(0, 0x08, u64(0x10000));
      await c.write(0, 0x10, u32(64));
      await c.write(0, 0x14, u32(1)); // device DMA_WRITE to us over the twin socket
      await c.write(0, 0x14, u32(2)); // device DMA_READ
      assert.equal(rd32(await c.read(0, 0x18, 4)), 0);
      assert.equal(mem.bytes[63], 0x21);
      const irq = await c.enableIrqs(P.PciIrq.INTX, 1); // an eventfd crosses the proxy
      await c.write(0, 0x20, u32(0xffff));
      assert.equal(await within(irq.next(), 3000, 'INTx through the proxy'), 0);
      assert.ok(await c.probeFeature(P.DeviceFeature.MIGRATION, P.DeviceFeatureFlags.GET));
      await c.getDeviceState();
      await assert.rejects(c.read(3, 0, 4)); // an error reply
      await c.dmaUnmapAll();
      await c.reset();
      c.close();
      mem.free();
      assert.equal(await within(tr.exited, 5000, 'trace --once exit'), 0);
    } finally {
      tr.child.kill('SIGKILL');
      server.close();
      dev.destroy();
    }
    const recs: TraceRecord[] = tr
      .out()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as TraceRecord);
    const cmds = (dir: string, channel: string, type: string): TraceRecord[] => recs.filter((r) => r.dir === dir && r.channel === channel && r.type === type);
    const sent = cmds('c2s', 'main', 'command');
    const names = new Set(sent.map((r) => r.command));
    for (const n of [
      'VERSION',
      'DEVICE_GET_INFO',
      'DEVICE_GET_REGION_INFO',
      'DEVICE_GET_IRQ_INFO',
      'REGION_READ',
      'REGION_WRITE',
      'REGION_WRITE_MULTI',
      'DMA_MAP',
      'DMA_UNMAP',
      'DEVICE_SET_IRQS',
      'DEVICE_FEATURE',
      'DEVICE_RESET',
    ]) {
      assert.ok(names.has(n), `${n} traced (got ${[...names].join(',')})`);
    }
    // every command that wants a reply got one, with its rtt; posted ones are flagged
    for (const r of sent) {
      if (r.flags.includes('no_reply')) {
        assert.equal(r.command, 'REGION_WRITE');
        continue;
      }
      const rep = recs.find((x) => x.dir === 's2c' && x.channel === 'main' && x.type === 'reply' && x.id === r.id && x.t >= r.t);
      assert.ok(rep, `reply to ${r.command} #${r.id}`);
      assert.ok(typeof rep.rttUs === 'number' && rep.rttUs >= 0, 'a round-trip time');
    }
    assert.equal(sent.filter((r) => r.flags.includes('no_reply')).length, 1);
    // decoded, not raw
    for (const r of recs) assert.equal(r.decodeError, undefined, `${r.command} ${r.type} decoded: ${r.decodeError}`);
    assert.equal(recs.find((r) => r.command === 'VERSION' && r.type === 'reply')?.fds, 1, 'the twin socket fd');
    assert.equal(sent.find((r) => r.command === 'DEVICE_SET_IRQS')?.fds, 1, 'the eventfd');
    const rr = sent.find((r) => r.command === 'REGION_READ')?.message as { region?: unknown; count?: unknown } | undefined;
    assert.deepEqual([rr?.region, rr?.count], [0, 4]);
    assert.ok(recs.some((r) => r.type === 'reply' && r.error === 'EINVAL'), 'the error reply is shown');
    // DMA went server-to-client over the twin socket, answered with rtt
    const dmaW = cmds('s2c', 'twin', 'command').filter((r) => r.command === 'DMA_WRITE');
    const dmaR = cmds('s2c', 'twin', 'command').filter((r) => r.command === 'DMA_READ');
    assert.equal(dmaW.length, 1);
    assert.equal(dmaR.length, 1);
    assert.equal((dmaW[0]?.message as { count?: unknown } | undefined)?.count, 64);
    const dmaReplies = cmds('c2s', 'twin', 'reply');
    assert.equal(dmaReplies.length, 2);
    for (const r of dmaReplies) assert.equal(typeof r.rttUs, 'number');
    // timestamps are monotonic
    for (let i = 1; i < recs.length; i++) assert.ok(recs[i]!.t >= recs[i - 1]!.t);
    // flags by name
    const flagsOf = (command: string, type: string, dir = 'c2s'): unknown[] => recs.filter((r) => r.command === command && r.type === type && r.dir === dir).map((r) => (r.message as { flags?: unknown } | undefined)?.flags);
    assert.deepEqual(flagsOf('DMA_MAP', 'command'), ['READ|WRITE']);
    assert.ok(flagsOf('DEVICE_SET_IRQS', 'command').includes('DATA_EVENTFD|ACTION_TRIGGER'), JSON.stringify(flagsOf('DEVICE_SET_IRQS', 'command')));
    assert.ok(flagsOf('DEVICE_GET_REGION_INFO', 'reply', 's2c').every((f) => typeof f === 'string' && /^(READ|WRITE|MMAP|CAPS)(\|(READ|WRITE|MMAP|CAPS))*$|^0$/.test(f)), JSON.stringify(flagsOf('DEVICE_GET_REGION_INFO', 'reply', 's2c')));
    assert.ok(flagsOf('DEVICE_GET_INFO', 'reply', 's2c')[0] === 'RESET|PCI' || /PCI/.test(String(flagsOf('DEVICE_GET_INFO', 'reply', 's2c')[0])));
    assert.ok(flagsOf('DEVICE_FEATURE', 'command').some((f) => /^GET\|PROBE\|feature=MIGRATION$/.test(String(f))), JSON.stringify(flagsOf('DEVICE_FEATURE', 'command')));
    assert.ok(recs.every((r) => r.session === 1));
  });

  test('times count from the start of each session; sessions are numbered', async () => {
    const srv = await serveChild('null', ['-q']);
    const listen = sockPath('tproxy3');
    const tr = await startCli(['trace', `--listen=${listen}`, `--connect=${srv.path}`, '--json'], 'trace: listening');
    const started = performance.now();
    try {
      (await VfioUserClient.connect(listen)).close();
      await delay(1500); // the gap the second session's times must not include
      const c = await VfioUserClient.connect(listen);
      await c.read(0, 0, 4);
      c.close();
      await waitFor(() => tr.err().includes('session 2 ended'), 'session 2 ended', 10000);
    } finally {
      tr.child.kill('SIGTERM');
      await srv.stop();
    }
    assert.ok(performance.now() - started >= 1500);
    const recs = tr.out().trim().split('\n').map((l) => JSON.parse(l) as TraceRecord);
    const second = recs.filter((r) => r.session === 2);
    assert.ok(recs.some((r) => r.session === 1) && second.length > 0, 'two sessions');
    assert.equal(second[0]!.command, 'VERSION');
    assert.ok(second[0]!.t < 1500, `the second session's first message at ${second[0]!.t} ms counts from that session's start`);
    assert.match(tr.err(), /trace: session 2: client connected/);
  });

  test('text output between our client and `vfio-user serve gpio` (no twin socket)', async () => {
    const srv = await serveChild('gpio');
    const listen = sockPath('tproxy2');
    const tr = await startCli(['trace', `--listen=${listen}`, `--connect=${srv.path}`, '--once'], 'trace: listening');
    try {
      const c = await VfioUserClient.connect(listen, { twinSocket: false });
      await c.write(2, 0, Uint8Array.of(0x5a));
      assert.deepEqual([...(await c.read(2, 0, 1))], [0x5a]);
      const irq = await c.enableIrqs(P.PciIrq.INTX, 1);
      await c.read(2, 2, 1); // enable the change-of-state interrupt
      srv.send('inputs 0x0001');
      assert.equal(await within(irq.next(), 3000, 'gpio INTx through the proxy'), 0);
      c.close();
      assert.equal(await within(tr.exited, 5000, 'trace exit'), 0);
    } finally {
      tr.child.kill('SIGKILL');
      await srv.stop();
    }
    const lines = tr.out().trim().split('\n');
    assert.ok(lines.some((l) => /C->S #\d+ VERSION command/.test(l)));
    assert.ok(lines.some((l) => /S->C #\d+ VERSION reply .*rtt=\d+us/.test(l)));
    assert.ok(lines.some((l) => /C->S #\d+ DEVICE_SET_IRQS command .*fds=1/.test(l)));
    assert.ok(lines.some((l) => /S->C #\d+ REGION_READ reply .*rtt=\d+us .*"data":"5a"/.test(l)), lines.join('\n'));
    assert.ok(!lines.some((l) => l.includes('(twin)')));
  });
});
