/**
 * The supervisor's decision about one child, the pure part: whether a child that died is restarted, and after how
 * long (a doubling backoff from config.restartBackoffMs, capped, reset once a child has run long enough), or left
 * down because the supervisor is stopping or the child never worked. State + event → new state + actions, the time
 * passed in; children.ts is the shell that spawns, waits and logs.
 */
import type { Exit } from './processes.js';

export interface RestartPolicy {
  /** The first pause (config.restartBackoffMs). */
  baseMs: number;
  /** The longest pause. */
  maxMs: number;
  /** A child that ran this long before it died starts again from baseMs. */
  stableMs: number;
}

export type ChildLife =
  /** Not started, or died and left down. */
  | { phase: 'down' }
  /** Launched, not yet known to work (a server that has not answered yet): its death fails the start, no restart. */
  | { phase: 'starting'; since: number }
  /** Known to work: restarted when it dies. */
  | { phase: 'up'; since: number }
  /** Died; launched again at `until`. */
  | { phase: 'waiting'; until: number }
  /** The supervisor stops: never launched again. */
  | { phase: 'stopped' };

export interface ChildState {
  life: ChildLife;
  /** The pause before the next restart. */
  backoffMs: number;
  /** Restarts so far. */
  restarts: number;
}

export type ChildEvent =
  | { kind: 'launched'; now: number }
  /** It works (a server answered; an app is trusted from its launch): restart it when it dies. */
  | { kind: 'established' }
  /** It exited. `supervising`: the supervisor is starting or ready (not stopping). */
  | { kind: 'exited'; now: number; exit: Exit; supervising: boolean }
  /** A relaunch failed before the child ran (its binary vanished, its prepare step failed): another crash. */
  | { kind: 'launch-failed'; now: number; error: Error; supervising: boolean }
  /** The pause is over. */
  | { kind: 'due'; supervising: boolean }
  | { kind: 'stop' };

export type ChildAction =
  /** Launch it again after `delayMs` (report 'due' then). */
  | { do: 'schedule'; delayMs: number; restart: number; upMs: number; exit: Exit }
  | { do: 'launch' }
  /** Cancel a pending restart. */
  | { do: 'cancel' };

export const newChild = (policy: RestartPolicy): ChildState => ({ life: { phase: 'down' }, backoffMs: policy.baseMs, restarts: 0 });

export function childStep(s: ChildState, event: ChildEvent, policy: RestartPolicy): { state: ChildState; actions: ChildAction[] } {
  const { life } = s;
  switch (event.kind) {
    case 'launched':
      // A relaunch is of a child that worked before; a first launch is on trial until it is established.
      if (life.phase === 'stopped') return { state: s, actions: [] };
      return { state: { ...s, life: life.phase === 'waiting' ? { phase: 'up', since: event.now } : { phase: 'starting', since: event.now } }, actions: [] };
    case 'established':
      return { state: life.phase === 'starting' ? { ...s, life: { phase: 'up', since: life.since } } : s, actions: [] };
    case 'exited':
      if (life.phase !== 'up' || !event.supervising) return { state: life.phase === 'stopped' ? s : { ...s, life: { phase: 'down' } }, actions: [] };
      return crashed(s, event.now, event.now - life.since, event.exit, policy);
    case 'launch-failed':
      if (life.phase !== 'waiting' || !event.supervising) return { state: life.phase === 'stopped' ? s : { ...s, life: { phase: 'down' } }, actions: [] };
      return crashed(s, event.now, 0, { code: null, signal: null, error: event.error }, policy);
    case 'due':
      if (life.phase !== 'waiting') return { state: s, actions: [] };
      if (!event.supervising) return { state: { ...s, life: { phase: 'down' } }, actions: [] };
      return { state: s, actions: [{ do: 'launch' }] };
    case 'stop':
      return { state: { ...s, life: { phase: 'stopped' } }, actions: life.phase === 'waiting' ? [{ do: 'cancel' }] : [] };
  }
}

/** Died after `upMs`: wait the current backoff (from the start again after a long enough run), then double it up to the cap. */
function crashed(s: ChildState, now: number, upMs: number, exit: Exit, policy: RestartPolicy): { state: ChildState; actions: ChildAction[] } {
  const delayMs = upMs >= policy.stableMs ? policy.baseMs : s.backoffMs;
  const restarts = s.restarts + 1;
  return {
    state: { life: { phase: 'waiting', until: now + delayMs }, backoffMs: Math.min(policy.maxMs, Math.max(1, delayMs * 2)), restarts },
    actions: [{ do: 'schedule', delayMs, restart: restarts, upMs, exit }],
  };
}
