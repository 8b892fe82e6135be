/**
 * Message transport over a UNIX stream socket: framing, fd ownership, reply matching.
 *
 * Reading: one recvmsg takes as many bytes as are queued (many messages per read). Linux
 * hands SCM_RIGHTS fds to the recvmsg that first touches the segment which carried them and
 * ends that read inside the segment, so the fds of a read belong to the message that holds
 * the read's last byte. A reply gets its own copy of the payload; a command's payload is a
 * view into the receive buffer, valid while its handler runs (retain() keeps one).
 * A command handler owns the fds it takes with `takeFds()`; whatever is left when the handler
 * returns is closed. Replies' fds go to the requester only when it asked (`expectFds`).
 *
 * Writing: a message is written with one sendmsg when the socket takes it; otherwise the rest
 * is queued (fds duplicated so callers may close theirs) and flushed when the socket becomes
 * writable. `send` reports backpressure by returning false past the high-water mark and
 * `drained()` resolves when the queue is empty. With `pauseReadsWhenBacklogged` (servers),
 * a peer that does not read its replies stops being read until it does: memory stays bounded.
 *
 * Closing: a hang-up, an error or close() ends the connection exactly once: pending requests
 * reject with VFU_DISCONNECTED, queued fds are closed, `onClose` runs once.
 *
 * What stands alone is in its own file: the message and its fds (message.ts), reply matching
 * by id with timeouts and tombstones (requests.ts), the write backlog (write-queue.ts), the
 * traffic counters (stats.ts). The rest stays one idea in one file although it passes 600
 * lines: reading, writing and closing share the socket, its poller, the receive and staging
 * buffers and the fds in flight, and each path must see the others' state at once (a hang-up
 * found while writing fails the reads' requests; a backlog pauses reads; a read batch corks
 * the replies it causes). Split, every part would reach into one object anyway.
 */
import { native, type NativePoller } from '../native/index.js';
import {
  HEADER_SIZE,
  FLAG_ERROR,
  FLAG_NO_REPLY,
  MSG_TYPE_REPLY,
  MSG_TYPE_MASK,
  MSG_TYPE_COMMAND,
  commandHeaderProblem,
  type Header,
} from '../protocol/header.js';
import { VfioUserError, Errno, errnoName } from '../errors.js';
import { closeFds, takeFds, retain, type Message } from './message.js';
import { ConnectionStats, slot } from './stats.js';
import { RequestTable, type Pending } from './requests.js';
import { WriteQueue } from './write-queue.js';

export { type Message, retain, takeFds, closeFds } from './message.js';
export { ConnectionStats } from './stats.js';

export interface ConnectionOptions {
  /** largest message accepted or sent, header included */
  maxMessageSize?: number;
  /** most fds accepted with one message (more: the connection fails, they are closed) */
  maxFdsPerMessage?: number;
  /** queued bytes beyond which send() returns false */
  highWaterMark?: number;
  /** stop reading while more than highWaterMark bytes wait to be written (default false) */
  pauseReadsWhenBacklogged?: boolean;
  /**
   * Stop answering the peer while more than highWaterMark bytes wait to be written: commands
   * that arrive meanwhile are held, in order, and run once the queue has drained; replies to
   * our own requests are still read. Past maxHeldCommands (default 4096) or maxHeldBytes
   * (default 64 MiB) held, the connection fails: a peer that floods commands and never reads
   * the answers. This is the client's brake; unlike pausing reads it cannot deadlock against
   * a server that pauses its own reads (default false).
   */
  holdCommandsWhenBacklogged?: boolean;
  maxHeldCommands?: number;
  maxHeldBytes?: number;
  /** a command arrived. Take fds synchronously (before any await) or they are closed. */
  onCommand?: (msg: Message, conn: Connection) => void;
  /**
   * Raw mode (proxies, tracers): every message, command or reply, goes here with no reply
   * matching. Take fds synchronously or they are closed.
   */
  onRaw?: (msg: Message, conn: Connection) => void;
  /**
   * A lane for hot commands without allocating a Message (servers: REGION_READ/WRITE, DMA_MAP,
   * DMA_UNMAP). Called for a complete command with no flags, no error field and no fd or
   * exactly one (`fd`, else -1), with its bytes at buf[at, at+size) (header included; valid
   * during the call only). Returns true when it handled the command (answering it, e.g. with
   * replyFill), and then owns `fd`; false to leave it, fd included, untouched, to onCommand.
   */
  onFastCommand?: (command: number, msgId: number, buf: Uint8Array, at: number, size: number, fd: number) => boolean;
  /** the connection ended; err is undefined for a clean hang-up or local close */
  onClose?: (err: VfioUserError | undefined, conn: Connection) => void;
  /** a command with a bad header (reserved flags, ERROR bit, error field, unknown type) was answered with EINVAL */
  onBadHeader?: (header: Header, problem: string) => void;
  /**
   * How long the id of a timed-out request stays reserved for its late reply (ms, default
   * 60000), and how many such ids at most (default 4096, the oldest go first). A late reply
   * after that matches no request and fails the connection; without a bound, a peer that never
   * answers would use up all 65536 ids.
   */
  tombstoneMs?: number;
  maxTombstones?: number;
  /**
   * The serving fast path (issue 15, default false): once a batch of messages is handled and
   * the socket is empty, wait for the next message right here (native waitReadable(): poll on
   * the socket and on the event loop's own epoll fd) instead of returning to the event loop,
   * as long as the loop has nothing else to do. nextTicks and microtasks run before each wait,
   * as they would on return to the loop; timers, other fds, signals, immediates and worker
   * messages send the connection back to the loop. Saves a whole event-loop round per message.
   */
  fastPath?: boolean;
  /**
   * With the fast path: poll the socket without sleeping for up to this many microseconds
   * before sleeping (default 0). Waking a thread whose CPU went idle costs tens of
   * microseconds on a virtual machine; a message that arrives while we spin costs none of it.
   * Adaptive: after a spin that caught nothing, the next SPIN_SKIP waits sleep at once, so a
   * peer that is slower than the spin costs little CPU; idle costs none.
   */
  spinUs?: number;
}

