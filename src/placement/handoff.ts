/**
 * A dynamic worker's decisions, the pure part: its lifecycle and lease (when it heartbeats, loses its lease, is
 * drained), and for each partition whether to take it, let it go, or wait. State + event → new state + actions, the
 * time passed in; the I/O shells perform them (worker-lifecycle.ts the lifecycle's, putting heartbeats through heartbeats.ts;
 * reconciler.ts each partition's, starting and stopping runners).
 */
import { leaseAt, leaseStored, newLease, ranLate, type Lease, type LeaseLimits } from './liveness.js';
import type { RunnerState } from '../datapath/lifecycle.js';
import type { Assignment } from './placement.js';

/** Why a dynamic worker stopped on its own: shopctl drained it, or it lost its lease (its heartbeats failed too long). */
export type WorkerEnd = 'drained' | 'lease-lost';

/**
 * serving → draining (shopctl drain, or close(): handing every partition over while still serving them) →
 * stopping (close(): letting go of what is left) → closed (deregistered). A lost lease (below) ends the serving in
 * any phase.
 */
export type WorkerPhase = { phase: 'serving' } | { phase: 'draining'; since: number } | { phase: 'stopping' } | { phase: 'closed' };

export interface WorkerState {
  life: WorkerPhase;
  lease: Lease;
  /** When the periodic tick last ran (a late one means this process was stalled). */
  lastTick: number;
  /** How it ended by itself, once it has. */
  end: WorkerEnd | undefined;
}

export type WorkerEvent =
  /** The periodic tick. `idle`: it runs no partition and none is placed on it. */
  | { kind: 'tick'; now: number; idle: boolean }
  /** About to put a heartbeat. */
  | { kind: 'beat'; now: number }
  /** A heartbeat sent at `sentAt` was stored. */
  | { kind: 'stored'; sentAt: number }
  | { kind: 'drain'; now: number }
  /** close(): drain first if the lease is held (then 'stop' when the handover is over). */
  | { kind: 'close'; now: number }
  /** close(): the handover is over (or its time is up); stop what is left. */
  | { kind: 'stop' }
  /** close(): everything stopped, heartbeat key deleted. */
  | { kind: 'closed' };

export type WorkerAction =
  /** Put a heartbeat now, sent at `sentAt` (report it `stored` when acknowledged). */
  | { do: 'put'; sentAt: number }
  /** The lease lapsed: stop every runner at once (a commit in flight is refused by the epoch in Redis). */
  | { do: 'lose'; sinceAckMs: number }
  | { do: 'end'; how: WorkerEnd }
  /** This process was stalled: restart every other worker's clock. */
  | { do: 'forgive' }
  /** Step every partition not being stepped now. */
  | { do: 'sweep' }
  | { do: 'log'; msg: string };

export const newWorker = (now: number): WorkerState => ({ life: { phase: 'serving' }, lease: newLease(now), lastTick: now, end: undefined });

/** Runs partitions: holds its lease and is not closing. */
export const serving = (s: WorkerState): boolean => s.lease.phase === 'held' && (s.life.phase === 'serving' || s.life.phase === 'draining');
/** Sends heartbeats: holds its lease and has not deregistered (while stopping, they tell the next owners it let go). */
export const beating = (s: WorkerState): boolean => s.lease.phase === 'held' && s.life.phase !== 'closed';
/** What its heartbeat says: it is leaving, give it nothing. */
export const draining = (s: WorkerState): boolean => s.life.phase === 'draining' || s.life.phase === 'stopping';

const ended = (s: WorkerState, how: WorkerEnd, actions: WorkerAction[]): WorkerState => {
  if (s.end) return s;
  actions.push({ do: 'end', how });
  return { ...s, end: how };
};

/** The lease at `now`; when it has just lapsed, the worker stops every runner and ends with 'lease-lost'. */
function checkLease(s: WorkerState, now: number, limits: LeaseLimits, actions: WorkerAction[]): WorkerState {
  if (!beating(s)) return s;
  const lease = leaseAt(s.lease, now, limits);
  if (lease.phase === 'held') return s;
  actions.push({ do: 'lose', sinceAckMs: lease.sinceAckMs });
  return ended({ ...s, lease }, 'lease-lost', actions);
}

