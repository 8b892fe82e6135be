/**
 * `vfio-user migrate --from=SOCKET --to=SOCKET [--no-precopy] [--threshold=BYTES] [--chunk=BYTES] [--force] [--timeout=SECONDS] [--json]`
 *
 * Before anything moves: the two sockets must differ (by path and by inode), and the devices
 * must have the same IDs (vendor, device, subsystem, class, revision) unless --force.
 * --chunk sets the MIG_DATA_READ size; some servers need a particular one (libvfio-user's
 * gpio sample only accepts reads of exactly 64 bytes, the size of its state).
 *
 * Moves a device's state from the server at --from to the server at --to (pre-copy rounds,
 * stop-and-copy, resume), printing progress: bytes, rounds, downtime.
 */
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import type { VfioUserClient } from '../client/client.js';
import { migrate as runMigration } from '../client/migrate.js';
import { PciRegion } from '../protocol/index.js';
import { connectServer, parseTimeout } from './connect.js';
import { intOption, parseCommand, requireOptions } from './args.js';
import { UsageError } from './factory.js';

/** true when both paths name the same socket (the same path, or the same inode by another path) */
function sameSocket(a: string, b: string): boolean {
  if (resolve(a) === resolve(b)) return true;
  try {
    const x = statSync(a);
    const y = statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false; // one is missing: connecting will say so
  }
}

/** vendor:device, subsystem, class and revision, from config space */
async function identity(c: VfioUserClient): Promise<string> {
  const cfg = await c.read(PciRegion.CONFIG, 0, 0x30);
  const dv = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
  const h = (n: number, w: number): string => n.toString(16).padStart(w, '0');
  return `${h(dv.getUint16(0, true), 4)}:${h(dv.getUint16(2, true), 4)} subsystem ${h(dv.getUint16(0x2c, true), 4)}:${h(dv.getUint16(0x2e, true), 4)} class ${h(dv.getUint32(8, true) >>> 8, 6)} rev ${h(cfg[8]!, 2)}`;
}

export async function migrate(argv: string[]): Promise<number> {
  const usage = 'usage: vfio-user migrate --from=SOCKET --to=SOCKET [--no-precopy] [--threshold=BYTES] [--chunk=BYTES] [--force] [--timeout=SECONDS (60)] [--json]\n' +
    '  --force: migrate between devices whose IDs (vendor, device, subsystem, class, revision) differ\n';
  const args = parseCommand(argv, usage, false, {
    from: { type: 'string' },
    to: { type: 'string' },
    'no-precopy': { type: 'boolean' },
    threshold: { type: 'string' },
    chunk: { type: 'string' },
    force: { type: 'boolean' },
    timeout: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (!args) return 0;
  const { values } = args;
  requireOptions(values, ['from', 'to'], '--from=SOCKET and --to=SOCKET', usage);
  if (sameSocket(values.from, values.to)) throw new UsageError(`--from and --to are the same socket (${values.from}): a device cannot migrate onto itself`);
  const threshold = intOption('threshold', values.threshold, 0);
  const chunk = intOption('chunk', values.chunk, 1, 1 << 30);
  const timeout = parseTimeout(values.timeout, 60000);
  const src = await connectServer(values.from, { timeout });
  let dst: VfioUserClient | undefined;
  try {
    dst = await connectServer(values.to, { timeout });
    const [a, b] = [await identity(src), await identity(dst)];
    if (a !== b && !values.force) throw new Error(`the devices differ: --from ${values.from} is ${a}, --to ${values.to} is ${b} (--force migrates anyway)`);
    const result = await runMigration(src, dst, {
      noPrecopy: values['no-precopy'],
      threshold,
      chunk,
      progress: (p) => {
        if (!values.json) process.stderr.write(`migrate: ${p.phase} round=${p.round} bytes=${p.bytes} (+${p.roundBytes})\n`);
      },
    });
    if (values.json) process.stdout.write(JSON.stringify(result) + '\n');
    else
      process.stdout.write(
        `migrated: rounds=${result.rounds} precopy=${result.precopyBytes}B stop-copy=${result.stopCopyBytes}B total=${result.totalBytes}B downtime=${result.downtimeMs.toFixed(2)}ms total-time=${result.totalMs.toFixed(2)}ms\n`,
      );
    return 0;
  } finally {
    src.close();
    dst?.close();
  }
}
