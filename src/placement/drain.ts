/**
 * The dynamic worker's drain: shopctl's drain request (hand every partition over, then exit), and close() (hand the
 * partitions over while still serving them, let go of what is left, deregister). When the handover is done is
 * worker-rules.ts's handoverDone to decide.
 */
import type { KV, Subscription } from 'nats';
import type { Clock, Timer } from '../clock.js';
import { untilJetStream } from '../datapath/streams.js';
import type { Fault } from '../faults.js';
import type { Log } from '../log.js';
import type { Controller } from './controller.js';
import type { Lifecycle } from './worker-lifecycle.js';
import { GONE_PULSE, watchKv, type MembershipView, type Watch } from './membership.js';
import { kvValues } from './placement.js';
import { runnersOf, type HostedPartition, type Reconciler } from './reconciler.js';
import { closeKit, type Kit } from './worker-kit.js';
import { handoverDone } from './worker-rules.js';

/** Part of shutdownGraceMs a closing worker may spend waiting for its partitions to move, the rest is for stopping. */
const DRAIN_SHARE_OF_GRACE = 0.5;
/** Part of shutdownGraceMs for stopping the runners after that. */
const STOP_SHARE_OF_GRACE = 0.25;
/** How often a closing worker looks whether its partitions have moved. */
const DRAIN_POLL_MS = 20;

/** Watches the control bucket for shopctl's drain of worker `id`. */
export function watchDrain(control: KV, id: string, log: Log, fault: Fault, clock: Clock, life: Lifecycle): Promise<Watch> {
  return untilJetStream(
    'watch for a drain',
    () =>
      watchKv(control, `drain.${id}`, log, (e) => {
        if (e.operation !== 'PUT' || !kvValues.drain(e.value, fault, e.key)) return;
        const actions = life.dispatch({ kind: 'drain', now: clock.now() });
        if (actions.length === 0) return; // draining already, or closing
        void life.perform(actions);
        // A heartbeat now, not at the next tick: it says the worker is draining.
        void life.act({ kind: 'beat', now: clock.now() });
      }),
    log,
  );
}

/** What close() ends, in order. */
export interface Closing {
  kit: Kit;
  id: string;
  clock: Clock;
  life: Lifecycle;
  hosted: ReadonlyMap<string, HostedPartition>;
  reconciler: Reconciler;
  members: MembershipView;
  /** The heartbeat tick. */
  timer: Timer;
  controller: Controller | undefined;
  watches: Watch[];
  /** The subscription answering the leader's probes. */
  probes: Subscription;
  pulseSubject: string;
  workersBucket: KV;
}

export async function closeDynamic(c: Closing): Promise<void> {
  const { kit, clock, life, hosted } = c;
  const { config, log } = kit;
  void life.act({ kind: 'close', now: clock.now() });
  if (life.state.lease.phase === 'held') {
    // Hand the partitions over while still serving them, so a request waits at most for one handoff.
    await life.act({ kind: 'beat', now: clock.now() });
    const deadline = clock.now() + config.shutdownGraceMs * DRAIN_SHARE_OF_GRACE;
    while (clock.now() < deadline) {
      if (handoverDone(runnersOf(hosted), c.members.live().map((m) => m.hb), c.id)) break;
      await clock.sleep(DRAIN_POLL_MS);
    }
  }
  void life.act({ kind: 'stop' });
  clock.clearInterval(c.timer);
  await c.controller?.close();
  for (const w of c.watches) w.stop();
  c.members.stop();
  const deadline = clock.now() + config.shutdownGraceMs * STOP_SHARE_OF_GRACE;
  for (;;) {
    await c.reconciler.all();
    if (![...hosted.values()].some((p) => p.pass !== 'idle') || clock.now() > deadline) break;
    await clock.sleep(DRAIN_POLL_MS);
  }
  // Whatever is left (a runner in its own restart) is stopped directly.
  await Promise.all(runnersOf(hosted).map((r) => r.stop()));
  void life.act({ kind: 'closed' });
  c.probes.unsubscribe();
  try {
    kit.nc.publish(c.pulseSubject, GONE_PULSE); // the others stop waiting for its lease at once
  } catch {
    // connection closed: its lease runs out instead
  }
  await c.workersBucket.delete(c.id).catch((err: unknown) => log.warn('could not deregister', { err }));
  closeKit(kit);
  log.info('closed');
}