/**
 * Runs nextTicks and microtasks now, as Node does when a callback returns to the event loop
 * (process._tickCallback: present in Node 20-24, only documentation-deprecated). Without it
 * the fast path is off.
 */
const tickCallback: unknown = Reflect.get(process, '_tickCallback');
const runTicks = typeof tickCallback === 'function' ? (tickCallback as () => void) : undefined;

/** waits that sleep at once after a spin that caught nothing (see spinUs) */
const SPIN_SKIP = 16;

/** read rounds before a connection goes back to the event loop (fairness between fds) */
const ROUNDS = 64;
/** with the fast path: a round per message at depth 1, so more of them */
const FAST_ROUNDS = 1024;

export interface RequestOptions {
  fds?: readonly number[] | undefined;
  /** keep fds that come with the reply (caller then owns them) */
  expectFds?: boolean | undefined;
  /** milliseconds before the request fails with VFU_TIMEOUT (default: none) */
  timeout?: number | undefined;
}

interface FdRecord {
  pos: number; // absolute stream position of the last byte of the read that brought them
  fds: number[];
}

const DEFAULT_MAX_MESSAGE = 16 + 1048576 + 4096;
/** staging buffer for small outgoing messages (see Connection.out) */
const OUT_SIZE = 65536;

function writeHeader(dv: DataView, h: Header, size: number): void {
  dv.setUint16(0, h.msgId, true);
  dv.setUint16(2, h.command, true);
  dv.setUint32(4, size, true);
  dv.setUint32(8, h.flags, true);
  dv.setUint32(12, h.error, true);
}

/**
 * The fast path's exchange() block (native/fastpath.h): int32s — fds received (count, then up
 * to 253), what was sent, how it waited, then the call's inputs — and from byte
 * IO.OUT_AT the staging buffer `out`.
 */
/** the receive buffer starts in io, after out, with this many bytes (it grows into an ArrayBuffer of its own) */
const IO = { SENT: 254, WAITED: 255, FD: 256, OUT_LEN: 257, OFFSET: 258, LENGTH: 259, WAIT: 260, RESULT: 261, YIELD: 262, YIELDED: 263, OUT_AT: 2048 } as const;
const RBUF_AT = IO.OUT_AT + OUT_SIZE;
const RBUF_SIZE = 65536;

/**
 * The reason a peer gave with an error reply. The spec's error replies carry only the header;
 * a peer that adds a short printable text gets it shown, anything else is ignored.
 */
function reasonIn(payload: Uint8Array): string {
  if (payload.length === 0 || payload.length > 1024) return '';
  const text = new TextDecoder('utf-8', { fatal: false }).decode(payload).replace(/\0+$/, '');
  return text && /^[\x20-\x7e\t]+$/.test(text) ? ` (${text})` : '';
}

export class Connection {
  readonly fd: number;
  private readonly poller: NativePoller;
  private readonly maxMessageSize: number;
  private readonly maxFds: number;
  private readonly highWaterMark: number;
  private readonly pauseReads: boolean;
  private readonly holdCommands: boolean;
  private readonly maxHeldCommands: number;
  private readonly maxHeldBytes: number;
  private held: Message[] = [];
  private heldBytes = 0;
  onCommand: ((msg: Message, conn: Connection) => void) | undefined;
  onClose: ((err: VfioUserError | undefined, conn: Connection) => void) | undefined;
  private readonly onRaw: ((msg: Message, conn: Connection) => void) | undefined;
  private readonly onFastCommand: ((command: number, msgId: number, buf: Uint8Array, at: number, size: number, fd: number) => boolean) | undefined;
  private readonly onBadHeader: ((header: Header, problem: string) => void) | undefined;
  /** traffic counters */
  readonly stats = new ConnectionStats();
  private readonly fastPath: boolean;
  private readonly spinUs: number;
  /** waits left before the next spin (see spinUs) */
  private spinSkip = 0;
  /** exchanges left before the next yield after a reply (see native exchange's io[YIELD]) */
  private yieldSkip = 0;
  /** messages read after a fast-path wait, without a round through the event loop (a statistic) */
  fastWaits = 0;

  private rbuf: Uint8Array;
  private rstart = 0; // first unconsumed byte in rbuf
  private rend = 0; // end of valid data in rbuf
  private rbase = 0; // absolute stream position of rbuf[0]
  /** the exchange() block: fdsOut and out are views of it */
  private readonly io = new ArrayBuffer(IO.OUT_AT + OUT_SIZE + RBUF_SIZE);
  private readonly fdsOut = new Int32Array(this.io, 0, IO.OUT_AT / 4);
  /** the receive buffer's ArrayBuffer once it has outgrown its place in io (undefined before) */
  private rbufAB: ArrayBufferLike | undefined;
  /** where rbuf starts in its ArrayBuffer */
  private rbufAt = RBUF_AT;
  private fdRecords: FdRecord[] = [];

  private wqueue = new WriteQueue();
  private wqueued = 0;
  private drainWaiters: (() => void)[] = [];
  private watching: number;

