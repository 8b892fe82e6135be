/**
 * `vfio-user serve --device="<device> --socket-path=PATH [options]" --device=... [--config=FILE] [-v|-q]`
 *
 * Several devices in one process, each on a worker thread of its own (src/server/threads.ts):
 * each `--device` is what would follow `vfio-user serve` for one device (a built-in name or a
 * module path, its socket, serve's and the device's options), split at spaces; a JSON config
 * file lists the same, `{ "devices": [["gpio", "--socket-path=/tmp/a.sock"], "null
 * --socket-path=/tmp/b.sock"] }` (an array keeps values with spaces whole). Every device's
 * options are checked before any starts.
 *
 * Device events are JSON lines on stdout with the device's name (`{"event":"ready","device":
 * "gpio","socket":...}`); a device whose worker dies is reported (`device-exit`, with the
 * error), restarted (`device-restart`) and, after 5 deaths within a minute, left down
 * (`device-failed`; its socket is removed) while the others go on. Control lines on stdin
 * name the device first (`gpio inputs 0x00ff`); `help` lists them, `quit` stops. SIGTERM or
 * SIGINT stops every device (each disconnects its client) and removes the sockets.
 */
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { DeviceThreads, type DeviceThread, type DeviceThreadSpec } from '../server/threads.js';
import { UsageError } from './factory.js';
import { parseCommand, stopOnSignal } from './args.js';
import { resolveDevice, parseServeArgs, serverOptions, type ResolvedDevice } from './serve.js';

/** Whether argv asks for several devices (--device or --config). */
export function wantsMany(argv: string[]): boolean {
  return argv.some((a) => a === '--device' || a.startsWith('--device=') || a === '--config' || a.startsWith('--config='));
}

const USAGE =
  'usage: vfio-user serve --device="<device | ./module.js> --socket-path=PATH [options]" [--device=...] [--config=FILE] [-v] [-q]\n' +
  '  each device on its own worker thread; --config=FILE: {"devices": [["gpio", "--socket-path=/tmp/a.sock"], ...]}\n' +
  '  stdin: <device> <control command> | help | quit\n';

interface Planned {
  name: string;
  dev: ResolvedDevice;
  spec: DeviceThreadSpec;
}

function deviceArgvs(values: { device?: string[]; config?: string }): string[][] {
  const out = (values.device ?? []).map((d) => d.trim().split(/\s+/).filter(Boolean));
  if (values.config !== undefined) {
    let conf: unknown;
    try {
      conf = JSON.parse(readFileSync(values.config, 'utf8'));
    } catch (e) {
      throw new UsageError(`--config: cannot read ${values.config}: ${(e as Error).message}`);
    }
    const list = (conf as { devices?: unknown }).devices;
    if (!Array.isArray(list)) throw new UsageError(`--config: ${values.config} has no "devices" array`);
    for (const d of list) {
      if (typeof d === 'string') out.push(d.trim().split(/\s+/).filter(Boolean));
      else if (Array.isArray(d) && d.every((x) => typeof x === 'string')) out.push(d);
      else throw new UsageError(`--config: each device is a string or an array of strings, not ${JSON.stringify(d)}`);
    }
  }
  if (out.length === 0 || out.some((a) => a.length === 0)) throw new UsageError('no device given\n' + USAGE);
  return out;
}

async function plan(argvs: string[][]): Promise<Planned[]> {
  const planned: Planned[] = [];
  const names = new Map<string, number>();
  const sockets = new Set<string>();
  for (const argv of argvs) {
    if (argv[0]!.startsWith('-')) throw new UsageError(`--device "${argv.join(' ')}": the device comes first`);
    const dev = await resolveDevice(argv[0]!);
    const args = parseServeArgs(argv, dev);
    const o = args.serve;
    if (o.fd !== undefined || o['print-description'] || o['install-description'] !== undefined || o.help) {
      throw new UsageError(`--device "${argv.join(' ')}": only --socket-path, not --fd, --help or descriptions, with several devices`);
    }
    const socketPath = o['socket-path'];
    if (socketPath === undefined) throw new UsageError(`--device "${argv.join(' ')}": --socket-path=PATH is missing`);
    if (sockets.has(socketPath)) throw new UsageError(`two devices on ${socketPath}`);
    sockets.add(socketPath);
    const n = names.get(dev.name) ?? 0;
    names.set(dev.name, n + 1);
    planned.push({
      name: dev.name,
      dev,
      spec: {
        name: dev.name,
        // built-in devices are found in this package's device table, in the worker too
        module: dev.module ?? new URL('./devices.js', import.meta.url),
        export: dev.module ? undefined : `DEVICES.${dev.name}`,
        options: args.device,
        socketPath,
        server: serverOptions(o),
      },
    });
  }
  // names are unique: gpio, gpio-2, ... when a device is served more than once
  const seen = new Map<string, number>();
  for (const p of planned) {
    if ((names.get(p.name) ?? 0) > 1) {
      const k = (seen.get(p.name) ?? 0) + 1;
      seen.set(p.name, k);
      if (k > 1) p.name = p.spec.name = `${p.name}-${k}`;
    }
  }
  return planned;
}

