/**
 * Several devices in one process, each on a worker thread of its own (issue 15).
 *
 * Each device runs in a `worker_threads` worker (device-worker.ts) with its own event loop and
 * V8 heap, so devices use all cores and a busy device does not stall the others. The device
 * module is loaded in the worker (functions and devices cannot cross threads): its default
 * export (or the export named) is a factory, `(options, context) => PciDevice` (or a promise
 * of one), or an object with such a `create` method, like the CLI's device factories.
 *
 * The main thread owns each device's listening socket: a worker that dies leaves it open, so
 * clients that connect meanwhile wait in the backlog and are served by the restarted worker;
 * close() removes the socket files. A device that throws where nothing catches it (a timer,
 * an unawaited promise) ends its own worker only: the client is disconnected, the main thread
 * gets 'exit' with the error, and the worker is restarted (at most `restart.max` times within
 * `restart.windowMs`; then the device is 'failed', left down and its socket removed). Exceptions in region
 * callbacks never get that far: the client gets an error reply, as on the main thread.
 */
import { EventEmitter, once } from 'node:events';
import { Worker, type ResourceLimits } from 'node:worker_threads';
import { isAbsolute } from 'node:path';
import { pathToFileURL } from 'node:url';
import { native } from '../native/index.js';
import { listenPath, removeSocket } from '../transport/socket.js';
import { VfioUserError, Errno } from '../errors.js';
import type { PciDevice } from './device.js';
import type { ServerOptions } from './server.js';

/** What a device factory gets besides its options, in the worker. */
export interface WorkerDeviceContext {
  /** the device's name (DeviceThreadSpec.name) */
  name: string;
  /** a log line, reported by the main thread ('log' event) */
  log: (level: 'info' | 'warn' | 'debug', msg: string) => void;
  /** a device event (e.g. GPIO outputs changed), reported by the main thread ('event' event) */
  event: (name: string, fields?: Record<string, unknown>) => void;
  /** receives what the main thread sends with DeviceThread.post() (host-side controls) */
  onMessage: (handler: (data: unknown) => void) => void;
}

export type WorkerDeviceFactory = (options: Record<string, unknown>, ctx: WorkerDeviceContext) => PciDevice | Promise<PciDevice>;

export interface DeviceThreadSpec {
  /** unique name, for logs and events */
  name: string;
  /** the device module: a path (absolute, or relative to the working directory) or a URL */
  module: string | URL;
  /** the export that is the factory (default: the default export); a dotted path reaches into objects */
  export?: string | undefined;
  /** passed to the factory (structured-cloned: plain data only) */
  options?: Record<string, unknown> | undefined;
  /** where the device listens (a stale socket file is replaced; removed again by close()) */
  socketPath: string;
  /** server options (plain data: no log function; logs come as 'log' events) */
  server?: Omit<ServerOptions, 'log'> | undefined;
  /** restart a worker that dies (default { max: 5, windowMs: 60000 }); false: report it and leave it down */
  restart?: { max: number; windowMs: number } | false;
  /** V8 limits for the worker (a device past them dies and is restarted like one that throws) */
  resourceLimits?: ResourceLimits;
}

export type DeviceThreadState = 'starting' | 'running' | 'restarting' | 'failed' | 'stopping' | 'stopped';

/** @internal worker protocol */
export interface DeviceWorkerData {
  name: string;
  module: string;
  export?: string | undefined;
  options?: Record<string, unknown> | undefined;
  listenFd: number;
  server?: Omit<ServerOptions, 'log'> | undefined;
}
/** @internal */
export type FromWorker =
  | { t: 'ready'; fastPath: boolean; spinUs: number }
  | { t: 'stopped' }
  | { t: 'fatal'; error: string }
  | { t: 'log'; level: 'info' | 'warn' | 'debug'; msg: string }
  | { t: 'event'; name: string; fields: Record<string, unknown> };
/** @internal */
export type ToWorker = { t: 'stop' } | { t: 'message'; data: unknown } | { t: 'control'; args: string[] };

const WORKER_ENTRY = new URL('./device-worker.js', import.meta.url);
const STOP_TIMEOUT_MS = 5000;

