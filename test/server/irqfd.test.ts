/**
 * Interrupt fds from a hostile client, against servers in child processes: a blocking eventfd
 * whose counter is full, a full pipe, a read-only fd, a socket whose peer is gone. Signalling
 * must never block the server and a failing fd must never kill it: it keeps answering, and
 * exits on SIGTERM.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants as fsc, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/index.js';
import { VfioUserClient } from '../../src/client/client.js';
import { Connection, closeFds } from '../../src/transport/connection.js';
import { connectPath } from '../../src/transport/socket.js';
import { VfioUserError } from '../../src/errors.js';
import { IrqController } from '../../src/server/irq.js';
import * as P from '../../src/protocol/index.js';
import { serveChild, fillEventfd, within, type Served } from '../helpers.js';
import { NvmeDriver } from '../../src/testing/index.js';

const C = P.Command;
const F = P.SetIrqsFlags;
const INTX = P.PciIrq.INTX;
const MSIX = P.PciIrq.MSIX;

function remoteErrno(e: unknown): number {
  assert.ok(e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR', `expected an error reply, got ${String(e)}`);
  return e.errno;
}

async function rawClient(path: string): Promise<Connection> {
  const conn = new Connection(connectPath(path));
  await conn.request(C.VERSION, P.encodeVersionRequest({ major: 0, minor: 0, capabilities: {} }));
  return conn;
}

/** A blocking eventfd whose counter is at its maximum (2^64 - 2): a plain write of 1 waits. */
function fullBlockingEventfd(): number {
  const fd = native.eventfd(0, false);
  fillEventfd(fd);
  native.setNonBlocking(fd, false);
  return fd;
}

/** Both ends of a FIFO in one fd (O_RDWR), full, and blocking: a plain write waits. */
function fullBlockingPipe(dir: string): number {
  execFileSync('mkfifo', [join(dir, 'fifo')]);
  const fd = openSync(join(dir, 'fifo'), fsc.O_RDWR | fsc.O_NONBLOCK);
  const chunk = Buffer.alloc(65536);
  for (;;) {
    try {
      writeSync(fd, chunk);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
      throw e;
    }
  }
  for (;;) {
    try {
      writeSync(fd, chunk, 0, 1);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') break;
      throw e;
    }
  }
  native.setNonBlocking(fd, false);
  return fd;
}

/** The child still answers a fresh request, and SIGTERM ends it cleanly. */
async function answersAndStops(s: Served, conn: Connection): Promise<void> {
  const info = await within(conn.request(C.DEVICE_GET_IRQ_INFO, P.encodeIrqInfoRequest({ argsz: 16, flags: 0, index: INTX, count: 0 })), 5000, 'GET_IRQ_INFO');
  assert.ok(info.payload.length >= 16);
  s.send('state');
  await s.waitEvent('state', 5000);
  const code = await within(s.stop(), 5000, 'exit on SIGTERM'); // stop() sends SIGTERM
  assert.equal(code, 0, s.stderr());
}

/** cleanup: a frozen child ignores SIGTERM, so it is killed after a while */
async function reap(s: Served): Promise<void> {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  s.child.kill('SIGTERM');
  const t = setTimeout(() => s.child.kill('SIGKILL'), 3000);
  await s.stop();
  clearTimeout(t);
}

