/**
 * A dynamic worker's lifecycle and lease: handoff.ts's workerStep decides, this keeps its state and performs the
 * actions through the worker's other parts.
 */
import type { Log } from '../log.js';
import { workerStep, newWorker, type WorkerAction, type WorkerEnd, type WorkerEvent, type WorkerState } from './handoff.js';
import type { LeaseLimits } from './liveness.js';

/** What performing the actions takes. */
export interface LifecycleHands {
  /** Put a heartbeat sent at `sentAt`; resolves when it has been put (or failed). */
  put(sentAt: number): Promise<void>;
  /** Step every partition at once (the lease is lost: each lets go). */
  stepAll(): void;
  /** Step every partition not being stepped now. */
  sweep(): void;
  end(how: WorkerEnd): void;
  /** This process was stalled: restart every other worker's clock. */
  forgive(): void;
}

export interface Lifecycle {
  readonly state: WorkerState;
  /** The state after `event`, and what is to be done about it. */
  dispatch(event: WorkerEvent): WorkerAction[];
  /** Performs the actions; resolves when the heartbeats among them have been put (or failed). */
  perform(actions: WorkerAction[]): Promise<void>;
  /** dispatch, then perform. */
  act(event: WorkerEvent): Promise<void>;
}

export function createLifecycle(now: number, limits: LeaseLimits, log: Log, hands: LifecycleHands): Lifecycle {
  let state = newWorker(now);

  function dispatch(event: WorkerEvent): WorkerAction[] {
    const step = workerStep(state, event, limits);
    state = step.state;
    return step.actions;
  }

  function perform(actions: WorkerAction[]): Promise<void> {
    const puts: Promise<void>[] = [];
    for (const action of actions) {
      switch (action.do) {
        case 'put':
          puts.push(hands.put(action.sentAt));
          break;
        case 'lose':
          log.error('lease lost: none of its heartbeats came back for longer than the lease allows; stopping every partition', { sinceLastMs: action.sinceAckMs, leaseMs: limits.leaseMs });
          // stop() unsubscribes reads and stops the reader at once; a commit in flight is refused by the epoch in Redis.
          hands.stepAll();
          break;
        case 'end':
          hands.end(action.how);
          break;
        case 'forgive':
          hands.forgive();
          break;
        case 'sweep':
          hands.sweep();
          break;
        case 'log':
          log.info(action.msg);
          break;
      }
    }
    return Promise.all(puts).then(() => {});
  }

  return {
    get state() {
      return state;
    },
    dispatch,
    perform,
    act: (event) => perform(dispatch(event)),
  };
}
