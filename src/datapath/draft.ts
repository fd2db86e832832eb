import type { StateView } from '../actors/types.js';

/** A partition's tables in memory: table -> key -> value. */
export type Tables = Map<string, Map<string, unknown>>;

/** Changed keys of one batch: table -> key -> new value, or undefined for a delete. */
export type Changes = Map<string, Map<string, unknown>>;

/**
 * Batch draft over a partition's live state: writes of the batch land here and reach the live maps (which reads
 * see) only after the batch has committed. Each command's writes are logged so that a command that throws is taken
 * back whole. Deleting a key the batch created and the live state does not hold leaves no trace (a saga's ledger
 * entry made and forgotten within one batch costs Redis nothing).
 *
 * A draft may sit on another batch's draft (`parent`) that is still being committed: the batch loop applies the next
 * batch while the previous one commits, and such a draft is committed only after its parent was.
 */
export class Draft implements StateView {
  readonly batch: Changes = new Map();
  /** Keys the batch changes. */
  size = 0;
  /** This command's writes: the table, the key, and what the draft held for it before (to take them back). */
  private readonly undo: [table: Map<string, unknown>, key: string, had: boolean, before: unknown][] = [];

  constructor(
    private readonly live: Tables,
    private parent?: Draft,
  ) {}

  /** The parent was committed and published into the live maps: read them directly from now on. */
  detach(): void {
    this.parent = undefined;
  }

  get<T>(table: string, key: string): T | undefined {
    const t = this.batch.get(table);
    if (t !== undefined && t.has(key)) return t.get(key) as T | undefined;
    return this.parent ? this.parent.get<T>(table, key) : (this.live.get(table)?.get(key) as T | undefined);
  }

  /** The key exists below this draft: committed, or set by the parent batch. */
  private below(table: string, key: string): boolean {
    return this.parent ? this.parent.get(table, key) !== undefined : this.live.get(table)!.has(key);
  }

  set(table: string, key: string, value: unknown): void {
    if (value === undefined) throw new Error('invariant: undefined value; use delete');
    this.write(table, key, value);
  }

  delete(table: string, key: string): void {
    this.write(table, key, undefined);
  }

  *entries<T>(table: string): Iterable<[string, T]> {
    const batch = this.batch.get(table);
    for (const [k, v] of this.parent ? this.parent.entries<T>(table) : ((this.live.get(table) ?? []) as Iterable<[string, T]>)) if (!batch?.has(k)) yield [k, v];
    if (batch) for (const [k, v] of batch) if (v !== undefined) yield [k, v as T];
  }

  keepCommand(): void {
    this.undo.length = 0;
  }

  dropCommand(): void {
    for (let i = this.undo.length - 1; i >= 0; i--) {
      const [t, key, had, before] = this.undo[i]!;
      const has = t.has(key);
      if (had) {
        if (!has) this.size++;
        t.set(key, before);
      } else if (has) {
        t.delete(key);
        this.size--;
      }
    }
    this.undo.length = 0;
  }

  /** Into the live state; a draft on a parent only after the parent's own publish. */
  publish(): void {
    for (const [table, changes] of this.batch) {
      const target = this.live.get(table)!;
      for (const [k, v] of changes) {
        if (v === undefined) target.delete(k);
        else target.set(k, v);
      }
    }
  }

  private write(table: string, key: string, value: unknown): void {
    let t = this.batch.get(table);
    if (!t) {
      if (!this.live.has(table)) throw new Error(`invariant: unknown table ${table}`);
      this.batch.set(table, (t = new Map()));
    }
    const had = t.has(key);
    this.undo.push([t, key, had, t.get(key)]);
    if (value === undefined && !this.below(table, key)) {
      // Nothing below to delete: drop what the batch wrote, if anything.
      if (had) t.delete(key), this.size--;
      return;
    }
    if (!had) this.size++;
    t.set(key, value);
  }
}

