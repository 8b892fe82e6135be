/**
 * `vfio-user bench <socket> [--region=N] [--offset=N] [--count=N] [-n N] [--depth=D] [--write] [--posted]`
 *
 * Times region accesses against any vfio-user server with our client: N REGION_READs (or
 * REGION_WRITEs, or posted writes) of `count` bytes, `depth` in flight, and prints requests
 * per second with latency percentiles. (For figures independent of our client, time servers
 * with ../shared/tools/vfu-bench; see bench/README.md.)
 */
import { parseArgs } from 'node:util';
import { VfioUserClient } from '../client/client.js';

export async function bench(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      region: { type: 'string', default: '0' },
      offset: { type: 'string', default: '0' },
      count: { type: 'string', default: '4' },
      n: { type: 'string', short: 'n', default: '100000' },
      depth: { type: 'string', short: 'd', default: '1' },
      write: { type: 'boolean', short: 'w' },
      posted: { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const socket = positionals[0];
  if (values.help || !socket) {
    process.stdout.write('usage: vfio-user bench <socket> [--region=N] [--offset=N] [--count=N] [-n N] [--depth=D] [--write] [--posted] [--json]\n');
    return values.help ? 0 : 2;
  }
  const region = Number(values.region);
  const offset = Number(values.offset);
  const count = Number(values.count);
  const n = Number(values.n);
  const depth = Math.max(1, Number(values.depth));
  const c = await VfioUserClient.connect(socket, { timeout: 10000 });
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
