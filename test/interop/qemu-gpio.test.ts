/**
 * Interop: QEMU's vfio-user-pci with a Linux guest drives our GPIO device through the
 * in-kernel gpio-pci-idio-16 driver.
 *
 * Needs VFU_GUEST_RUN: a program taking `-s SOCKET -t GUEST_SCRIPT` that boots QEMU 10.1+
 * with `-device vfio-user-pci` on SOCKET and a Linux guest (with gpio-pci-idio-16) which runs
 * GUEST_SCRIPT under busybox sh, printing its output, and exits with the script's status.
 * See test/interop/README.md. Without it the test is reported as skipped.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { serveChild, CLI } from '../helpers.js';

const runner = process.env.VFU_GUEST_RUN;
const script = new URL('../../../test/interop/guest/gpio-idio16.sh', import.meta.url).pathname;

for (const probe of [false, true]) {
test(`QEMU + Linux guest: gpio-pci-idio-16 binds and uses our GPIO device${probe ? ', right after a probe client (vfio-user info) connected and left' : ''}`, { skip: runner ? false : 'VFU_GUEST_RUN not set (no QEMU guest runner)', timeout: 600_000 }, async () => {
  const srv = await serveChild('gpio', ['--inputs=0']);
  if (probe) {
    // a health probe: connect, negotiate, describe, leave; QEMU connects at once after it
    const r = spawnSync(process.execPath, [CLI, 'info', srv.path, '--json'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).config.vendorId, 0x494f);
  }
  const seen: number[] = [];
  let toggled = false;
  let answered = false;
  srv.child.stdout!.on('data', () => {});
  const poll = setInterval(() => {
    for (const e of srv.events.splice(0)) {
      if (e.event !== 'outputs') continue;
      const v = e.value as number;
      seen.push(v);
      if (v & 0x8000 && !answered) {
        answered = true;
        srv.send('inputs 0xa5a5');
      }
      if (v & 0x4000 && !toggled) {
        toggled = true;
        srv.send('input 0 0');
      }
    }
  }, 20);
  try {
    const guest = spawn(runner!, ['-s', srv.path, '-t', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    guest.stdout.on('data', (d) => (out += d));
    guest.stderr.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((r) => guest.on('exit', r));
    const lines = out.split('\n').filter((l) => l.includes('GPIOTEST')).join('\n');
    process.stdout.write(lines + '\n');
    assert.equal(code, 0, `guest failed:\n${out.slice(-4000)}\nserver stderr:\n${srv.stderr()}`);
    assert.ok(seen.some((v) => (v & 0xf) === 0b1101), `host saw the guest's outputs: ${seen.map((v) => v.toString(16)).join(',')}`);
    assert.ok(answered && toggled);
  } finally {
    clearInterval(poll);
    await srv.stop();
  }
});
}

test('vfio-user trace shows a complete QEMU boot session with the GPIO device', { skip: runner ? false : 'VFU_GUEST_RUN not set (no QEMU guest runner)', timeout: 300_000 }, async () => {
  const { CLI, sockPath } = await import('../helpers.js');
  const { createInterface } = await import('node:readline');
  const srv = await serveChild('gpio', ['--inputs=0']);
  const tracePath = sockPath('trace');
  const tracer = spawn(process.execPath, [CLI, 'trace', `--listen=${tracePath}`, `--connect=${srv.path}`, '--json', '--once'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const records: Record<string, unknown>[] = [];
  createInterface({ input: tracer.stdout }).on('line', (l) => records.push(JSON.parse(l)));
  let terr = '';
  tracer.stderr.on('data', (d) => (terr += d));
  const { existsSync } = await import('node:fs');
  for (let i = 0; i < 100 && !existsSync(tracePath); i++) await new Promise((r) => setTimeout(r, 50));
  // answer the guest script's requests as in the first test
  const poll = setInterval(() => {
    for (const e of srv.events.splice(0)) {
      if (e.event !== 'outputs') continue;
      const v = e.value as number;
      if (v & 0x8000) srv.send('inputs 0xa5a5');
      if (v & 0x4000) srv.send('input 0 0');
    }
  }, 20);
  try {
    const guest = spawn(runner!, ['-s', tracePath, '-t', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    guest.stdout.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((r) => guest.on('exit', r));
    assert.equal(code, 0, `guest failed through the tracer:\n${out.slice(-3000)}\ntrace stderr: ${terr}`);
    await new Promise((r) => (tracer.exitCode !== null ? r(null) : tracer.on('exit', r)));
    const cmds = new Map<string, number>();
    for (const r of records) if (r.type === 'command') cmds.set(r.command as string, (cmds.get(r.command as string) ?? 0) + 1);
    process.stdout.write(`trace: ${records.length} messages; commands: ${JSON.stringify(Object.fromEntries(cmds))}\n`);
    for (const c of ['VERSION', 'DEVICE_GET_INFO', 'DEVICE_GET_REGION_INFO', 'DEVICE_GET_IRQ_INFO', 'DEVICE_SET_IRQS', 'REGION_READ', 'REGION_WRITE']) {
      assert.ok(cmds.get(c), `trace shows ${c}`);
    }
    assert.ok(records.some((r) => r.command === 'DEVICE_SET_IRQS' && (r.fds as number) > 0), 'eventfds forwarded');
    assert.ok(records.every((r) => !r.decodeError), 'every message decoded');
    assert.ok(records.some((r) => typeof r.rttUs === 'number'), 'replies timed');
  } finally {
    clearInterval(poll);
    tracer.kill('SIGTERM');
    await srv.stop();
  }
});

test('QEMU + Linux guest: two GPIO devices served by one process, each on its own thread (vfio-user serve --device --device)', { skip: runner ? false : 'VFU_GUEST_RUN not set (no QEMU guest runner)', timeout: 600_000 }, async () => {
  const { sockPath } = await import('../helpers.js');
  const { createInterface } = await import('node:readline');
  const { existsSync } = await import('node:fs');
  const a = sockPath('gpio-a');
  const b = sockPath('gpio-b');
  const srv = spawn(process.execPath, [CLI, 'serve', `--device=gpio --socket-path=${a} --inputs=0x00ff`, `--device=gpio --socket-path=${b} --inputs=0xff00`], { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: Record<string, unknown>[] = [];
  createInterface({ input: srv.stdout }).on('line', (l) => events.push(JSON.parse(l)));
  let err = '';
  srv.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => srv.on('exit', r));
  try {
    for (let i = 0; i < 200 && events.filter((e) => e.event === 'ready').length < 2; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(events.filter((e) => e.event === 'ready').length, 2, `both devices ready; stderr: ${err}`);
    const script2 = new URL('../../../test/interop/guest/gpio-two.sh', import.meta.url).pathname;
    const guest = spawn(runner!, ['-s', a, '-s', b, '-t', script2, '-T', '400'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    guest.stdout.on('data', (d) => (out += d));
    guest.stderr.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((r) => guest.on('exit', r));
    const lines = out.split('\n').filter((l) => l.includes('GPIO2'));
    process.stdout.write(lines.join('\n') + '\n');
    assert.equal(code, 0, `guest failed:\n${out.slice(-4000)}\nserver stderr:\n${err}`);
    const inputs = lines.map((l) => / inputs ([01]{16})/.exec(l)?.[1]).filter(Boolean).sort();
    assert.deepEqual(inputs, ['0000000011111111', '1111111100000000'], 'each device shows its own inputs to the guest');
    const outputs = events.filter((e) => e.event === 'outputs');
    const byDevice = new Set(outputs.map((e) => e.device));
    assert.deepEqual([...byDevice].sort(), ['gpio', 'gpio-2'], `both devices reported the guest's outputs: ${JSON.stringify(outputs)}`);
  } finally {
    srv.kill('SIGTERM');
    assert.equal(await exited, 0, err);
  }
  assert.ok(!existsSync(a) && !existsSync(b), 'SIGTERM removed both sockets');
});
