/**
 * `vfio-user serve <device> --socket-path=PATH | --fd=N`
 *
 * Follows the spec's backend program conventions: no daemonizing, --socket-path or --fd,
 * a clean exit on SIGTERM (and SIGINT). Logs go to stderr. Host-side control lines are read
 * from stdin (see `help` on stdin); device events are printed to stdout as JSON lines.
 */
import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';
import { VfioUserServer } from '../server/server.js';
import { DEVICES } from './devices.js';
import { GpioDevice } from '../devices/gpio.js';
import { parseSize } from '../devices/nvme/index.js';

export async function serve(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'socket-path': { type: 'string' },
      fd: { type: 'string' },
      verbose: { type: 'boolean', short: 'v' },
      quiet: { type: 'boolean', short: 'q' },
      'no-twin-socket': { type: 'boolean' },
      'max-data-xfer-size': { type: 'string' },
      'max-dma-maps': { type: 'string' },
      'max-dma-bytes': { type: 'string' },
      'allow-unsealed-dma': { type: 'boolean' },
      inputs: { type: 'string' },
      image: { type: 'string' },
      size: { type: 'string' },
      'lba-size': { type: 'string' },
      doorbells: { type: 'string' },
      'poll-us': { type: 'string' },
      'shadow-doorbells': { type: 'string' },
      serial: { type: 'string' },
      'read-only': { type: 'boolean' },
      queues: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const name = positionals[0];
  if (values.help || !name) {
    process.stdout.write(
      'usage: vfio-user serve <device> (--socket-path=PATH | --fd=N) [options]\n\ndevices:\n' +
        Object.entries(DEVICES)
          .map(([n, d]) => `  ${n.padEnd(10)} ${d.description}\n` + Object.entries(d.options).map(([o, h]) => `             --${o}: ${h}\n`).join(''))
          .join('') +
        '\noptions:\n  -v, --verbose   log every command\n  -q, --quiet     no logs\n  --no-twin-socket  never offer twin-socket mode\n' +
        '  --max-dma-maps=N  most DMA maps a client may hold (default 65535)\n' +
        '  --max-dma-bytes=SIZE  most address space all DMA maps may cover (default 16T)\n' +
        '  --allow-unsealed-dma  accept DMA files that cannot be sealed against shrinking (copied\n' +
        '                        safely, no zero-copy); refused by default\n',
    );
    return name || values.help ? 0 : 2;
  }
  const factory = DEVICES[name];
  if (!factory) {
    process.stderr.write(`vfio-user serve: unknown device '${name}' (try: ${Object.keys(DEVICES).join(', ')})\n`);
    return 2;
  }
  if (!!values['socket-path'] === !!values.fd) {
    process.stderr.write('vfio-user serve: give exactly one of --socket-path=PATH or --fd=N\n');
    return 2;
  }
  let maxDmaBytes: number | undefined;
  let maxDmaMaps: number | undefined;
  try {
    if (values['max-dma-bytes']) maxDmaBytes = parseSize(values['max-dma-bytes']);
    if (values['max-dma-maps']) {
      maxDmaMaps = Number(values['max-dma-maps']);
      if (!Number.isSafeInteger(maxDmaMaps) || maxDmaMaps < 1) throw new Error(`bad --max-dma-maps '${values['max-dma-maps']}'`);
    }
  } catch (e) {
    process.stderr.write(`vfio-user serve: ${(e as Error).message}\n`);
    return 2;
  }
  const device = await factory.create(values as Record<string, string | undefined>);
  const quiet = values.quiet ?? false;
  const verbose = values.verbose ?? false;
  const server = new VfioUserServer(device, {
    twinSocket: !values['no-twin-socket'],
    maxDataXferSize: values['max-data-xfer-size'] ? Number(values['max-data-xfer-size']) : undefined,
    maxDmaMaps,
    maxDmaBytes,
    requireSealedDmaFiles: !values['allow-unsealed-dma'],
    log: (level, msg) => {
      if (quiet || (level === 'debug' && !verbose)) return;
      process.stderr.write(`vfio-user[${name}] ${level}: ${msg}\n`);
    },
  });
  const event = (o: Record<string, unknown>): void => {
    process.stdout.write(JSON.stringify(o) + '\n');
  };
  server.on('connect', () => event({ event: 'connect' }));
  server.on('disconnect', () => event({ event: 'disconnect' }));
  if (device instanceof GpioDevice) {
    device.onOutputs = (outputs) => event({ event: 'outputs', value: outputs });
  }
  if (values['socket-path']) server.listen(values['socket-path']);
  else server.serveFd(Number(values.fd));
  event({ event: 'ready', device: name, socket: values['socket-path'] ?? `fd:${values.fd}` });

  // host-side control on stdin
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const [cmd, ...args] = line.trim().split(/\s+/);
    try {
      if (!cmd) return;
      if (device instanceof GpioDevice && cmd === 'inputs') {
        device.setInputs(Number(args[0]));
        event({ event: 'inputs', value: device.inputs });
      } else if (device instanceof GpioDevice && cmd === 'input') {
        device.setInput(Number(args[0]), args[1] === '1');
        event({ event: 'inputs', value: device.inputs });
      } else if (device instanceof GpioDevice && cmd === 'state') {
        event({ event: 'state', outputs: device.outputs, inputs: device.inputs, irqEnabled: device.irqEnabled });
      } else if (cmd === 'quit') {
        shutdown();
      } else {
        event({ event: 'error', message: `unknown control command '${cmd}'`, help: 'inputs <n> | input <line> <0|1> | state | quit' });
      }
    } catch (e) {
      event({ event: 'error', message: (e as Error).message });
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
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
  return finished;
}
