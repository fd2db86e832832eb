/**
 * The placement controller. Every dynamic worker runs one; exactly one leads, elected through compare-and-set on
 * the `leader` key of the control bucket (the leader renews it every heartbeat; a key unchanged for a lease is
 * taken over by CAS on its revision). The leader watches the workers and the placement and writes, for every
 * partition, `{ worker, epoch }` with a new epoch on every change, each write a CAS on the key's revision: two
 * controllers at once (a split brain) can make partitions change hands often, but never give one epoch to two
 * workers, and the epoch in Redis lets only the newest owner commit.
 *
 * It also answers shopctl's move, drain and rebalance on the admin subject (admin.ts). The parts: leadership.ts
 * performs election.ts's decisions, placement-writer.ts moves.ts's, admin.ts admin-rules.ts's; this wires them.
 */
import type { KvEntry, NatsConnection } from 'nats';
import type { Config } from '../config.js';
import { faultLog, type Fault } from '../faults.js';
import type { Log } from '../log.js';
import { systemClock, type Clock } from '../clock.js';
import { names } from '../protocol.js';
import { serveAdmin } from './admin.js';
import { createLeadership, type Leadership } from './leadership.js';
import { MembershipView, openBuckets, watchKv, type Buckets, type Watch } from './membership.js';
import { ranLate } from './liveness.js';
import type { Placed } from './moves.js';
import { kvValues } from './placement.js';
import { createPlacementWriter } from './placement-writer.js';

/** Heartbeat intervals without a pulse after which the leader asks whether a worker's process still lives. */
const PROBE_AFTER_INTERVALS = 3;

export interface ControllerOptions {
  nc: NatsConnection;
  config: Config;
  log: Log;
  /** This candidate's name in the leader key (a worker runs its candidate under its own id). */
  id: string;
  buckets?: Buckets;
  /** false: act as leader without election. Only for tests that force a split brain. */
  elect?: boolean;
  /** Rendezvous seed; the same in every controller of a deployment. */
  seed?: string;
  /** Workers this controller treats as absent: a controller cut off from some workers (tests of a split brain). */
  ignore?: (worker: string) => boolean;
  /** Time for leases, renewals and the pace of decisions; default the wall clock. */
  clock?: Clock;
}

export interface Controller {
  readonly id: string;
  /** Leads now, with a leadership renewed within the last lease. */
  leading(): boolean;
  /** Placement writes done (for tests and metrics). */
  writes(): number;
  close(): Promise<void>;
}

/**
 * The worker named by a placement entry whose value is not an assignment, and by a leader entry whose value is not
 * a leader: no worker or candidate id can be empty, so nobody is it. A broken placement is thus a partition on a
 * dead worker (the leader writes a good one, at a newer epoch), and a broken leader one that never renews (taken
 * over by CAS after a lease).
 */
const NOBODY = '';

/** The controller's own lifecycle: nothing is decided before every watch has delivered what is there, nor after close. */
type ControllerPhase = 'starting' | 'running' | 'closed';

export async function startController({ nc, config, log: parentLog, id, buckets, elect = true, seed = '', ignore = () => false, clock = systemClock }: ControllerOptions): Promise<Controller> {
  const log = parentLog.child('controller');
  const fault = faultLog(log);
  const b = buckets ?? (await openBuckets(nc.jetstream(), config));
  const placement = new Map<string, Placed>();
  const pins = new Map<string, string>(); // placement key -> worker
  const drains = new Set<string>();
  let phase: ControllerPhase = 'starting';
  const startedAt = clock.now();
  const limits = { leaseMs: config.workerLeaseMs, intervalMs: config.heartbeatIntervalMs };
  const leadership = createLeadership({ id, control: b.control, log, clock, limits, elect, started: () => phase !== 'starting' });
  const n = names(config.streamPrefix);
  const members = new MembershipView(b.workers, config.workerLeaseMs, log, () => writer.schedule(), clock, { nc, subject: n.pulses, probe: n.probe });
  const writer = createPlacementWriter({
    config,
    log,
    clock,
    buckets: b,
    placement,
    pins,
    drains,
    members,
    seed,
    ignore,
    leadsNow: leadership.leadsNow,
    running: () => phase === 'running',
    closed: () => phase === 'closed',
  });
  await members.start();

  const watches: Watch[] = [];
  watches.push(
    await watchKv(b.placement, '>', log, (e) => {
      seePlacement(placement, e, fault, clock.now());
      writer.schedule();
    }),
  );
  watches.push(
    await watchKv(b.control, '>', log, (e) => {
      if (e.key === 'leader') {
        const key = e.operation === 'PUT' ? { id: (kvValues.leader(e.value, fault, e.key) ?? { id: NOBODY }).id, rev: e.revision } : undefined;
        if (elect) void leadership.decide({ kind: 'observed', key, now: clock.now() });
      } else seeControl(pins, drains, e, fault);
      writer.schedule();
    }),
  );
  await Promise.all(watches.map((w) => w.ready));

  const tick = ticker({ id, config, clock, members, leadership, elect, startedAt, reconcile: writer.reconcile });
  phase = 'running';
  await tick();
  const timer = clock.setInterval(() => tick().catch((err: unknown) => log.error('controller tick failed', { err })), config.heartbeatIntervalMs);

  const admin = serveAdmin({ nc, config, log, clock, control: b.control, members, placement, pins, drains, writes: writer.writes, reconcile: writer.reconcile, forget: writer.forget, leadsNow: leadership.leadsNow, closed: () => phase === 'closed' });

  return {
    id,
    leading: leadership.leadsNow,
    writes: writer.writes,
    async close() {
      if (phase === 'closed') return;
      phase = 'closed';
      clock.clearInterval(timer);
      admin.unsubscribe();
      for (const w of watches) w.stop();
      members.stop();
      await leadership.decide({ kind: 'close' });
    },
  };
}

