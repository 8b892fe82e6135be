/**
 * Device harnesses: serve a device on a fresh UNIX socket, in this process or in a child
 * process, and hand back a connected client; everything is released by close() (or `await
 * using`), the socket's temporary directory included.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { VfioUserServer, type ServerOptions } from '../server/server.js';
import { VfioUserClient, type ClientOptions } from '../client/client.js';
import type { PciDevice } from '../server/device.js';

let seq = 0;
let dir: string | undefined;

/**
 * A fresh socket path in a temporary directory of this process (made on first use, removed
 * when the process exits).
 */
export function socketPath(name = 'dev'): string {
  if (!dir) {
    const d = mkdtempSync(join(tmpdir(), 'vfu-test-'));
    dir = d;
    process.on('exit', () => rmSync(d, { recursive: true, force: true }));
  }
  return join(dir, `${name}-${process.pid}-${seq++}.sock`);
}

/** A device served in this process (see {@link listenDevice}). */
export interface InProcessServer<T extends PciDevice> extends AsyncDisposable {
  readonly device: T;
  readonly server: VfioUserServer;
  /** the socket the server listens on */
  readonly path: string;
  /** Connects a client (the server serves one at a time: close the previous one first); close() closes it too. */
  connect(opts?: ClientOptions): Promise<VfioUserClient>;
  /** Closes the clients connect() made, the server, and destroys the device. */
  close(): Promise<void>;
}

/** A device served in this process, with a client connected to it (see {@link serveDevice}). */
export interface InProcessHarness<T extends PciDevice> extends InProcessServer<T> {
  /** a client connected to the device */
  readonly client: VfioUserClient;
}

/** Options of {@link serveDevice} and {@link listenDevice}. */
export interface ServeDeviceOptions {
  /** server options (limits, logging, DMA message layout...) */
  server?: ServerOptions;
  /** options of the clients connect() makes */
  client?: ClientOptions;
  /** a name for the socket file (default 'dev') */
  name?: string;
}

/**
 * Serves `device` in this process on a fresh socket, with no client yet: for tests that
 * connect clients themselves (several in turn, or a migration between two servers).
 */
export function listenDevice<T extends PciDevice>(device: T, opts: ServeDeviceOptions = {}): InProcessServer<T> {
  const server = new VfioUserServer(device, opts.server);
  const path = socketPath(opts.name);
  server.listen(path);
  const clients: VfioUserClient[] = [];
  const connect = async (o: ClientOptions = opts.client ?? {}): Promise<VfioUserClient> => {
    const c = await VfioUserClient.connect(path, o);
    clients.push(c);
    return c;
  };
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    for (const c of clients) c.close();
    server.close();
    device.destroy();
  };
  return { device, server, path, connect, close, [Symbol.asyncDispose]: close };
}

/**
 * Serves `device` in this process on a fresh socket and connects a client to it. The device's
 * callbacks run in this process, so a test can look at its state directly; the protocol still
 * goes over a real socket, fds and all.
 *
 * ```ts
 * await using h = await serveDevice(new MyDevice());
 * const b = await h.client.read(0, 0, 4);
 * ```
 */
export async function serveDevice<T extends PciDevice>(device: T, opts: ServeDeviceOptions = {}): Promise<InProcessHarness<T>> {
  const s = listenDevice(device, opts);
  try {
    return { ...s, client: await s.connect() };
  } catch (e) {
    await s.close();
    throw e;
  }
}

