/**
 * `vfio-user trace --listen=PATH --connect=PATH [--json]`
 *
 * Sits between a client and a server: accepts the client on --listen, connects to the server
 * at --connect, forwards every message both ways with its fds, and prints each one decoded
 * with its timing (and, for replies, the round-trip time of the request). A twin socket the
 * server hands out is proxied too, so server-to-client commands are traced as well.
 */
import { native } from '../native/index.js';
import * as P from '../protocol/index.js';
import { MSG_TYPE_MASK, MSG_TYPE_REPLY, FLAG_ERROR, FLAG_NO_REPLY } from '../protocol/header.js';
import { Connection, takeFds, closeFds, type Message } from '../transport/connection.js';
import { Listener, connectPath } from '../transport/socket.js';
import { errnoName } from '../errors.js';
import { parseCommand, requireOptions, stopOnSignal } from './args.js';

export interface TraceRecord {
  t: number; // ms since the session (the client's connection) started
  session: number; // 1 for the first client the trace accepted, 2 for the next, ...
  dir: 'c2s' | 's2c';
  channel: 'main' | 'twin';
  id: number;
  command: string;
  type: 'command' | 'reply';
  flags: string[];
  size: number;
  fds: number;
  error?: string;
  rttUs?: number;
  message?: unknown;
  decodeError?: string;
}

function jsonable(v: unknown): unknown {
  if (typeof v === 'bigint') return `0x${v.toString(16)}`;
  if (v instanceof Uint8Array) return v.length <= 64 ? Buffer.from(v).toString('hex') : `${Buffer.from(v.subarray(0, 64)).toString('hex')}... (${v.length} bytes)`;
  if (Array.isArray(v)) return v.map(jsonable);
  if (v && typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (k !== 'raw') o[k] = jsonable(x);
    return o;
  }
  return v;
}

/** The flag bits each message's `flags` field uses, by command and direction. */
function flagTable(command: number, isReply: boolean): Record<string, number> | undefined {
  const C = P.Command;
  switch (command) {
    case C.DMA_MAP:
      return isReply ? undefined : P.DmaMapFlags;
    case C.DMA_UNMAP:
      return P.DmaUnmapFlags;
    case C.DEVICE_GET_INFO:
      return isReply ? P.DeviceInfoFlags : undefined;
    case C.DEVICE_GET_REGION_INFO:
      return isReply ? P.RegionInfoFlags : undefined;
    case C.DEVICE_GET_IRQ_INFO:
      return isReply ? P.IrqInfoFlags : undefined;
    case C.DEVICE_SET_IRQS: {
      const { DATA_TYPE_MASK: _d, ACTION_TYPE_MASK: _a, ...bits } = P.SetIrqsFlags;
      return bits;
    }
    case C.DEVICE_FEATURE: {
      const { MASK: _m, ...bits } = P.DeviceFeatureFlags;
      return bits;
    }
    default:
      return undefined;
  }
}

