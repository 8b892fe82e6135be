/**
 * Device definitions that contradict themselves fail when they are made (or, for what needs
 * the whole definition, when they are served), with VFU_DEVICE_DEFINITION.
 */
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { PciDevice, type PciDeviceOptions } from '../../src/server/device.js';
import { VfioUserServer } from '../../src/server/server.js';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserError, Errno } from '../../src/errors.js';
import { sockPath } from '../helpers.js';

const isDefinition = (errno: number) => (e: unknown) => e instanceof VfioUserError && e.code === 'VFU_DEVICE_DEFINITION' && e.errno === errno;

function device(irqs: PciDeviceOptions['irqs']): PciDevice {
  const d = new PciDevice({ vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000, irqs });
  d.addRegion(0, { size: 8192, access: { read: (_o, n) => new Uint8Array(n), write: () => {} } });
  return d;
}

const MSIX = { tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 4096 };

describe('device definitions that contradict themselves', () => {
  test('an MSI-X capability needs exactly as many MSI-X IRQs declared, and the reverse', () => {
    for (const declared of [undefined, 0, 2, 8]) {
      const d = device({ intx: 1, msix: declared });
      assert.throws(() => d.addMsix({ vectors: 4, ...MSIX }), isDefinition(Errno.EINVAL), `irqs.msix ${declared}`);
      d.destroy();
    }
    const ok = device({ msix: 4 });
    ok.addMsix({ vectors: 4, ...MSIX });
    new VfioUserServer(ok).close();
    ok.destroy();
    // MSI-X IRQs declared without a capability: refused when served
    const noCap = device({ msix: 4 });
    assert.throws(() => new VfioUserServer(noCap), isDefinition(Errno.EINVAL));
    noCap.destroy();
  });

  test('more than 2,048 MSI-X vectors (or a count that is not a whole number) is refused', () => {
    for (const msix of [2049, -1, 1.5, NaN]) {
      assert.throws(() => new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0, irqs: { msix } }), isDefinition(Errno.EINVAL), `msix ${msix}`);
    }
    assert.throws(() => new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0, irqs: { msi: 33 } }), isDefinition(Errno.EINVAL));
    new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0, irqs: { msix: 2048 } }).destroy();
  });

  test('a region with neither access callbacks nor shared memory is refused', () => {
    const d = device({});
    assert.throws(() => d.addRegion(2, { size: 4096 }), isDefinition(Errno.EINVAL));
    assert.equal(d.regions.has(2), false);
    d.addRegion(2, { size: 4096, shared: true });
    d.destroy();
  });

  test('addRegion while a client is attached is refused; once it has gone it is allowed', async () => {
    const d = device({});
    const s = new VfioUserServer(d);
    const path = sockPath('def-attached');
    s.listen(path);
    try {
      const c = await VfioUserClient.connect(path);
      assert.throws(() => d.addRegion(1, { size: 4096, shared: true }), isDefinition(Errno.EBUSY));
      const gone = once(s, 'disconnect');
      c.close();
      await gone;
      d.addRegion(1, { size: 4096, shared: true });
    } finally {
      s.close();
      d.destroy();
    }
  });

  test('one device given to two servers is refused until the first is closed', () => {
    const d = device({});
    const a = new VfioUserServer(d);
    assert.throws(() => new VfioUserServer(d), isDefinition(Errno.EBUSY));
    a.close();
    const b = new VfioUserServer(d);
    b.close();
    d.destroy();
  });
});

describe("the device author's object", () => {
  test('shows no server state: the MSI-X table, who drives it, a pending FLR are the server\'s', () => {
    const d = device({ msix: 2 });
    d.addMsix({ vectors: 2, ...MSIX });
    for (const k of ['msixTable', 'msixTableDriven', 'msixLocation', 'flrRequested', 'msixAccess']) {
      assert.equal(k in d, false, `${k} on PciDevice`);
    }
    d.destroy();
  });
});
