/**
 * A message as the transport hands it over, and the ownership of the fds that came with it:
 * a handler takes them (takeFds) or the transport closes them when the handler returns.
 */
import { native } from '../native/index.js';
import type { Header } from '../protocol/header.js';

export interface Message {
  readonly header: Header;
  /**
   * The bytes after the header. For a reply this is a copy the requester may keep. For a
   * command (and in raw mode) it is a view into the receive buffer, valid only until the
   * handler returns: copy what you keep (see retain()). This keeps the hot path free of
   * allocations.
   */
  readonly payload: Uint8Array;
  /** fds that arrived with this message; take them with takeFds() to own them */
  fds: number[];
}

/** A copy of a command message that outlives its handler (payload copied, fds moved). */
export function retain(msg: Message): Message {
  return { header: msg.header, payload: msg.payload.slice(), fds: takeFds(msg) };
}

/** Takes ownership of a message's fds: the transport will no longer close them. */
export function takeFds(msg: Message): number[] {
  const fds = msg.fds;
  msg.fds = [];
  return fds;
}

export function closeFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      /* already closed */
    }
  }
}
