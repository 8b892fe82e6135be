/**
 * `vfio-user bench` against `vfio-user serve null`: every mode completes and reports.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { serveChild, CLI } from '../helpers.js';

test('vfio-user bench: read, write, posted and depth 8 against the null device', async () => {
  const srv = await serveChild('null');
  try {
    for (const extra of [[], ['--write'], ['--posted'], ['--depth=8']]) {
      const r = spawnSync(process.execPath, [CLI, 'bench', srv.path, '-n', '300', '--count=8', '--json', ...extra], { encoding: 'utf8', timeout: 30000 });
      assert.equal(r.status, 0, r.stderr);
      const res = JSON.parse(r.stdout);
      assert.equal(res.n, 300);
      assert.ok(res.reqPerSec > 0 && res.p99Us >= res.p50Us, JSON.stringify(res));
    }
    const bad = spawnSync(process.execPath, [CLI, 'bench', srv.path, '-n', '10', '--region=5'], { encoding: 'utf8', timeout: 30000 });
    assert.equal(bad.status, 2, 'a region the device lacks is refused before the run');
    assert.match(bad.stderr, /--region=5: the device has no such region \(it has BAR0 \(4096 bytes, rw\)/);
  } finally {
    await srv.stop();
  }
});
