/**
 * The controller's placement decision, the pure part: from what it knows (the placement, pins, drains, who is alive),
 * which placement entries to write and which control keys to delete. balance() (placement.ts) picks the owners; this
 * adds the epochs, the previous owner, one move in flight per partition, and the epochs Redis reports as newer.
 * placement-writer.ts performs the writes (each a CAS on the revision given here).
 */
import type { Kind } from '../config.js';
import { isAlive, liveMembers, type Liveness } from './liveness.js';
import { balance, parsePlacementKey, placementKey, type Assignment } from './placement.js';

/** A placement entry as the controller knows it. */
export interface Placed {
  a: Assignment;
  rev: number;
  /** Local time this assignment was first seen. */
  at: number;
}

export interface PlacementView {
  kinds: readonly Kind[];
  partitions: number;
  /** Rendezvous seed; the same in every controller of a deployment. */
  seed: string;
  leaseMs: number;
  placement: ReadonlyMap<string, Placed>;
  /** placement key -> worker */
  pins: ReadonlyMap<string, string>;
  drains: ReadonlySet<string>;
  liveness: Liveness;
  /** Workers treated as absent (tests of a split brain). */
  ignore: (worker: string) => boolean;
}

export type PlacementAction =
  /** Write `next` under `key` by create (no `rev`) or by update on `rev`. */
  | { do: 'place'; key: string; next: Assignment; rev: number | undefined }
  /** Delete a control key (a pin or drain of a worker that has left). */
  | { do: 'forget'; key: string };

const alive = (v: PlacementView, worker: string, now: number) => !v.ignore(worker) && isAlive(v.liveness, worker, now, v.leaseMs);

/** Workers that may get partitions of `kind`: live, hosting it, not draining. */
export const eligible = (v: PlacementView, kind: Kind, now: number): string[] =>
  liveMembers(v.liveness, now, v.leaseMs)
    .filter((m) => !v.ignore(m.hb.id) && m.hb.kinds.includes(kind) && !m.hb.draining && !v.drains.has(m.hb.id))
    .map((m) => m.hb.id);

/** A move not yet done: its (live) new owner does not run the partition yet. Moved again only after a lease. */
function inFlight(v: PlacementView, key: string, cur: Placed, now: number): boolean {
  const parsed = parsePlacementKey(key)!;
  const hb = v.liveness.members.get(cur.a.worker)?.hb;
  return alive(v, cur.a.worker, now) && now - cur.at < v.leaseMs && !hb?.held.some((h) => h.k === parsed.kind && h.p === parsed.partition && h.e === cur.a.epoch);
}

export function decidePlacement(v: PlacementView, now: number): PlacementAction[] {
  const actions: PlacementAction[] = [];
  for (const kind of v.kinds) {
    const current: (string | undefined)[] = [];
    const kindPins = new Map<number, string>();
    for (let p = 0; p < v.partitions; p++) {
      const key = placementKey(kind, p);
      current.push(v.placement.get(key)?.a.worker);
      const pin = v.pins.get(key);
      if (pin !== undefined) kindPins.set(p, pin);
    }
    const desired = balance({ kind, partitions: v.partitions, current, eligible: eligible(v, kind, now), pins: kindPins, seed: v.seed });
    for (let p = 0; p < v.partitions; p++) {
      const key = placementKey(kind, p);
      const want = desired[p];
      if (want === undefined) continue;
      const cur = v.placement.get(key);
      // The owner found Redis at a newer epoch than the placement (e.g. the bucket was recreated): raise it.
      const stale = cur ? v.liveness.members.get(cur.a.worker)?.hb.stale[key] : undefined;
      const staleEpoch = stale !== undefined && stale >= cur!.a.epoch ? stale : 0;
      if (cur && cur.a.worker === want && staleEpoch === 0) continue;
      // One move at a time per partition: no thrashing while controllers (or operators) disagree.
      if (cur && staleEpoch === 0 && inFlight(v, key, cur, now)) continue;
      const next: Assignment = { worker: want, epoch: Math.max(cur?.a.epoch ?? 0, staleEpoch) + 1 };
      if (cur && cur.a.worker !== want && alive(v, cur.a.worker, now)) next.prev = cur.a.worker;
      actions.push({ do: 'place', key, next, rev: cur?.rev });
    }
  }
  // Pins and drains of workers that are gone are forgotten.
  for (const [key, worker] of v.pins) if (!v.liveness.members.has(worker)) actions.push({ do: 'forget', key: `pin.${key}` });
  for (const worker of v.drains) if (!v.liveness.members.has(worker)) actions.push({ do: 'forget', key: `drain.${worker}` });
  return actions;
}
