/**
 * Server benchmarks (issue #3), everything pinned to CPU 0:
 *  - REGION_READ and REGION_WRITE round trips timed by the neutral C client vfu-bench against
 *    our GPIO device, at depth 1 and 16; against libvfio-user's gpio sample in the same run
 *    when VFU_LIBVFIO_USER_SAMPLES points at its built samples;
 *  - posted (NO_REPLY) REGION_WRITE rate from our client;
 *  - DMA map+unmap rate (plain, and in vIOMMU mode: 64-bit IOVAs after QEMU's range unmaps),
 *    and translate (views) cost at 65,535 maps, below 2^53 (numbers) and above (bigints);
 *  - idle server RSS.
 *
 * Usage: node dist/bench/server.js [N]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildTools, runTool, resultField, pinnedSelf } from './util.js';
import { DmaController } from '../src/server/dma.js';
import { VfioUserClient, GuestMemory } from '../src/client/client.js';
import { native } from '../src/native/index.js';

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

async function waitSocket(path: string, child: ChildProcess): Promise<void> {
  // wait for the socket file only: probing with a connection would count as a client
  for (let i = 0; i < 200; i++) {
    if (existsSync(path)) {
      await new Promise((r) => setTimeout(r, 100));
      return;
    }
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no server at ${path}`);
}

function start(cmd: string[], path: string): ChildProcess {
  rmSync(path, { force: true });
  return spawn('taskset', ['-c', '0', ...cmd], { stdio: ['pipe', 'ignore', 'ignore'] });
}

function vfuBench(tools: string, path: string, n: number, extra: string[]): { rtt: number; rps: number } {
  const out = runTool(['taskset', '-c', '0', `${tools}/vfu-bench`, '-r', '2', '-o', '0', '-c', '1', '-n', String(n), ...extra, path]);
  return { rtt: resultField(out, 'mean_rtt_us'), rps: resultField(out, 'req_per_sec') };
}

function rssKiB(pid: number): number {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : NaN;
}

export async function serverBench(n: number): Promise<Record<string, number>> {
  const tools = buildTools();
  pinnedSelf('0');
  const out: Record<string, number> = {};
  const ours = join(tmpdir(), `vfu-bench-ours-${process.pid}.sock`);
  const srv = start([process.execPath, CLI, 'serve', 'gpio', `--socket-path=${ours}`, '-q'], ours);
  await waitSocket(ours, srv);
  out.idleRssKiB = rssKiB(srv.pid!);
  let ref: ChildProcess | undefined;
  const samples = process.env.VFU_LIBVFIO_USER_SAMPLES;
  const refPath = join(tmpdir(), `vfu-bench-ref-${process.pid}.sock`);
  if (samples) {
    ref = start([join(samples, 'gpio-pci-idio-16'), refPath], refPath);
    await waitSocket(refPath, ref);
  }
  // interleave ours and the reference so both see the same machine
  for (const [name, args] of [
    ['read_d1', []],
    ['read_d16', ['-d', '16']],
    ['write_d1', ['-w']],
    ['write_d16', ['-w', '-d', '16']],
  ] as const) {
    const a = vfuBench(tools, ours, n, [...args]);
    out[`ours_${name}_rtt_us`] = a.rtt;
    out[`ours_${name}_rps`] = a.rps;
    if (ref) {
      const b = vfuBench(tools, refPath, n, [...args]);
      out[`ref_${name}_rtt_us`] = b.rtt;
      out[`ref_${name}_rps`] = b.rps;
      out[`ratio_${name}_rtt`] = a.rtt / b.rtt;
    }
  }
  // posted writes from our client: N NO_REPLY writes, then one read to know they are done
  {
    const c = await VfioUserClient.connect(ours, { twinSocket: false });
    const data = Uint8Array.of(1);
    const t0 = process.hrtime.bigint();
    // posted writes need no reply: queue them all, then one read (ordered after them) to finish
    const posted: Promise<void>[] = [];
    for (let i = 0; i < n; i++) posted.push(c.write(2, 0, data, { posted: true }));
    await Promise.all(posted);
    await c.read(2, 0, 1);
    const us = Number(process.hrtime.bigint() - t0) / 1000;
    out.ours_posted_write_per_sec = Math.round(n / (us / 1e6));
    c.close();
  }
  srv.kill('SIGTERM');
  ref?.kill('SIGINT');
  Object.assign(out, await dmaBench(n));
  return out;
}

/** DMA: map+unmap rates over the protocol and in the controller, translate cost (also: `server.js N --dma`). */
export async function dmaBench(n: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  // DMA map + unmap through the protocol, shared memory (the guest-IOMMU pattern: same file)
  {
    const null1 = join(tmpdir(), `vfu-bench-null-${process.pid}.sock`);
    const s2 = start([process.execPath, CLI, 'serve', 'null', `--socket-path=${null1}`, '-q'], null1);
    await waitSocket(null1, s2);
    const c = await VfioUserClient.connect(null1, { twinSocket: false });
    const mem = new GuestMemory(1 << 24);
    const m = Math.min(n, 20000);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < m; i++) {
      const off = (i % 4096) * 4096;
      await c.dmaMap(mem, 0x100000000 + off, { offset: off, size: 4096 });
      await c.dmaUnmap(0x100000000 + off, 4096);
    }
    const us = Number(process.hrtime.bigint() - t0) / 1000;
    out.dma_map_unmap_pairs_per_sec = Math.round(m / (us / 1e6));
    c.close();
    mem.free();
    s2.kill('SIGTERM');
  }
  // vIOMMU mode (QEMU with intel-iommu, strict): the switch (range unmaps covering every map,
  // or none), then one-page maps at 64-bit IOVAs that come and go while 256 others stay
  {
    const sock = join(tmpdir(), `vfu-bench-viommu-${process.pid}.sock`);
    const s2 = start([process.execPath, CLI, 'serve', 'null', `--socket-path=${sock}`, '-q'], sock);
    await waitSocket(sock, s2);
    const c = await VfioUserClient.connect(sock, { twinSocket: false });
    const mem = new GuestMemory(1 << 24);
    await c.dmaMap(mem, 0, { offset: 0, size: 0xa0000 });
    await c.dmaMap(mem, 0x100000, { offset: 0x100000, size: mem.size - 0x100000 });
    await c.dmaUnmap(0, 0xfee00000);
    await c.dmaUnmap(0xfef00000n, 2n ** 64n - 0xfef00000n);
    const hi = 0xffffffff01100000n;
    for (let i = 0; i < 256; i++) await c.dmaMap(mem, hi - BigInt((i + 1) * 4096), { offset: i * 4096, size: 4096, prot: i % 2 ? 1 : 3 });
    const m = Math.min(n, 20000);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < m; i++) {
      const off = (i % 4096) * 4096;
      const iova = hi + BigInt(off);
      await c.dmaMap(mem, iova, { offset: off, size: 4096, prot: i % 2 ? 1 : 3 });
      await c.dmaUnmap(iova, 4096);
    }
    const us = Number(process.hrtime.bigint() - t0) / 1000;
    out.viommu_map_unmap_pairs_per_sec = Math.round(m / (us / 1e6));
    c.close();
    mem.free();
    s2.kill('SIGTERM');
  }
  // map+unmap churn of one page of one file, in the controller (what the server does per pair)
  {
    const dma = new DmaController();
    const fd = native.memfdCreate('bench-churn');
    native.ftruncate(fd, 1 << 30);
    const m = 20000;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < m; i++) {
      dma.map(0x1000 * (i % 1000), 4096, 3, native.dup(fd), 4096 * (i % 1000));
      await dma.unmap(0x1000 * (i % 1000), 4096);
    }
    out.controller_map_unmap_us = Number(process.hrtime.bigint() - t0) / 1000 / m;
    await dma.unmapAll();
    native.close(fd);
  }
  // translate cost at 65,535 maps (in-process controller over one memfd)
  {
    const dma = new DmaController();
    const fd = native.memfdCreate('bench');
    native.ftruncate(fd, 65535 * 4096);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 65535; i++) dma.map(i * 8192, 4096, 3, native.dup(fd), i * 4096);
    out.map_65535_ms = Number(process.hrtime.bigint() - t0) / 1e6;
    let x = 0;
    const lookups = 1_000_000;
    const t1 = process.hrtime.bigint();
    for (let i = 0; i < lookups; i++) {
      const iova = ((i * 7919) % 65535) * 8192 + 128;
      x += dma.views(iova, 64)[0]!.length;
    }
    out.translate_ns_at_65535 = Number(process.hrtime.bigint() - t1) / lookups;
    if (x !== lookups * 64) throw new Error('translate bench: wrong view sizes');
    await dma.unmapAll();
    native.close(fd);
  }
  // the same above 2^53, addresses as bigints (the exact path a device takes up there)
  {
    const dma = new DmaController();
    const fd = native.memfdCreate('bench');
    native.ftruncate(fd, 65535 * 4096);
    const hi = 0xffff000000000000n;
    for (let i = 0; i < 65535; i++) dma.map(hi + BigInt(i * 8192), 4096, 3, native.dup(fd), i * 4096);
    const addrs = Array.from({ length: 4096 }, (_, i) => hi + BigInt(((i * 7919) % 65535) * 8192 + 128));
    let x = 0;
    const lookups = 1_000_000;
    const t1 = process.hrtime.bigint();
    for (let i = 0; i < lookups; i++) x += dma.views(addrs[i & 4095]!, 64)[0]!.length;
    out.translate_ns_at_65535_bigint_high = Number(process.hrtime.bigint() - t1) / lookups;
    if (x !== lookups * 64) throw new Error('translate bench: wrong view sizes');
    await dma.unmapAll();
    native.close(fd);
  }
  return out;
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  const n = Number(process.argv[2] ?? 100000);
  const r = process.argv.includes('--dma') ? await dmaBench(n) : await serverBench(n);
  for (const [k, v] of Object.entries(r)) console.log(`${k.padEnd(32)} ${Number.isInteger(v) ? v : v.toFixed(3)}`);
}
