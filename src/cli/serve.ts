/**
 * `vfio-user serve <device | ./module.js> (--socket-path=PATH | --fd=N) [options] [device options]`
 *
 * Follows the spec's backend program conventions: no daemonizing, --socket-path or --fd,
 * a clean exit on SIGTERM (and SIGINT) that removes the socket file, logs on stderr, a JSON
 * description (--print-description, --install-description=DIR). Host-side control lines
 * are read from stdin (`help` lists them); device events are printed to stdout as JSON lines.
 *
 * The device is a built-in one (src/cli/devices.ts) or a module whose default export is a
 * device factory (src/cli/factory.ts); both go through the same code below.
 */
import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';
import { basename, extname, join, resolve } from 'node:path';
import { mkdirSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { VfioUserServer, type ServerOptions } from '../server/server.js';
import type { PciDevice } from '../server/device.js';
import { DEVICES } from './devices.js';
import { wantsMany, serveMany } from './serve-many.js';
import { stopOnSignal } from './args.js';
import { UsageError, checkFactory, optionsHelp, parseOptionValue, type DeviceContext, type DeviceFactory, type DeviceOptions } from './factory.js';

/** serve's own options (a device may not declare these) */
export const SERVE_OPTIONS = {
  'socket-path': { type: 'string', help: 'listen on this UNIX socket path (removed again on exit)' },
  fd: { type: 'integer', min: 0, max: 0x7fffffff, help: 'serve the client already connected on this file descriptor' },
  verbose: { type: 'boolean', help: 'also log debug messages: each command answered with an error (command, errno, reason)' },
  quiet: { type: 'boolean', help: 'no logs' },
  'no-twin-socket': { type: 'boolean', help: 'never offer twin-socket mode' },
  'max-data-xfer-size': { type: 'size', min: 512, max: 64 << 20, help: 'largest data transfer offered to the client (default 1M)' },
  'max-dma-maps': { type: 'integer', min: 1, max: 1 << 30, help: 'most DMA maps a client may hold (default 65535)' },
  'max-dma-bytes': { type: 'size', help: 'most address space all DMA maps may cover (default 16T)' },
  'allow-unsealed-dma': { type: 'boolean', help: 'accept DMA files that cannot be sealed against shrinking (copied safely, no zero-copy); refused by default' },
  'fast-path': {
    type: 'string',
    choices: ['on', 'off'],
    help: 'the serving fast path: after a reply, read and wait for the next message in native code rather than go round the event loop (default on, or off with VFU_FAST_PATH=0)',
  },
  'spin-us': { type: 'integer', min: 0, max: 1000000, help: 'with the fast path: poll this many microseconds without sleeping before sleeping, adaptively (default 50, or VFU_SPIN_US; 0: never)' },
  'print-description': { type: 'boolean', help: "print the device's JSON description (the spec's /usr/share/vfio-user file) and exit" },
  'install-description': { type: 'string', help: 'write the JSON description into this directory (e.g. /usr/share/vfio-user) and exit' },
  help: { type: 'boolean', help: 'this help' },
} as const satisfies DeviceOptions;

const SHORT: Record<string, string> = { v: 'verbose', q: 'quiet', h: 'help' };

/** A device to serve: a built-in name or a module path, with its factory. */
export interface ResolvedDevice {
  /** the built-in name, or the module file's name without extension */
  name: string;
  factory: DeviceFactory;
  /** the module's absolute path (undefined for a built-in device) */
  module?: string;
}

function isModuleSpec(spec: string): boolean {
  return spec.includes('/') || /\.[cm]?js$/.test(spec);
}

/** Finds a built-in device by name, or imports a device module (`./x.js`, `/abs/x.mjs`). */
export async function resolveDevice(spec: string): Promise<ResolvedDevice> {
  if (!isModuleSpec(spec)) {
    const factory = DEVICES[spec];
    if (!factory) throw new UsageError(`unknown device '${spec}' (built-in: ${Object.keys(DEVICES).join(', ')}; or a module path such as ./my-device.js)`);
    return { name: spec, factory };
  }
  const path = resolve(spec);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(path).href)) as { default?: unknown };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes(path)) throw new UsageError(`device module ${path} not found`);
    throw new Error(`device module ${path} failed to load: ${err.stack ?? String(e)}`);
  }
  const factory = checkFactory(mod.default, `device module ${path}`, [...Object.keys(SERVE_OPTIONS), 'v', 'q', 'h']);
  return { name: basename(path, extname(path)), factory, module: path };
}

export interface ParsedServeArgs {
  /** serve's own options, parsed */
  serve: { [K in keyof typeof SERVE_OPTIONS]?: (typeof SERVE_OPTIONS)[K]['type'] extends 'boolean' ? boolean : (typeof SERVE_OPTIONS)[K]['type'] extends 'string' ? string : number };
  /** the device's options, parsed and checked */
  device: Record<string, string | number | boolean>;
  /** the device options as given, for the JSON description's args */
  deviceArgs: string[];
}

