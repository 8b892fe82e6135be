/**
 * Connecting the CLI's client commands (info, bench, migrate) to a server, with errors that
 * say which socket and, when the peer answered but not as a vfio-user server, what it may be.
 */
import { VfioUserClient, type ClientOptions } from '../client/client.js';
import { VfioUserError } from '../errors.js';
import { UsageError } from './factory.js';

/** Parses `--timeout=SECONDS` (decimals allowed, 0 < s <= 3600) into milliseconds. */
export function parseTimeout(v: string | undefined, defaultMs: number): number {
  if (v === undefined) return defaultMs;
  const s = Number(/^\d+(\.\d+)?$/.test(v.trim()) ? v : NaN);
  if (!(s > 0 && s <= 3600)) throw new UsageError(`--timeout: '${v}' is not a number of seconds in (0, 3600]`);
  return Math.max(1, Math.round(s * 1000));
}

/** VfioUserClient.connect, with the path in every error and a hint for a peer that is not a vfio-user server. */
export async function connectServer(path: string, opts: ClientOptions & { timeout: number }): Promise<VfioUserClient> {
  try {
    return await VfioUserClient.connect(path, { negotiateTimeout: opts.timeout, ...opts });
  } catch (e) {
    const err = e as VfioUserError;
    const msg = err.message ?? String(e);
    // could not connect at all, or a vfio-user server that said no (busy): already clear
    if (/cannot connect to/.test(msg) || err.code === 'VFU_REMOTE_ERROR') throw e;
    const what = err.code === 'VFU_TIMEOUT' ? `no answer to VERSION within ${opts.timeout / 1000} s` : `its answer to VERSION is not vfio-user (${msg})`;
    throw new VfioUserError(err.code ?? 'VFU_PROTOCOL', `${path}: ${what}; is it a vfio-user server? (a vhost-user or another UNIX socket answers differently; --timeout=SECONDS waits longer)`, err.errno, { cause: e });
  }
}
