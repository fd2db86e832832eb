/**
 * Saga commands that may leave late (an actor's `deferrable`: a coordinator's forgets), kept by the courier per
 * destination partition until it sends that partition something else (they go along, in the same message) or until
 * its next sweep, merged by the sender's actor (`mergeOutgoing`) across batches and partitions.
 *
 * Why: with a saga across workers, every participant partition heard one forget per checkout that crossed to it, each
 * a message, a turn and a partition batch of its own on the participant's worker (and, for a participant on the
 * coordinator's worker, a partition batch that the forget alone added to a later batch). Kept back for one sweep, a
 * partition's forgets arrive as one command. Nothing is lost by waiting: what a forget lets go of is a ledger entry of
 * a saga that has ended, and a forget that never comes (a crash of this worker meanwhile) is brought by the entry's
 * own answer, re-sent until it is forgotten (actors/saga.ts, ledgerOwes).
 */
import type { Outgoing } from '../actors/types.js';
import type { Kind } from '../config.js';
import { participantKey } from '../partitioning.js';
import { parcelsOf } from './batch-owed.js';
import type { Keeper, Parcel } from './courier.js';

type Merge = ((cmds: unknown[]) => unknown[]) | undefined;

interface Held {
  kind: Kind;
  partition: number;
  /** Commands by the merge of the actor that sent them (one actor sends deferrable commands today: order). */
  byMerge: Map<Merge, unknown[]>;
}

export class Later implements Keeper {
  private readonly held = new Map<string, Held>();

  /** Partitions something is kept for. */
  get size(): number {
    return this.held.size;
  }

  /** Keeps commands of a committed batch, made by an actor that merges with `merge`. */
  add(out: readonly Outgoing[], merge: Merge): void {
    for (const { kind, partition, cmd } of out) {
      const k = participantKey(kind, partition);
      let h = this.held.get(k);
      if (!h) this.held.set(k, (h = { kind, partition, byMerge: new Map() }));
      let cmds = h.byMerge.get(merge);
      if (!cmds) h.byMerge.set(merge, (cmds = []));
      cmds.push(cmd);
    }
  }

  /** What is kept for this partition, as parcels, and kept no longer. */
  take(kind: Kind, partition: number): Parcel[] {
    const k = participantKey(kind, partition);
    const h = this.held.get(k);
    if (!h) return [];
    this.held.delete(k);
    return parcelsOfHeld(h);
  }

  /** Everything kept, as parcels. */
  takeAll(): Parcel[] {
    const parcels: Parcel[] = [];
    for (const h of this.held.values()) parcels.push(...parcelsOfHeld(h));
    this.held.clear();
    return parcels;
  }
}

function parcelsOfHeld({ kind, partition, byMerge }: Held): Parcel[] {
  const parcels: Parcel[] = [];
  for (const [merge, cmds] of byMerge) parcels.push(...parcelsOf([{ kind, partition, cmds }], merge));
  return parcels;
}
