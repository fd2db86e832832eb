/**
 * Commands a stream's new leader put under sequences this partition has read past.
 *
 * nats-server 2.9 can elect a stream leader that lacks the last messages the old leader stored and delivered (seen in
 * the NATS cut-off fault: the old leader, cut off, had delivered sequences 1785-1812; the new one lacked them). The
 * new leader then numbers the next commands it stores from where its own store ends, 1785 on: acknowledged to their
 * gateways, stored, and at sequences at or below this partition's cursor, so no consumer from cursor + 1 ever
 * delivers them. Each was a client's request that waited its deadline out and was answered 503, its command never
 * applied.
 *
 * So when the consumer is replaced (a new stream leader, a reconnect, a disagreement), the reader asks the leader
 * for the last messages it read, newest first, until the leader holds one of them (same sequence, subject and
 * message id): from there up to the cursor, every message the leader holds for the partition that the reader did
 * not read is queued again as `resequenced`. The batch loop applies such a message without moving the cursor, under
 * sequences from the partition's local count (batch-apply.ts), and passes it if its message id was applied already.
 * When the leader holds the newest message read, which is every time but after such an election, this costs one get.
 */
import type { MsgHdrs, StoredMsg } from 'nats';

export const MSG_ID_HEADER = 'Nats-Msg-Id';
/** How many of the last messages read a reader remembers: more than a stream leader is seen to lose (28). */
export const RECENT_READS_MAX = 128;

/** Sequence and message id of the last messages a reader queued, oldest first. */
export class RecentReads {
  private reads: { seq: number; id: string }[] = [];

  add(seq: number, headers: MsgHdrs | undefined): void {
    const id = headers?.get(MSG_ID_HEADER);
    if (!id) return;
    this.reads.push({ seq, id });
    if (this.reads.length >= 2 * RECENT_READS_MAX) this.reads = this.reads.slice(-RECENT_READS_MAX);
  }

  get list(): readonly { seq: number; id: string }[] {
    return this.reads.length > RECENT_READS_MAX ? this.reads.slice(-RECENT_READS_MAX) : this.reads;
  }

  get ids(): Set<string> {
    return new Set(this.reads.map((r) => r.id));
  }

  clear(): void {
    this.reads = [];
  }
}

/**
 * The leader's message at a sequence, or the partition's first one after a sequence (`next`); undefined when it holds
 * none. Throws when the leader does not answer.
 */
export type LeaderGet = (seq: number, next: boolean) => Promise<StoredMsg | undefined>;

/**
 * Undefined when the leader holds the newest of `recent` alike (same sequence, subject and message id); else the
 * sequence after which to look for commands the reader has not read: the newest of `recent` it holds alike, or,
 * with none alike, the one before the oldest. Reads at or below `floor` (the partition trimmed them from the stream:
 * no leader holds them) are not asked about.
 */
export async function divergedAfter(get: LeaderGet, subject: string, recent: readonly { seq: number; id: string }[], floor = 0): Promise<number | undefined> {
  const first = recent.findIndex((r) => r.seq > floor);
  if (first < 0) return undefined;
  for (let i = recent.length - 1; i >= first; i--) {
    const read = recent[i]!;
    const held = await get(read.seq, false);
    if (held && held.subject === subject && held.header?.get(MSG_ID_HEADER) === read.id) return i === recent.length - 1 ? undefined : read.seq;
  }
  return recent[first]!.seq - 1;
}

/**
 * The messages the leader holds for `subject` after `from` and at or below `upTo` that carry a message id not in
 * `read` (`found`; a message without an id is never among them: nothing would tell it from one applied already),
 * the last sequence looked at (`last`), and whether the leader holds one of the subject's messages past `upTo`
 * (`past`: it stores no more under sequences at or below the cursor).
 */
export async function unread(get: LeaderGet, from: number, upTo: number, read: ReadonlySet<string>): Promise<{ found: StoredMsg[]; last: number; past: boolean }> {
  const found: StoredMsg[] = [];
  let last = from;
  while (last < upTo) {
    const next = await get(last + 1, true);
    if (!next) return { found, last, past: false };
    if (next.seq > upTo) return { found, last, past: true };
    last = next.seq;
    const id = next.header?.get(MSG_ID_HEADER);
    if (id && !read.has(id)) found.push(next);
  }
  return { found, last, past: true };
}