/**
 * Parses `argv` (after the device spec is known) against serve's and the device's options:
 * an unknown option, a missing or malformed value, or an extra argument is a UsageError.
 */
export function parseServeArgs(argv: string[], dev: ResolvedDevice): ParsedServeArgs {
  const devOpts: DeviceOptions = dev.factory.options ?? {};
  const all: DeviceOptions = { ...SERVE_OPTIONS, ...devOpts };
  const config: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [n, o] of Object.entries(all)) config[n] = { type: o.type === 'boolean' ? 'boolean' : 'string' };
  for (const [s, n] of Object.entries(SHORT)) config[n]!.short = s;
  const { tokens } = parseArgs({ args: argv, options: config, strict: false, allowPositionals: true, tokens: true });
  const out: ParsedServeArgs = { serve: {}, device: {}, deviceArgs: [] };
  let positionals = 0;
  for (const t of tokens) {
    if (t.kind === 'positional') {
      if (++positionals > 1) throw new UsageError(`unexpected argument '${t.value}' (one device only)`);
      continue;
    }
    if (t.kind !== 'option') continue;
    const decl = all[t.name];
    if (!decl) {
      const takes = Object.keys(devOpts);
      throw new UsageError(`unknown option ${t.rawName} (device ${dev.name} takes ${takes.length ? takes.map((n) => `--${n}`).join(', ') : 'no options of its own'}; see vfio-user serve ${dev.module ?? dev.name} --help)`);
    }
    if (decl.type === 'boolean' && t.value !== undefined) throw new UsageError(`option ${t.rawName} takes no value`);
    if (decl.type !== 'boolean' && t.value === undefined) throw new UsageError(`option ${t.rawName} needs a value (${t.rawName}=...)`);
    const v = parseOptionValue(t.name, decl, t.value ?? true);
    if (t.name in devOpts) {
      out.device[t.name] = v;
      out.deviceArgs.push(decl.type === 'boolean' ? `--${t.name}` : `--${t.name}=${t.value}`);
    } else {
      (out.serve as Record<string, unknown>)[t.name] = v;
    }
  }
  return out;
}

/** The server options serve's options ask for (without a log function: plain data, for a worker too). */
export function serverOptions(o: ParsedServeArgs['serve']): Omit<ServerOptions, 'log'> {
  return {
    twinSocket: !o['no-twin-socket'],
    maxDataXferSize: o['max-data-xfer-size'],
    maxDmaMaps: o['max-dma-maps'],
    maxDmaBytes: o['max-dma-bytes'],
    requireSealedDmaFiles: !o['allow-unsealed-dma'],
    fastPath: o['fast-path'] === undefined ? undefined : o['fast-path'] === 'on',
    spinUs: o['spin-us'],
  };
}

/** The device's JSON description, as the spec wants one under /usr/share/vfio-user. */
export function describeDevice(dev: ResolvedDevice, deviceArgs: string[] = []): Record<string, unknown> {
  return {
    description: dev.factory.description,
    type: dev.factory.type ?? dev.name,
    binary: 'vfio-user',
    args: ['serve', dev.module ?? dev.name, ...deviceArgs],
  };
}

function help(dev: ResolvedDevice | undefined): string {
  const head = 'usage: vfio-user serve <device | ./module.js> (--socket-path=PATH | --fd=N) [options] [device options]\n\n';
  const devices = dev
    ? `device ${dev.module ?? dev.name}: ${dev.factory.description}\n` + optionsHelp(dev.factory.options ?? {}, '  ')
    : 'devices:\n' +
      Object.entries(DEVICES)
        .map(([n, d]) => `  ${n.padEnd(12)}${d.description}\n` + optionsHelp(d.options ?? {}, '      '))
        .join('') +
      '  ./module.js  a device module whose default export is a device factory (docs/device-guide.md)\n';
  const control = dev?.factory.control ? '\nstdin control commands:\n' + Object.values(dev.factory.control).map((c) => `  ${c.usage}\n`).join('') : '';
  return head + devices + control + '\noptions:\n  -v, -q, -h: --verbose, --quiet, --help\n' + optionsHelp(SERVE_OPTIONS, '  ');
}

function firstPositional(argv: string[]): string | undefined {
  const config: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [n, o] of Object.entries(SERVE_OPTIONS)) config[n] = { type: o.type === 'boolean' ? 'boolean' : 'string' };
  return parseArgs({ args: argv, options: config, strict: false, allowPositionals: true }).positionals[0];
}

