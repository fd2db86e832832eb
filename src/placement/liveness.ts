/**
 * Who is alive, the pure part: the workers as heard from through their heartbeats (with the silence rule), and a
 * worker's own lease (self-fencing). State + event → new state; the time is always passed in. The I/O shells are
 * MembershipView (membership.ts: the pulses and the watch of the workers bucket) and the dynamic worker (heartbeats.ts:
 * its pulses and puts).
 */
import type { Heartbeat } from './placement.js';

export interface Member {
  hb: Heartbeat;
  /** Local time (ms) its last heartbeat arrived; for a value found when the watch began, the time NATS stored it. */
  seenAt: number;
}

/** The workers bucket as a map of members with the time each was last heard from. */
export interface Liveness {
  readonly members: ReadonlyMap<string, Member>;
  /** Local time the last heartbeat of anyone arrived. */
  readonly lastArrival: number;
}

export type Heard =
  /** A heartbeat arrived (`initial`: found when the watch began, stored by NATS at `storedAt`). */
  | { kind: 'heartbeat'; hb: Heartbeat; now: number; initial: boolean; storedAt: number }
  /** Its key was deleted (the worker deregistered) or purged. */
  | { kind: 'gone'; id: string }
  /** This process itself was not running for a while (a stall, SIGSTOP): it knows nothing of who died meanwhile. */
  | { kind: 'stalled'; now: number };

export const newLiveness = (now: number): Liveness => ({ members: new Map(), lastArrival: now });

export function hear(view: Liveness, event: Heard, leaseMs: number): Liveness {
  switch (event.kind) {
    case 'gone': {
      if (!view.members.has(event.id)) return view;
      const members = new Map(view.members);
      members.delete(event.id);
      return { ...view, members };
    }
    case 'stalled':
      return forgiven(view, event.now);
    case 'heartbeat': {
      const { hb, now, initial } = event;
      // Heard already, by its other path (pulse or bucket), or a newer one was: nothing new, not even of its life.
      if (isOlder(hb, view.members.get(hb.id)?.hb)) return view;
      // The silence rule. Nobody heard from for half a lease, while every live worker pulses each interval: this view
      // heard nothing (its connection to NATS moving to another server), not every worker died.
      // Whoever was silent meanwhile gets a fresh lease, as after a stall of this process.
      const base = !initial && now - view.lastArrival > leaseMs / 2 ? forgiven(view, now) : view;
      const members = new Map(base.members);
      members.set(hb.id, { hb, seenAt: initial ? Math.min(now, event.storedAt) : now });
      return { members, lastArrival: now };
    }
  }
}

/** `hb` is the same heartbeat as `known` or an older one (heartbeats without numbers, from older workers, never are). */
const isOlder = (hb: Heartbeat, known: Heartbeat | undefined) => hb.seq !== undefined && known?.seq !== undefined && hb.seq <= known.seq;

/** Every clock restarted at `now`: nobody is declared dead before another lease has passed. */
function forgiven(view: Liveness, now: number): Liveness {
  const members = new Map<string, Member>();
  for (const [id, m] of view.members) members.set(id, { hb: m.hb, seenAt: Math.max(m.seenAt, now) });
  return { ...view, members };
}

/** Heard from within the last lease. */
export function isAlive(view: Liveness, id: string, now: number, leaseMs: number): boolean {
  const m = view.members.get(id);
  return m !== undefined && now - m.seenAt <= leaseMs;
}

export const liveMembers = (view: Liveness, now: number, leaseMs: number): Member[] => [...view.members.values()].filter((m) => now - m.seenAt <= leaseMs);

/**
 * A periodic timer that ran more than half a lease late: this process was not running meanwhile (a stall,
 * SIGSTOP), so whoever it has not heard from may well be alive.
 */
export const ranLate = (lastTick: number, now: number, leaseMs: number): boolean => now - lastTick > leaseMs / 2;

// ---- a worker's own lease --------------------------------------------------------------------------------

/**
 * A worker's lease on its partitions, from its own heartbeats: held while a heartbeat it sent comes back at least
 * every lease − interval (its pulse through its NATS server, or its put stored by the bucket; the controller declares
 * it dead a lease after the last one arrives, and one interval is the margin); lost for good after that, even if a
 * later one comes back (say, right after a SIGSTOP ends).
 */
export type Lease = { phase: 'held'; ackedAt: number } | { phase: 'lost'; at: number; sinceAckMs: number };

export interface LeaseLimits {
  leaseMs: number;
  intervalMs: number;
}

export const newLease = (now: number): Lease => ({ phase: 'held', ackedAt: now });

/** A heartbeat sent at `sentAt` came back. They may come back out of order: the newest sending time counts. */
export const leaseStored = (lease: Lease, sentAt: number): Lease => (lease.phase === 'held' ? { phase: 'held', ackedAt: Math.max(lease.ackedAt, sentAt) } : lease);

/** The lease at `now`: lost once no heartbeat has been stored for longer than lease − interval. */
export function leaseAt(lease: Lease, now: number, limits: LeaseLimits): Lease {
  if (lease.phase === 'lost' || now - lease.ackedAt <= limits.leaseMs - limits.intervalMs) return lease;
  return { phase: 'lost', at: now, sinceAckMs: now - lease.ackedAt };
}
