/**
 * Leader election among controller candidates, the pure part: what a candidate knows and decides, as state + event →
 * new state + actions. The `leader` key of the control bucket names the leader; it is created when there is none,
 * updated by the leader on its own revision every interval, and taken over by an update on the last revision seen
 * once that revision has stood unchanged for a lease. The I/O shell (leadership.ts) performs the writes this asks for
 * and reports how they went; it reads the clock and passes the time in every event.
 */

/** The `leader` key as this candidate last saw it, and the local time (ms) that revision was first seen. */
export interface SeenLeader {
  id: string;
  rev: number;
  seenAt: number;
}

export type Leadership =
  | { phase: 'follower' }
  /** `rev`: the key's revision from its own last write; `renewedAt`: when that write was sent. */
  | { phase: 'leader'; since: number; rev: number; renewedAt: number };

export interface Election {
  /** This candidate's id, the value it writes. */
  readonly self: string;
  readonly seen: SeenLeader | undefined;
  readonly role: Leadership;
}

export interface ElectionLimits {
  /** A key unchanged this long belongs to a dead leader (workerLeaseMs). */
  leaseMs: number;
  /** Renewal interval (heartbeatIntervalMs). A leader acts only while its last renewal is younger than lease − interval. */
  intervalMs: number;
}

/** A write to the `leader` key, of the value `{ id: self, at }`. */
export type Claim =
  | { op: 'create'; at: number }
  | { op: 'renew'; rev: number; at: number }
  /** Update on the revision of a leader silent for a lease, or of this candidate's own key from before a restart. */
  | { op: 'takeover'; rev: number; after: string; at: number };

export type ElectionEvent =
  /** The watch delivered the `leader` key (undefined: deleted; an id of '' stands for a value that is not a leader). */
  | { kind: 'observed'; key: { id: string; rev: number } | undefined; now: number }
  /** Time to renew, or to campaign; `gone`: the leader's process was found gone by its probe (membership.ts). */
  | { kind: 'tick'; now: number; gone?: boolean }
  | { kind: 'written'; claim: Claim; rev: number }
  | { kind: 'refused'; claim: Claim; err: unknown }
  /** The candidate closes: a leader hands over at once instead of after a lease. */
  | { kind: 'close' };

export type ElectionAction =
  | { do: 'write'; claim: Claim }
  /** Delete the key if it is still at `rev`. */
  | { do: 'resign'; rev: number }
  | { do: 'log'; level: 'info' | 'warn'; msg: string; fields?: Record<string, unknown> };

export interface ElectionStep {
  state: Election;
  actions: ElectionAction[];
}

export const newElection = (self: string): Election => ({ self, seen: undefined, role: { phase: 'follower' } });

export function electionStep(state: Election, event: ElectionEvent, limits: ElectionLimits): ElectionStep {
  const { role, seen, self } = state;
  switch (event.kind) {
    case 'observed': {
      const { key, now } = event;
      if (!key) return { state: { ...state, seen: undefined }, actions: [] };
      const next: Election = { ...state, seen: seen && seen.rev === key.rev ? seen : { id: key.id, rev: key.rev, seenAt: now } };
      if (key.id === self || role.phase !== 'leader') return { state: next, actions: [] };
      return {
        state: { ...next, role: { phase: 'follower' } },
        actions: [{ do: 'log', level: 'info', msg: 'no longer leading', fields: { leader: key.id || '(an invalid value)' } }],
      };
    }
    case 'tick': {
      const at = event.now;
      let claim: Claim | undefined;
      if (role.phase === 'leader') claim = { op: 'renew', rev: role.rev, at };
      else if (!seen) claim = { op: 'create', at };
      // Its own key from before a restart of this candidate, a leader silent for a lease, or one whose process is
      // gone (nothing answers its probe): take it by CAS.
      else if (seen.id === self || at - seen.seenAt > limits.leaseMs || event.gone) claim = { op: 'takeover', rev: seen.rev, after: seen.id, at };
      return { state, actions: claim ? [{ do: 'write', claim }] : [] };
    }
    case 'written': {
      const { claim, rev } = event;
      if (claim.op === 'renew') {
        // Renewed while the watch already showed another leader: that one leads; the write changed nothing here.
        if (role.phase !== 'leader') return { state, actions: [] };
        return { state: { ...state, role: { ...role, rev, renewedAt: claim.at } }, actions: [] };
      }
      const leader: Leadership = { phase: 'leader', since: claim.at, rev, renewedAt: claim.at };
      const log: ElectionAction =
        claim.op === 'create' ? { do: 'log', level: 'info', msg: 'leading (no leader before)' } : { do: 'log', level: 'info', msg: 'leading', fields: { after: claim.after } };
      return { state: { ...state, role: leader }, actions: [log] };
    }
    case 'refused': {
      if (role.phase !== 'leader') return { state, actions: [] };
      return {
        state: { ...state, role: { phase: 'follower' } },
        actions: [{ do: 'log', level: 'warn', msg: 'lost the leadership: could not renew it', fields: { err: event.err } }],
      };
    }
    case 'close': {
      if (role.phase !== 'leader') return { state, actions: [] };
      return { state: { ...state, role: { phase: 'follower' } }, actions: [{ do: 'resign', rev: role.rev }] };
    }
  }
}

/** Leads now: a leader whose last renewal is younger than lease − interval (after that another may take over any moment). */
export const leads = (state: Election, now: number, limits: ElectionLimits): boolean =>
  state.role.phase === 'leader' && now - state.role.renewedAt < limits.leaseMs - limits.intervalMs;