  private readonly requests: RequestTable;
  private closed = false;
  private readonly hdr = new Uint8Array(HEADER_SIZE);
  private readonly hdrView = new DataView(this.hdr.buffer);
  /**
   * Small messages without fds are assembled here (outLen bytes staged) and written with one
   * send(). While a batch of received messages is handled (`corked`), the replies accumulate
   * and go out together when the batch ends: one system call for 16 pipelined replies.
   */
  private readonly out = new Uint8Array(this.io, IO.OUT_AT, OUT_SIZE);
  private readonly outView = new DataView(this.io, IO.OUT_AT, OUT_SIZE);
  private outLen = 0;
  private corked = false;
  /** cork() holds staged messages until the current job's nextTick (see cork) */
  private tickCorked = false;
  private uncorkPasses = 0;
  private readonly uncorkTick = (): void => {
    // a second pass: what the nextTicks queued after the cork send (a device's own batching
    // at the job's end) goes in the same send
    if (this.uncorkPasses++ === 0) {
      process.nextTick(this.uncorkTick);
      return;
    }
    this.uncorkPasses = 0;
    this.tickCorked = false;
    if (!this.corked) this.flushOut(); // a failure closed the connection (requests fail)
  };
  private readonly iov1: Uint8Array[] = [this.out];

