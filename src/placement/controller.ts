/**
 * The placement controller. Every dynamic worker runs one; exactly one leads, elected through compare-and-set on
 * the `leader` key of the control bucket (the leader renews it every heartbeat; a key unchanged for a lease is
 * taken over by CAS on its revision). The leader watches the workers and the placement and writes, for every
 * partition, `{ worker, epoch }` with a new epoch on every change, each write a CAS on the key's revision: two
 * controllers at once (a split brain) can make partitions change hands often, but never give one epoch to two
 * workers, and the epoch in Redis lets only the newest owner commit.
 *
 * It also answers shopctl's move, drain and rebalance on the admin subject.
 */
import { headers as natsHeaders, type KvEntry, type Msg, type NatsConnection, type Subscription } from 'nats';
import { timingSafeEqual } from 'node:crypto';
import type { Config, Kind } from '../config.js';
import { faultLog } from '../faults.js';
import type { Log } from '../log.js';
import { systemClock, type Clock } from '../clock.js';
import { names } from '../protocol.js';
import { MembershipView, openBuckets, watchKv, type Buckets, type Watch } from './membership.js';
import { electionStep, leads, newElection, type ElectionEvent, type ElectionLimits } from './election.js';
import { ranLate } from './liveness.js';
import { decidePlacement, type Placed } from './moves.js';
import { fromBytes, kvValues, parsePlacementKey, placementKey, toBytes, type Assignment } from './placement.js';

/** How long an admin request waits for its moves to take effect before it answers with what is still pending. */
export const ADMIN_SETTLE_DEADLINE_MS = 30_000;
/** Header carrying config.adminToken on admin requests. */
export const ADMIN_TOKEN_HEADER = 'Shop-Admin-Token';
const SETTLE_POLL_MS = 20;
/**
 * Least time between two placement decisions. Bounds how fast controllers that disagree (a split brain) can move
 * a partition back and forth; costs a failover at most this much.
 */
const RECONCILE_MIN_INTERVAL_MS = 50;
/** Heartbeat intervals without a pulse after which the leader asks whether a worker's process still lives. */
const PROBE_AFTER_INTERVALS = 3;

export type AdminRequest =
  | { op: 'move'; kind: Kind; partition: number; worker: string }
  | { op: 'drain'; worker: string }
  | { op: 'rebalance' };

export type AdminReply = { ok: true; message: string; moves: number; ms: number; detail?: unknown } | { ok: false; error: string };

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

