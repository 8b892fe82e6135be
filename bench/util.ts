/**
 * Benchmark helpers: build the neutral C tools from ../shared/tools/vfu-bench, run them,
 * read their RESULT lines, pin this process.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SHARED = new URL('../../../shared/tools/vfu-bench', import.meta.url).pathname;

/** Builds vfu-bench, vfu-probe, uds-pingpong into a temp dir (once) and returns it. */
export function buildTools(): string {
  const out = join(tmpdir(), 'vfio-user-bench-tools');
  if (!existsSync(join(out, 'vfu-bench')) || !existsSync(join(out, 'uds-pingpong'))) {
    if (!existsSync(SHARED)) throw new Error(`benchmark tools not found at ${SHARED} (../shared must sit beside the repo)`);
    mkdirSync(out, { recursive: true });
    execFileSync('make', ['-s', '-C', SHARED, `OUT=${out}`], { stdio: 'inherit' });
  }
  return out;
}

export function runTool(argv: string[]): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** Reads one field of the RESULT line the tools print. */
export function resultField(out: string, key: string): number {
  const line = out.split('\n').find((l) => l.startsWith('RESULT'));
  const m = line?.match(new RegExp(`\\b${key}=([0-9.]+)`));
  if (!m) throw new Error(`no ${key} in: ${out}`);
  return Number(m[1]);
}

/** Pins this process (all its threads) to a CPU. */
export function pinnedSelf(cpu: string): void {
  spawnSync('taskset', ['-a', '-p', '-c', cpu, String(process.pid)], { stdio: 'ignore' });
}

/**
 * Creates an image of `bytes` zeroes with every block allocated and on disk (not sparse): a
 * device's first write to a hole of a sparse file pays the file system's block allocation,
 * which the device measured second on the same image would not.
 */
export function filledImage(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  try {
    const chunk = new Uint8Array(1 << 20);
    for (let at = 0; at < bytes; at += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - at), at);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A server under comparison, pinned to CPU 0, listening on `path`. */
export interface PinnedServer {
  name: string;
  path: string;
  child: ChildProcess;
}

/**
 * The three servers the comparisons with the C library run side by side, each pinned to CPU
 * 0 in `dir`: `vfio-user serve <device>` (fast path on), the same with VFU_FAST_PATH=0, and
 * libvfio-user's gpio-pci-idio-16 sample (the last, the reference). Resolves once all three
 * listen. Their stderr is shown with `showErrors`.
 */
export async function startComparedServers(cli: string, device: string, samples: string, dir: string, showErrors = false): Promise<PinnedServer[]> {
  const start = (name: string, argv: string[], sock: string, env: NodeJS.ProcessEnv = process.env): PinnedServer => {
    const child = spawn('taskset', ['-c', '0', ...argv], { stdio: ['pipe', 'ignore', showErrors ? 'inherit' : 'ignore'], env });
    return { name, path: join(dir, sock), child };
  };
  const ours = (sock: string): string[] => [process.execPath, cli, 'serve', device, `--socket-path=${join(dir, sock)}`, '-q'];
  const label = device === 'gpio' ? 'ours' : `ours (${device})`;
  const servers = [
    start(label, ours('ours.sock'), 'ours.sock'),
    start(`${label}, no fast path`, ours('slow.sock'), 'slow.sock', { ...process.env, VFU_FAST_PATH: '0' }),
    start('libvfio-user', [join(samples, 'gpio-pci-idio-16'), join(dir, 'ref.sock')], 'ref.sock'),
  ];
  for (let i = 0; i < 200 && !servers.every((s) => existsSync(s.path)); i++) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 300));
  return servers;
}
