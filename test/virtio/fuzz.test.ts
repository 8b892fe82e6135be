/**
 * Fuzzing virtio-blk's descriptor chains: well-formed requests mutated the ways a hostile or
 * broken driver could (loops, next past the table, nested or chained indirect tables, tables
 * of bad length or outside the maps, readable after writable, addresses outside the maps or
 * past 2^53, huge lengths, heads past the queue, an available index that jumps). Every round
 * must end with each published request completed, or the device in NEEDS_RESET — never a
 * hang — and nothing written outside the chains' writable buffers (a mapped canary area stays
 * intact). After NEEDS_RESET the driver resets, and the device still serves real I/O.
 * Seeded; VFU_FUZZ_SEED reproduces a run.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VfioUserClient } from '../../src/client/client.js';
import { VfioUserServer } from '../../src/server/server.js';
import { VirtioBlkDevice, BlkType, BlkStatus } from '../../src/devices/virtio/index.js';
import { Status, Desc, Feature, bit } from '../../src/devices/virtio/constants.js';
import { VirtioDriver, BlkDriver, pattern } from '../../src/testing/index.js';
import { sockPath, Rng } from '../helpers.js';

const seed = Number(process.env.VFU_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));

interface D {
  addr: number;
  len: number;
  flags: number;
  next: number;
}

async function fuzz(shared: boolean, rounds: number, diag: (s: string) => void): Promise<void> {
  const dev = new VirtioBlkDevice({ size: 1 << 20, log: () => {} });
  const server = new VfioUserServer(dev);
  const path = sockPath('virtio-fuzz');
  server.listen(path);
  const client = await VfioUserClient.connect(path);
  const d = await VirtioDriver.attach(client, { memSize: 4 << 20, shared });
  const r = new Rng(seed ^ (shared ? 0 : 0x5a5a5a5a));
  const QS = 16;
  // buffers the chains may use, and a canary area no writable descriptor ever points at
  const scratch = d.alloc(256 * 1024);
  const canary = d.alloc(64 * 1024);
  const canaryBytes = pattern(64 * 1024, 99);
  d.at(canary, canaryBytes.length).set(canaryBytes);
  const end = d.iova + d.mem.size - 2 * 4096; // first unmapped IOVA after the map
  const outcomes = { completed: 0, resets: 0, ok: 0, ioerr: 0, unsupp: 0 };
  const reasons = new Map<string, number>();
  const init = async (): Promise<BlkDriver> => {
    const want = r.bool() ? ~0n : ~bit(Feature.RING_EVENT_IDX);
    await d.init({ size: QS, want });
    return new BlkDriver(d);
  };
  try {
    let blk = await init();
    for (let round = 0; round < rounds; round++) {
      const q = d.queues[0]!;
      const wbase = scratch + r.int(224) * 1024; // writable buffers live in the scratch area only
      const addr = (write: boolean): number =>
        r.pick([
          () => wbase + r.int(30 * 1024),
          () => (write ? wbase : canary + r.int(60 * 1024)),
          () => d.iova - 1 - r.int(8192),
          () => end + r.int(8192),
          () => 2 ** 53 + r.int(1000),
          () => 0,
        ])();
      const nchains = 1 + r.int(3);
      const published: Map<number, number> = new Map(); // head -> writable bytes
      const slots = Array.from({ length: QS }, (_, i) => i).sort(() => r.u32() - 0x80000000);
      let slot = 0;
      for (let c = 0; c < nchains && slot + 4 <= QS; c++) {
        // a well-formed request: header, data, status
        const type = r.pick([BlkType.IN, BlkType.OUT, BlkType.FLUSH, BlkType.GET_ID, BlkType.DISCARD, BlkType.WRITE_ZEROES, r.int(20)]);
        const hdr = wbase + 31 * 1024;
        const hv = new DataView(d.at(hdr, 16).buffer, d.at(hdr, 16).byteOffset, 16);
        hv.setUint32(0, type, true);
        hv.setUint32(8, r.chance(0.8) ? r.int(2048) : r.u32(), true);
        hv.setUint32(12, r.chance(0.9) ? 0 : r.u32(), true);
        const dataWrite = type === BlkType.IN || type === BlkType.GET_ID;
        const descs: D[] = [{ addr: hdr, len: 16, flags: 0, next: 0 }];
        const ndata = r.int(3);
        for (let k = 0; k < ndata; k++) descs.push({ addr: wbase + r.int(16) * 512, len: 512 * (1 + r.int(8)), flags: dataWrite ? Desc.F_WRITE : 0, next: 0 });
        descs.push({ addr: wbase + 30 * 1024 + r.int(1024), len: 1, flags: Desc.F_WRITE, next: 0 });
        // mutations
        const nmut = r.chance(0.3) ? 0 : 1 + r.int(3);
        let indirect = r.chance(0.3);
        for (let m = 0; m < nmut; m++) {
          const t = descs[r.int(descs.length)]!;
          switch (r.int(9)) {
            case 0:
              t.flags ^= Desc.F_WRITE; // RO/WO confusion
              break;
            case 1: t.addr = addr((t.flags & Desc.F_WRITE) !== 0); break;
            case 2: t.len = r.pick([0, 0xffffffff, 0x80000000, r.u32() & 0xffff, 15, 17]); break;
            case 3: t.flags |= r.pick([Desc.F_INDIRECT, 8, 0x8000]); break;
            case 4: indirect = !indirect; break;
            default: break; // structural ones below
          }
        }
        // the canary stays out of every writable buffer (whatever the mutations did)
        for (const x of descs) if (x.flags & Desc.F_WRITE && x.addr < canary + 64 * 1024 && x.addr + x.len > canary) x.addr = d.iova - 1 - x.len;
        const loop = nmut > 0 && r.chance(0.15);
        const badNext = nmut > 0 && r.chance(0.1);
        if (indirect) {
          const table = wbase + 28 * 1024 + 256 * c;
          descs.forEach((x, i) => {
            const last = i === descs.length - 1;
            q.setDesc(i, x.addr, x.len, x.flags | (last ? 0 : Desc.F_NEXT), loop && last ? 0 : badNext && i === 0 ? 200 : i + 1, table);
            if (loop && last) q.setDesc(i, x.addr, x.len, x.flags | Desc.F_NEXT, 0, table);
          });
          const head = slots[slot++]!;
          const tlen = r.pick([16 * descs.length, 16 * descs.length, 16 * descs.length, 0, 16 * descs.length + 8, 1 << 20]);
          const taddr = r.chance(0.9) ? table : addr(false);
          q.setDesc(head, taddr, tlen, Desc.F_INDIRECT | (r.chance(0.05) ? Desc.F_NEXT : 0), 0);
          published.set(head, descs.filter((x) => x.flags & Desc.F_WRITE).reduce((n, x) => n + x.len, 0));
          q.publish(r.chance(0.03) ? QS + r.int(100) : head);
        } else {
          const idx = descs.map(() => slots[slot++]!);
          descs.forEach((x, i) => {
            const last = i === descs.length - 1;
            const next = loop && last ? idx[0]! : badNext && i === 0 ? QS + r.int(1000) : (idx[i + 1] ?? 0);
            q.setDesc(idx[i]!, x.addr, x.len, x.flags | (last && !loop ? 0 : Desc.F_NEXT), next);
          });
          published.set(idx[0]!, descs.filter((x) => x.flags & Desc.F_WRITE).reduce((n, x) => n + x.len, 0));
          q.publish(r.chance(0.03) ? QS + r.int(100) : idx[0]!);
        }
      }
      if (r.chance(0.02)) {
        // the available index jumps past the queue size
        q.availIdx = (q.availIdx + QS + 1 + r.int(1000)) & 0xffff;
        new DataView(d.at(q.avail, 4).buffer, d.at(q.avail, 4).byteOffset).setUint16(2, q.availIdx, true);
      }
      d.notify(q, true);
      // every request completes, or the device gives up with NEEDS_RESET: never a hang
      const until = Date.now() + 10_000;
      let broken = false;
      for (;;) {
        if (q.usedIdx() === q.availIdx) break;
        if ((await d.status()) & Status.NEEDS_RESET) {
          broken = true;
          break;
        }
        if (Date.now() > until) assert.fail(`round ${round}: requests neither completed nor NEEDS_RESET (seed ${seed}): used ${q.usedIdx()} avail ${q.availIdx} device ${JSON.stringify({ ...dev.queues[0], maxSize: undefined })}`);
        await new Promise((res) => setTimeout(res, 1));
      }
      q.drain(d.eventIdx);
      for (const u of q.stray.splice(0)) {
        assert.ok(published.has(u.id), `round ${round}: used id ${u.id} was published (seed ${seed})`);
        assert.ok(u.len <= published.get(u.id)!, `round ${round}: used length ${u.len} within the writable ${published.get(u.id)} (seed ${seed})`);
        outcomes.completed++;
      }
      const cb = d.at(canary, canaryBytes.length);
      const firstBad = cb.findIndex((b, i) => b !== canaryBytes[i]);
      assert.equal(firstBad, -1, `round ${round}: the canary is intact (seed ${seed}): byte ${firstBad}`);
      if (broken) {
        outcomes.resets++;
        const why = (dev.brokenReason ?? '?').replace(/queue \d+: /, '').replace(/0x[0-9a-f]+|\d+/g, 'N');
        reasons.set(why, (reasons.get(why) ?? 0) + 1);
        blk = await init();
      }
      if (round % 10 === 9 || broken) {
        // the device still does real work, correctly
        const b = scratch + 240 * 1024;
        d.at(b, 4096).set(pattern(4096, round));
        const w = await blk.write(0, 2000, [{ iova: b, len: 4096 }]);
        assert.equal(w.status, BlkStatus.OK, `round ${round}: a real write after fuzzing (seed ${seed})`);
        d.at(b, 4096).fill(0);
        const rd = await blk.read(0, 2000, [{ iova: b, len: 4096 }], { indirect: true });
        assert.equal(rd.status, BlkStatus.OK);
        assert.ok(Buffer.from(d.at(b, 4096)).equals(Buffer.from(pattern(4096, round))), `round ${round}: data (seed ${seed})`);
        outcomes.ok++;
      }
    }
    diag(`${shared ? 'shared' : 'DMA messages'}: ${rounds} rounds, ${outcomes.completed} fuzzed requests completed, ${outcomes.resets} NEEDS_RESET, ${outcomes.ok} checks; reasons: ${[...reasons].map(([k, v]) => `${v}x ${k}`).join('; ')}`);
  } finally {
    d.close();
    client.close();
    server.close();
    dev.destroy();
    d.mem.free();
  }
}

test(`virtio-blk: hostile descriptor chains complete or end in NEEDS_RESET, never hang or stray (seed ${seed})`, { timeout: 120_000 }, async (t) => {
  await fuzz(true, 400, (s) => t.diagnostic(s));
  await fuzz(false, 100, (s) => t.diagnostic(s));
});
