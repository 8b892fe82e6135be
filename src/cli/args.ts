/**
 * Small command-line checks shared by the CLI's commands.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError, parseInteger } from './factory.js';

type Options = NonNullable<ParseArgsConfig['options']>;
const HELP = { help: { type: 'boolean', short: 'h' } } as const;
type Parsed<O extends Options, P extends boolean> = ReturnType<typeof parseArgs<{ args: string[]; options: O & typeof HELP; allowPositionals: P }>>;

/**
 * A command's arguments parsed strictly against its options (-h/--help added; positionals
 * only where `allowPositionals`). With -h or --help it prints `usage` on stdout and returns
 * undefined: the command then exits with 0.
 */
export function parseCommand<const O extends Options, const P extends boolean>(
  argv: string[],
  usage: string,
  allowPositionals: P,
  options: O,
): Parsed<O, P> | undefined {
  if (parseArgs({ args: argv, options: HELP, strict: false, allowPositionals: true }).values.help === true) {
    process.stdout.write(usage);
    return undefined;
  }
  return parseArgs({ args: argv, options: { ...options, ...HELP }, allowPositionals });
}

/** Options a command needs: a usage error naming them, with the usage, when one is missing. */
export function requireOptions<V extends object, K extends keyof V>(
  values: V,
  names: K[],
  hint: string,
  usage: string,
): asserts values is V & { [k in K]-?: NonNullable<V[k]> } {
  if (names.some((n) => values[n] === undefined)) throw new UsageError(`give ${names.length > 1 ? 'both ' : ''}${hint}\n${usage}`);
}

/** Runs `stop` on the first SIGTERM or SIGINT: the clean end of a command that serves until told. */
export function stopOnSignal(stop: () => void): void {
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

/** The one positional argument a command takes (`what`), refusing none or more. */
export function onePositional(positionals: string[], what: string): string | undefined {
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}' (one ${what} only)`);
  return positionals[0];
}

/** An optional integer option: undefined when not given, else checked (decimal or 0x hex). */
export function intOption(name: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  return v === undefined ? undefined : parseInteger(name, v, min, max);
}