  constructor(fd: number, opts: ConnectionOptions = {}) {
    this.fd = fd;
    this.maxMessageSize = opts.maxMessageSize ?? DEFAULT_MAX_MESSAGE;
    this.maxFds = opts.maxFdsPerMessage ?? 253;
    this.highWaterMark = opts.highWaterMark ?? 4 * 1024 * 1024;
    this.pauseReads = opts.pauseReadsWhenBacklogged ?? false;
    this.holdCommands = opts.holdCommandsWhenBacklogged ?? false;
    this.maxHeldCommands = opts.maxHeldCommands ?? 4096;
    this.maxHeldBytes = opts.maxHeldBytes ?? 64 * 1024 * 1024;
    this.requests = new RequestTable(opts.tombstoneMs ?? 60000, opts.maxTombstones ?? 4096);
    this.onCommand = opts.onCommand;
    this.onClose = opts.onClose;
    this.onRaw = opts.onRaw;
    this.onFastCommand = opts.onRaw || opts.holdCommandsWhenBacklogged ? undefined : opts.onFastCommand;
    this.onBadHeader = opts.onBadHeader;
    this.fastPath = (opts.fastPath ?? false) && runTicks !== undefined;
    this.spinUs = opts.spinUs ?? 0;
    this.rbuf = new Uint8Array(this.io, RBUF_AT, Math.min(RBUF_SIZE, this.maxMessageSize));
    this.fdsOut[IO.FD] = fd;
    this.fdsOut[IO.YIELD] = this.spinUs > 0 ? 1 : 0; // yielding is a (very short) spin
    this.poller = native.createPoller(fd, (status, events) => this.onPoll(status, events));
    this.poller.ownFd(); // closed by fail(), or at teardown of a thread that died first
    this.watching = native.POLL_READABLE | native.POLL_DISCONNECT;
    this.poller.start(this.watching);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** number of requests awaiting a reply (timed-out ones whose id is still reserved included) */
  get inFlight(): number {
    return this.requests.size;
  }

  /** ids of timed-out requests still reserved for a late reply */
  get tombstones(): number {
    return this.requests.tombstones;
  }

  /** bytes accepted by send() but not yet written to the socket */
  get queuedBytes(): number {
    return this.wqueued;
  }

  /** Lets the process exit while this connection is idle. */
  unref(): void {
    this.poller.unref();
  }

  ref(): void {
    this.poller.ref();
  }

  // ---------------------------------------------------------------- reading

  private onPoll(status: number, events: number): void {
    if (this.closed) return;
    this.stats.polls++;
    if (status < 0) {
      // libuv reports POLLERR as a failed poll (UV_EBADF) and stops watching. On a UNIX socket
      // that is usually ECONNRESET: the peer closed with our data unread. What it sent before
      // is still queued for us: read it (recvmsg then reports the reset as a clean hang-up).
      this.readAvailable(true);
      if (!this.closed) this.fail(new VfioUserError('VFU_DISCONNECTED', `socket poll failed (status ${status})`, -status));
      return;
    }
    if (events & native.POLL_WRITABLE) {
      this.flush();
      if (this.held.length > 0) this.runHeld(); // commands held while we were backlogged
    }
    if (this.closed) return;
    // the peer has hung up: read to the end now, so the hang-up is seen in this same turn
    // (a server deciding whether a newcomer must wait or be told it is busy relies on it)
    if (events & (native.POLL_READABLE | native.POLL_DISCONNECT)) this.readAvailable((events & native.POLL_DISCONNECT) !== 0);
  }

  /** drain: read until EAGAIN/EOF even after a short read (the poll will not fire again) */
  private readAvailable(drain = false): void {
    if (!this.fastPath) {
      this.readRounds(drain, ROUNDS);
      return;
    }
    // The fast path keeps the replies of a batch staged until the next read: one native call
    // (exchange) sends them and reads the next message.
    const corked = this.corked;
    this.corked = true;
    try {
      this.readRounds(drain, FAST_ROUNDS);
    } finally {
      this.corked = corked;
      if (!corked) this.flushOut();
    }
  }

  private readRounds(drain: boolean, maxRounds: number): void {
    const fast = this.fastPath;
    let wait = -1; // the fast path: spin this many µs and sleep in the next exchange (-1: do not)
    // Bounded so one busy peer cannot starve the event loop.
    for (let rounds = 0; rounds < maxRounds && !this.closed && !this.backlogged; rounds++) {
      if (this.rstart === this.rend) {
        this.rbase += this.rstart;
        this.rstart = this.rend = 0;
      }
      if (this.rend === this.rbuf.length) this.makeRoom();
      let n: number;
      const space = this.rbuf.length - this.rend;
      try {
        n = fast ? this.exchange(space, wait) : native.recvmsg(this.fd, this.rbuf, this.rend, space, this.fdsOut);
      } catch (e) {
        const err = e as { code?: string; errno?: number; message?: string };
        if (err.code === 'ECTRUNC') {
          this.fail(new VfioUserError('VFU_CTRUNC', 'ancillary data truncated: fds lost', Errno.EMSGSIZE));
        } else if (err.code === 'ECONNRESET') {
          this.fail(undefined);
        } else {
          this.fail(new VfioUserError('VFU_DISCONNECTED', `recvmsg: ${err.message ?? String(e)}`, err.errno ?? 0));
        }
        return;
      }
      if (wait >= 0) {
        // this exchange waited (see waitHere)
        const how = this.fdsOut[IO.WAITED]!;
        if (wait > 0 && how !== 2) this.spinSkip = SPIN_SKIP;
        wait = -1;
        if (n > 0) this.fastWaits++;
        else if (n === -1 && how === 0) return; // the event loop has something to do
      }
      if (n === -2) continue; // exchange: the replies did not all go (queued), nothing read
      if (n < 0) {
        // EAGAIN. On the fast path, wait in the next exchange unless the event loop has
        // something to do.
        if (fast) {
          wait = this.waitHere();
          if (wait !== -1) {
            if (wait === -2) wait = -1;
            continue;
          }
        }
        return;
      }
      const nfds = this.fdsOut[0]!;
      if (n === 0) {
        if (nfds > 0) closeFds(Array.from(this.fdsOut.subarray(1, 1 + nfds)));
        this.fail(undefined);
        return;
      }
      this.rend += n;
      if (nfds > 0) {
        this.fdRecords.push({ pos: this.rbase + this.rend - 1, fds: Array.from(this.fdsOut.subarray(1, 1 + nfds)) });
        this.fdsOut[0] = 0;
      }
      this.parse();
      // A short read drained the socket: skip the recvmsg that would only say EAGAIN (the
      // poll is level-triggered, so anything that arrives later wakes us again). On the fast
      // path, read again: on one CPU the peer has often sent its next message by now.
      if (n < space && !drain && !fast) return;
    }
  }

  /**
   * The fast path's round trip, one native call (exchange, native/fastpath.c): writes the
   * staged replies, reads into rbuf at rend and, when nothing came and wait >= 0, waits (see
   * waitHere) and reads. The bytes read, -1 when none (or the loop has work), -2 when nothing
   * was read because the replies did not all go (the rest is queued) or the send failed (the
   * connection is closed). Throws what recvmsg throws.
   */
  private exchange(space: number, wait: number): number {
    if (this.wqueue.length > 0) this.flushOut(); // behind what is queued
    const io = this.fdsOut;
    const len = this.outLen;
    this.outLen = 0;
    io[IO.OUT_LEN] = len;
    io[IO.OFFSET] = this.rbufAt + this.rend;
    io[IO.LENGTH] = space;
    io[IO.WAIT] = wait;
    let n: number;
    try {
      // the receive buffer in io, the usual case: one ArrayBuffer for Node-API to unwrap
      if (this.rbufAB === undefined) native.exchange(this.io);
      else native.exchange(this.io, this.rbufAB);
      n = io[IO.RESULT]!;
    } catch (e) {
      if ((e as { syscall?: string }).syscall !== 'send') throw e;
      this.sendFailed(e);
      return -2;
    }
    if (this.yieldSkip > 0) {
      if (--this.yieldSkip === 0) io[IO.YIELD] = 1;
    } else if (io[IO.YIELDED] === 2) {
      // the peer is not on our CPU (or slower than a yield): stop yielding for a while
      this.yieldSkip = SPIN_SKIP;
      io[IO.YIELD] = 0;
    }
    if (len > 0) {
      const sent = io[IO.SENT]!;
      if (sent !== len) this.queue(this.out.slice(sent > 0 ? sent : 0, len), null);
      else if (this.drainWaiters.length > 0) this.wakeDrainWaiters();
    }
    return n;
  }

  /**
   * Before the fast path waits: runs what returning to the event loop would run first
   * (nextTicks, microtasks), then says how to go on: -1 back to the event loop, -2 read again
   * at once (what ran staged replies: the next exchange sends them), else the microseconds
   * to spin before sleeping in the next exchange.
   */
  private waitHere(): number {
    runTicks!();
    if (this.closed || this.wqueue.length > 0 || this.held.length > 0 || this.backlogged) return -1;
    if (this.outLen > 0) return -2;
    if (this.spinUs <= 0) return 0;
    if (this.spinSkip > 0) {
      this.spinSkip--;
      return 0;
    }
    return this.spinUs;
  }

  /** Ensures space after rend: compacts, or grows up to maxMessageSize. */
  private makeRoom(): void {
    if (this.rstart > 0) {
      this.rbuf.copyWithin(0, this.rstart, this.rend);
      this.rbase += this.rstart;
      this.rend -= this.rstart;
      this.rstart = 0;
      if (this.rend < this.rbuf.length) return;
    }
    const grown = new Uint8Array(Math.min(this.maxMessageSize, this.rbuf.length * 2));
    if (grown.length <= this.rbuf.length) return; // cannot happen: a message is never larger than maxMessageSize
    grown.set(this.rbuf.subarray(0, this.rend));
    this.rbuf = grown;
    this.rbufAB = grown.buffer;
    this.rbufAt = 0;
  }

  private parse(): void {
    // replies to the messages of this read are written together when it is handled
    const corked = this.corked;
    this.corked = true;
    try {
      this.parseMessages();
    } finally {
      this.corked = corked;
      if (!corked) this.flushOut();
    }
  }

  private parseMessages(): void {
    while (!this.closed && this.rend - this.rstart >= HEADER_SIZE) {
      // the header, read in place
      const b = this.rbuf;
      const o = this.rstart;
      const size = (b[o + 4]! | (b[o + 5]! << 8) | (b[o + 6]! << 16) | (b[o + 7]! << 24)) >>> 0;
      const flags = (b[o + 8]! | (b[o + 9]! << 8) | (b[o + 10]! << 16) | (b[o + 11]! << 24)) >>> 0;
      const type = flags & MSG_TYPE_MASK;
      if (size < HEADER_SIZE) {
        // the only header fault that breaks framing: nothing after it can be found
        this.fail(new VfioUserError('VFU_PROTOCOL', `bad header: message size ${size} is smaller than the header`, Errno.EINVAL));
        return;
      }
      if (
        flags === 0 &&
        this.onFastCommand !== undefined &&
        size <= this.rend - o &&
        size <= this.maxMessageSize &&
        (b[o + 12]! | b[o + 13]! | b[o + 14]! | b[o + 15]!) === 0
      ) {
        // a plain command, complete, without fds or with exactly one (a DMA_MAP's, which came
        // in a read of its own: the record is the only one and lies inside the message): the
        // hot lane may take it as it lies
        const fd = this.fdRecords.length === 0 ? -1 : this.oneFdIn(this.rbase + o, this.rbase + o + size);
        if (fd !== -2) {
          const command = b[o + 2]! | (b[o + 3]! << 8);
          this.rstart = o + size;
          if (this.onFastCommand(command, b[o]! | (b[o + 1]! << 8), b, o, size, fd)) {
            if (fd >= 0) this.fdRecords.length = 0; // the hot lane owns it now
            this.stats.commandsIn[slot(command)]!++;
            continue;
          }
          this.rstart = o;
        }
      }
      const header: Header = {
        msgId: b[o]! | (b[o + 1]! << 8),
        command: b[o + 2]! | (b[o + 3]! << 8),
        size,
        flags,
        error: (b[o + 12]! | (b[o + 13]! << 8) | (b[o + 14]! << 16) | (b[o + 15]! << 24)) >>> 0,
      };
      if (header.size > this.maxMessageSize) {
        this.fail(
          new VfioUserError(
            'VFU_MESSAGE_TOO_LARGE',
            `message of ${header.size} bytes exceeds the maximum ${this.maxMessageSize}`,
            Errno.EMSGSIZE,
          ),
        );
        return;
      }
      if (this.rend - this.rstart < header.size) {
        if (this.rstart + header.size > this.rbuf.length) this.makeRoomFor(header.size);
        return;
      }
      const msgStart = this.rbase + this.rstart;
      const msgEnd = msgStart + header.size;
      const payload =
        type === MSG_TYPE_REPLY && !this.onRaw
          ? this.rbuf.slice(this.rstart + HEADER_SIZE, this.rstart + header.size)
          : this.rbuf.subarray(this.rstart + HEADER_SIZE, this.rstart + header.size);
      this.rstart += header.size;
      let fds: number[] = [];
      if (this.fdRecords.length > 0) {
        fds = this.collectFds(msgStart, msgEnd);
        if (fds.length > this.maxFds) {
          closeFds(fds);
          this.fail(new VfioUserError('VFU_TOO_MANY_FDS', `${fds.length} fds with one message (max ${this.maxFds})`));
          return;
        }
      }
      this.dispatch({ header, payload, fds });
    }
  }

  private makeRoomFor(size: number): void {
    if (this.rstart > 0) {
      this.rbuf.copyWithin(0, this.rstart, this.rend);
      this.rbase += this.rstart;
      this.rend -= this.rstart;
      this.rstart = 0;
    }
    if (size > this.rbuf.length) {
      let len = this.rbuf.length;
      while (len < size) len *= 2;
      const grown = new Uint8Array(Math.min(len, this.maxMessageSize));
      grown.set(this.rbuf.subarray(0, this.rend));
      this.rbuf = grown;
      this.rbufAB = grown.buffer;
      this.rbufAt = 0;
    }
  }

  /** The fd when the only fd record is one fd inside [start, end), else -2. */
  private oneFdIn(start: number, end: number): number {
    const r = this.fdRecords.length === 1 ? this.fdRecords[0]! : undefined;
    return r !== undefined && r.fds.length === 1 && r.pos >= start && r.pos < end ? r.fds[0]! : -2;
  }

  private collectFds(start: number, end: number): number[] {
    const out: number[] = [];
    let keep = 0;
    for (const rec of this.fdRecords) {
      if (rec.pos < start) {
        // belongs to no message (cannot happen with a conforming sender): refuse to leak them
        closeFds(rec.fds);
      } else if (rec.pos < end) {
        out.push(...rec.fds);
      } else {
        this.fdRecords[keep++] = rec;
      }
    }
    this.fdRecords.length = keep;
    return out;
  }

  private dispatch(msg: Message): void {
    if (this.onRaw) {
      try {
        this.onRaw(msg, this);
      } finally {
        if (msg.fds.length) closeFds(takeFds(msg));
      }
      return;
    }
    const type = msg.header.flags & MSG_TYPE_MASK;
    if (type === MSG_TYPE_REPLY) {
      // reserved flag bits in a reply are ignored
      const p = this.requests.take(msg.header.msgId, msg.header.command);
      if (!p) {
        closeFds(msg.fds);
        this.fail(
          new VfioUserError(
            'VFU_PROTOCOL',
            `reply id ${msg.header.msgId} command ${msg.header.command} matches no request`,
            Errno.EPROTO,
          ),
        );
        return;
      }
      this.stats.rttUs[slot(p.command)]! += (performance.now() - p.sent) * 1000;
      if (!p.expectFds && msg.fds.length) {
        closeFds(msg.fds);
        msg.fds = [];
      }
      if (msg.header.flags & FLAG_ERROR) {
        closeFds(takeFds(msg));
        const errno = msg.header.error;
        p.reject(new VfioUserError('VFU_REMOTE_ERROR', `peer failed the request: ${errnoName(errno)}${reasonIn(msg.payload)}`, errno));
      } else {
        p.resolve(msg);
      }
      return;
    }
    if (this.holdCommands && (this.held.length > 0 || this.wqueued > this.highWaterMark)) {
      this.hold(msg);
      return;
    }
    this.runCommand(msg);
  }

  /** Keeps a command for later (see holdCommandsWhenBacklogged), or fails a flooding peer. */
  private hold(msg: Message): void {
    if (this.held.length >= this.maxHeldCommands || this.heldBytes + msg.payload.length > this.maxHeldBytes) {
      closeFds(takeFds(msg));
      this.fail(
        new VfioUserError(
          'VFU_PROTOCOL',
          `the peer sent more than ${this.held.length} commands (${this.heldBytes} bytes) without reading our replies`,
          Errno.EPROTO,
        ),
      );
      return;
    }
    this.heldBytes += msg.payload.length;
    this.held.push(retain(msg));
  }

  /** Runs held commands while the write queue is below the high-water mark. */
  private runHeld(): void {
    while (this.held.length > 0 && !this.closed && this.wqueued <= this.highWaterMark) {
      const msg = this.held.shift()!;
      this.heldBytes -= msg.payload.length;
      try {
        this.runCommand(msg);
      } finally {
        if (msg.fds.length) closeFds(takeFds(msg));
      }
    }
  }

  private runCommand(msg: Message): void {
    this.stats.commandsIn[slot(msg.header.command)]!++;
    const problem = commandHeaderProblem(msg.header);
    if (problem !== undefined || !this.onCommand) {
      // framing is intact: answer (unless no reply is wanted) and go on
      closeFds(takeFds(msg));
      if (problem !== undefined) this.onBadHeader?.(msg.header, problem);
      if (!(msg.header.flags & FLAG_NO_REPLY)) this.replyError(msg.header, problem !== undefined ? Errno.EINVAL : Errno.ENOSYS);
      return;
    }
    try {
      this.onCommand(msg, this);
    } finally {
      if (msg.fds.length) closeFds(takeFds(msg));
    }
  }

  // ---------------------------------------------------------------- writing

  /**
   * Sends one message. Returns false when the write queue is above the high-water mark
   * (the message is still queued; wait for drained()). Throws VFU_DISCONNECTED when closed.
   */
  send(header: Header, payload: Uint8Array | null, fds?: readonly number[] | null): boolean {
    if (this.closed) throw new VfioUserError('VFU_DISCONNECTED', 'connection is closed', Errno.ENOTCONN);
    const plen = payload ? payload.length : 0;
    const size = HEADER_SIZE + plen;
    if (size > this.maxMessageSize) {
      throw new VfioUserError('VFU_MESSAGE_TOO_LARGE', `message of ${size} bytes exceeds the maximum ${this.maxMessageSize}`, Errno.EMSGSIZE);
    }
    const fdList = fds && fds.length ? (fds as number[]) : null;
    if (!fdList && size <= OUT_SIZE) {
      // staged, and written now unless a batch is being handled (then at its end)
      const at = this.stage(size);
      this.writeHeaderAt(at, header, size);
      if (plen) this.out.set(payload!, at + HEADER_SIZE);
      this.outLen = at + size;
      if (!this.corked && !this.tickCorked) {
        const r = this.flushOut();
        if (r !== undefined) throw r;
      }
      return this.wqueued <= this.highWaterMark;
    }
    // a message with fds (or a large one) goes alone, after what is staged
    const staged = this.flushOut();
    if (staged !== undefined) throw staged;
    let bufs: Uint8Array[];
    if (size <= OUT_SIZE) {
      writeHeader(this.outView, header, size);
      if (plen) this.out.set(payload!, HEADER_SIZE);
      this.iov1[0] = this.out.subarray(0, size);
      bufs = this.iov1;
    } else {
      writeHeader(this.hdrView, header, size);
      bufs = [this.hdr, payload!];
    }
    let sent = 0;
    if (this.wqueue.length === 0) {
      const r = this.trySend(bufs, fdList);
      if (typeof r !== 'number') throw r;
      sent = r;
      if (sent === size) return true;
      if (sent < 0) sent = 0;
    }
    // queue the rest; fds go along only if nothing was sent yet
    const whole = new Uint8Array(size);
    whole.set(bufs[0]!, 0);
    if (bufs.length > 1 && plen) whole.set(payload!, HEADER_SIZE);
    const rest = sent ? whole.subarray(sent) : whole;
    const ownFds = sent === 0 && fdList ? fdList.map((fd) => native.dup(fd)) : null;
    this.queue(rest, ownFds);
    return this.wqueued <= this.highWaterMark;
  }

  /** Makes room for a message of size bytes (size <= OUT_SIZE) in out; returns its offset. */
  private stage(size: number): number {
    if (this.outLen + size > OUT_SIZE) {
      const r = this.flushOut();
      if (r !== undefined) throw r;
    }
    return this.outLen;
  }

  private writeHeaderAt(at: number, h: Header, size: number): void {
    const dv = this.outView;
    dv.setUint16(at, h.msgId, true);
    dv.setUint16(at + 2, h.command, true);
    dv.setUint32(at + 4, size, true);
    dv.setUint32(at + 8, h.flags, true);
    dv.setUint32(at + 12, h.error, true);
  }

  /**
   * Writes what is staged in out with one send() (behind anything queued), queueing what the
   * socket does not take. Returns the error when the socket failed (the connection is then
   * closed and what was staged dropped).
   */
  private flushOut(): VfioUserError | undefined {
    const len = this.outLen;
    if (len === 0) return undefined;
    this.outLen = 0;
    if (this.closed) return undefined;
    let sent = 0;
    if (this.wqueue.length === 0) {
      try {
        sent = native.send(this.fd, this.out, 0, len);
      } catch (e) {
        return this.sendFailed(e);
      }
      if (sent === len) {
        if (this.drainWaiters.length > 0) this.wakeDrainWaiters();
        return undefined;
      }
      if (sent < 0) sent = 0;
    }
    this.queue(this.out.slice(sent, len), null);
    return undefined;
  }

  private wakeDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }

