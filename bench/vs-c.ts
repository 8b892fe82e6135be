/**
 * Our GPIO server against libvfio-user's gpio-pci-idio-16 sample (issue 15), timed by the
 * neutral C client vfu-bench, in one run: REGION_READ and REGION_WRITE of 1 byte, depth 1
 * (mean round trip) and depth 16 (requests/s); with the server and the client on the same CPU
 * (both `taskset -c 0`) and across CPUs (server on 0, client on 1). Three servers run side by
 * side — ours (fast path, the default), ours with VFU_FAST_PATH=0, and the C sample — and
 * every configuration is measured on each in turn, `rounds` times, so all see the same machine.
 *
 * Usage: VFU_LIBVFIO_USER_SAMPLES=.../build/samples node dist/bench/vs-c.js [N] [rounds]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildTools, runTool, resultField, startComparedServers } from './util.js';

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

async function main(): Promise<void> {
  const samples = process.env.VFU_LIBVFIO_USER_SAMPLES;
  if (!samples) throw new Error('VFU_LIBVFIO_USER_SAMPLES is not set (libvfio-user build/samples)');
  const n = Number(process.argv[2] ?? 100000);
  const rounds = Number(process.argv[3] ?? 3);
  const tools = buildTools();
  const dir = mkdtempSync(join(tmpdir(), 'vfu-vs-c-'));
  const servers = await startComparedServers(CLI, 'gpio', samples, dir);
  try {
    const configs = [
      { cpu: '0', label: 'same CPU' },
      { cpu: '1', label: 'across CPUs' },
    ];
    const modes = [
      { label: 'REGION_READ depth 1', args: [] as string[], fields: ['mean_rtt_us', 'p50_us'] },
      { label: 'REGION_WRITE depth 1', args: ['-w'], fields: ['mean_rtt_us', 'p50_us'] },
      { label: 'REGION_READ depth 16', args: ['-d', '16'], fields: ['req_per_sec'] },
      { label: 'REGION_WRITE depth 16', args: ['-w', '-d', '16'], fields: ['req_per_sec'] },
    ];
    const unit: Record<string, string> = { mean_rtt_us: 'mean RTT µs', p50_us: 'p50 µs', req_per_sec: 'req/s' };
    const acc = new Map<string, number[]>();
    for (let r = 0; r < rounds; r++) {
      for (const c of configs) {
        for (const m of modes) {
          const line: string[] = [];
          for (const s of servers) {
            const out = runTool(['taskset', '-c', c.cpu, `${tools}/vfu-bench`, '-r', '2', '-o', '0', '-c', '1', '-n', String(c.cpu === '0' ? n : Math.ceil(n / 10)), ...m.args, s.path]);
            for (const f of m.fields) {
              const v = resultField(out, f);
              const key = `${c.label}|${m.label}, ${unit[f]}|${s.name}`;
              acc.set(key, [...(acc.get(key) ?? []), v]);
              line.push(`${s.name} ${unit[f]} ${v}`);
            }
          }
          console.log(`round ${r + 1} ${c.label} ${m.label}: ${line.join(', ')}`);
        }
      }
    }
    const mean = (k: string): number => {
      const a = acc.get(k)!;
      return a.reduce((x, y) => x + y, 0) / a.length;
    };
    console.log(`\n| placement | measure | ours | ours, no fast path | libvfio-user | ours / libvfio-user |`);
    console.log('|---|---|---|---|---|---|');
    for (const c of configs) {
      for (const m of modes) {
        for (const f of m.fields) {
          const what = `${m.label}, ${unit[f]}`;
          const [a, b, ref] = servers.map((s) => mean(`${c.label}|${what}|${s.name}`));
          const fmt = (x: number): string => (f === 'req_per_sec' ? Math.round(x).toLocaleString('en-US') : x.toFixed(2));
          console.log(`| ${c.label} | ${what} | ${fmt(a!)} | ${fmt(b!)} | ${fmt(ref!)} | ${(a! / ref!).toFixed(2)} |`);
        }
      }
    }
  } finally {
    for (const s of servers) s.child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