/** A server running in a child process (see {@link spawnServer}). */
export interface ServerProcess extends AsyncDisposable {
  readonly child: ChildProcess;
  /** the socket the server listens on */
  readonly path: string;
  /** its ready event (`vfio-user serve` says there how it serves, e.g. `fastPath`, `spinUs`) */
  readonly ready: Record<string, unknown>;
  /** JSON events printed on its stdout and not yet taken by waitEvent() */
  readonly events: Record<string, unknown>[];
  /** Resolves with the next event of that name (`{"event": name, ...}`), taking it. */
  waitEvent(name: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Writes a control line to its stdin. */
  send(line: string): void;
  /** Sends SIGTERM (if it still runs) and resolves with its exit code. */
  stop(): Promise<number | null>;
  /** what it wrote on stderr so far */
  stderr(): string;
}

/** Options of {@link spawnServer}. */
export interface SpawnOptions {
  /** a name for the socket file */
  name?: string;
  /** a command that runs node, for example `['taskset', '-c', '0']` */
  wrapper?: string[];
  /** extra environment variables */
  env?: Record<string, string>;
  /** how long to wait for the 'ready' event (default 20000 ms) */
  readyTimeoutMs?: number;
}

/**
 * Runs `node <args> --socket-path=<fresh path>` and waits for its `{"event":"ready"}` line on
 * stdout: the contract of `vfio-user serve`, whose events (one JSON object a line) are
 * collected. `args` starts with the script, e.g. `[cliPath, 'serve', 'gpio']`.
 */
export async function spawnServer(args: string[], opts: SpawnOptions = {}): Promise<ServerProcess> {
  const path = socketPath(opts.name);
  const nodeArgs = [...args, `--socket-path=${path}`];
  const env = opts.env ? { ...process.env, ...opts.env } : process.env;
  const child = opts.wrapper?.length
    ? spawn(opts.wrapper[0]!, [...opts.wrapper.slice(1), process.execPath, ...nodeArgs], { stdio: ['pipe', 'pipe', 'pipe'], env })
    : spawn(process.execPath, nodeArgs, { stdio: ['pipe', 'pipe', 'pipe'], env });
  const events: Record<string, unknown>[] = [];
  const waiters: { name: string; resolve: (e: Record<string, unknown>) => void }[] = [];
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  child.stdin.on('error', () => {}); // a child that exited does not take control lines
  createInterface({ input: child.stdout }).on('line', (line) => {
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    const i = waiters.findIndex((w) => w.name === e.event);
    if (i >= 0) waiters.splice(i, 1)[0]!.resolve(e);
    else events.push(e);
  });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const waitEvent = (name: string, timeoutMs = 10000): Promise<Record<string, unknown>> => {
    const i = events.findIndex((e) => e.event === name);
    if (i >= 0) return Promise.resolve(events.splice(i, 1)[0]!);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        const k = waiters.indexOf(w);
        if (k >= 0) waiters.splice(k, 1);
        reject(new Error(`timeout waiting for event '${name}'; stderr: ${err}`));
      }, timeoutMs);
      const w = { name, resolve: (e: Record<string, unknown>) => (clearTimeout(t), resolve(e)) };
      waiters.push(w);
    });
  };
  const stop = async (): Promise<number | null> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    return exited;
  };
  let ready: Record<string, unknown>;
  try {
    ready = await Promise.race([
      waitEvent('ready', opts.readyTimeoutMs ?? 20000),
      exited.then((code) => {
        throw new Error(`server exited with ${code}: ${err}`);
      }),
    ]);
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    child,
    path,
    ready,
    events,
    waitEvent,
    send: (line) => void child.stdin.write(line + '\n'),
    stop,
    stderr: () => err,
    [Symbol.asyncDispose]: async () => void (await stop()),
  };
}

/** A device served by a child process, with a client connected to it. */
export interface ChildHarness extends ServerProcess {
  /** a client connected to the device */
  readonly client: VfioUserClient;
  /** Connects another client (the server serves one at a time: close the previous one first). */
  connect(opts?: ClientOptions): Promise<VfioUserClient>;
  /** Closes the client(s), stops the child (SIGTERM) and resolves with its exit code. */
  close(): Promise<number | null>;
}

/** Options of {@link spawnDevice}. */
export interface SpawnDeviceOptions extends SpawnOptions {
  /** options given to the module's factory (as `--name=value` arguments) */
  options?: Record<string, string | number | boolean>;
  /** options of the connected client */
  client?: ClientOptions;
}

const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

/**
 * Serves the device a module makes in a child process with `vfio-user serve <module>`, and
 * connects a client to it. The module's default export is a device factory, as `vfio-user
 * serve` takes it (`defineDevice({ description, options, create })`, or a plain function
 * returning a `PciDevice`; see the device guide), and `options` become its command-line
 * options (`verbose: true` is serve's `-v`). A device crashing takes only the child with it,
 * and the server and device code run on another event loop, like under QEMU.
 *
 * ```ts
 * await using h = await spawnDevice(new URL('./my-device.js', import.meta.url), { options: { lines: 8 } });
 * const b = await h.client.read(0, 0, 4);
 * ```
 */
export async function spawnDevice(module: string | URL, opts: SpawnDeviceOptions = {}): Promise<ChildHarness> {
  const file = module instanceof URL ? fileURLToPath(module) : module;
  const optArgs = Object.entries(opts.options ?? {}).map(([k, v]) => (v === true ? `--${k}` : `--${k}=${v}`));
  const p = await spawnServer([CLI, 'serve', file, ...optArgs], opts);
  const clients: VfioUserClient[] = [];
  const connect = async (o: ClientOptions = opts.client ?? {}): Promise<VfioUserClient> => {
    const c = await VfioUserClient.connect(p.path, o);
    clients.push(c);
    return c;
  };
  const close = async (): Promise<number | null> => {
    for (const c of clients) c.close();
    return p.stop();
  };
  let client: VfioUserClient;
  try {
    client = await connect();
  } catch (e) {
    await close();
    throw e;
  }
  return { ...p, client, connect, close, [Symbol.asyncDispose]: async () => void (await close()) };
}
