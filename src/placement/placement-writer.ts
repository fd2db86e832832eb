/**
 * The leader's placement writes: moves.ts's decidePlacement decides, this writes what differs, each a CAS on the
 * key's revision, one pass at a time and paced (RECONCILE_MIN_INTERVAL_MS).
 */
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import type { Log } from '../log.js';
import type { Buckets, MembershipView } from './membership.js';
import { decidePlacement, type Placed } from './moves.js';
import { parsePlacementKey, toBytes, type Assignment } from './placement.js';

/**
 * Least time between two placement decisions. Bounds how fast controllers that disagree (a split brain) can move
 * a partition back and forth; costs a failover at most this much.
 */
const RECONCILE_MIN_INTERVAL_MS = 50;

/** Reconciling: one pass at a time; a change seen during a pass (or a lost write race) asks for another. */
type Pass = { phase: 'idle' } | { phase: 'reconciling'; again: boolean };
type Reconciling = Extract<Pass, { phase: 'reconciling' }>;

export interface WriterOptions {
  config: Config;
  log: Log;
  clock: Clock;
  buckets: Buckets;
  /** The placement as this controller knows it; its own writes go in at once. */
  placement: Map<string, Placed>;
  pins: ReadonlyMap<string, string>;
  drains: ReadonlySet<string>;
  members: MembershipView;
  /** Rendezvous seed; the same in every controller of a deployment. */
  seed: string;
  /** Workers this controller treats as absent (tests of a split brain). */
  ignore: (worker: string) => boolean;
  leadsNow: () => boolean;
  /** The controller runs: every watch has delivered what is there, and it is not closed. */
  running: () => boolean;
  closed: () => boolean;
}

export interface PlacementWriter {
  /** A pass soon (at once, or when the pace allows): something it decides on changed. */
  schedule(): void;
  /** Computes the placement and writes what differs. Returns the number of placement writes that succeeded. */
  reconcile(): Promise<number>;
  /** Deletes a control key. */
  forget(key: string): Promise<boolean>;
  /** Placement writes done. */
  writes(): number;
}

export function createPlacementWriter(o: WriterOptions): PlacementWriter {
  const { config, log, clock, buckets: b, placement } = o;
  let pass: Pass = { phase: 'idle' };
  let scheduled = false;
  let writes = 0;
  let lastReconcile = 0;
  /** How long until the next pass may start (≤ 0: now). */
  const paceMs = () => lastReconcile + RECONCILE_MIN_INTERVAL_MS - clock.now();

  function schedule(): void {
    if (scheduled || !o.running()) return;
    scheduled = true;
    const run = () => {
      scheduled = false;
      reconcile().catch((err: unknown) => log.error('reconcile failed', { err }));
    };
    const waitMs = paceMs();
    if (waitMs <= 0) setImmediate(run);
    else clock.setTimeout(run, waitMs);
  }

  async function reconcile(): Promise<number> {
    if (pass.phase === 'reconciling') {
      pass.again = true;
      return 0;
    }
    const current: Reconciling = { phase: 'reconciling', again: false };
    pass = current;
    let done = 0;
    try {
      do {
        current.again = false;
        if (!o.leadsNow() || o.closed()) break;
        const waitMs = paceMs();
        if (waitMs > 0) await clock.sleep(waitMs);
        lastReconcile = clock.now();
        done += await reconcileOnce(current);
      } while (current.again);
    } finally {
      pass = { phase: 'idle' };
    }
    return done;
  }

  async function reconcileOnce(current: Reconciling): Promise<number> {
    const view = { kinds: config.kinds, partitions: config.partitions, seed: o.seed, leaseMs: config.workerLeaseMs, placement, pins: o.pins, drains: o.drains, liveness: o.members.snapshot, ignore: o.ignore };
    const jobs = decidePlacement(view, clock.now()).map((action) => (action.do === 'place' ? write(action.key, action.next, action.rev, current) : forget(action.key)));
    const results = await Promise.all(jobs);
    return results.filter(Boolean).length;
  }

  async function write(key: string, next: Assignment, rev: number | undefined, current: Reconciling): Promise<boolean> {
    try {
      const data = toBytes(next);
      const newRev = rev === undefined ? await b.placement.create(key, data) : await b.placement.update(key, data, rev);
      const cur = placement.get(key);
      if (!cur || cur.rev < newRev) placement.set(key, { a: next, rev: newRev, at: clock.now() });
      writes++;
      log.info('placed', { ...parsePlacementKey(key), worker: next.worker, epoch: next.epoch, ...(next.prev ? { from: next.prev } : {}) });
      return true;
    } catch (err) {
      // Another controller wrote first (CAS on the revision): its write arrives through the watch; decide again then.
      log.debug('placement write lost a race', { ...parsePlacementKey(key), err });
      current.again = true;
      return false;
    }
  }

  async function forget(key: string): Promise<boolean> {
    try {
      await b.control.delete(key);
    } catch (err) {
      log.debug('could not delete control key', { key, err });
    }
    return false;
  }

  return { schedule, reconcile, forget, writes: () => writes };
}
