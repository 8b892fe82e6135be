/**
 * The floor Node.js itself sets: a bare echo server on the native layer (poller, recvmsg,
 * sendmsg; no protocol, no Connection), timed by a C client, against uds-pingpong (C on both
 * sides), in the same run, everything on CPU 0. What a vfio-user server in Node costs above
 * this floor is ours; the floor is the event loop's wake-up and N-API.
 *
 * Usage: node dist/bench/node-floor.js [N]
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../src/native/index.js';
import { buildTools, runTool, resultField, pinnedSelf } from './util.js';

function echoServer(path: string): void {
  const lfd = native.listen(path, 4);
  const buf = new Uint8Array(65536);
  const fdsOut = new Int32Array(254);
  const lp = native.createPoller(lfd, () => {
    const fd = native.accept(lfd);
    if (fd < 0) return;
    const iov: Uint8Array[] = [buf];
    const p = native.createPoller(fd, (st) => {
      const n = st < 0 ? 0 : native.recvmsg(fd, buf, 0, buf.length, fdsOut);
      if (n === 0) {
        p.close();
        native.close(fd);
        lp.close();
        native.close(lfd);
        return;
      }
      if (n < 0) return;
      iov[0] = buf.subarray(0, n);
      native.sendmsg(fd, iov, null);
    });
    p.start(native.POLL_READABLE);
  });
  lp.start(native.POLL_READABLE);
}

export async function nodeFloor(n: number): Promise<Record<string, number>> {
  const tools = buildTools();
  const client = join(tmpdir(), 'vfio-user-bench-tools', 'pingpong-client');
  if (!existsSync(client)) execFileSync('cc', ['-O2', '-o', client, new URL('../../bench/pingpong-client.c', import.meta.url).pathname]);
  pinnedSelf('0');
  const path = join(tmpdir(), `vfu-node-floor-${process.pid}.sock`);
  rmSync(path, { force: true });
  const child = spawn('taskset', ['-c', '0', process.execPath, new URL(import.meta.url).pathname, `--serve=${path}`], { stdio: 'inherit' });
  for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 50));
  const node = resultField(runTool(['taskset', '-c', '0', client, path, String(n)]), 'mean_rtt_us');
  await new Promise((r) => child.on('exit', r));
  const c = resultField(runTool(['taskset', '-c', '0', `${tools}/uds-pingpong`, String(n), '32', '0', '0']), 'mean_rtt_us');
  return { udsPingpongUs: c, nodeEchoUs: node, nodeFloorRatio: node / c };
}

const serveArg = process.argv.find((a) => a.startsWith('--serve='));
if (serveArg) {
  echoServer(serveArg.slice('--serve='.length));
} else if (process.argv[1] === new URL(import.meta.url).pathname) {
  const r = await nodeFloor(Number(process.argv[2] ?? 100000));
  for (const [k, v] of Object.entries(r)) console.log(`${k.padEnd(20)} ${v.toFixed(3)}`);
}