export function workerStep(s: WorkerState, event: WorkerEvent, limits: LeaseLimits): { state: WorkerState; actions: WorkerAction[] } {
  const actions: WorkerAction[] = [];
  switch (event.kind) {
    case 'tick': {
      const { now } = event;
      const checked = checkLease(s, now, limits, actions);
      if (checked !== s) return { state: checked, actions };
      if (ranLate(s.lastTick, now, limits.leaseMs)) actions.push({ do: 'forgive' });
      let next: WorkerState = { ...s, lastTick: now };
      if (beating(next)) actions.push({ do: 'put', sentAt: now });
      actions.push({ do: 'sweep' });
      if (next.life.phase === 'draining' && event.idle) next = ended(next, 'drained', actions);
      return { state: next, actions };
    }
    case 'beat': {
      const checked = checkLease(s, event.now, limits, actions);
      if (beating(checked)) actions.push({ do: 'put', sentAt: event.now });
      return { state: checked, actions };
    }
    case 'stored':
      return { state: { ...s, lease: leaseStored(s.lease, event.sentAt) }, actions };
    case 'drain':
      if (s.life.phase !== 'serving') return { state: s, actions };
      actions.push({ do: 'log', msg: 'drain requested: handing every partition to other workers, then exiting' });
      return { state: { ...s, life: { phase: 'draining', since: event.now } }, actions };
    case 'close':
      // With its lease it hands its partitions over while still serving them, so a request waits at most for one
      // handoff; without, others may run them already.
      if (s.life.phase === 'serving' && s.lease.phase === 'held') return { state: { ...s, life: { phase: 'draining', since: event.now } }, actions };
      return { state: s, actions };
    case 'stop':
      return { state: s.life.phase === 'closed' ? s : { ...s, life: { phase: 'stopping' } }, actions };
    case 'closed':
      return { state: { ...s, life: { phase: 'closed' } }, actions };
  }
}

// ---- one partition ------------------------------------------------------------------------------------

/** What the worker knows of one partition. */
export interface HostedView {
  /** This worker's id. */
  self: string;
  /** The placement entry, if any. */
  assigned: Assignment | undefined;
  /** Local time the current assignment was first seen (bounds the wait for the previous owner to let go). */
  assignedAt: number;
  /** The runner this worker has for it, if any. */
  runner: { state: RunnerState; epoch: number } | undefined;
  /** The epoch Redis holds, when it refused the placement's as older (reported in the heartbeat). */
  stale: number | undefined;
  /** After a failed start, not again before this time. */
  retryAt: number;
  /** The previous owner is alive and its heartbeat still lists the partition. */
  prevHolds: boolean;
  /** The worker runs partitions at all (serving()). */
  serving: boolean;
}

export type HostedAction =
  /** Its runner was fenced by a newer owner: forget it. */
  | { do: 'forget' }
  /** Its runner stopped by itself (restarting after a failure, or refused): forget it if Redis holds a newer epoch. */
  | { do: 'check' }
  /** Stop its runner: placed elsewhere, at another epoch, or the worker stops serving. */
  | { do: 'stop' }
  /** Take it at the placement's epoch. */
  | { do: 'start'; epoch: number }
  | { do: 'wait'; why: 'runner-busy' | 'stale' | 'backoff' | 'prev-holds' }
  | { do: 'nothing' };

/** The next step for one partition. After forget, check or stop the shell asks again: the next may be a start. */
export function hostedStep(v: HostedView, now: number, leaseMs: number): HostedAction {
  const a = v.assigned;
  const want = v.serving && a && a.worker === v.self ? a.epoch : undefined;
  const r = v.runner;
  if (r) {
    if (r.state === 'fenced') return { do: 'forget' };
    if (r.state === 'stopped') return { do: 'check' };
    // Its own restart; looked at again on the next sweep.
    if (r.state === 'starting' || r.state === 'stopping' || r.state === 'idle') return { do: 'wait', why: 'runner-busy' };
    if (want === undefined || r.epoch !== want) return { do: 'stop' };
    return { do: 'nothing' };
  }
  if (want === undefined) return { do: 'nothing' };
  if ((v.stale ?? 0) >= want) return { do: 'wait', why: 'stale' }; // told the controller; it raises the epoch
  if (now < v.retryAt) return { do: 'wait', why: 'backoff' };
  // The previous owner still lets go: wait for it, at most a lease from when the assignment was seen.
  if (a!.prev && a!.prev !== v.self && v.prevHolds && now - v.assignedAt < leaseMs) return { do: 'wait', why: 'prev-holds' };
  return { do: 'start', epoch: want };
}
