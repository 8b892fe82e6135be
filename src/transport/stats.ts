/**
 * Traffic counters, for benchmarks' per-operation breakdowns (a few increments per message).
 * Arrays are indexed by command number (commands past 63 count at 63).
 */
export class ConnectionStats {
  /** commands received from the peer */
  readonly commandsIn: number[] = new Array<number>(64).fill(0);
  /** requests we sent that wait for a reply */
  readonly requestsOut: number[] = new Array<number>(64).fill(0);
  /** the round trips of those requests, summed (microseconds, send to reply) */
  readonly rttUs: number[] = new Array<number>(64).fill(0);
  /** commands we sent with NO_REPLY */
  readonly postedOut: number[] = new Array<number>(64).fill(0);
  /** wake-ups of this connection (poll callbacks) */
  polls = 0;

  /** a plain copy (for JSON) */
  snapshot(): { commandsIn: number[]; requestsOut: number[]; rttUs: number[]; postedOut: number[]; polls: number } {
    return { commandsIn: [...this.commandsIn], requestsOut: [...this.requestsOut], rttUs: [...this.rttUs], postedOut: [...this.postedOut], polls: this.polls };
  }
}

/** the counters' index of a command */
export function slot(command: number): number {
  return command < 64 ? command : 63;
}
