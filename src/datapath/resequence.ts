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
import { setTimeout as delay } from 'node:timers/promises';
import { MSG_ID_HEADER } from '../protocol.js';

/** How many of the last messages read a reader remembers: more than a stream leader is seen to lose (28). */
export const RECENT_READS_MAX = 128;
/**
 * How long a reader that found its stream's leader lacking messages it read looks again at those sequences for
 * commands the leader stores there: until the leader holds one of its commands past its cursor, and at most a request
 * deadline, after which their gateways have answered 503 anyway.
 */
const RESEQUENCED_WATCH_MAX_MS = 30_000;
/** How often it looks again meanwhile. */
const RESEQUENCED_WATCH_INTERVAL_MS = 500;
/** Most looks of one reader at once (one per replacement of its consumer). */
const REREADS_MAX = 4;

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

export interface RereadDeps {
  get: LeaderGet;
  subject: string;
  /** The reader reads its stream: when not, the look ends. */
  active: () => boolean;
  /** Message ids of the messages the reader has read (never queued again). */
  readIds: () => ReadonlySet<string>;
  /** Queues what was found under sequences at or below `cursor`. */
  queue: (found: StoredMsg[], cursor: number) => void;
}

/**
 * A reader's part of this: remembers its last reads (`read`), and looks after each replacement of its consumer
 * (`look`), at most REREADS_MAX at once.
 */
export class Rereads {
  private readonly recent = new RecentReads();
  private looking = 0;

  constructor(private readonly deps: Omit<RereadDeps, 'readIds'> & { trimmed?: (() => number) | undefined }) {}

  /** A message queued. */
  read(seq: number, headers: MsgHdrs | undefined): void {
    this.recent.add(seq, headers);
  }

  /** The reader starts again from a cursor: what it read before is not compared. */
  clear(): void {
    this.recent.clear();
  }

  /** Its consumer was replaced with the reader at `cursor`: one look (reread), comparing the reads of now. */
  look(cursor: number): void {
    if (this.looking >= REREADS_MAX || !this.deps.active()) return;
    this.looking++;
    const deps: RereadDeps = {
      ...this.deps,
      readIds: () => this.recent.ids,
      queue: (found, at) => {
        for (const m of found) this.recent.add(m.seq, m.header);
        this.deps.queue(found, at);
      },
    };
    void reread(deps, [...this.recent.list], cursor, this.deps.trimmed?.() ?? 0).finally(() => this.looking--);
  }
}

/**
 * One look, after a consumer was replaced: asks whether the leader holds `read` (the last messages read, up to
 * `cursor`, those at or below `floor` trimmed) alike; if not, queues what it holds from the newest alike up to the
 * cursor that was not read, and looks again each RESEQUENCED_WATCH_INTERVAL_MS until it holds one of the partition's
 * commands past the cursor (a new leader may store them a moment after its election), at most
 * RESEQUENCED_WATCH_MAX_MS. It compares the reads of when it began: it may get an answer only once the stream has a
 * leader again, and by then the reader may have read on from that leader, which holds those alike.
 */
export async function reread(deps: RereadDeps, read: readonly { seq: number; id: string }[], cursor: number, floor: number): Promise<void> {
  const until = Date.now() + RESEQUENCED_WATCH_MAX_MS;
  let from = -1;
  while (deps.active() && Date.now() < until) {
    try {
      if (from < 0) {
        const diverged = await divergedAfter(deps.get, deps.subject, read, floor);
        if (diverged === undefined) return; // the leader holds what was read
        from = diverged;
      }
      const { found, last, past } = await unread(deps.get, from, cursor, deps.readIds());
      from = last;
      if (found.length > 0) deps.queue(found, cursor);
      if (past) return;
    } catch {
      // no leader to ask now: again below
    }
    await delay(RESEQUENCED_WATCH_INTERVAL_MS);
  }
}
