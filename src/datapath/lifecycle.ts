/**
 * The lifecycle of a partition runner, the pure part: which state an event leads to, and what the runner then does.
 * The shell (runner.ts) performs the actions and changes its state in one function, which logs each change. An event
 * that does not apply in the state it meets (a stop of a runner that never started, a batch failure of one already
 * restarting) is refused: the state stays and nothing is done.
 *
 *   idle ─start→ starting ─opened→ running ─batchFailed→ restarting ─start→ starting …
 *   starting ─startFailed→ stopped ─restartFailed→ restarting
 *   starting ─refuse→ refused ─start→ starting …
 *   starting | running ─fence→ fenced
 *   starting | running | restarting | refused ─stop→ stopping ─released→ stopped
 */

/**
 * Longest pause between two attempts of a partition that keeps failing to restart. Short: what fails a restart is
 * Redis or NATS being away (an attempt then waits in the client, or for WAIT's timeout, and costs nothing), and
 * a partition must serve again within a second of their return. With 30 s, a Redis failover of 5 s had partitions
 * sleeping for seconds after the new primary and its replica were there.
 */
export const PARTITION_RETRY_MAX_MS = 1000;

/** How often a partition refused for a stream behind its cursor looks again (an operator may have mended it). */
export const REFUSED_RECHECK_MS = 10_000;

export type RunnerState = 'idle' | 'starting' | 'running' | 'restarting' | 'refused' | 'stopping' | 'stopped' | 'fenced';

/** Why a partition does not serve although this worker holds it, for status, readiness and metrics. */
export interface Trouble {
  state: 'restarting' | 'refused';
  /** Restart attempts since the partition last committed. */
  attempts: number;
  error: string;
}

/** The trouble after one more failed attempt (a commit ends it). */
export const failedAgain = (last: Trouble | undefined, state: Trouble['state'], error: string): Trouble => ({ state, attempts: (last?.attempts ?? 0) + 1, error });

/** The pause before a retry, `attempts` failed attempts in: doubles from `baseMs` (retryBackoffMs) up to PARTITION_RETRY_MAX_MS. */
export const retryPauseMs = (attempts: number, baseMs: number): number => Math.min(PARTITION_RETRY_MAX_MS, baseMs * 2 ** Math.min(20, attempts - 1));

export type LifecycleEvent =
  /** Taken by its owner, or taken again by its own retry. */
  | { kind: 'start' }
  /** Loaded, checked and reading from its stream: it serves. */
  | { kind: 'opened' }
  /** Taking it failed (Redis or NATS away, or a newer epoch holds it). */
  | { kind: 'startFailed' }
  /** Its stream and Redis do not hold together everything it applied (marks.ts). */
  | { kind: 'refuse' }
  /** A batch with its messages failed. */
  | { kind: 'batchFailed' }
  /** An attempt of its own retry failed; another follows. */
  | { kind: 'restartFailed' }
  /** A newer owner holds the partition. */
  | { kind: 'fence' }
  /** Its owner lets go of it. */
  | { kind: 'stop' }
  /** What it held is let go of, after a stop. */
  | { kind: 'released' };

export type LifecycleAction =
  /** Join the batch loop and trim the stream from now on. */
  | { do: 'serve' }
  /** Drop the messages queued and the state in memory (a newer owner serves them). */
  | { do: 'drop' }
  /** Stop reading, leave the batch loop, let the outbox finish within a bound. */
  | { do: 'release' }
  /** Take the partition again, after a pause that grows with the attempts. */
  | { do: 'retry' }
  /** Look at its stream again later (an operator may have mended it). */
  | { do: 'recheck' }
  /** Tell its owner it was fenced. */
  | { do: 'tell-owner' };

export interface LifecycleStep {
  state: RunnerState;
  /** In order; each starts once the one before has finished. */
  actions: LifecycleAction[];
}

/** Reading its stream or being made to: what fencing stops and what a batch failure restarts. */
export const isActive = (state: RunnerState): boolean => state === 'running' || state === 'starting';

/** The next state and what to do, or undefined when the event is refused in this state. */
export function lifecycleStep(state: RunnerState, event: LifecycleEvent): LifecycleStep | undefined {
  const to = (next: RunnerState, ...actions: LifecycleAction[]): LifecycleStep => ({ state: next, actions });
  switch (event.kind) {
    case 'start':
      return state === 'idle' || state === 'restarting' || state === 'refused' ? to('starting') : undefined;
    case 'opened':
      return state === 'starting' ? to('running', { do: 'serve' }) : undefined;
    case 'startFailed':
      return state === 'starting' ? to('stopped') : undefined;
    case 'refuse':
      return state === 'starting' ? to('refused', { do: 'recheck' }) : undefined;
    case 'batchFailed':
      return state === 'running' ? to('restarting', { do: 'release' }, { do: 'retry' }) : undefined;
    case 'restartFailed':
      return state === 'stopped' ? to('restarting') : undefined;
    case 'fence':
      return isActive(state) ? to('fenced', { do: 'drop' }, { do: 'release' }, { do: 'tell-owner' }) : undefined;
    case 'stop':
      return isActive(state) || state === 'restarting' || state === 'refused' ? to('stopping', { do: 'release' }) : undefined;
    case 'released':
      return state === 'stopping' ? to('stopped') : undefined;
  }
}