export async function serveMany(argv: string[]): Promise<number> {
  const args = parseCommand(argv, USAGE, true, {
    device: { type: 'string', multiple: true },
    config: { type: 'string' },
    verbose: { type: 'boolean', short: 'v' },
    quiet: { type: 'boolean', short: 'q' },
  });
  if (!args) return 0;
  const { values, positionals } = args;
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}': with several devices, each goes in a --device\n${USAGE}`);
  const planned = await plan(deviceArgvs(values));

  const log = (t: { name: string }, level: 'info' | 'warn' | 'debug', msg: string): void => {
    if (values.quiet || (level === 'debug' && !values.verbose)) return;
    process.stderr.write(`vfio-user[${t.name}] ${level}: ${msg}\n`);
  };
  const event = (t: { name: string }, name: string, fields: Record<string, unknown> = {}): void => {
    process.stdout.write(JSON.stringify({ event: name, device: t.name, ...fields }) + '\n');
  };
  const host = new DeviceThreads();
  host.on('log', (t: DeviceThread, level: 'info' | 'warn' | 'debug', msg: string) => log(t, level, msg));
  host.on('event', (t: DeviceThread, name: string, fields: Record<string, unknown>) => event(t, name, fields));
  host.on('exit', (t: DeviceThread, info: { code: number; error: string }) => {
    log(t, 'warn', `its thread died (code ${info.code}): ${info.error}`);
    event(t, 'device-exit', info);
  });
  host.on('restart', (t: DeviceThread) => event(t, 'device-restart', { restarts: t.restarts }));
  host.on('ready', (t: DeviceThread) => event(t, 'ready', { socket: t.socketPath, ...t.serving })); // started or restarted

  let done: (code: number) => void = () => {};
  const finished = new Promise<number>((r) => (done = r));
  let stopping = false;
  const shutdown = (code: number): void => {
    if (stopping) return;
    stopping = true;
    void host.close().then(() => {
      rl.close();
      done(code);
    });
  };
  host.on('failed', (t: DeviceThread, error: string) => {
    log(t, 'warn', `left down after ${t.restarts} restarts: ${error}`);
    event(t, 'device-failed', { error });
    if (host.devices.every((d) => d.state === 'failed')) shutdown(1);
  });

  try {
    for (const p of planned) await host.add(p.spec);
  } catch (e) {
    await host.close();
    throw e;
  }

  const byName = new Map(planned.map((p) => [p.name, p]));
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const [name, ...args] = line.trim().split(/\s+/);
    if (!name) return;
    if (name === 'quit') return shutdown(0);
    if (name === 'help') {
      const commands = planned.map((p) => `${p.name}: ${[...Object.values(p.dev.factory.control ?? {}).map((c) => c.usage)].join(' | ') || '(none)'}`);
      process.stdout.write(JSON.stringify({ event: 'help', commands: [...commands, 'help', 'quit'] }) + '\n');
      return;
    }
    const t = byName.get(name) && host.get(name);
    if (!t) {
      process.stdout.write(JSON.stringify({ event: 'error', message: `unknown device '${name}' (${[...byName.keys()].join(', ')})` }) + '\n');
      return;
    }
    t.control(args);
  });
  rl.on('close', () => {}); // stdin closing (e.g. </dev/null) must not stop the server
  stopOnSignal(() => shutdown(0));
  return finished;
}