/** 'READ|WRITE' for 3 with DmaMapFlags; unknown bits as hex; '0' for none. */
export function flagNames(flags: number, table: Record<string, number>, low = 0): string {
  const names: string[] = [];
  let rest = flags & ~low;
  for (const [name, bit] of Object.entries(table)) {
    if (rest & bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  if (rest) names.push(`0x${(rest >>> 0).toString(16)}`);
  return names.join('|') || '0';
}

/** the decoded message with its `flags` named (DEVICE_FEATURE: the feature index too) */
function nameFlags(command: number, isReply: boolean, msg: unknown): unknown {
  const table = flagTable(command, isReply);
  if (!table || !msg || typeof msg !== 'object' || typeof (msg as { flags?: unknown }).flags !== 'number') return msg;
  const flags = (msg as { flags: number }).flags;
  if (command === P.Command.DEVICE_FEATURE) {
    const index = flags & P.DeviceFeatureFlags.MASK;
    const feature = Object.entries(P.DeviceFeature).find(([, v]) => v === index)?.[0] ?? String(index);
    return { ...msg, flags: `${flagNames(flags, table, P.DeviceFeatureFlags.MASK)}|feature=${feature}` };
  }
  return { ...msg, flags: flagNames(flags, table) };
}

export class Tracer {
  private readonly t0 = performance.now();
  private readonly sent = new Map<string, number>();
  /** one per session: times count from its creation (when the client connected) */
  constructor(
    private readonly emit: (r: TraceRecord) => void,
    readonly session = 1,
  ) {}

  record(msg: Message, dir: 'c2s' | 's2c', channel: 'main' | 'twin'): void {
    const h = msg.header;
    const isReply = (h.flags & MSG_TYPE_MASK) === MSG_TYPE_REPLY;
    const now = performance.now();
    const key = `${channel}:${isReply ? (dir === 'c2s' ? 's2c' : 'c2s') : dir}:${h.msgId}`;
    const r: TraceRecord = {
      t: Math.round((now - this.t0) * 1000) / 1000,
      session: this.session,
      dir,
      channel,
      id: h.msgId,
      command: P.commandName(h.command),
      type: isReply ? 'reply' : 'command',
      flags: [...(h.flags & FLAG_NO_REPLY ? ['no_reply'] : []), ...(h.flags & FLAG_ERROR ? ['error'] : [])],
      size: h.size,
      fds: msg.fds.length,
    };
    if (isReply) {
      const t = this.sent.get(key);
      if (t !== undefined) {
        r.rttUs = Math.round((now - t) * 1000);
        this.sent.delete(key);
      }
    } else if (!(h.flags & FLAG_NO_REPLY)) {
      this.sent.set(key, now);
    }
    if (h.flags & FLAG_ERROR) {
      r.error = errnoName(h.error);
    } else {
      try {
        r.message = jsonable(nameFlags(h.command, isReply, (isReply ? P.decodeReply(h.command, msg.payload) : P.decodeRequest(h.command, msg.payload)).msg));
      } catch (e) {
        r.decodeError = (e as Error).message;
      }
    }
    this.emit(r);
  }
}

export function formatRecord(r: TraceRecord): string {
  const arrow = r.dir === 'c2s' ? 'C->S' : 'S->C';
  const extra = r.error ? ` ERROR ${r.error}` : r.decodeError ? ` (undecodable: ${r.decodeError})` : ` ${JSON.stringify(r.message)}`;
  return `${r.session > 1 ? `s${r.session} ` : ''}${r.t.toFixed(3).padStart(10)}ms ${arrow}${r.channel === 'twin' ? '(twin)' : ''} #${r.id} ${r.command} ${r.type}${r.flags.length ? ' [' + r.flags.join(',') + ']' : ''} ${r.size}B${r.fds ? ` fds=${r.fds}` : ''}${r.rttUs !== undefined ? ` rtt=${r.rttUs}us` : ''}${extra}`;
}

/** Proxies one client connection to the server at `serverPath`. */
export function proxySession(clientFd: number, serverPath: string, tracer: Tracer, onEnd: () => void): void {
  const serverFd = connectPath(serverPath);
  const max = 64 * 1024 * 1024;
  // assigned below; the closures refer to each other
  // eslint-disable-next-line prefer-const
  let client!: Connection;
  // eslint-disable-next-line prefer-const
  let server!: Connection;
  const twins: Connection[] = [];
  let ended = false;
  const end = (): void => {
    if (ended) return;
    ended = true;
    client.close();
    server.close();
    for (const t of twins) t.close();
    onEnd();
  };
  const forward = (to: Connection, msg: Message, fds: number[]): void => {
    try {
      if (!to.isClosed) to.send(msg.header, msg.payload, fds);
    } catch {
      // the other side is gone (or refused the message): end the session, never crash the tracer
      end();
    } finally {
      closeFds(fds);
    }
  };
  /** one leg of the session: what arrives on `fd` is recorded and forwarded to `to()` as it is */
  const relay = (fd: number, dir: 'c2s' | 's2c', channel: 'main' | 'twin', to: () => Connection): Connection =>
    new Connection(fd, {
      maxMessageSize: max,
      onRaw: (m) => {
        tracer.record(m, dir, channel);
        forward(to(), m, takeFds(m));
      },
      onClose: end,
    });
  client = relay(clientFd, 'c2s', 'main', () => server);
  server = new Connection(serverFd, {
    maxMessageSize: max,
    onRaw: (msg) => {
      tracer.record(msg, 's2c', 'main');
      let fds = takeFds(msg);
      // a VERSION reply may carry the twin socket: interpose on it
      if (msg.header.command === P.Command.VERSION && (msg.header.flags & MSG_TYPE_MASK) === MSG_TYPE_REPLY && fds.length) {
        try {
          const rep = P.decodeVersionReply(msg.payload);
          const idx = rep.capabilities.twinSocket?.supported ? rep.capabilities.twinSocket.fdIndex : undefined;
          if (idx !== undefined && idx < fds.length) {
            const [ours, theirs] = native.socketpair();
            const serverTwinFd = fds[idx]!;
            fds = fds.slice();
            fds[idx] = theirs;
            // eslint-disable-next-line prefer-const
            let b!: Connection;
            const a = relay(serverTwinFd, 's2c', 'twin', () => b);
            b = relay(ours, 'c2s', 'twin', () => a);
            twins.push(a, b);
          }
        } catch {
          /* forward as is */
        }
      }
      forward(client, msg, fds);
    },
    onClose: end,
  });
}

export async function trace(argv: string[]): Promise<number> {
  const usage = 'usage: vfio-user trace --listen=PATH --connect=SERVER_PATH [--json] [--once]\n';
  const args = parseCommand(argv, usage, false, {
    listen: { type: 'string' },
    connect: { type: 'string' },
    json: { type: 'boolean' },
    once: { type: 'boolean' },
  });
  if (!args) return 0;
  const { values } = args;
  requireOptions(values, ['listen', 'connect'], '--listen=PATH and --connect=SERVER_PATH', usage);
  const emit = (r: TraceRecord): void => void process.stdout.write((values.json ? JSON.stringify(r) : formatRecord(r)) + '\n');
  let sessions = 0;
  let done: (n: number) => void = () => {};
  const finished = new Promise<number>((r) => (done = r));
  const onClient = (fd: number): void => {
    const tracer = new Tracer(emit, ++sessions);
    process.stderr.write(`trace: session ${tracer.session}: client connected (times count from here)\n`);
    try {
      proxySession(fd, values.connect, tracer, () => {
        process.stderr.write(`trace: session ${tracer.session} ended\n`);
        if (values.once) {
          listener.close();
          done(0);
        }
      });
    } catch (e) {
      native.close(fd);
      process.stderr.write(`trace: cannot reach the server at ${values.connect}: ${(e as Error).message}\n`);
    }
  };
  let listener: Listener;
  try {
    listener = new Listener(values.listen, onClient);
  } catch (e) {
    throw new Error(`cannot listen on ${values.listen}: ${(e as Error).message}`, { cause: e });
  }
  process.stderr.write(`trace: listening on ${values.listen}, forwarding to ${values.connect}\n`);
  const stop = (): void => {
    listener.close();
    done(0);
  };
  stopOnSignal(stop);
  return finished;
}
