/**
 * Shared test helpers: temp socket paths, serving a device in a child process, fd counts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

let seq = 0;
const dir = mkdtempSync(join(tmpdir(), 'vfu-test-'));
export function sockPath(name = 'dev'): string {
  return join(dir, `${name}-${process.pid}-${seq++}.sock`);
}

export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

export interface Served {
  child: ChildProcess;
  path: string;
  events: Record<string, unknown>[];
  /** resolves with the next event of that name */
  waitEvent(name: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  send(line: string): void;
  stop(): Promise<number | null>;
  stderr(): string;
}

/** Runs `vfio-user serve <device>` in a child process and waits until it is ready. */
export async function serveChild(device: string, extra: string[] = [], opts: { taskset?: string } = {}): Promise<Served> {
  const path = sockPath(device);
  const args = [CLI, 'serve', device, `--socket-path=${path}`, ...extra];
  const child = opts.taskset
    ? spawn('taskset', ['-c', opts.taskset, process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: Record<string, unknown>[] = [];
  const waiters: { name: string; resolve: (e: Record<string, unknown>) => void }[] = [];
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line);
    } catch {
      return;
    }
    const i = waiters.findIndex((w) => w.name === e.event);
    if (i >= 0) waiters.splice(i, 1)[0]!.resolve(e);
    else events.push(e);
  });
  const waitEvent = (name: string, timeoutMs = 10000): Promise<Record<string, unknown>> => {
    const i = events.findIndex((e) => e.event === name);
    if (i >= 0) return Promise.resolve(events.splice(i, 1)[0]!);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timeout waiting for ${name}; stderr: ${err}`)), timeoutMs);
      waiters.push({ name, resolve: (e) => (clearTimeout(t), resolve(e)) });
    });
  };
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await Promise.race([
    waitEvent('ready'),
    exited.then((code) => {
      throw new Error(`server exited with ${code}: ${err}`);
    }),
  ]);
  return {
    child,
    path,
    events,
    waitEvent,
    send: (line) => child.stdin!.write(line + '\n'),
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
    stderr: () => err,
  };
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
