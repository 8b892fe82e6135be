#!/usr/bin/env node
/**
 * The `vfio-user` command: serve a device, inspect a server, trace a session, migrate.
 */
const USAGE = `usage: vfio-user <command> [options]

commands:
  serve <device> --socket-path=PATH   serve a device (gpio, null, nvme)
  info <socket> [--json]              describe the device a server offers, like lspci -vv
  trace --listen=PATH --connect=PATH  forward a session and print every message
  migrate --from=SOCK --to=SOCK       move a device between two servers
  bench <socket> [-n N] [--depth=D]   time region accesses against any server

Run 'vfio-user <command> --help' for a command's options.
`;

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
    case 'bench':
      return (await import('./bench.js')).bench(rest);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`vfio-user: unknown command '${cmd}'\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const err = e as { code?: string; message?: string };
    process.stderr.write(`vfio-user: ${err.code ? `[${err.code}] ` : ''}${err.message ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
