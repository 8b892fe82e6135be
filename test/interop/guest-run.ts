/**
 * Runs a guest script under the QEMU guest runner given by VFU_GUEST_RUN (the contract is in
 * test/interop/README.md) and collects what it printed.
 */
import { spawn } from 'node:child_process';
import { openSync, readSync, closeSync } from 'node:fs';

export const guestRunner = process.env.VFU_GUEST_RUN;
/** the `skip` option of a guest test: a visible reason when no runner is given */
export const noGuest: false | string = guestRunner ? false : 'VFU_GUEST_RUN not set (no QEMU guest runner)';

export function guestScript(name: string): string {
  return new URL(`../../../test/interop/guest/${name}`, import.meta.url).pathname;
}

/** A QEMU configuration, as runner options. */
export interface GuestSetup {
  name: string;
  /** guest RAM in a shared memfd (-M); otherwise QEMU's default, and every DMA is a message */
  sharedRam: boolean;
  /** intel-iommu with caching-mode, guest booted intel_iommu=on iommu.strict=1 (-I) */
  viommu?: boolean;
  /** vCPUs (-c) */
  cpus?: number;
}

export function runnerArgs(setup: GuestSetup): string[] {
  const a: string[] = [];
  if (setup.sharedRam) a.push('-M');
  if (setup.viommu) a.push('-I');
  if (setup.cpus) a.push('-c', String(setup.cpus));
  return a;
}

export interface GuestResult {
  code: number | null;
  out: string;
  /** the lines that carry `tag` */
  lines(tag: string): string[];
}

/** Boots the guest on the sockets with the script; resolves when the runner exits. */
export async function runGuest(
  sockets: string[],
  script: string,
  args: string[] = [],
  timeoutS = 600,
  qemuArgs: string[] = [],
  /** each line of the guest's console output, as it comes */
  onLine?: (line: string) => void,
): Promise<GuestResult> {
  const argv = [...sockets.flatMap((s) => ['-s', s]), '-t', script, '-T', String(timeoutS), ...args];
  if (qemuArgs.length) argv.push('--', ...qemuArgs);
  const guest = spawn(guestRunner!, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let partial = '';
  guest.stdout.on('data', (d) => {
    out += d;
    if (!onLine) return;
    const lines = (partial + String(d)).split('\n');
    partial = lines.pop()!;
    for (const l of lines) onLine(l.replace(/\r$/, ''));
  });
  guest.stderr.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((r) => guest.on('exit', r));
  return { code, out, lines: (tag) => out.split('\n').filter((l) => l.includes(tag)).map((l) => l.replace(/\r$/, '')) };
}

/** len bytes of a file (an image the guest wrote) at pos */
export function readAt(path: string, pos: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, pos);
    return b;
  } finally {
    closeSync(fd);
  }
}
