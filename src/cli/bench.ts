/**
 * `vfio-user bench <socket> [--region=N] [--offset=N] [--count=N] [-n N] [--depth=D] [--write] [--posted]`
 *
 * Times region accesses against any vfio-user server with our client: N REGION_READs (or
 * REGION_WRITEs, or posted writes) of `count` bytes, `depth` in flight, and prints requests
 * per second with latency percentiles. (For figures independent of our client, time servers
 * with ../shared/tools/vfu-bench; see bench/README.md.)
 */
import type { VfioUserClient } from '../client/client.js';
import { connectServer, parseTimeout } from './connect.js';
import { intOption, onePositional, parseCommand } from './args.js';
import { UsageError } from './factory.js';

const REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'];

/**
 * The region to time: the one asked for, or the first BAR (then any other region but config
 * space) that allows the access over [0, end). A region the device lacks is refused here, not
 * by the server N times.
 */
async function pickRegion(c: VfioUserClient, wanted: number | undefined, end: number, write: boolean): Promise<number> {
  const regions = await c.regions();
  const fits = (r: (typeof regions)[number]): boolean => r.size >= end && (write ? r.writable : r.readable);
  const name = (i: number): string => REGION_NAMES[i] ?? `region ${i}`;
  const list = regions.filter((r) => r.size > 0).map((r) => `${name(r.index)} (${r.size} bytes, ${r.readable ? 'r' : '-'}${r.writable ? 'w' : '-'})`).join(', ');
  if (wanted !== undefined) {
    const r = regions.find((x) => x.index === wanted);
    if (!r || r.size === 0) throw new UsageError(`--region=${wanted}: the device has no such region (it has ${list})`);
    if (!fits(r)) throw new UsageError(`--region=${wanted}: ${name(wanted)} is ${r.size} bytes${write ? (r.writable ? '' : ', not writable') : r.readable ? '' : ', not readable'}; the access ends at ${end}`);
    return wanted;
  }
  const pick = regions.filter((r) => r.index < 6).find(fits) ?? regions.filter((r) => r.index !== 7).find(fits);
  if (!pick) throw new UsageError(`no region of the device allows ${write ? 'writes' : 'reads'} up to ${end} bytes (it has ${list}); give --region`);
  return pick.index;
}

export async function bench(argv: string[]): Promise<number> {
  const usage =
    'usage: vfio-user bench <socket> [--region=N (default: the first BAR the device has)] [--offset=N (0)] [--count=BYTES (4)]\n' +
    '                       [-n N (100000)] [--depth=D (1)] [--write | --posted] [--json] [--timeout=SECONDS (10)]\n';
  const args = parseCommand(argv, usage, true, {
    region: { type: 'string' },
    offset: { type: 'string' },
    count: { type: 'string' },
    n: { type: 'string', short: 'n' },
    depth: { type: 'string', short: 'd' },
    write: { type: 'boolean', short: 'w' },
    posted: { type: 'boolean' },
    json: { type: 'boolean' },
    timeout: { type: 'string' },
  });
  if (!args) return 0;
  const { values, positionals } = args;
  const socket = onePositional(positionals, 'socket');
  if (!socket) throw new UsageError(`no socket given\n${usage}`);
  const offset = intOption('offset', values.offset, 0) ?? 0;
  const count = intOption('count', values.count, 1, 1 << 24) ?? 4;
  const n = intOption('n', values.n, 1, 1e9) ?? 100000;
  const depth = intOption('depth', values.depth, 1, 4096) ?? 1;
  const wanted = intOption('region', values.region, 0, 0xffffffff);
  const c = await connectServer(socket, { timeout: parseTimeout(values.timeout, 10000) });
  let region: number;
  try {
    region = await pickRegion(c, wanted, offset + count, !!(values.write || values.posted));
  } catch (e) {
    c.close();
    throw e;
  }
  try {
    const data = new Uint8Array(count);
    const op = values.posted ? 'posted-write' : values.write ? 'write' : 'read';
    const one = (): Promise<unknown> =>
      op === 'read' ? c.read(region, offset, count) : c.write(region, offset, data, { posted: op === 'posted-write' });
    for (let i = 0; i < Math.min(1000, n); i++) await one();
    const lat = new Float64Array(n);
    let next = 0;
    const t0 = performance.now();
    const worker = async (): Promise<void> => {
      while (next < n) {
        const i = next++;
        const s = performance.now();
        await one();
        lat[i] = performance.now() - s;
      }
    };
    await Promise.all(Array.from({ length: depth }, worker));
    if (op === 'posted-write') await c.read(region, offset, Math.max(1, Math.min(count, 8))); // they are done once this returns
    const secs = (performance.now() - t0) / 1000;
    lat.sort();
    const pct = (p: number): number => lat[Math.min(n - 1, Math.floor((p / 100) * n))]! * 1000;
    const r = {
      op,
      region,
      offset,
      count,
      n,
      depth,
      secs: Number(secs.toFixed(4)),
      reqPerSec: Math.round(n / secs),
      meanUs: Number(((secs * 1e6) / n).toFixed(3)),
      p50Us: Number(pct(50).toFixed(3)),
      p99Us: Number(pct(99).toFixed(3)),
    };
    process.stdout.write(values.json ? JSON.stringify(r) + '\n' : `${op} region ${region} +${offset} ${count}B x${n} depth ${depth}: ${r.reqPerSec} req/s, ${r.meanUs} us per request, p50 ${r.p50Us} us, p99 ${r.p99Us} us\n`);
  } finally {
    c.close();
  }
  return 0;
}