export async function serve(argv: string[]): Promise<number> {
  if (wantsMany(argv)) return serveMany(argv); // several devices, a worker thread each
  const spec = firstPositional(argv);
  const wantsHelp = argv.includes('--help') || argv.includes('-h');
  if (!spec) {
    if (!wantsHelp) throw new UsageError('no device given\n' + help(undefined));
    process.stdout.write(help(undefined));
    return 0;
  }
  const dev = await resolveDevice(spec);
  if (wantsHelp) {
    process.stdout.write(help(dev));
    return 0;
  }
  const args = parseServeArgs(argv, dev);
  const o = args.serve;
  if (o['print-description'] || o['install-description'] !== undefined) {
    const json = JSON.stringify(describeDevice(dev, args.deviceArgs), null, 2) + '\n';
    if (o['print-description']) process.stdout.write(json);
    if (o['install-description'] !== undefined) {
      mkdirSync(o['install-description'], { recursive: true });
      const file = join(o['install-description'], `50-vfio-user-${dev.name}.json`);
      writeFileSync(file, json);
      process.stderr.write(`vfio-user serve: wrote ${file}\n`);
    }
    return 0;
  }
  if ((o['socket-path'] === undefined) === (o.fd === undefined)) throw new UsageError('give exactly one of --socket-path=PATH or --fd=N');
  return serveDevice(dev, args);
}

/**
 * The `stats` control command, for benchmarks' per-operation breakdowns: the process's CPU
 * time (µs) and voluntary context switches (its wake-ups), the session's messages by command
 * (see ConnectionStats), and the device's own counters when it keeps some (`perfStats`).
 */
function stats(server: VfioUserServer, device: PciDevice): Record<string, unknown> {
  const ru = process.resourceUsage();
  const s = server.session;
  return {
    cpuUs: ru.userCPUTime + ru.systemCPUTime,
    wakeups: ru.voluntaryContextSwitches,
    conn: s?.conn.stats.snapshot(),
    toClient: s && s.toClient !== s.conn ? s.toClient.stats.snapshot() : undefined,
    device: (device as { perfStats?: unknown }).perfStats,
  };
}

/** Serves a resolved device with parsed arguments until SIGTERM/SIGINT or `quit` on stdin. */
export async function serveDevice(dev: ResolvedDevice, args: ParsedServeArgs): Promise<number> {
  const o = args.serve;
  const log: DeviceContext['log'] = (level, msg) => {
    if (o.quiet || (level === 'debug' && !o.verbose)) return;
    process.stderr.write(`vfio-user[${dev.name}] ${level}: ${msg}\n`);
  };
  const event = (name: string, fields: Record<string, unknown> = {}): void => {
    process.stdout.write(JSON.stringify({ event: name, ...fields }) + '\n');
  };
  const ctx: DeviceContext = { name: dev.name, log, event };
  let device: PciDevice;
  try {
    device = await dev.factory.create(args.device, ctx);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new Error(`device ${dev.name}: ${(e as Error).message ?? String(e)}`, { cause: e });
  }
  // duck-typed: a module may import another copy of the package than this command's
  if (typeof (device as Partial<PciDevice> | null)?.addRegion !== 'function' || typeof (device as Partial<PciDevice>).destroy !== 'function') throw new Error(`device ${dev.name}: the factory returned ${device === null ? 'null' : typeof device}, not a PciDevice`);
  const server = new VfioUserServer(device, { ...serverOptions(o), log });
  server.on('connect', () => event('connect'));
  server.on('disconnect', () => event('disconnect'));
  try {
    if (o['socket-path'] !== undefined) server.listen(o['socket-path']);
    else server.serveFd(o.fd!);
  } catch (e) {
    device.destroy();
    const where = o['socket-path'] !== undefined ? o['socket-path'] : `fd ${o.fd}`;
    throw new Error(`cannot serve on ${where}: ${(e as Error).message}`, { cause: e });
  }
  event('ready', { device: dev.name, socket: o['socket-path'] ?? `fd:${o.fd}`, fastPath: server.fastPath, spinUs: server.spinUs });

  // host-side control on stdin
  const control = dev.factory.control ?? {};
  const usage = [...Object.values(control).map((c) => c.usage), 'stats', 'help', 'quit'].join(' | ');
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const [cmd, ...rest] = line.trim().split(/\s+/);
    if (!cmd) return;
    const report = (e: unknown): void => event('error', { message: (e as Error).message ?? String(e) });
    try {
      if (cmd === 'quit') shutdown();
      else if (cmd === 'help') event('help', { commands: usage });
      else if (cmd === 'stats') event('stats', stats(server, device));
      else if (Object.hasOwn(control, cmd)) Promise.resolve(control[cmd]!.run(device, rest, ctx)).catch(report);
      else event('error', { message: `unknown control command '${cmd}'`, help: usage });
    } catch (e) {
      report(e);
    }
  });
  // stdin closing (e.g. </dev/null) must not stop the server
  rl.on('close', () => {});

  let done: (code: number) => void = () => {};
  const finished = new Promise<number>((r) => (done = r));
  const shutdown = (): void => {
    server.close();
    device.destroy();
    rl.close();
    done(0);
  };
  stopOnSignal(shutdown);
  return finished;
}