  private queue(data: Uint8Array, fds: number[] | null): void {
    this.wqueue.push({ data, fds });
    this.wqueued += data.length;
    this.watch(true);
  }

  private get backlogged(): boolean {
    return this.pauseReads && this.wqueued > this.highWaterMark;
  }

  /**
   * One sendmsg: bytes written (-1 when the socket is full), or — when the socket failed —
   * the error, after closing the connection (a peer hang-up closes it cleanly).
   */
  private trySend(bufs: Uint8Array[], fds: number[] | null): number | VfioUserError {
    try {
      return native.sendmsg(this.fd, bufs, fds);
    } catch (e) {
      return this.sendFailed(e);
    }
  }

  /** A failed send closes the connection (cleanly when the peer hung up); returns the error. */
  private sendFailed(e: unknown): VfioUserError {
    const err = e as { code?: string; errno?: number; message?: string };
    const ve = new VfioUserError('VFU_DISCONNECTED', `sendmsg: ${err.message ?? String(e)}`, err.errno ?? 0);
    this.fail(err.code === 'EPIPE' || err.code === 'ECONNRESET' ? undefined : ve);
    return ve;
  }

  private watch(writable: boolean): void {
    const want = (this.backlogged ? 0 : native.POLL_READABLE) | native.POLL_DISCONNECT | (writable ? native.POLL_WRITABLE : 0);
    if (want !== this.watching) {
      this.watching = want;
      this.poller.start(want);
    }
  }

