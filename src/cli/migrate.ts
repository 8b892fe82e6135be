/**
 * `vfio-user migrate --from=SOCKET --to=SOCKET [--no-precopy] [--threshold=BYTES] [--chunk=BYTES] [--json]`
 *
 * --chunk sets the MIG_DATA_READ size; some servers need a particular one (libvfio-user's
 * gpio sample only accepts reads of exactly 64 bytes, the size of its state).
 *
 * Moves a device's state from the server at --from to the server at --to (pre-copy rounds,
 * stop-and-copy, resume), printing progress: bytes, rounds, downtime.
 */
import { parseArgs } from 'node:util';
import { VfioUserClient } from '../client/client.js';
import { migrate as runMigration } from '../client/migrate.js';

export async function migrate(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      from: { type: 'string' },
      to: { type: 'string' },
      'no-precopy': { type: 'boolean' },
      threshold: { type: 'string' },
      chunk: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || !values.from || !values.to) {
    process.stdout.write('usage: vfio-user migrate --from=SOCKET --to=SOCKET [--no-precopy] [--threshold=BYTES] [--chunk=BYTES] [--json]\n');
    return values.help ? 0 : 2;
  }
  const src = await VfioUserClient.connect(values.from, { timeout: 60000 });
  let dst: VfioUserClient | undefined;
  try {
    dst = await VfioUserClient.connect(values.to, { timeout: 60000 });
    const result = await runMigration(src, dst, {
      noPrecopy: values['no-precopy'],
      threshold: values.threshold ? Number(values.threshold) : undefined,
      chunk: values.chunk ? Number(values.chunk) : undefined,
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
