/**
 * The dynamic worker's reconciler: brings each partition of the kinds it hosts to what handoff.ts's hostedStep decides
 * (take it at the placement's epoch, let it go, or wait), one step at a time per partition. A failed start is
 * worker-rules.ts's afterFailedStart to decide.
 */
import type { Redis } from 'ioredis';
import type { Clock } from '../clock.js';
import type { Config, Kind } from '../config.js';
import type { PartitionRunner } from '../datapath/runner.js';
import type { PartitionStore } from '../datapath/store.js';
import { hostedStep, type HostedView } from './handoff.js';
import { placementKey, type Assignment, type Heartbeat } from './placement.js';
import { newRunner, partitionStore, type Kit } from './worker-kit.js';
import { afterFailedStart } from './worker-rules.js';

/** One partition of a kind a dynamic worker hosts: what the placement says about it, and the runner this process has for it. */
export interface HostedPartition {
  kind: Kind;
  partition: number;
  key: string;
  store: PartitionStore;
  assigned?: Assignment;
  /** Local time the current assignment was first seen (bounds the wait for the previous owner to let go). */
  assignedAt: number;
  /** A runner not stopped by this worker: running, or in its own restart after a transport failure. */
  runner?: PartitionRunner;
  /** Stepped one at a time; a change seen meanwhile asks for another step ('again'). */
  pass: 'idle' | 'stepping' | 'again';
  /** After a failed start, not again before this time. */
  retryAt: number;
}

/** Every partition of every kind the worker hosts, by placement key, none assigned yet. */
export function hostedPartitions(redis: Redis, config: Config): Map<string, HostedPartition> {
  const hosted = new Map<string, HostedPartition>();
  for (const kind of config.kinds) {
    for (let p = 0; p < config.partitions; p++) {
      const key = placementKey(kind, p);
      hosted.set(key, { kind, partition: p, key, store: partitionStore(redis, config, kind, p), assignedAt: 0, pass: 'idle', retryAt: 0 });
    }
  }
  return hosted;
}

/** The runners the worker has now. */
export const runnersOf = (hosted: ReadonlyMap<string, HostedPartition>): PartitionRunner[] => [...hosted.values()].flatMap((h) => (h.runner ? [h.runner] : []));

export interface ReconcilerOptions {
  kit: Kit;
  self: string;
  clock: Clock;
  hosted: ReadonlyMap<string, HostedPartition>;
  /** Epochs Redis holds above the placement's, by key (reported in the heartbeat). */
  stale: Map<string, number>;
  /** The worker runs partitions at all (handoff.ts serving()). */
  serving: () => boolean;
  /** The heartbeat of a worker, if it is alive. */
  liveHeartbeat: (worker: string) => Heartbeat | undefined;
  /** A heartbeat now, not at the next tick: a handoff waits for it. */
  beatNow: () => void;
}

export interface Reconciler {
  /** Steps one partition now, or once more after the step in progress. */
  reconcile(p: HostedPartition): Promise<void>;
  /** Steps every partition not being stepped now. */
  sweep(): void;
  /** Steps every partition; resolves when each has been stepped. */
  all(): Promise<void>;
}

export function createReconciler(o: ReconcilerOptions): Reconciler {
  const { kit, self, clock, hosted, stale } = o;
  const { config, log } = kit;

  async function reconcile(p: HostedPartition): Promise<void> {
    if (p.pass !== 'idle') {
      p.pass = 'again';
      return;
    }
    try {
      do {
        p.pass = 'stepping';
        await step(p);
      } while ((p.pass as HostedPartition['pass']) === 'again');
    } catch (err) {
      log.error('placement step failed', { kind: p.kind, partition: p.partition, err });
    } finally {
      p.pass = 'idle';
    }
  }

  const viewOf = (p: HostedPartition): HostedView => ({
    self,
    assigned: p.assigned,
    assignedAt: p.assignedAt,
    runner: p.runner && { state: p.runner.state, epoch: p.runner.epoch },
    stale: stale.get(p.key),
    retryAt: p.retryAt,
    prevHolds: p.assigned?.prev !== undefined && (o.liveHeartbeat(p.assigned.prev)?.held.some((h) => h.k === p.kind && h.p === p.partition) ?? false),
    serving: o.serving(),
  });

  async function step(p: HostedPartition): Promise<void> {
    for (;;) {
      const action = hostedStep(viewOf(p), clock.now(), config.workerLeaseMs);
      const r = p.runner;
      switch (action.do) {
        case 'forget':
          break;
        case 'check':
          // Not stopped by us: its restart after a transport failure, retrying, or refused for good by a newer epoch.
          if ((await p.store.epoch()) <= r!.epoch) return;
          break;
        case 'stop':
          await r!.stop();
          log.debug('let go', { kind: p.kind, partition: p.partition, epoch: r!.epoch });
          break;
        case 'start':
          return take(p, action.epoch);
        case 'wait':
        case 'nothing':
          return;
      }
      // The runner is gone: say so at once, then see whether the partition is to be taken at a new epoch.
      p.runner = undefined;
      o.beatNow();
    }
  }

  async function take(p: HostedPartition, epoch: number): Promise<void> {
    const runner = newRunner(kit, p.kind, p.partition, p.store, (fenced) => {
      log.warn('partition lost to a newer owner', { kind: p.kind, partition: p.partition, epoch: fenced.epoch });
      void reconcile(p);
    });
    p.runner = runner;
    try {
      await runner.start(epoch);
      log.debug('owned', { kind: p.kind, partition: p.partition, epoch, waitedMs: clock.now() - p.assignedAt });
    } catch (err) {
      p.runner = undefined;
      const failed = afterFailedStart(err, clock.now(), config.retryBackoffMs);
      if (failed.then === 'report-stale') {
        log.warn('the placement epoch is older than the one in Redis; asking the controller for a newer one', { kind: p.kind, partition: p.partition, epoch, stored: failed.stored });
        stale.set(p.key, failed.stored);
      } else {
        log.error('could not take the partition; retrying', { kind: p.kind, partition: p.partition, err });
        p.retryAt = failed.retryAt;
        await runner.stop();
      }
    }
    o.beatNow();
    // Stopped serving while it started (lease lost, closing): let it go again.
    if (!o.serving()) p.pass = 'again';
  }

  return {
    reconcile,
    sweep() {
      for (const p of hosted.values()) if (p.pass === 'idle') void reconcile(p);
    },
    all: () => Promise.all([...hosted.values()].map((p) => reconcile(p))).then(() => {}),
  };
}