  private flush(): void {
    while (this.wqueue.length && !this.closed) {
      const w = this.wqueue.at(0);
      // gather queued messages into one sendmsg (up to 64 iovecs). A message with fds goes
      // alone: the receiver gives a read's fds to the message holding its last byte.
      const iov: Uint8Array[] = [w.data];
      for (let i = 1; !w.fds && i < this.wqueue.length && iov.length < 64; i++) {
        const q = this.wqueue.at(i);
        if (q.fds) break;
        iov.push(q.data);
      }
      const n = this.trySend(iov, w.fds);
      if (typeof n !== 'number') return;
      if (n < 0) return;
      if (w.fds) {
        closeFds(w.fds);
        w.fds = null;
      }
      this.wqueued -= n;
      // drop what was written, entry by entry
      let left = n;
      while (left > 0) {
        const q = this.wqueue.at(0);
        if (left < q.data.length) {
          q.data = q.data.subarray(left);
          left = 0;
          break;
        }
        left -= q.data.length;
        this.wqueue.shift();
      }
      if (this.wqueue.length && this.wqueue.at(0).data.length && n < iov.reduce((a, b) => a + b.length, 0)) {
        this.watch(true); // the socket is full; resumes reading once below the high-water mark
        return;
      }
    }
    if (this.wqueue.length === 0) {
      this.watch(false);
      this.wakeDrainWaiters();
    }
  }

