/**
 * The dynamic worker's placement follower: from the placement bucket's watch, where every partition runs (where the
 * courier sends saga parcels) and what is assigned to this worker (stepped by the reconciler); from the other
 * workers' heartbeats, which partitions just let go or started running elsewhere. worker-rules.ts decides when an
 * assignment is new (seeAssignment) and which partitions started running (newlyServing).
 */
import type { KvEntry } from 'nats';
import type { Clock } from '../clock.js';
import type { Courier } from '../datapath/courier.js';
import type { Fault } from '../faults.js';
import { kvValues, parsePlacementKey, placementKey, type Heartbeat } from './placement.js';
import type { HostedPartition, Reconciler } from './reconciler.js';
import type { Locate } from './worker-kit.js';
import { newlyServing, seeAssignment } from './worker-rules.js';

export interface FollowerOptions {
  self: string;
  clock: Clock;
  fault: Fault;
  courier: Courier;
  hosted: ReadonlyMap<string, HostedPartition>;
  /** Epochs Redis holds above the placement's, by key: dropped when a new assignment arrives. */
  stale: Map<string, number>;
  reconciler: Reconciler;
  /** The last heartbeat of a worker, alive or not. */
  heartbeatOf: (worker: string) => Heartbeat | undefined;
}

export interface PlacementFollower {
  /** The worker of a partition, as the placement says: where saga parcels go. */
  locate: Locate;
  onPlacement(entry: KvEntry): void;
  /** A worker's heartbeat changed. */
  onHeartbeat(worker: string): void;
}

export function createPlacementFollower(o: FollowerOptions): PlacementFollower {
  const { self, clock, courier, hosted, stale, reconciler } = o;
  /** The worker of every partition of every kind, as the placement says. */
  const placed = new Map<string, string>();
  /** Partitions whose owner was last seen running them, by key: parcels waiting for one go when it starts running. */
  const seenServing = new Map<string, string>();

  return {
    locate: (kind, partition) => placed.get(placementKey(kind, partition)),

    onPlacement(entry) {
      // Not an assignment: as if there were none (this worker lets go; the leader writes a good one, at a newer epoch).
      const a = entry.operation === 'PUT' ? kvValues.assignment(entry.value, o.fault, entry.key) : undefined;
      if (placed.get(entry.key) !== a?.worker) {
        if (a) placed.set(entry.key, a.worker);
        else placed.delete(entry.key);
        const where = parsePlacementKey(entry.key);
        if (where) courier.moved(where.kind, where.partition);
      }
      const p = hosted.get(entry.key);
      if (!p) return; // a kind this worker does not host
      const seen = seeAssignment(p, a, clock.now());
      p.assigned = seen.assigned;
      p.assignedAt = seen.assignedAt;
      if (seen.fresh) stale.delete(entry.key);
      void reconciler.reconcile(p);
    },

    onHeartbeat(worker) {
      // A previous owner's heartbeat may say it let go: look at the partitions waiting for one.
      for (const p of hosted.values()) if (!p.runner && p.assigned?.worker === self && p.assigned.prev) void reconciler.reconcile(p);
      // A new owner's heartbeat may say it now runs a partition: what this worker's partitions owe it goes now, not
      // at its next retry (a moved partition drops what reaches it before it runs).
      for (const started of newlyServing(worker, o.heartbeatOf(worker)?.held ?? [], placed, seenServing)) {
        seenServing.set(started.key, started.mark);
        courier.moved(started.kind, started.partition);
      }
    },
  };
}
