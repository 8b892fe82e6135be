/**
 * `vfio-user proxy --listen=PATH --connect=SERVER`
 *
 * A switchover proxy (src/client/proxy.ts): the client (QEMU) connects to --listen and its
 * session is forwarded to the server at --connect. A line `switch NEW_SERVER` on stdin moves
 * the device to that server under the running client (its state migrated, its DMA maps and
 * interrupt fds handed over, its commands held meanwhile). Events are JSON lines on stdout:
 * ready, session, session-end, switched (with the figures), switch-failed.
 */
import { createInterface } from 'node:readline';
import { SwitchoverProxy } from '../client/proxy.js';
import { parseCommand, requireOptions, stopOnSignal } from './args.js';

const USAGE = 'usage: vfio-user proxy --listen=PATH --connect=SERVER_PATH [--quiet]\n  stdin: switch NEW_SERVER_PATH | state\n';

export async function proxy(argv: string[]): Promise<number> {
  const args = parseCommand(argv, USAGE, false, { listen: { type: 'string' }, connect: { type: 'string' }, quiet: { type: 'boolean' } });
  if (!args) return 0;
  const { values } = args;
  requireOptions(values, ['listen', 'connect'], '--listen=PATH and --connect=SERVER_PATH', USAGE);
  const event = (o: Record<string, unknown>): void => {
    process.stdout.write(JSON.stringify(o) + '\n');
  };
  const p = new SwitchoverProxy(values.connect, {
    log: (level, msg) => {
      if (!values.quiet || level === 'warn') process.stderr.write(`proxy: ${msg}\n`);
    },
  });
  p.on('session', () => event({ event: 'session', server: p.server }));
  p.on('session-end', () => event({ event: 'session-end' }));
  p.listen(values.listen);

  let busy = Promise.resolve();
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const [cmd, arg] = line.trim().split(/\s+/);
    if (cmd === 'switch' && arg) {
      busy = busy.then(async () => {
        try {
          const r = await p.switchTo(arg);
          event({ event: 'switched', ...r });
        } catch (e) {
          const err = e as { code?: string; message?: string };
          event({ event: 'switch-failed', to: arg, code: err.code, error: err.message ?? String(e), server: p.server });
        }
      });
    } else if (cmd === 'state') {
      event({ event: 'state', server: p.server, forwarded: p.forwarded });
    } else if (cmd) {
      event({ event: 'error', error: `unknown command: ${line.trim()}` });
    }
  });
  event({ event: 'ready', listen: values.listen, server: values.connect });
  return new Promise<number>((resolve) => {
    const stop = (): void => {
      p.close();
      rl.close();
      process.stdin.destroy();
      resolve(0);
    };
    stopOnSignal(stop);
  });
}