describe('interrupt fds from a hostile client (child processes)', () => {
  test('a blocking eventfd with a full counter: signalling it does not freeze the server', async () => {
    const s = await serveChild('gpio', ['--quiet']);
    const efd = fullBlockingEventfd();
    let conn: Connection | undefined;
    try {
      conn = await rawClient(s.path);
      await conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_EVENTFD | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1 }), { fds: [efd] });
      // the client's own trigger (a loopback write to the eventfd)
      await within(conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_NONE | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1 })), 5000, 'SET_IRQS trigger');
      // and the device's: GPIO change-of-state interrupt (reading BAR2 offset 2 enables it)
      await within(conn.request(C.REGION_READ, P.encodeRegionReadRequest({ offset: 2, region: 2, count: 1 })), 5000, 'REGION_READ');
      s.send('inputs 0x5');
      await s.waitEvent('inputs', 5000);
      await conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_NONE | F.ACTION_UNMASK, index: INTX, start: 0, count: 1 }));
      assert.equal(native.eventfdRead(efd), 0xfffffffffffffffen, 'the counter stayed full: nothing was added, nothing waited');
      await answersAndStops(s, conn);
    } finally {
      conn?.close();
      native.close(efd);
      await reap(s);
    }
  });

  test('a full pipe, a read-only fd, a socket whose peer is gone: refused (EINVAL), the server goes on', async () => {
    const s = await serveChild('gpio', ['--quiet']);
    const dir = mkdtempSync(join(tmpdir(), 'vfu-irqfd-'));
    const [a, b] = native.socketpair();
    native.close(b);
    const fds = { pipe: fullBlockingPipe(dir), 'read-only fd': openSync('/dev/null', 'r'), 'socket without a peer': a, memfd: native.memfdCreate('irq') };
    let conn: Connection | undefined;
    try {
      conn = await rawClient(s.path);
      for (const [what, fd] of Object.entries(fds)) {
        await assert.rejects(
          within(conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_EVENTFD | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1 }), { fds: [fd] }), 5000, what),
          (e) => remoteErrno(e) === 22,
          what,
        );
        await within(conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_NONE | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1 })), 5000, `trigger after ${what}`);
        for (const action of [F.ACTION_MASK, F.ACTION_UNMASK]) {
          await assert.rejects(conn.request(C.DEVICE_SET_IRQS, P.encodeSetIrqsRequest({ flags: F.DATA_EVENTFD | action, index: INTX, start: 0, count: 1 }), { fds: [fd] }), (e) => remoteErrno(e) === 22);
        }
      }
      await answersAndStops(s, conn);
    } finally {
      conn?.close();
      closeFds(Object.values(fds));
      rmSync(dir, { recursive: true, force: true });
      await reap(s);
    }
  });

  test('NVMe: a read-only fd or a dead socket for an MSI-X vector, then completions: the server lives on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vfu-irqfd-'));
    const s = await serveChild('nvme', ['--quiet', '--size=4M', `--image=${join(dir, 'img')}`]);
    let c: VfioUserClient | undefined;
    let d: NvmeDriver | undefined;
    try {
      c = await VfioUserClient.connect(s.path, { timeout: 5000 });
      const drv: NvmeDriver = await within(NvmeDriver.attach(c, { memSize: 4 << 20 }), 5000, 'attach');
      d = drv;
      await within(drv.init({ queues: 1 }), 5000, 'init');
      const [a, b] = native.socketpair();
      native.close(b);
      for (const [what, fd] of [['read-only fd', openSync('/dev/null', 'r')], ['dead socket', a]] as const) {
        const refused = await c.setIrqs(MSIX, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, undefined, [fd]).then(
          () => false,
          (e) => remoteErrno(e) === 22,
        );
        closeFds([fd]);
        // an admin command completes on vector 0: the server must survive it
        const r = await within(drv.identify(1, 0), 5000, `Identify after the ${what}`);
        assert.equal(r.c.status, 0);
        assert.ok(refused, `the ${what} is refused with EINVAL`);
      }
      drv.close();
      c.close();
      await s.waitEvent('disconnect');
      assert.equal(await within(s.stop(), 5000, 'exit on SIGTERM'), 0, s.stderr()); // stop() sends SIGTERM
    } finally {
      d?.close();
      c?.close();
      await reap(s);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('IrqController: a failing delivery is counted and logged once, never thrown', () => {
  test('an eventfd replaced behind our back by a read-only file', () => {
    const irqs = new IrqController([1, 0, 4, 0, 0]);
    const logs: string[] = [];
    irqs.log = (_level, msg) => logs.push(msg);
    const efd = native.eventfd(0, false);
    irqs.setIrqs({ flags: F.DATA_EVENTFD | F.ACTION_TRIGGER, index: MSIX, start: 1, count: 1 }, [efd]);
    assert.equal(irqs.trigger(MSIX, 1), true);
    // the same fd number now names a read-only file: writes fail with EBADF
    native.close(efd);
    const ro = openSync('/dev/null', 'r');
    try {
      assert.equal(ro, efd, 'the lowest free fd number is reused');
      for (let i = 0; i < 3; i++) irqs.trigger(MSIX, 1);
      irqs.setIrqs({ flags: F.DATA_NONE | F.ACTION_TRIGGER, index: MSIX, start: 1, count: 1 }, []);
      assert.equal(irqs.deliveryFailures, 4);
      assert.equal(logs.length, 1, logs.join('\n'));
      assert.match(logs[0]!, /interrupt 2\/1.*EBADF/);
    } finally {
      irqs.clientGone(); // closes ro
    }
    assert.throws(() => native.fstat(ro));
  });

  test('a full counter is counted, not a failure; the eventfd stays readable', () => {
    const irqs = new IrqController([1, 0, 0, 0, 0]);
    const efd = native.eventfd(0, false);
    fillEventfd(efd);
    const dup = native.dup(efd);
    irqs.setIrqs({ flags: F.DATA_EVENTFD | F.ACTION_TRIGGER, index: INTX, start: 0, count: 1 }, [dup]);
    irqs.setLevel(INTX, 0, true);
    assert.equal(irqs.counterFull, 1);
    assert.equal(irqs.deliveryFailures, 0);
    irqs.clientGone();
    native.close(efd);
  });
});
