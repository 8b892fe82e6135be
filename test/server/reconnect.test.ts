/**
 * A client right after a client: health probes, `vfio-user info`, a VMM restarting. Each
 * probe connects and leaves (at once, after VERSION, or mid-header), and a normal session
 * follows at once; every one of those sessions must be served, against a server in its own
 * process, and the server's fds stay flat.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { VfioUserClient } from '../../src/client/client.js';
import { native } from '../../src/native/index.js';
import * as P from '../../src/protocol/index.js';
import { encodeHeader } from '../../src/protocol/header.js';
import { serveChild, concat, waitFor } from '../helpers.js';

const CYCLES = 1000;

function versionMessage(): Uint8Array {
  const payload = P.encodeVersionRequest({ major: 0, minor: 0, capabilities: { maxMsgFds: 8, maxDataXferSize: 65536, maxDmaMaps: 16, pgsizes: 4096n } });
  const header = new Uint8Array(16);
  encodeHeader(header, 0, { msgId: 1, command: P.Command.VERSION, size: 16 + payload.length, flags: 0, error: 0 });
  return concat(header, payload);
}

test(`${CYCLES} probes (close at once, after VERSION, mid-header), each followed at once by a normal session`, { timeout: 170_000 }, async () => {
  const srv = await serveChild('gpio');
  const fdsOf = (): number => readdirSync(`/proc/${srv.child.pid}/fd`).length;
  try {
    const version = versionMessage();
    const baseline = fdsOf();
    let served = 0;
    for (let i = 0; i < CYCLES; i++) {
      const fd = native.connect(srv.path);
      const kind = i % 3;
      if (kind === 1) native.send(fd, version, 0, version.length);
      else if (kind === 2) native.send(fd, version, 0, 7); // part of a header
      native.close(fd);
      const c = await VfioUserClient.connect(srv.path, { timeout: 5000 }).catch((e: unknown) => { throw new Error(`cycle ${i} kind ${kind}: ${String(e)}`); });
      const info = await c.deviceInfo();
      assert.ok(info.numRegions >= 9);
      c.close();
      served++;
    }
    assert.equal(served, CYCLES);
    // the last session's teardown may still be running: wait for the fds to settle
    await waitFor(() => fdsOf() <= baseline, 'server fds back to baseline');
    assert.equal(fdsOf(), baseline, 'server fds back to baseline');
  } finally {
    await srv.stop();
  }
});
