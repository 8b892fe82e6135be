/**
 * Small command-line checks shared by the CLI's commands.
 */
import { UsageError, parseInteger } from './factory.js';

/** The one positional argument a command takes (`what`), refusing none or more. */
export function onePositional(positionals: string[], what: string): string | undefined {
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}' (one ${what} only)`);
  return positionals[0];
}

/** An optional integer option: undefined when not given, else checked (decimal or 0x hex). */
export function intOption(name: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  return v === undefined ? undefined : parseInteger(name, v, min, max);
}
