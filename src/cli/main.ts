#!/usr/bin/env node
/**
 * The `vfio-user` command: serve a device, inspect a server, trace a session, migrate.
 *
 * Exit codes: 0 success, 1 failure, 2 usage error (message and usage on stderr).
 */
import { readFileSync } from 'node:fs';
import { UsageError } from './factory.js';

const USAGE = `usage: vfio-user <command> [options]

commands:
  serve <device> --socket-path=PATH   serve a device (gpio, nvme, virtio-blk, null, or ./module.js)
  info <socket> [--json]              describe the device a server offers, like lspci -vv
  trace --listen=PATH --connect=PATH  forward a session and print every message
  migrate --from=SOCK --to=SOCK       move a device between two servers
  proxy --listen=PATH --connect=SOCK  forward a client's session; move it to another server on command
  bench <socket> [-n N] [--depth=D]   time region accesses against any server

Run 'vfio-user <command> --help' for a command's options; 'vfio-user --version' for the version.
`;

function version(): string {
  // dist/src/cli/main.js and src/cli/main.ts are both three levels below package.json
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'serve':
      return (await import('./serve.js')).serve(rest);
    case 'info':
      return (await import('./info.js')).info(rest);
    case 'trace':
      return (await import('./trace.js')).trace(rest);
    case 'migrate':
      return (await import('./migrate.js')).migrate(rest);
    case 'proxy':
      return (await import('./proxy.js')).proxy(rest);
    case 'bench':
      return (await import('./bench.js')).bench(rest);
    case '-V':
    case '--version':
      process.stdout.write(`vfio-user ${version()}\n`);
      return 0;
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return 0;
    case undefined:
      throw new UsageError(`no command given\n${USAGE}`);
    default:
      throw new UsageError(`unknown command '${cmd}'\n${USAGE}`);
  }
}

/** parseArgs's own errors (unknown option, missing value) are usage errors too */
function isUsageError(e: unknown): boolean {
  return e instanceof UsageError || /^ERR_PARSE_ARGS_/.test(String((e as { code?: unknown })?.code));
}

const cmd = process.argv[2];
const prefix = cmd && ['serve', 'info', 'trace', 'migrate', 'proxy', 'bench'].includes(cmd) ? `vfio-user ${cmd}` : 'vfio-user';
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const err = e as { code?: string; message?: string };
    if (isUsageError(e)) {
      process.stderr.write(`${prefix}: ${err.message}\n`);
      if (!/usage:|--help/.test(err.message ?? '')) process.stderr.write(`(${prefix === 'vfio-user' ? 'vfio-user --help' : `${prefix} --help`} for usage)\n`);
      process.exitCode = 2;
      return;
    }
    const code = err.code && !err.message?.includes(err.code) ? `[${err.code}] ` : '';
    process.stderr.write(`${prefix}: ${code}${err.message ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