function moduleUrl(m: string | URL): string {
  if (m instanceof URL) return m.href;
  if (/^[a-z][a-z0-9+.-]*:/i.test(m) && !isAbsolute(m)) return m; // file:, data:, a package name with a scheme
  return pathToFileURL(m).href;
}

/** A host-side control command of a factory (the CLI's ControlCommand, which DeviceThread.control() runs). */
export interface WorkerControlCommand {
  usage: string;
  run(device: PciDevice, args: string[], ctx: WorkerDeviceContext): void | Promise<void>;
}

/** @internal A factory found in a module: its create(), and its control commands if it has any. */
export interface LoadedFactory {
  create: WorkerDeviceFactory;
  control: Record<string, WorkerControlCommand>;
}

/** @internal Imports a device module and finds its factory (in the worker). */
export async function loadDeviceFactory(module: string, exportName?: string): Promise<LoadedFactory> {
  const mod = (await import(module)) as Record<string, unknown>;
  let f: unknown = mod;
  for (const k of (exportName ?? 'default').split('.')) f = f == null ? undefined : (f as Record<string, unknown>)[k];
  const fc = f as { create?: unknown; control?: Record<string, WorkerControlCommand> } | undefined;
  const control = fc?.control ?? {};
  if (typeof f === 'function') return { create: f as WorkerDeviceFactory, control };
  if (typeof fc?.create === 'function') return { create: (fc.create as WorkerDeviceFactory).bind(f), control };
  throw new VfioUserError('VFU_INVALID_ARGUMENT', `${module}: export ${exportName ?? 'default'} is not a device factory (a function, or an object with create())`, Errno.EINVAL);
}

/** One device and its worker (replaced by a new one on restart). */
export class DeviceThread {
  readonly name: string;
  readonly socketPath: string;
  /** the listening socket, owned by the main thread */
  readonly listenFd: number;
  state: DeviceThreadState = 'starting';
  /** the current worker (undefined while restarting, failed or stopped) */
  worker: Worker | undefined;
  /** restarts so far */
  restarts = 0;
  /** how its server serves (ServerOptions.fastPath and spinUs as they came out), once ready */
  serving: { fastPath: boolean; spinUs: number } | undefined;
  /** the error of the last worker that died */
  lastError: string | undefined;
  private readonly host: DeviceThreads;
  private readonly spec: DeviceThreadSpec;
  private readonly restartTimes: number[] = [];
  private restartTimer: NodeJS.Timeout | undefined;

  /** @internal */
  constructor(host: DeviceThreads, spec: DeviceThreadSpec) {
    this.host = host;
    this.spec = spec;
    this.name = spec.name;
    this.socketPath = spec.socketPath;
    this.listenFd = listenPath(spec.socketPath);
  }

  /** Sends data to the device's context.onMessage handler (a host-side control, say). */
  post(data: unknown): void {
    this.worker?.postMessage({ t: 'message', data } satisfies ToWorker);
  }

  /**
   * Runs one of the factory's control commands (`control: { name: { usage, run(device, args,
   * ctx) } }`, as the CLI's device factories have) on the device's thread: args[0] is the
   * command. An unknown command or one that throws is reported as an 'event' named 'error'.
   */
  control(args: string[]): void {
    this.worker?.postMessage({ t: 'control', args } satisfies ToWorker);
  }

