/**
 * The supervisor's children as it performs them: one slot per ChildSpec, spawned with its output prefixed, and
 * restarted, left down or stopped as restart.ts decides (state + event → actions; this file only performs them).
 */
import type { Clock, Timer } from '../clock.js';
import type { Log } from '../log.js';
import type { ChildSpec, Prepare, Program } from './plan.js';
import { describeExit, findBinary, NATS_STOP_SIGNAL, spawnChild, stopChild, type Child, type Exit } from './processes.js';
import { childStep, newChild, type ChildEvent, type ChildState, type RestartPolicy } from './restart.js';

export interface Slot {
  spec: ChildSpec;
  child?: Child;
  /** Its lifecycle and backoff, as restart.ts decides them. */
  state: ChildState;
  timer?: Timer;
}

export interface ChildrenOptions {
  specs: ChildSpec[];
  log: Log;
  clock: Clock;
  policy: RestartPolicy;
  /** Where each output line of a child goes. */
  output: (name: string, line: string, stream: 'stdout' | 'stderr') => void;
  /** Whether the supervisor is starting or ready (not stopping): a child that dies then may be restarted. */
  isRunning: () => boolean;
  /** Performs a child's prepare step (redis-primary.ts): writes what it reads, returns its arguments for this start. */
  prepare: (prepare: Prepare) => Promise<string[]>;
}

export interface Children {
  readonly slots: Slot[];
  /** Runs the child's prepare step (if any), then starts it. */
  launch(slot: Slot): Promise<Child>;
  /** Reports an event of the child's life; restart.ts decides what follows, and it is done. */
  apply(slot: Slot, event: ChildEvent): void;
  /** Stops every running child of one program, each with `graceMs` before SIGKILL, and logs how each ended. */
  stopProgram(program: Program, graceMs: number): Promise<void>;
  /** SIGKILL to every child at once, and no restart. */
  kill(): void;
  /** Pids of the running children by name. */
  pids(): Record<string, number>;
}

export function createChildren({ specs, log, clock, policy, output, isRunning, prepare }: ChildrenOptions): Children {
  const slots: Slot[] = specs.map((spec) => ({ spec, state: newChild(policy) }));

  async function launch(slot: Slot): Promise<Child> {
    const args = slot.spec.prepare ? await prepare(slot.spec.prepare) : slot.spec.args;
    return spawn(slot, args);
  }

  function spawn(slot: Slot, args: string[]): Child {
    const { spec } = slot;
    const child = spawnChild(spec.name, findBinary(spec.command), {
      args,
      env: spec.env,
      // Its own process group: a Ctrl-C in the terminal reaches only the supervisor, which stops children in order.
      detached: true,
      onLine: (line, stream) => output(spec.name, line, stream),
    });
    slot.child = child;
    apply(slot, { kind: 'launched', now: clock.now() });
    if (child.pid !== undefined) log.info(`started ${spec.name} (pid ${child.pid})`);
    void child.exited.then((exit) => onExit(slot, child, exit));
    return child;
  }

  function onExit(slot: Slot, child: Child, exit: Exit) {
    if (slot.child !== child) return;
    slot.child = undefined;
    apply(slot, { kind: 'exited', now: clock.now(), exit, supervising: isRunning() });
  }

  /** Decides (restart.ts) and performs: the restarts with their backoff. */
  function apply(slot: Slot, event: ChildEvent) {
    const step = childStep(slot.state, event, policy);
    slot.state = step.state;
    for (const action of step.actions) {
      switch (action.do) {
        case 'schedule':
          log.warn(`${slot.spec.name} exited unexpectedly (${describeExit(action.exit)}) after ${action.upMs} ms; restart #${action.restart} in ${action.delayMs} ms`);
          slot.timer = clock.setTimeout(() => {
            slot.timer = undefined;
            apply(slot, { kind: 'due', supervising: isRunning() });
          }, action.delayMs);
          break;
        case 'launch':
          // e.g. the binary vanished: counted as another crash, so the backoff keeps growing.
          launch(slot).catch((err: unknown) => apply(slot, { kind: 'launch-failed', now: clock.now(), error: err as Error, supervising: isRunning() }));
          break;
        case 'cancel':
          clock.clearTimeout(slot.timer);
          slot.timer = undefined;
          break;
      }
    }
  }

  async function stopProgram(program: Program, graceMs: number): Promise<void> {
    await Promise.all(
      slots
        .filter((s) => s.spec.role === program && s.child)
        .map(async (slot) => {
          const { exit, killed } = await stopChild(slot.child!, graceMs, program === 'nats' ? NATS_STOP_SIGNAL : 'SIGTERM');
          if (killed) log.warn(`${slot.spec.name} did not exit within ${graceMs} ms of the stop signal; killed (${describeExit(exit)})`);
          else log.info(`stopped ${slot.spec.name} (${describeExit(exit)})`);
        }),
    );
  }

  return {
    slots,
    launch,
    apply,
    stopProgram,
    kill() {
      for (const slot of slots) {
        apply(slot, { kind: 'stop' });
        slot.child?.process.kill('SIGKILL');
      }
    },
    pids() {
      const pids: Record<string, number> = {};
      for (const slot of slots) if (slot.child?.pid !== undefined && !slot.child.exit()) pids[slot.spec.name] = slot.child.pid;
      return pids;
    },
  };
}
