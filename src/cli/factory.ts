/**
 * The device factory contract of `vfio-user serve`: what a built-in device and a device
 * module (`vfio-user serve ./my-device.js`) give the command, and the checked parsing of the
 * options they declare.
 *
 * A device module's default export is a factory made with `defineDevice`:
 *
 * ```js
 * import { defineDevice, PciDevice } from 'vfio-user';
 * export default defineDevice({
 *   description: 'a counter',
 *   options: { start: { type: 'integer', min: 0, help: 'initial count' } },
 *   create: (opts, ctx) => new Counter(opts.start ?? 0, ctx),
 * });
 * ```
 *
 * `vfio-user serve` parses the command line against the options the factory declares (an
 * option it does not declare is refused, a value is checked against its type before
 * `create` runs), then serves the device with the spec's backend conventions.
 */
import type { PciDevice } from '../server/device.js';
import { VfioUserError, Errno } from '../errors.js';

/** One option a device takes on the command line (`--name=value`). */
export type DeviceOption =
  | { type: 'string'; help: string; choices?: readonly string[] }
  | { type: 'boolean'; help: string }
  /** a safe integer, decimal or 0x hexadecimal, within [min, max] */
  | { type: 'integer'; help: string; min?: number; max?: number }
  /** a byte count: 4096, 64K, 64M, 1G, 1T; within [min, max] and a multiple of `multipleOf` */
  | { type: 'size'; help: string; min?: number; max?: number; multipleOf?: number };

export type DeviceOptions = Record<string, DeviceOption>;

/** The parsed value of an option: a string, a boolean, or a number (integer and size). */
export type OptionValue<O extends DeviceOption> = O extends { type: 'boolean' } ? boolean : O extends { type: 'string' } ? string : number;

/** The options `create` receives: each declared option, undefined when not given. */
export type ParsedOptions<O extends DeviceOptions> = { [K in keyof O]?: OptionValue<O[K]> };

/** What `vfio-user serve` hands the factory besides the options. */
export interface DeviceContext {
  /** the device's name (the built-in name, or the module's file name without extension) */
  name: string;
  /** logs to stderr (prefixed with the device name); `debug` only with -v, nothing with -q */
  log(level: 'info' | 'warn' | 'debug', msg: string): void;
  /** prints a device event as one JSON line on stdout: `{"event": name, ...fields}` */
  event(name: string, fields?: Record<string, unknown>): void;
}

/** A host-side control command read from stdin while serving (`<name> arg...`). */
export interface ControlCommand<D extends PciDevice = PciDevice> {
  /** usage shown by `help` on stdin, e.g. 'input <line 0-15> <0|1>' */
  usage: string;
  /** runs it; throw an Error to report `{"event":"error","message":...}` */
  run(device: D, args: string[], ctx: DeviceContext): void | Promise<void>;
}

export interface DeviceFactory<O extends DeviceOptions = DeviceOptions, D extends PciDevice = PciDevice> {
  /** one line for `vfio-user serve --help` and the JSON description */
  description: string;
  /** the JSON description's `type` (default: the device's name) */
  type?: string;
  /** the options the device takes; any other option is refused */
  options?: O;
  /** host-side control commands read from stdin while serving */
  control?: Record<string, ControlCommand<D>>;
  /** makes the device; may be async; an exception is reported and serve exits with 1 */
  create(opts: ParsedOptions<O>, ctx: DeviceContext): D | Promise<D>;
}

/** Identity, for type inference: `export default defineDevice({ ... })`. */
export function defineDevice<O extends DeviceOptions, D extends PciDevice>(factory: DeviceFactory<O, D>): DeviceFactory<O, D> {
  return factory;
}

/** A command line mistake: reported with usage to stderr, exit code 2 (code VFU_USAGE, errno EINVAL). */
export class UsageError extends VfioUserError {
  constructor(message: string) {
    super('VFU_USAGE', message, Errno.EINVAL);
    this.name = 'UsageError';
  }
}