/** A placement entry from the watch, into what the controller knows (an older revision than known changes nothing). */
function seePlacement(placement: Map<string, Placed>, e: KvEntry, fault: Fault, now: number): void {
  if (e.operation !== 'PUT') {
    placement.delete(e.key);
    return;
  }
  const cur = placement.get(e.key);
  // Not an assignment: a placement on nobody at the epoch last known there, so the leader writes a good one above it.
  const a = kvValues.assignment(e.value, fault, e.key) ?? { worker: NOBODY, epoch: cur?.a.epoch ?? 0 };
  if (!cur || cur.rev < e.revision) placement.set(e.key, { a, rev: e.revision, at: now });
}

/** A pin or a drain from the control bucket (its other keys are the leader's and the layout's). */
function seeControl(pins: Map<string, string>, drains: Set<string>, e: KvEntry, fault: Fault): void {
  const put = e.operation === 'PUT';
  if (e.key.startsWith('pin.')) {
    const key = e.key.slice(4);
    const pin = put ? kvValues.pin(e.value, fault, e.key) : undefined;
    if (pin) pins.set(key, pin.worker);
    else pins.delete(key);
  } else if (e.key.startsWith('drain.')) {
    if (put && kvValues.drain(e.value, fault, e.key)) drains.add(e.key.slice(6));
    else drains.delete(e.key.slice(6));
  }
}

interface TickOptions {
  id: string;
  config: Config;
  clock: Clock;
  members: MembershipView;
  leadership: Leadership;
  elect: boolean;
  /** When the controller started: a first tick long after it means this process was stalled. */
  startedAt: number;
  reconcile: () => Promise<number>;
}

/** The tick: leadership, then the placement. */
function ticker({ id, config, clock, members, leadership, elect, startedAt, reconcile }: TickOptions): () => Promise<void> {
  let ticking = false;
  let lastTick = startedAt;
  return async () => {
    // One tick at a time: under load a renewal can take longer than an interval, and a second one sent on the same
    // revision is refused ("wrong last sequence"), which cost the leader its leadership every couple of seconds.
    if (ticking) return;
    ticking = true;
    try {
      const now = clock.now();
      if (ranLate(lastTick, now, config.workerLeaseMs)) members.forgive(now);
      lastTick = now;
      // A worker whose pulses are late by PROBE_AFTER_INTERVALS: is its process still there? (membership.ts) The
      // leader asks about every worker; the others about the leader, and take over at once when it is gone.
      const lateMs = PROBE_AFTER_INTERVALS * config.heartbeatIntervalMs;
      const seen = leadership.seen;
      if (leadership.leadsNow()) void members.probeSilent(lateMs, config.heartbeatIntervalMs).catch(() => {});
      else if (elect && seen && seen.id !== id) {
        const leader = seen.id;
        void members
          .probeSilent(lateMs, config.heartbeatIntervalMs, [leader])
          .then((gone) => (gone.includes(leader) && leadership.seen?.id === leader ? leadership.decide({ kind: 'tick', now: clock.now(), gone: true }) : undefined))
          .catch(() => {});
      }
      if (elect) await leadership.decide({ kind: 'tick', now });
      await reconcile();
    } finally {
      ticking = false;
    }
  };
}
