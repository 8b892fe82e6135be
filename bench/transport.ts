/**
 * Transport round-trip micro-benchmark (issue #2): request/reply through our Connection,
 *  (a) over a socketpair within one process,
 *  (b) between two processes pinned to one CPU,
 * compared in the same run with ../shared/tools/vfu-bench/uds-pingpong (the OS floor).
 *
 * Usage: node dist/bench/transport.js [N]     (run by bench/run.js too)
 */
import { spawn } from 'node:child_process';
import { native } from '../src/native/index.js';
import { Connection } from '../src/transport/connection.js';
import { buildTools, pinnedSelf, runTool, resultField } from './util.js';

const PAYLOAD = 16; // 32-byte messages with the header, like uds-pingpong's default

/** The echo side: replies to every command with its payload. */
export function echo(fd: number): Connection {
  return new Connection(fd, { onCommand: (m, c) => c.reply(m.header, m.payload) });
}

async function pingpong(conn: Connection, n: number): Promise<number> {
  const payload = new Uint8Array(PAYLOAD);
  for (let i = 0; i < 1000; i++) await conn.request(9, payload);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await conn.request(9, payload);
  return Number(process.hrtime.bigint() - t0) / 1000 / n;
}

export async function inProcess(n: number): Promise<number> {
  const [a, b] = native.socketpair();
  const server = echo(b);
  const client = new Connection(a);
  const us = await pingpong(client, n);
  client.close();
  server.close();
  return us;
}

export async function crossProcess(n: number, cpu = '0'): Promise<number> {
  const [a, b] = native.socketpair();
  const child = spawn('taskset', ['-c', cpu, process.execPath, new URL(import.meta.url).pathname, '--echo-fd=3'], {
    stdio: ['ignore', 'inherit', 'inherit', b],
  });
  native.close(b);
  const client = new Connection(a);
  const us = await pingpong(client, n);
  client.close();
  await new Promise((r) => child.on('exit', r));
  return us;
}

export async function transportBench(n: number): Promise<Record<string, number>> {
  const tools = buildTools();
  pinnedSelf('0');
  const floor = resultField(runTool(['taskset', '-c', '0', `${tools}/uds-pingpong`, String(n), '32', '0', '0']), 'mean_rtt_us');
  const inproc = await inProcess(n);
  const cross = await crossProcess(n, '0');
  return { udsPingpongUs: floor, inProcessUs: inproc, crossProcessUs: cross, crossRatio: cross / floor, inProcessRatio: inproc / floor };
}

const echoArg = process.argv.find((a) => a.startsWith('--echo-fd='));
if (echoArg) {
  const c = echo(Number(echoArg.split('=')[1]));
  c.onClose = () => process.exit(0);
} else if (process.argv[1] === new URL(import.meta.url).pathname) {
  const n = Number(process.argv[2] ?? 100000);
  const r = await transportBench(n);
  console.log(`transport round trip, ${PAYLOAD + 16}-byte messages, n=${n}, everything on CPU 0:`);
  console.log(`  uds-pingpong (C, no protocol)      ${r.udsPingpongUs!.toFixed(2)} us`);
  console.log(`  Connection, socketpair in-process  ${r.inProcessUs!.toFixed(2)} us  (${r.inProcessRatio!.toFixed(2)}x)`);
  console.log(`  Connection, two processes          ${r.crossProcessUs!.toFixed(2)} us  (${r.crossRatio!.toFixed(2)}x)`);
}