  /**
   * Holds the small messages sent from now on staged until the current job ends (after the
   * synchronous code, the microtasks and the nextTicks queued so far: two nextTick passes),
   * then writes them with one send: a device that issues several requests in a row
   * (DMA_WRITEs of data and completion, DMA_READs of a batch) pays one syscall, not one each. Inside a read batch (see
   * readAvailable) the batch's own cork already does this, and its end sends them.
   */
  cork(): void {
    if (this.tickCorked || this.closed) return;
    this.tickCorked = true;
    process.nextTick(this.uncorkTick);
  }

  /** Resolves once every queued byte has been written (immediately if none). */
  drained(): Promise<void> {
    if (!this.corked) this.flushOut();
    if ((this.wqueue.length === 0 && this.outLen === 0) || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Sends a command and resolves with its reply (rejects with VFU_REMOTE_ERROR on an error reply). */
  request(command: number, payload: Uint8Array | null, opts: RequestOptions = {}): Promise<Message> {
    if (this.closed) return Promise.reject(new VfioUserError('VFU_DISCONNECTED', 'connection is closed', Errno.ENOTCONN));
    let id: number;
    try {
      id = this.requests.allocId();
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<Message>((resolve, reject) => {
      const p: Pending = { resolve, reject, command, expectFds: opts.expectFds ?? false, timer: undefined, sent: performance.now() };
      this.stats.requestsOut[slot(command)]!++;
      this.requests.add(id, p, opts.timeout);
      try {
        this.send({ msgId: id, command, size: 0, flags: MSG_TYPE_COMMAND, error: 0 }, payload, opts.fds);
      } catch (e) {
        this.requests.remove(id, p);
        reject(e);
      }
    });
  }

  /** Sends a command with NO_REPLY set. Returns send()'s backpressure signal. */
  post(command: number, payload: Uint8Array | null, fds?: readonly number[]): boolean {
    const id = this.requests.postId();
    this.stats.postedOut[slot(command)]!++;
    return this.send({ msgId: id, command, size: 0, flags: MSG_TYPE_COMMAND | FLAG_NO_REPLY, error: 0 }, payload, fds);
  }

  /**
   * Replies to a command (nothing is sent when the command had NO_REPLY). Unlike send(), the
   * reply methods never throw because the peer is gone: the connection closes (onClose runs)
   * and the reply is dropped, so a handler answering a vanished peer cannot take its caller
   * (the poll callback) down.
   */
  reply(req: Header, payload: Uint8Array | null, fds?: readonly number[]): boolean {
    if (req.flags & FLAG_NO_REPLY || this.closed) return true;
    return this.unlessGone(() => this.send({ msgId: req.msgId, command: req.command, size: 0, flags: MSG_TYPE_REPLY, error: 0 }, payload, fds));
  }

  private unlessGone(write: () => boolean): boolean {
    try {
      return write();
    } catch (e) {
      if (this.closed && e instanceof VfioUserError && e.code === 'VFU_DISCONNECTED') return true;
      throw e;
    }
  }

  /**
   * Replies with a payload of at most maxPayload bytes that `fill` writes in place at `at` of
   * the transport's scratch buffer (returning its length): no allocation on the hot path.
   * Larger payloads fall back to an allocated buffer.
   */
  replyWith(req: Header, maxPayload: number, fill: (buf: Uint8Array, dv: DataView, at: number) => number): boolean {
    if (req.flags & FLAG_NO_REPLY || this.closed) return true;
    return this.replyFill(req.msgId, req.command, maxPayload, fill);
  }

  /** replyWith() for a command known by its id and number only (see onFastCommand). */
  replyFill(msgId: number, command: number, maxPayload: number, fill: (buf: Uint8Array, dv: DataView, at: number) => number): boolean {
    if (this.closed) return true;
    if (HEADER_SIZE + maxPayload > OUT_SIZE) {
      const buf = new Uint8Array(maxPayload);
      const n = fill(buf, new DataView(buf.buffer), 0);
      return this.reply({ msgId, command, size: 0, flags: MSG_TYPE_COMMAND, error: 0 }, buf.subarray(0, n));
    }
    const at = this.unlessGoneAt(HEADER_SIZE + maxPayload);
    if (at < 0) return true; // the peer is gone: the reply is dropped (see reply())
    const n = fill(this.out, this.outView, at + HEADER_SIZE);
    const size = HEADER_SIZE + n;
    const dv = this.outView;
    dv.setUint16(at, msgId, true);
    dv.setUint16(at + 2, command, true);
    dv.setUint32(at + 4, size, true);
    dv.setUint32(at + 8, MSG_TYPE_REPLY, true);
    dv.setUint32(at + 12, 0, true);
    this.outLen = at + size;
    if (!this.corked) this.flushOut(); // a failure closed the connection: the reply is dropped
    return this.wqueued <= this.highWaterMark;
  }

  /** stage() for a reply: -1 when making room found the peer gone. */
  private unlessGoneAt(size: number): number {
    if (this.outLen + size > OUT_SIZE && this.flushOut() !== undefined) return -1;
    return this.closed ? -1 : this.outLen;
  }

  /** Sends an error reply carrying errno (nothing when the command had NO_REPLY). */
  replyError(req: Header, errno: number): boolean {
    if (req.flags & FLAG_NO_REPLY || this.closed) return true;
    return this.unlessGone(() =>
      this.send({ msgId: req.msgId, command: req.command, size: 0, flags: MSG_TYPE_REPLY | FLAG_ERROR, error: errno }, null),
    );
  }

  // ---------------------------------------------------------------- closing

  /** Closes the connection (idempotent). Pending requests fail with VFU_DISCONNECTED. */
  close(): void {
    this.fail(undefined);
  }

  private fail(err: VfioUserError | undefined): void {
    if (this.closed) return;
    if (this.outLen > 0 && this.wqueue.length === 0) {
      // replies staged before the end (e.g. a handler answered, then closed): best effort
      const len = this.outLen;
      this.outLen = 0;
      try {
        native.send(this.fd, this.out, 0, len);
      } catch {
        /* the peer is gone */
      }
    }
    this.outLen = 0;
    this.closed = true;
    this.poller.close();
    try {
      native.close(this.fd);
    } catch {
      /* ignore */
    }
    for (const rec of this.fdRecords) closeFds(rec.fds);
    this.fdRecords = [];
    for (const m of this.held) closeFds(m.fds);
    this.held = [];
    this.heldBytes = 0;
    for (const w of this.wqueue.items()) if (w.fds) closeFds(w.fds);
    this.wqueue = new WriteQueue();
    this.wqueued = 0;
    const why = err ? `: ${err.message}` : '';
    this.requests.rejectAll(() => new VfioUserError('VFU_DISCONNECTED', `connection closed before the reply${why}`, Errno.ENOTCONN, { cause: err }));
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
    this.onClose?.(err, this);
  }
}
