import { randomUUID } from 'node:crypto';
import type { Log } from '../log.js';
import type { StreamMessage } from './participant.js';
import type { Attempts, PartitionStore } from './store.js';

/**
 * Poison accounting: starts at one cursor (counted in Redis, datapath/store.ts `attempt`) after which the message
 * at cursor + 1 is taken in a batch alone; and attempts of it alone after which it is quarantined, passed as a dead
 * letter without being decoded. What counts is a process that took the message and did not come back:
 * - a start is recorded when its runner first takes a message from its stream, before applying it, not when it
 *   starts (an owner that loses the partition before it reads anything took nothing);
 * - a commit that moves the cursor counts its owner as one start at the new cursor (it goes on to take the next
 *   message, and may die of it);
 * - an owner that leaves alive (fenced by a newer one, or stopped) withdraws what it counted, as long as no later
 *   owner has counted since: it did not die of the message;
 * - a start by the same runner after a failure it saw itself (Redis or NATS away) does not count, a start by another
 *   process (this one died) or after a batch that threw does.
 * So a message that kills its worker takes its partition down twice at most: once in a batch, once alone; and a
 * partition that changes hands quickly, its owners fenced before they commit, does not turn a good message into a
 * dead letter.
 */
export const POISON_STARTS_MAX = 2;
export const POISON_SOLOS_MAX = 1;

/** How a start takes the message after its cursor, by the attempts at it so far. */
export type PoisonVerdict = { take: 'as-usual' } | { take: 'alone'; seq: number } | { take: 'quarantined'; seq: number; why: string };

export function poisonVerdict(cursor: number, attempts: Attempts): PoisonVerdict {
  const seq = cursor + 1;
  if (attempts.solos >= POISON_SOLOS_MAX) {
    const why = `stream message ${seq} was taken ${attempts.starts - 1} times without being committed (${attempts.solos} of them alone): a poison message, quarantined without being decoded`;
    return { take: 'quarantined', seq, why };
  }
  if (attempts.starts >= POISON_STARTS_MAX) return { take: 'alone', seq };
  return { take: 'as-usual' };
}

/** One runner's side of the poison accounting: counts its starts and attempts alone in Redis, fenced by its epoch. */
export class PoisonWatch {
  /** Who records the attempts of this runner (see POISON_STARTS_MAX). */
  private readonly token = randomUUID();
  /** Its last batch threw: its next start counts although this runner saw the failure. */
  private faulted = false;
  /** Started, and its start not recorded yet: its first take of a stream message records it (record). */
  private unrecorded = false;
  /** What this runner counted, to withdraw when it leaves alive: at which cursor, under which token ('' for a commit's). */
  private counted: { cursor: number; token: string } | null = null;
  /** The stream message to take alone (0: none), and the one to quarantine, with why. */
  private suspectSeq = 0;
  private quarantine: { seq: number; why: string } | null = null;

  constructor(
    private readonly store: PartitionStore,
    private readonly log: Log,
  ) {}

  /** A batch of the partition threw while applying. */
  threw(): void {
    this.faulted = true;
  }

  /** The runner (re)started: its start is recorded when it first takes a stream message. */
  started(): void {
    this.unrecorded = true;
    this.suspectSeq = 0;
    this.quarantine = null;
  }

  /** With `queued` stream messages in line: must the start be recorded before any is taken? */
  mustRecord(queued: number): boolean {
    return this.unrecorded && queued > 0;
  }

  /** Records the start at `cursor` against the message after it, and decides from the count how to take it; false when fenced. */
  async record(epoch: number, cursor: number): Promise<boolean> {
    const attempts = await this.store.attempt(epoch, cursor, this.token, this.faulted ? 'fault' : 'start');
    if (!attempts) return false;
    this.faulted = false;
    this.unrecorded = false;
    this.counted = { cursor, token: this.token };
    const verdict = poisonVerdict(cursor, attempts);
    this.suspectSeq = verdict.take === 'alone' ? verdict.seq : 0;
    this.quarantine = verdict.take === 'quarantined' ? { seq: verdict.seq, why: verdict.why } : null;
    if (verdict.take === 'quarantined') this.log.error(`passing ${verdict.why}`, { seq: verdict.seq, ...attempts });
    else if (verdict.take === 'alone') this.log.warn('the message after the cursor was not committed by the last starts: it is taken alone', { seq: verdict.seq, ...attempts });
    return true;
  }

  /** A commit moved the cursor: Redis counts this runner as one start at it (store-scripts.ts COMMIT_LUA). */
  moved(cursor: number): void {
    this.counted = { cursor, token: '' };
  }

  /** The message first in line (`first`) is the one to take alone. */
  suspect(first: StreamMessage | undefined): boolean {
    if (this.suspectSeq === 0 || first?.resequenced) return false; // one read again is not the message after the cursor
    if (first && first.seq > this.suspectSeq) this.suspectSeq = 0; // not in the stream any more (trimmed): nothing to take alone
    return first?.seq === this.suspectSeq;
  }

  /** Records the attempt of the suspect alone; false when fenced. */
  async takeAlone(epoch: number): Promise<boolean> {
    const seq = this.suspectSeq;
    this.suspectSeq = 0;
    return (await this.store.attempt(epoch, seq - 1, this.token, 'solo')) !== null;
  }

  quarantined(seq: number): string | undefined {
    return this.quarantine?.seq === seq ? this.quarantine.why : undefined;
  }

  /**
   * The runner let go alive at `cursor` (fenced, or stopped): it withdraws what it counted there, unless a later owner
   * counted since. Not fenced by the epoch (a fenced runner is the one that must withdraw), but only ever its own count.
   */
  async left(cursor: number): Promise<void> {
    const counted = this.counted;
    this.counted = null;
    if (counted?.cursor !== cursor) return;
    try {
      await this.store.withdraw(cursor, counted.token);
    } catch (err) {
      this.log.debug('could not withdraw the attempt of a runner that let go (Redis away): it stays counted', { err: (err as Error).message });
    }
  }
}