const SIZE_UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** Parses an integer option value (decimal or 0x hexadecimal) and checks its range. */
export function parseInteger(name: string, v: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const s = v.trim();
  const n = /^0x[0-9a-f]+$/i.test(s) ? Number.parseInt(s.slice(2), 16) : /^-?\d+$/.test(s) ? Number(s) : NaN;
  if (!Number.isSafeInteger(n)) throw new UsageError(`--${name}: '${v}' is not an integer`);
  if (n < min || n > max) throw new UsageError(`--${name}: ${s} is out of range (${min}..${max})`);
  return n;
}

/** Parses a size option value (4096, 512K, 64M, 1G, 1T) and checks its range and granularity. */
export function parseSizeOption(name: string, v: string, opt: { min?: number; max?: number; multipleOf?: number } = {}): number {
  const m = /^(\d+)([kmgt]?)(i?b)?$/i.exec(v.trim());
  const n = m ? Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]! : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new UsageError(`--${name}: '${v}' is not a size (e.g. 4096, 64K, 64M, 1G)`);
  const min = opt.min ?? 1;
  const max = opt.max ?? Number.MAX_SAFE_INTEGER;
  if (n < min || n > max) throw new UsageError(`--${name}: ${v} is out of range (${min}..${max} bytes)`);
  if (opt.multipleOf && n % opt.multipleOf !== 0) throw new UsageError(`--${name}: ${v} is not a whole number of ${opt.multipleOf}-byte blocks`);
  return n;
}

/** Checks and converts one raw option value (from parseArgs) by its declaration. */
export function parseOptionValue(name: string, opt: DeviceOption, raw: string | boolean): string | boolean | number {
  if (opt.type === 'boolean') return raw === true;
  const v = String(raw);
  switch (opt.type) {
    case 'string':
      if (opt.choices && !opt.choices.includes(v)) throw new UsageError(`--${name} must be ${opt.choices.join(' or ')} (not '${v}')`);
      return v;
    case 'integer':
      return parseInteger(name, v, opt.min, opt.max);
    case 'size':
      return parseSizeOption(name, v, opt);
  }
}

/** The options' lines for help texts. */
export function optionsHelp(options: DeviceOptions, indent: string): string {
  return Object.entries(options)
    .map(([n, o]) => {
      const arg = o.type === 'boolean' ? '' : o.type === 'string' && o.choices ? `=${o.choices.join('|')}` : o.type === 'size' ? '=SIZE' : o.type === 'integer' ? '=N' : '=VALUE';
      return `${indent}--${n}${arg}\n${indent}    ${o.help}\n`;
    })
    .join('');
}

/**
 * Checks a factory loaded from a module (plain JavaScript gets no type checking). A plain
 * function default export, `export default function createDevice(options, ctx)`, is a
 * factory too: it declares no options (unless it carries an `options` property), and its
 * `description` property, if any, describes it.
 */
export function checkFactory(f: unknown, where: string, reserved: readonly string[]): DeviceFactory {
  const bad = (why: string): never => {
    throw new UsageError(`${where}: ${why} (see "Serve it" in docs/device-guide.md)`);
  };
  if (typeof f === 'function') {
    const fn = f as ((o: ParsedOptions<DeviceOptions>, ctx: DeviceContext) => PciDevice | Promise<PciDevice>) & Partial<DeviceFactory>;
    f = { description: fn.description ?? `device from ${where.replace(/^device module /, '')}`, type: fn.type, options: fn.options, control: fn.control, create: fn };
  }
  if (!f || typeof f !== 'object') bad('its default export must be a device factory: defineDevice({ description, options, create }) or a function returning a PciDevice');
  const d = f as Partial<DeviceFactory>;
  if (typeof d.create !== 'function') bad('the factory has no create(options, context) function');
  if (typeof d.description !== 'string') bad('the factory has no description string');
  for (const [n, o] of Object.entries(d.options ?? {})) {
    if (reserved.includes(n)) bad(`option --${n} is one of serve's own options`);
    if (!/^[a-z][a-z0-9-]*$/.test(n)) bad(`option name '${n}' is not lower-case-with-dashes`);
    if (!o || !['string', 'boolean', 'integer', 'size'].includes(o.type)) bad(`option --${n} needs a type: string, boolean, integer or size`);
  }
  for (const [n, c] of Object.entries(d.control ?? {})) if (typeof c?.run !== 'function') bad(`control command '${n}' has no run function`);
  return d as DeviceFactory;
}
