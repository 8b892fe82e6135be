/**
 * The entry of a device's worker thread (see threads.ts): loads the device module, creates the
 * device, serves it on the listening socket the main thread owns, and talks to the main thread
 * over parentPort. Its own event loop, its own fast path: a busy device here does not slow
 * the others.
 *
 * An exception nothing catches (a device timer that throws, a rejected promise nobody awaits)
 * ends this thread, not the process: the client is disconnected, its DMA maps and interrupt
 * fds are released (within a second), the main thread is told why, and may restart it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { once } from 'node:events';
import { VfioUserServer } from './server.js';
import type { PciDevice } from './device.js';
import { loadDeviceFactory, type LoadedFactory, type DeviceWorkerData, type FromWorker, type ToWorker, type WorkerDeviceContext } from './threads.js';

const data = workerData as DeviceWorkerData;
const port = parentPort!;
const post = (m: FromWorker): void => port.postMessage(m);

let server: VfioUserServer | undefined;
let device: PciDevice | undefined;
let ending = false;

/** Disconnects the client and waits (bounded) for its DMA maps and IRQ fds to be released. */
async function shutdown(): Promise<void> {
  const s = server;
  if (!s) return;
  const leaving = s.serving ? once(s, 'disconnect') : Promise.resolve();
  s.close();
  await Promise.race([leaving, new Promise((r) => setTimeout(r, 1000).unref())]);
  try {
    device?.destroy();
  } catch {
    /* the thread ends anyway */
  }
}

async function fatal(e: unknown): Promise<void> {
  if (ending) return;
  ending = true;
  post({ t: 'fatal', error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
  try {
    await shutdown();
  } finally {
    process.exit(1);
  }
}

process.on('uncaughtException', (e) => void fatal(e));
process.on('unhandledRejection', (e) => void fatal(e));

port.on('message', (m: ToWorker) => {
  if (m.t === 'stop') {
    if (ending) return;
    ending = true;
    void shutdown().finally(() => {
      post({ t: 'stopped' });
      process.exit(0);
    });
  } else if (m.t === 'message') {
    onMessage?.(m.data);
  } else if (m.t === 'control') {
    runControl(m.args);
  }
});

let control: LoadedFactory['control'] = {};
function runControl(args: string[]): void {
  const [cmd, ...rest] = args;
  const report = (e: unknown): void => ctx.event('error', { message: (e as Error).message ?? String(e) });
  const usage = [...Object.values(control).map((c) => c.usage)].join(' | ');
  if (!cmd || !Object.hasOwn(control, cmd) || !device) {
    ctx.event('error', { message: `unknown control command '${cmd ?? ''}'`, help: usage });
    return;
  }
  try {
    Promise.resolve(control[cmd]!.run(device, rest, ctx)).catch(report);
  } catch (e) {
    report(e);
  }
}

let onMessage: ((data: unknown) => void) | undefined;
const ctx: WorkerDeviceContext = {
  name: data.name,
  log: (level, msg) => post({ t: 'log', level, msg }),
  event: (name, fields = {}) => post({ t: 'event', name, fields }),
  onMessage: (handler) => {
    onMessage = handler;
  },
};

try {
  const factory = await loadDeviceFactory(data.module, data.export);
  control = factory.control;
  device = await factory.create(data.options ?? {}, ctx);
  // duck-typed: a module may import another copy of the package than this one
  const d = device as Partial<PciDevice> | null;
  if (typeof d?.addRegion !== 'function' || typeof d.destroy !== 'function') throw new Error(`the factory returned ${device === null ? 'null' : typeof device}, not a PciDevice`);
  server = new VfioUserServer(device, { ...data.server, log: (level, msg) => post({ t: 'log', level, msg }) });
  server.on('error', (e) => void fatal(e));
  server.on('connect', () => post({ t: 'event', name: 'connect', fields: {} }));
  server.on('disconnect', () => post({ t: 'event', name: 'disconnect', fields: {} }));
  server.listenFd(data.listenFd);
  post({ t: 'ready', fastPath: server.fastPath, spinUs: server.spinUs });
} catch (e) {
  await fatal(e);
}
