/**
 * The child process of spawnDevice(): `node serve-module.js <module> [--name=value...]
 * --socket-path=PATH` imports the module, makes its device with the factory it exports
 * (default export, or `createDevice`), serves it, and prints `{"event":"ready"}` (then
 * `connect`/`disconnect`) on stdout. SIGTERM closes the server and exits.
 *
 * @internal
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { VfioUserServer } from '../server/server.js';
import { PciDevice } from '../server/device.js';

/** Parses `--name=value` / `--flag` arguments into an object (values stay strings). */
export function parseOptionArgs(args: string[]): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (const a of args) {
    const m = /^--([^=]+)(?:=(.*))?$/s.exec(a);
    if (!m) throw new Error(`unexpected argument '${a}'`);
    out[m[1]!] = m[2] ?? true;
  }
  return out;
}

async function main(argv: string[]): Promise<void> {
  const [module, ...rest] = argv;
  if (!module) throw new Error('usage: serve-module.js <module> [--name=value...] --socket-path=PATH');
  const { 'socket-path': path, ...options } = parseOptionArgs(rest);
  if (typeof path !== 'string') throw new Error('--socket-path=PATH is required');
  const mod = (await import(pathToFileURL(resolve(module)).href)) as Record<string, unknown>;
  const factory = mod.default ?? mod.createDevice;
  if (typeof factory !== 'function') throw new Error(`${module} exports no device factory (a default export or createDevice)`);
  const device: unknown = await (factory as (o: object) => unknown)(options);
  if (!(device instanceof PciDevice)) throw new Error(`${module}: the factory did not return a PciDevice`);
  const server = new VfioUserServer(device, {
    log: (level, msg) => {
      if (level !== 'debug') process.stderr.write(`serve-module ${level}: ${msg}\n`);
    },
  });
  const event = (o: Record<string, unknown>): void => void process.stdout.write(JSON.stringify(o) + '\n');
  server.on('connect', () => event({ event: 'connect' }));
  server.on('disconnect', () => event({ event: 'disconnect' }));
  server.listen(path);
  event({ event: 'ready', socket: path });
  const stop = (): void => {
    server.close();
    device.destroy();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`serve-module: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