  /** @internal Starts a worker; resolves when it serves, rejects if it dies first. */
  spawn(): Promise<void> {
    const data: DeviceWorkerData = {
      name: this.name,
      module: moduleUrl(this.spec.module),
      export: this.spec.export,
      options: this.spec.options,
      listenFd: this.listenFd,
      server: this.spec.server,
    };
    const w = new Worker(WORKER_ENTRY, { workerData: data, resourceLimits: this.spec.resourceLimits, stdin: false });
    this.worker = w;
    let error: string | undefined;
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      w.on('message', (m: FromWorker) => {
        switch (m.t) {
          case 'ready':
            ready = true;
            this.state = 'running';
            this.serving = { fastPath: m.fastPath, spinUs: m.spinUs };
            this.host.emit('ready', this);
            resolve();
            break;
          case 'fatal':
            error = m.error;
            break;
          case 'log':
            this.host.emit('log', this, m.level, m.msg);
            break;
          case 'event':
            this.host.emit('event', this, m.name, m.fields);
            break;
          case 'stopped':
            break;
        }
      });
      // an error the worker could not report itself (out of memory, a module that fails to parse)
      w.on('error', (e) => (error ??= e.stack ?? String(e)));
      w.on('exit', (code) => {
        if (this.worker === w) this.worker = undefined;
        if (this.state === 'stopping' || this.state === 'stopped') return;
        this.lastError = error ?? `worker exited with code ${code}`;
        this.host.emit('exit', this, { code, error: this.lastError });
        if (!ready) {
          this.state = 'failed';
          reject(new VfioUserError('VFU_DEVICE_FAILED', `device ${this.name}: ${this.lastError}`, Errno.EIO));
          return;
        }
        this.restartOrFail();
      });
    });
  }

  private restartOrFail(): void {
    const policy = this.spec.restart ?? { max: 5, windowMs: 60000 };
    const now = Date.now();
    while (this.restartTimes.length && policy && this.restartTimes[0]! < now - policy.windowMs) this.restartTimes.shift();
    if (!policy || this.restartTimes.length >= policy.max) {
      // left down: clients get ECONNREFUSED rather than wait in the backlog for nobody
      this.state = 'failed';
      this.closeSocket();
      this.host.emit('failed', this, this.lastError);
      return;
    }
    this.restartTimes.push(now);
    this.state = 'restarting';
    const backoff = Math.min(5000, 100 * 2 ** (this.restartTimes.length - 1));
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.state !== 'restarting') return;
      this.restarts++;
      this.host.emit('restart', this);
      // a restart that fails before serving is one more death: spawn() reports it and the
      // exit handler decides again
      this.spawn().catch(() => this.restartOrFail());
    }, backoff);
  }

  /** @internal Stops the worker (cleanly, or terminated after a timeout) and closes the socket. */
  async stop(): Promise<void> {
    if (this.state === 'stopped') return;
    this.state = 'stopping';
    if (this.restartTimer) clearTimeout(this.restartTimer);
    const w = this.worker;
    if (w) {
      const exited = once(w, 'exit');
      w.postMessage({ t: 'stop' } satisfies ToWorker);
      const t = setTimeout(() => void w.terminate(), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(t);
    }
    this.state = 'stopped';
    this.closeSocket();
  }

  private socketClosed = false;
  private closeSocket(): void {
    if (this.socketClosed) return;
    this.socketClosed = true;
    native.close(this.listenFd);
    removeSocket(this.socketPath);
  }
}

/**
 * Devices on worker threads, one each. Events: 'ready' (thread), 'exit' (thread,
 * { code, error }) when a worker dies, 'restart' (thread), 'failed' (thread, error) when a device
 * is left down, 'log' (thread, level, msg), 'event' (thread, name, fields) for device events
 * and 'connect'/'disconnect' of its client.
 */
export class DeviceThreads extends EventEmitter {
  private readonly threads = new Map<string, DeviceThread>();
  private closed = false;

  /** Starts a device on a new worker; resolves once it serves (rejects if it cannot start). */
  async add(spec: DeviceThreadSpec): Promise<DeviceThread> {
    if (this.closed) throw new VfioUserError('VFU_BAD_STATE', 'closed', Errno.EBADF);
    if (this.threads.has(spec.name)) throw new VfioUserError('VFU_INVALID_ARGUMENT', `a device named ${spec.name} exists`, Errno.EEXIST);
    const t = new DeviceThread(this, spec);
    this.threads.set(spec.name, t);
    try {
      await t.spawn();
    } catch (e) {
      this.threads.delete(spec.name);
      await t.stop();
      throw e;
    }
    return t;
  }

  get(name: string): DeviceThread | undefined {
    return this.threads.get(name);
  }

  get devices(): DeviceThread[] {
    return [...this.threads.values()];
  }

  /** Stops every device (each disconnects its client and releases its resources) and removes the sockets. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.threads.values()].map((t) => t.stop()));
  }
}
