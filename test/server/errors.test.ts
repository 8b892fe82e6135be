/**
 * One error family: every error the package raises is a VfioUserError with a stable code and
 * errno; the server tells client errors (any VfioUserError, a ConfigSpaceError included) from
 * device bugs (anything else, logged with its stack).
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserError, ProtocolError, ConfigSpaceError, DmaError, Errno, protocol, pci } from '../../src/index.js';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient } from '../../src/client/client.js';
import { MigState } from '../../src/server/migration.js';
import { PciDevice } from '../../src/server/device.js';
import { GpioDevice } from '../../src/devices/gpio.js';
import { TestDevice } from './testdev.js';
import { sockPath } from '../helpers.js';
import { serveDevice } from '../../src/testing/index.js';

describe('the error family', () => {
  test('each layer subclasses VfioUserError with its code and errno', () => {
    const p = new ProtocolError('VFU_BAD_SIZE', 'short');
    const c = new ConfigSpaceError('VFU_CONFIG_RANGE', 'outside');
    const d = new DmaError('unmapped');
    for (const [e, cls, code, errno] of [
      [p, ProtocolError, 'VFU_BAD_SIZE', Errno.EINVAL],
      [c, ConfigSpaceError, 'VFU_CONFIG_RANGE', Errno.EINVAL],
      [d, DmaError, 'VFU_DMA', Errno.EFAULT],
    ] as const) {
      assert.ok(e instanceof VfioUserError && e instanceof cls && e instanceof Error);
      assert.equal(e.code, code);
      assert.equal(e.errno, errno);
      assert.equal(e.name, cls.name);
    }
    // the same classes through the sub-module exports
    assert.equal(protocol.ProtocolError, ProtocolError);
    assert.equal(pci.ConfigSpaceError, ConfigSpaceError);
    // a decoder failure is one
    assert.throws(() => protocol.decodeDmaMapRequest(new Uint8Array(3)), (e) => e instanceof VfioUserError && e.code === 'VFU_SHORT_MESSAGE' && e.errno === Errno.EINVAL);
    // a config-space model failure is one
    const dev = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    assert.throws(() => dev.config.load(new Uint8Array(4)), (e) => e instanceof VfioUserError && e.code === 'VFU_CONFIG_BAD_STATE');
    dev.destroy();
  });
});

describe('the server tells client errors from device bugs', () => {
  test("a client's config-space blob for another device: an error reply, logged as a client error, no stack", async () => {
    const logs: { level: string; msg: string }[] = [];
    const da = new TestDevice();
    const db = new GpioDevice();
    const sa = new VfioUserServer(da);
    const sb = new VfioUserServer(db, { log: (level, msg) => logs.push({ level, msg }) });
    const pa = sockPath('err-src');
    const pb = sockPath('err-dst');
    sa.listen(pa);
    sb.listen(pb);
    const src = await VfioUserClient.connect(pa);
    const dst = await VfioUserClient.connect(pb);
    try {
      await src.setDeviceState(MigState.STOP_COPY);
      const data = await src.migDataRead(1 << 20);
      await dst.setDeviceState(MigState.RESUMING);
      await dst.migDataWrite(data);
      await assert.rejects(dst.setDeviceState(MigState.STOP), (e) => e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR' && e.errno === Errno.EINVAL);
      assert.deepEqual(logs.filter((l) => l.level === 'warn'), [], 'not logged as a device bug');
      const line = logs.find((l) => l.msg.includes('VFU_CONFIG_BAD_STATE'));
      assert.ok(line, `no client-error line in ${JSON.stringify(logs)}`);
      assert.match(line.msg, /^client error: DEVICE_FEATURE -> EINVAL \(VFU_CONFIG_BAD_STATE\): /);
      assert.doesNotMatch(line.msg, /\n\s+at /, 'no stack trace');
    } finally {
      src.close();
      dst.close();
      sa.close();
      sb.close();
      da.destroy();
      db.destroy();
    }
  });

  test('an exception thrown by device code is logged as a device bug, with its stack', async () => {
    const logs: { level: string; msg: string }[] = [];
    const dev = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0, irqs: { intx: 1 } });
    dev.addRegion(0, {
      size: 4096,
      access: {
        read: () => {
          throw new TypeError('oops in the device');
        },
      },
    });
    await using h = await serveDevice(dev, { server: { log: (level, msg) => logs.push({ level, msg }) }, name: 'err-bug' });
    await assert.rejects(h.client.read(0, 0, 4), (e) => e instanceof VfioUserError && e.code === 'VFU_REMOTE_ERROR');
    const warn = logs.find((l) => l.level === 'warn');
    assert.ok(warn, 'logged');
    assert.match(warn.msg, /^device error in REGION_READ \(client gets E[A-Z]+\): TypeError: oops in the device\n\s+at /);
  });
});