/** Every server of `natsUrl` (a comma-separated list) is on this machine. */
const isLoopbackUrl = (urls: string) => urls.split(',').every((url) => /^(nats|tls):\/\/([^@/]*@)?(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\/?$/.test(url.trim()));

/** The controller's own lifecycle: nothing is decided before every watch has delivered what is there, nor after close. */
type ControllerPhase = 'starting' | 'running' | 'closed';

/** Reconciling: one pass at a time; a change seen during a pass (or a lost write race) asks for another. */
type Pass = { phase: 'idle' } | { phase: 'reconciling'; again: boolean };
type Reconciling = Extract<Pass, { phase: 'reconciling' }>;

export async function startController({ nc, config, log: parentLog, id, buckets, elect = true, seed = '', ignore = () => false, clock = systemClock }: ControllerOptions): Promise<Controller> {
  const log = parentLog.child('controller');
  const fault = faultLog(log);
  const b = buckets ?? (await openBuckets(nc.jetstream(), config));
  const lease = config.workerLeaseMs;
  const limits: ElectionLimits = { leaseMs: lease, intervalMs: config.heartbeatIntervalMs };
  const placement = new Map<string, Placed>();
  const pins = new Map<string, string>(); // placement key -> worker
  const drains = new Set<string>();
  let phase: ControllerPhase = 'starting';
  let election = newElection(id);
  let pass: Pass = { phase: 'idle' };
  let scheduled = false;
  let writes = 0;
  let lastTick = clock.now();

  const n = names(config.streamPrefix);
  const members = new MembershipView(b.workers, lease, log, () => schedule(), clock, { nc, subject: n.pulses, probe: n.probe });
  await members.start();

  const watches: Watch[] = [];
  watches.push(
    await watchKv(b.placement, '>', log, (e) => {
      if (e.operation !== 'PUT') placement.delete(e.key);
      else {
        const cur = placement.get(e.key);
        // Not an assignment: a placement on nobody at the epoch last known there, so the leader writes a good one above it.
        const a = kvValues.assignment(e.value, fault, e.key) ?? { worker: NOBODY, epoch: cur?.a.epoch ?? 0 };
        if (!cur || cur.rev < e.revision) placement.set(e.key, { a, rev: e.revision, at: clock.now() });
      }
      schedule();
    }),
  );
  watches.push(await watchKv(b.control, '>', log, (e) => onControl(e)));
  await Promise.all(watches.map((w) => w.ready));

  function onControl(e: KvEntry) {
    const put = e.operation === 'PUT';
    if (e.key === 'leader') {
      const key = put ? { id: (kvValues.leader(e.value, fault, e.key) ?? { id: NOBODY }).id, rev: e.revision } : undefined;
      if (elect) void decide({ kind: 'observed', key, now: clock.now() });
    } else if (e.key.startsWith('pin.')) {
      const key = e.key.slice(4);
      const pin = put ? kvValues.pin(e.value, fault, e.key) : undefined;
      if (pin) pins.set(key, pin.worker);
      else pins.delete(key);
    } else if (e.key.startsWith('drain.')) {
      if (put && kvValues.drain(e.value, fault, e.key)) drains.add(e.key.slice(6));
      else drains.delete(e.key.slice(6));
    }
    schedule();
  }

  // ---- leadership: election.ts decides, this performs its writes --------------------------------------

  /** Without election (a forced split brain) every controller leads from its first tick on. */
  const valid = () => (elect ? leads(election, clock.now(), limits) : phase !== 'starting');

  async function decide(event: ElectionEvent): Promise<void> {
    const step = electionStep(election, event, limits);
    election = step.state;
    for (const action of step.actions) {
      switch (action.do) {
        case 'log':
          log[action.level](action.msg, action.fields);
          break;
        case 'write': {
          const { claim } = action;
          const value = toBytes({ id, at: claim.at });
          let rev: number;
          try {
            rev = claim.op === 'create' ? await b.control.create('leader', value) : await b.control.update('leader', value, claim.rev);
          } catch (err) {
            await decide({ kind: 'refused', claim, err });
            break;
          }
          await decide({ kind: 'written', claim, rev });
          break;
        }
        case 'resign':
          // Hand over at once instead of after a lease: a candidate that sees the key deleted creates it.
          await b.control.delete('leader', { previousSeq: action.rev }).catch(() => {});
          break;
      }
    }
  }

  // ---- reconciling: moves.ts decides, this writes -----------------------------------------------------

  let lastReconcile = 0;
  function schedule(): void {
    if (scheduled || phase !== 'running') return;
    scheduled = true;
    const run = () => {
      scheduled = false;
      reconcile().catch((err: unknown) => log.error('reconcile failed', { err }));
    };
    const waitMs = lastReconcile + RECONCILE_MIN_INTERVAL_MS - clock.now();
    if (waitMs <= 0) setImmediate(run);
    else clock.setTimeout(run, waitMs);
  }

  /** Computes the placement and writes what differs. Returns the number of placement writes that succeeded. */
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
        if (!valid() || phase === 'closed') break;
        const waitMs = lastReconcile + RECONCILE_MIN_INTERVAL_MS - clock.now();
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
    const view = { kinds: config.kinds, partitions: config.partitions, seed, leaseMs: lease, placement, pins, drains, liveness: members.snapshot, ignore };
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

  // ---- the tick: leadership, then the placement ------------------------------------------------------

  let ticking = false;
  async function tick(): Promise<void> {
    // One tick at a time: under load a renewal can take longer than an interval, and a second one sent on the same
    // revision is refused ("wrong last sequence"), which cost the leader its leadership every couple of seconds.
    if (ticking) return;
    ticking = true;
    try {
      const now = clock.now();
      if (ranLate(lastTick, now, lease)) members.forgive(now);
      lastTick = now;
      // A worker whose pulses are late by PROBE_AFTER_INTERVALS: is its process still there? (membership.ts) The
      // leader asks about every worker; the others about the leader, and take over at once when it is gone.
      const lateMs = PROBE_AFTER_INTERVALS * config.heartbeatIntervalMs;
      if (valid()) void members.probeSilent(lateMs, config.heartbeatIntervalMs).catch(() => {});
      else if (elect && election.seen && election.seen.id !== id) {
        const leader = election.seen.id;
        void members
          .probeSilent(lateMs, config.heartbeatIntervalMs, [leader])
          .then((gone) => (gone.includes(leader) && election.seen?.id === leader ? decide({ kind: 'tick', now: clock.now(), gone: true }) : undefined))
          .catch(() => {});
      }
      if (elect) await decide({ kind: 'tick', now });
      await reconcile();
    } finally {
      ticking = false;
    }
  }
  phase = 'running';
  await tick();
  const timer = clock.setInterval(() => tick().catch((err: unknown) => log.error('controller tick failed', { err })), config.heartbeatIntervalMs);

  const admin = serveAdmin({ nc, config, log, clock, control: b.control, members, placement, pins, drains, writes: () => writes, reconcile, forget, leading: valid, closed: () => phase === 'closed' });

  return {
    id,
    leading: valid,
    writes: () => writes,
    async close() {
      if (phase === 'closed') return;
      phase = 'closed';
      clock.clearInterval(timer);
      admin.unsubscribe();
      for (const w of watches) w.stop();
      members.stop();
      await decide({ kind: 'close' });
    },
  };
}

/** What the admin requests work on: the controller's view and its reconcile. */
interface AdminContext {
  nc: NatsConnection;
  config: Config;
  log: Log;
  clock: Clock;
  control: Buckets['control'];
  members: MembershipView;
  placement: ReadonlyMap<string, Placed>;
  pins: Map<string, string>;
  drains: Set<string>;
  writes: () => number;
  reconcile: () => Promise<number>;
  forget: (key: string) => Promise<boolean>;
  /** Only the leader answers. */
  leading: () => boolean;
  closed: () => boolean;
}

/** Answers shopctl's move, drain and rebalance on the admin subject, while this controller leads. */
function serveAdmin(ctx: AdminContext): Subscription {
  const sub = ctx.nc.subscribe(names(ctx.config.streamPrefix).admin, {
    callback: (err, msg) => {
      if (err || !ctx.leading()) return; // only the leader answers
      answer(msg).catch((e: unknown) => ctx.log.warn('could not answer an admin request', { err: e }));
    },
  });
  const { config, log, clock, control, members, placement, pins, drains, writes, reconcile, forget } = ctx;
  const token = config.adminToken;

  function authorised(msg: Msg): string | undefined {
    if (token) {
      const given = Buffer.from(msg.headers?.get(ADMIN_TOKEN_HEADER) ?? '');
      const wanted = Buffer.from(token);
      return given.length === wanted.length && timingSafeEqual(given, wanted) ? undefined : `admin requests need the admin token (${ADMIN_TOKEN_HEADER} header; shopctl --token or SHOP_ADMIN_TOKEN)`;
    }
    return isLoopbackUrl(config.natsUrl)
      ? undefined
      : `admin requests are refused: NATS (${config.natsUrl}) is not on loopback and no adminToken is set; set SHOP_ADMIN_TOKEN on the workers and shopctl`;
  }

  async function answer(msg: Msg): Promise<void> {
    let reply: AdminReply;
    const started = clock.now();
    try {
      const refusal = authorised(msg);
      if (refusal) reply = { ok: false, error: refusal };
      else reply = await perform(fromBytes<AdminRequest>(msg.data), started);
    } catch (err) {
      reply = { ok: false, error: (err as Error).message };
    }
    msg.respond(toBytes(reply));
  }

  function resolveWorker(given: string): string {
    const live = members.live().map((m) => m.hb.id);
    if (live.includes(given)) return given;
    const matches = live.filter((w) => w.startsWith(given));
    if (matches.length === 1) return matches[0]!;
    throw new Error(matches.length === 0 ? `no live worker ${JSON.stringify(given)}; live: ${live.join(', ') || 'none'}` : `${JSON.stringify(given)} names several workers: ${matches.join(', ')}`);
  }

  /** True when every partition is held, at its placement epoch, by the worker the placement names. */
  function settled(filter: (key: string, a: Assignment) => boolean = () => true): string[] {
    const pending: string[] = [];
    for (const [key, { a }] of placement) {
      if (!filter(key, a)) continue;
      const parsed = parsePlacementKey(key);
      const hb = members.members.get(a.worker)?.hb;
      if (!parsed || !hb?.held.some((h) => h.k === parsed.kind && h.p === parsed.partition && h.e === a.epoch)) pending.push(key);
    }
    return pending;
  }

  async function until(pendingOf: () => string[], deadline: number): Promise<string[]> {
    for (;;) {
      const pending = pendingOf();
      if (pending.length === 0 || clock.now() >= deadline || ctx.closed()) return pending;
      await clock.sleep(SETTLE_POLL_MS);
    }
  }

  async function perform(req: AdminRequest, started: number): Promise<AdminReply> {
    const deadline = started + ADMIN_SETTLE_DEADLINE_MS;
    const before = writes();
    switch (req.op) {
      case 'move': {
        const { kind, partition } = req;
        if (!config.kinds.includes(kind)) throw new Error(`unknown kind ${JSON.stringify(kind)}; this deployment runs ${config.kinds.join(', ')}`);
        if (!Number.isInteger(partition) || partition < 0 || partition >= config.partitions) throw new Error(`partition must be 0..${config.partitions - 1}, got ${partition}`);
        const worker = resolveWorker(req.worker);
        const hb = members.members.get(worker)!.hb;
        if (!hb.kinds.includes(kind)) throw new Error(`worker ${worker} does not host ${kind} (it hosts ${hb.kinds.join(', ')})`);
        if (hb.draining || drains.has(worker)) throw new Error(`worker ${worker} is draining`);
        const key = placementKey(kind, partition);
        const from = placement.get(key)?.a.worker;
        await control.put(`pin.${key}`, toBytes({ worker }));
        pins.set(key, worker);
        await reconcile();
        const pending = await until(() => (placement.get(key)?.a.worker === worker ? settled((k) => k === key) : [key]), deadline);
        if (pending.length > 0) return { ok: false, error: `${key} is not yet running on ${worker} after ${ADMIN_SETTLE_DEADLINE_MS} ms` };
        return { ok: true, message: `moved ${kind} ${partition}: ${from ?? 'nobody'} -> ${worker} (epoch ${placement.get(key)!.a.epoch})`, moves: writes() - before, ms: clock.now() - started };
      }
      case 'drain': {
        const worker = resolveWorker(req.worker);
        const held = placement.size === 0 ? 0 : [...placement.values()].filter((p) => p.a.worker === worker).length;
        await control.put(`drain.${worker}`, toBytes({ at: clock.now() }));
        drains.add(worker);
        await reconcile();
        const pending = await until(() => {
          const hb = members.members.get(worker)?.hb;
          const still = [...placement].filter(([, p]) => p.a.worker === worker).map(([k]) => k);
          return [...still, ...(hb && members.alive(worker) ? hb.held.map((h) => placementKey(h.k, h.p)) : [])];
        }, deadline);
        if (pending.length > 0) return { ok: false, error: `${worker} still holds ${[...new Set(pending)].join(' ')} after ${ADMIN_SETTLE_DEADLINE_MS} ms (does another worker host those kinds?)` };
        return { ok: true, message: `drained ${worker}: ${held} partitions moved; it exits now`, moves: writes() - before, ms: clock.now() - started };
      }
      case 'rebalance': {
        await Promise.all([...pins.keys()].map((key) => forget(`pin.${key}`)));
        pins.clear();
        await reconcile();
        const pending = await until(() => settled(), deadline);
        if (pending.length > 0) return { ok: false, error: `not settled after ${ADMIN_SETTLE_DEADLINE_MS} ms: ${pending.join(' ')}` };
        return { ok: true, message: `balanced: ${writes() - before} partitions moved`, moves: writes() - before, ms: clock.now() - started };
      }
      default:
        throw new Error(`unknown admin op ${JSON.stringify((req as { op: unknown }).op)}; known: move, drain, rebalance`);
    }
  }
  return sub;
}

/** Sends one admin request to the leading controller and returns its answer. */
export async function adminRequest(nc: NatsConnection, config: Config, req: AdminRequest, { token = config.adminToken, timeoutMs = ADMIN_SETTLE_DEADLINE_MS + 5000 } = {}): Promise<AdminReply> {
  const h = natsHeaders();
  if (token) h.set(ADMIN_TOKEN_HEADER, token);
  let msg: Msg;
  try {
    msg = await nc.request(names(config.streamPrefix).admin, toBytes(req), { timeout: timeoutMs, headers: h });
  } catch (err) {
    const why = (err as Error).message;
    return { ok: false, error: /503|no responders/i.test(why) ? 'no controller answered: are the workers running with placement "dynamic"?' : `no answer from the controller: ${why}` };
  }
  return fromBytes<AdminReply>(msg.data);
}
