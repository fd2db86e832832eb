/**
 * The dynamic worker's smaller decisions, the pure part (handoff.ts has its lifecycle and per-partition steps): when
 * its handover is done, what a failed start leads to, when an assignment counts as new, when it is idle, which
 * partitions just started running elsewhere, and how loud an unstored heartbeat is. The time is passed in; the
 * shells (reconciler.ts, placement-follower.ts, heartbeats.ts, drain.ts) perform what these return.
 */
import type { Kind } from '../config.js';
import type { RunnerState } from '../datapath/lifecycle.js';
import { StaleEpochError } from '../datapath/store.js';
import type { Lease } from './liveness.js';
import { placementKey, type Assignment, type Heartbeat } from './placement.js';

/** After a start that failed for another reason than a stale epoch, not again for this many retryBackoffMs. */
export const START_RETRY_BACKOFFS = 10;

/** What a start that failed leads to. */
export type FailedStart =
  /** Redis holds a newer epoch than the placement's: report it in the heartbeat (the controller raises the epoch). */
  | { then: 'report-stale'; stored: number }
  /** Anything else (Redis unreachable, ...): stop the runner, and try again at `retryAt`. */
  | { then: 'retry'; retryAt: number };

export function afterFailedStart(err: unknown, now: number, retryBackoffMs: number): FailedStart {
  if (err instanceof StaleEpochError) return { then: 'report-stale', stored: err.stored };
  return { then: 'retry', retryAt: now + retryBackoffMs * START_RETRY_BACKOFFS };
}

/** What the worker follows of one partition's placement. */
export interface Followed {
  assigned?: Assignment;
  /** Local time the current assignment was first seen (bounds the wait for the previous owner to let go). */
  assignedAt: number;
}

/**
 * A placement entry seen (`next`: undefined when deleted or not an assignment). Only another worker or epoch is a new
 * assignment: it restarts the wait for the previous owner, and the stale epoch reported for the old one is dropped
 * (`fresh`). The same worker and epoch again changes nothing.
 */
export function seeAssignment(cur: Followed, next: Assignment | undefined, now: number): Followed & { fresh: boolean } {
  if (!next) return { assigned: undefined, assignedAt: cur.assignedAt, fresh: false };
  const a = cur.assigned;
  if (a && a.epoch === next.epoch && a.worker === next.worker) return { ...cur, fresh: false };
  return { assigned: next, assignedAt: now, fresh: true };
}

/** Idle: it has no runner and no partition is placed on it (a draining worker that is idle has ended). */
export const idle = (partitions: Iterable<{ runner?: unknown; assigned?: Assignment }>, self: string): boolean =>
  [...partitions].every((p) => !p.runner && p.assigned?.worker !== self);

/**
 * close()'s handover is done when no partition it still holds (not fenced) has another worker to go to: none is
 * held, or no other live worker that is not draining hosts its kind.
 */
export function handoverDone(held: readonly { kind: Kind; state: RunnerState }[], live: readonly Heartbeat[], self: string): boolean {
  const alone = (kind: Kind) => !live.some((hb) => hb.id !== self && !hb.draining && hb.kinds.includes(kind));
  return held.filter((r) => r.state !== 'fenced').every((r) => alone(r.kind));
}

/**
 * The partitions a worker's heartbeat says it now runs, placed on it, and not yet seen running there at that epoch:
 * what this worker's partitions owe them goes now, not at their next retry. `mark` is what `seen` remembers by key.
 */
export function newlyServing(
  worker: string,
  held: Heartbeat['held'],
  placed: ReadonlyMap<string, string>,
  seen: ReadonlyMap<string, string>,
): { kind: Kind; partition: number; key: string; mark: string }[] {
  const marks = new Map(seen);
  return held.flatMap((h) => {
    const key = placementKey(h.k, h.p);
    const mark = `${worker}@${h.e}`;
    if (h.t || placed.get(key) !== worker || marks.get(key) === mark) return [];
    marks.set(key, mark);
    return [{ kind: h.k, partition: h.p, key, mark }];
  });
}

/**
 * How loud a heartbeat not stored in the workers bucket is. While the bucket elects a leader its puts fail and the
 * pulses hold the lease: a debug line while the newest heartbeat came back within two intervals, else a warning.
 */
export function unstoredHeartbeatLevel(lease: Lease, now: number, intervalMs: number): { level: 'debug' | 'warn'; sinceLastMs: number | undefined } {
  const sinceLastMs = lease.phase === 'held' ? now - lease.ackedAt : undefined;
  return { level: sinceLastMs !== undefined && sinceLastMs <= 2 * intervalMs ? 'debug' : 'warn', sinceLastMs };
}
