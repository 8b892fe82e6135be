/**
 * Live migration of a device between two servers, driven by two clients:
 *
 *   source: RUNNING -> PRE_COPY, read rounds until a round moves little data,
 *           -> STOP_COPY, read the rest, -> STOP
 *   destination: -> RESUMING, write everything read from the source, -> STOP -> RUNNING
 *
 * The destination gets the same DMA maps (first) and the source client's IRQ handles (once
 * the source has stopped), so the device continues where it stopped and interrupt listeners
 * keep working. Downtime is the time from the source leaving PRE_COPY (device
 * stopped) to the destination running.
 */
import { VfioUserError, Errno } from '../errors.js';
import * as P from '../protocol/index.js';

const S = { STOP: 1, RUNNING: 2, STOP_COPY: 3, RESUMING: 4, PRE_COPY: 6 } as const;

export interface MigrateOptions {
  /** bytes per MIG_DATA_READ (default: the smaller max_data_xfer_size, at most 1 MiB) */
  chunk?: number | undefined;
  /** stop pre-copy once a round moves at most this many bytes (default 64 KiB) */
  threshold?: number | undefined;
  /** most pre-copy rounds (default 16) */
  maxRounds?: number | undefined;
  /** skip pre-copy even when the source supports it */
  noPrecopy?: boolean | undefined;
  /**
   * Give the destination the source client's DMA maps (before migrating) and move its IRQ
   * handles to the destination (after the state is written, before it runs). Default true.
   */
  takeOver?: boolean | undefined;
  /**
   * Called once pre-copy is over, just before the source stops (a VMM pauses its vCPUs here).
   * Downtime is counted from this call.
   */
  beforeStopCopy?: (() => Promise<void> | void) | undefined;
  /** called between pre-copy rounds (e.g. to let the workload run) */
  betweenRounds?: ((round: number) => Promise<void> | void) | undefined;
  progress?: ((p: MigrationProgress) => void) | undefined;
}

/**
 * What migrate() needs of each side: a VfioUserClient, or anything else that speaks the
 * migration commands to a server (the switchover proxy's sessions do).
 */
export interface MigrationEndpoint {
  readonly maxDataXferSize: number;
  migrationFlags(): Promise<bigint>;
  setDeviceState(state: number): Promise<number>;
  migDataRead(size: number): Promise<Uint8Array>;
  migDataWrite(data: Uint8Array): Promise<void>;
  reset(): Promise<void>;
}

/** A destination that can take over the source side's DMA maps and interrupt fds. */
export interface MigrationDestination<S extends MigrationEndpoint> extends MigrationEndpoint {
  adoptMaps(src: S): Promise<number>;
  adoptIrqs(src: S): Promise<number>;
}

export interface MigrationProgress {
  phase: 'precopy' | 'stop-copy' | 'resume' | 'done';
  round: number;
  bytes: number;
  roundBytes: number;
}

export interface MigrationResult {
  rounds: number;
  precopyBytes: number;
  stopCopyBytes: number;
  totalBytes: number;
  downtimeMs: number;
  totalMs: number;
}

async function drain(src: MigrationEndpoint, dst: MigrationEndpoint, chunk: number): Promise<number> {
  let moved = 0;
  for (;;) {
    const data = await src.migDataRead(chunk);
    if (data.length) {
      await dst.migDataWrite(data);
      moved += data.length;
    }
    if (data.length < chunk) return moved;
  }
}

/** Moves the device state from the source server to the destination server. */
export async function migrate<S extends MigrationEndpoint>(src: S, dst: MigrationDestination<S>, opts: MigrateOptions = {}): Promise<MigrationResult> {
  const t0 = performance.now();
  const chunk = opts.chunk ?? Math.min(1 << 20, src.maxDataXferSize, dst.maxDataXferSize);
  const threshold = opts.threshold ?? 64 * 1024;
  const maxRounds = opts.maxRounds ?? 16;
  const flags = await src.migrationFlags();
  if (!(flags & BigInt(P.MigrationFlags.STOP_COPY))) throw new VfioUserError('VFU_BAD_STATE', 'source does not support migration', Errno.ENOTSUP);
  const dflags = await dst.migrationFlags();
  if (!(dflags & BigInt(P.MigrationFlags.STOP_COPY))) throw new VfioUserError('VFU_BAD_STATE', 'destination does not support migration', Errno.ENOTSUP);
  const precopy = !opts.noPrecopy && (flags & BigInt(P.MigrationFlags.PRE_COPY)) !== 0n;

  const takeOver = opts.takeOver ?? true;
  if (takeOver) await dst.adoptMaps(src); // the same guest memory, shared with both servers
  await dst.setDeviceState(S.RESUMING);
  let rounds = 0;
  let precopyBytes = 0;
  let stopCopyBytes = 0;
  let tStop = 0;
  try {
    if (precopy) {
      await src.setDeviceState(S.PRE_COPY);
      for (;;) {
        rounds++;
        const n = await drain(src, dst, chunk);
        precopyBytes += n;
        opts.progress?.({ phase: 'precopy', round: rounds, bytes: precopyBytes, roundBytes: n });
        if (n <= threshold || rounds >= maxRounds) break;
        await opts.betweenRounds?.(rounds);
      }
    }
    tStop = performance.now();
    await opts.beforeStopCopy?.();
    await src.setDeviceState(S.STOP_COPY);
    stopCopyBytes = await drain(src, dst, chunk);
    opts.progress?.({ phase: 'stop-copy', round: rounds, bytes: precopyBytes + stopCopyBytes, roundBytes: stopCopyBytes });
    await src.setDeviceState(S.STOP);
    if (takeOver) await dst.adoptIrqs(src); // interrupts now come from the destination
    await dst.setDeviceState(S.STOP); // the destination validates and applies here
    await dst.setDeviceState(S.RUNNING);
  } catch (e) {
    // leave the source running, the destination reset
    await src.setDeviceState(S.RUNNING).catch(() => src.reset().catch(() => {}));
    await dst.reset().catch(() => {});
    throw e;
  }
  const t1 = performance.now();
  opts.progress?.({ phase: 'done', round: rounds, bytes: precopyBytes + stopCopyBytes, roundBytes: 0 });
  return {
    rounds,
    precopyBytes,
    stopCopyBytes,
    totalBytes: precopyBytes + stopCopyBytes,
    downtimeMs: t1 - tStop,
    totalMs: t1 - t0,
  };
}
