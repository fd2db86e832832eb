/**
 * A partition's reminders: the entries of its committed state that owe other partitions saga messages (the actor's
 * `reminders`: a coordinator's running sagas, a participant's ledger), each with when it sends what it owes again.
 *
 * What a commit sends leaves at once (runner.ts) and is neither stored nor acknowledged; an entry the commit changed
 * that may still owe something is due again `firstMs` later, then after twice as long each time up to `maxMs`, until a
 * later commit changes it so that it owes nothing (a saga that has heard every answer, a ledger entry forgotten).
 * What is due is worked out from the committed state at that moment, never from what was sent: a message lost on the
 * way, or sent by an owner that crashed before it left, is made again by whoever holds the state. A new owner starts
 * with every entry of its loaded state that may owe, due `startMs` after it took the partition.
 *
 * The courier sweeps the reminders of every partition its worker runs (datapath/courier.ts) and hurries them: what
 * is owed to a partition that moved, or whose new owner now runs it (`remind`'s `moved`); and a coordinator's, all of
 * them, when a worker comes up or this worker's connection moved (`soon`).
 */
import type { Outgoing, Reminders } from '../actors/types.js';
import type { Reminding } from './courier.js';
import { participantKey } from '../partitioning.js';

interface Due {
  at: number;
  /** Times sent again so far. */
  again: number;
}

export class PartitionReminders implements Reminding {
  private readonly due = new Map<string, Due>();

  constructor(
    private readonly r: Reminders,
    private readonly ctx: { partition: number; partitions: number },
    /** The committed entries of the reminders' table. */
    private readonly table: () => ReadonlyMap<string, unknown> | undefined,
    /** Sends what an entry owes. */
    private readonly send: (out: Outgoing[]) => void,
  ) {}

  /** Entries that may owe something. */
  get size(): number {
    return this.due.size;
  }

  /** The partition was taken: each loaded entry that may owe is due `startMs` from now. */
  loaded(now: number): void {
    this.due.clear();
    for (const [key, value] of this.table() ?? []) if (this.r.owes(value)) this.due.set(key, { at: now + this.r.startMs, again: 0 });
  }

  /** A commit changed these entries of the table (undefined: deleted) and sent what they owed: due `firstMs` from now. */
  committed(changes: ReadonlyMap<string, unknown> | undefined, now: number): void {
    if (!changes) return;
    for (const [key, value] of changes) {
      if (value === undefined || !this.r.owes(value)) this.due.delete(key);
      else this.due.set(key, { at: now + this.r.firstMs, again: 0 });
    }
  }

  /**
   * Sends what is due, from the committed state; an entry that owes nothing any more is dropped. With `moved`
   * (partitions that moved, or whose new owner now runs them, as participantKey): an entry that owes one of them
   * something is due now, whatever its time, a ledger's too.
   */
  remind(now: number, moved?: ReadonlySet<string>): void {
    let out: Outgoing[] | undefined;
    const table = this.table();
    for (const [key, d] of this.due) {
      if (d.at > now && !moved) continue;
      const value = table?.get(key);
      const owed = value === undefined || !this.r.owes(value) ? [] : this.r.owed(key, value, this.ctx);
      if (d.at > now && !owed.some((o) => moved!.has(participantKey(o.kind, o.partition)))) continue;
      if (owed.length === 0) {
        this.due.delete(key);
        continue;
      }
      (out ??= []).push(...owed);
      d.again++;
      d.at = now + Math.min(this.r.maxMs, this.r.firstMs * 2 ** d.again);
    }
    if (out) this.send(out);
  }

  /** Everything due now, for reminders that are `hurried` (a coordinator's); others keep their time. */
  soon(): void {
    if (!this.r.hurried) return;
    for (const d of this.due.values()) d.at = 0;
  }
}
