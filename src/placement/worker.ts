import type { Redis } from 'ioredis';
import type { KvEntry, NatsConnection, Subscription } from 'nats';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { actorOf } from '../actors/index.js';
import { createWorkerMetrics, type PartitionSample, type StreamSample } from '../monitoring/metrics.js';
import type { Registry } from 'prom-client';
import type { Config, Kind } from '../config.js';
import { faultLog } from '../faults.js';
import type { Log } from '../log.js';
import { names } from '../protocol.js';
import { systemClock, type Clock } from '../clock.js';
import { startController, type Controller } from './controller.js';
import { draining, newWorker, serving, slotStep, workerStep, type SlotView, type WorkerAction, type WorkerEnd, type WorkerEvent } from './handoff.js';
import type { LeaseLimits } from './liveness.js';
import { GONE_PULSE, MembershipView, openBuckets, openControlBucket, watchKv, type Buckets, type Watch } from './membership.js';
import { claimLayout, LayoutMismatchError } from '../transport/layout.js';
import type { RunnerMetrics } from '../datapath/runner-metrics.js';
import { Mux } from '../transport/mux.js';
import { resendAnswers } from '../transport/resend.js';
import { watchStreamLeaders, type StreamLeaders } from '../transport/stream-leaders.js';
import { PartitionRunner } from '../datapath/runner.js';
import { kvValues, parsePlacementKey, placementKey, toBytes, type Assignment, type Heartbeat } from './placement.js';
import { BatchLoop } from '../datapath/batch-loop.js';
import { warmActorsOnce } from '../datapath/warm-up.js';
import { Courier } from '../datapath/courier.js';
import type { Inbound } from '../datapath/batch-loop.js';
import { createPartitionStore, StaleEpochError, type PartitionStore } from '../datapath/store.js';
import { ensureStreams, untilJetStream } from '../datapath/streams.js';

export type { WorkerEnd } from './handoff.js';

export interface Worker {
  /** Its name in the placement (dynamic) or `worker-<index>` (static). */
  readonly id: string;
  /** The runners it has now. */
  readonly runners: readonly PartitionRunner[];
  /** The runner of one partition here, if any. */
  runner(kind: Kind, partition: number): PartitionRunner | undefined;
  /** Prometheus metrics of this worker. */
  readonly registry: Registry;
  /** Resolves when a dynamic worker must exit by itself; never for a static one. Call close() then. */
  readonly ended: Promise<WorkerEnd>;
  /** Runs every partition its placement gives it (and, dynamic, still holds its lease). */
  ready(): { ok: boolean; detail?: string };
  /** Dynamic: hands its partitions to other workers first (bounded by shutdownGraceMs), then stops; static: stops. */
  close(): Promise<void>;
}

export interface WorkerOptions {
  nc: NatsConnection;
  redis: Redis;
  config: Config;
  log: Log;
  /** Static placement with exactly these partitions (tests). Without it, config.placement decides. */
  partitions?: { kind: Kind; partition: number }[];
  /** Also told of every committed batch and decided saga (tests). */
  metrics?: RunnerMetrics;
  /** Dynamic: rendezvous seed of this worker's controller candidate (tests). */
  controllerSeed?: string;
  /** Dynamic: run no controller candidate in this worker (tests that run controllers of their own). */
  controller?: boolean;
  /** The port of this process's admin HTTP, announced in the heartbeat (shopctl and tests find /metrics by it). */
  adminPort?: number;
  /** Dynamic: time for the lease, the handoff and the drain; default the wall clock. */
  clock?: Clock;
}

/** Part of shutdownGraceMs a closing worker may spend waiting for its partitions to move, the rest is for stopping. */
const DRAIN_SHARE_OF_GRACE = 0.5;
/** Part of shutdownGraceMs for stopping the runners after that. */
const STOP_SHARE_OF_GRACE = 0.25;
/** How often a closing worker looks whether its partitions have moved. */
const DRAIN_POLL_MS = 20;
/** Heartbeat puts in flight at once, at most (each ends within heartbeatPutTimeoutMs). */
const HEARTBEAT_PUTS_INFLIGHT_MAX = 8;
/** How long one heartbeat put may take: twice the interval, at least 1 s (the puts after it do not wait for it). */
const heartbeatPutTimeoutMs = (intervalMs: number) => Math.max(2 * intervalMs, 1000);

/** Static placement: partition p of every kind belongs to worker p % workerProcesses. */
export function ownedPartitions(config: Config): { kind: Kind; partition: number }[] {
  const owned: { kind: Kind; partition: number }[] = [];
  for (const kind of config.kinds) {
    for (let p = 0; p < config.partitions; p++) {
      if (p % config.workerProcesses === config.workerIndex) owned.push({ kind, partition: p });
    }
  }
  return owned;
}

/** What a worker needs to build runners. */
interface Kit {
  nc: NatsConnection;
  config: Config;
  log: Log;
  redis: Redis;
  mux: Mux;
  /** The requests of gateways to send their answers again (resend.ts), ended with the mux. */
  resends: Subscription;
  courier: Courier;
  loop: BatchLoop;
  js: ReturnType<NatsConnection['jetstream']>;
  jsm: Awaited<ReturnType<NatsConnection['jetstreamManager']>>;
  metrics: RunnerMetrics;
  leaders: StreamLeaders;
}

/** How many replicas must have each commit, from the settings. */
const replicationOf = (config: Config) => ({ waitReplicas: config.redisWaitReplicas, waitTimeoutMs: config.redisWaitTimeoutMs });

function newRunner(kit: Kit, kind: Kind, partition: number, store: PartitionStore, onFenced: (r: PartitionRunner) => void): PartitionRunner {
  const { nc, jsm, mux, courier, loop, config, log, metrics, leaders } = kit;
  return new PartitionRunner({ nc, jsm, mux, courier, loop, config, log, metrics, leaders, actor: actorOf(kind), partition, store, onFenced });
}

const sampleOf = (runners: Iterable<PartitionRunner>): PartitionSample[] =>
  [...runners].filter((r) => r.state === 'running' || r.health()).map((r) => ({ kind: r.kind, partition: r.partition, epoch: r.epoch, lag: r.lag(), trouble: r.health()?.state }));

/** The fill of the kinds' command streams, one stream-info request each (the dead-letter stream drops its oldest when full). */
async function streamSamples(jsm: Kit['jsm'], config: Config): Promise<StreamSample[]> {
  const n = names(config.streamPrefix);
  const infos = await Promise.all(config.kinds.map((k) => n.stream(k)).map((s) => jsm.streams.info(s).catch(() => undefined)));
  return infos.flatMap((i) => (i ? [{ stream: i.config.name, bytes: i.state.bytes, maxBytes: i.config.max_bytes }] : []));
}

/** Partitions held but not serving (restarting after failures, or refusing a stream behind their cursor), for readiness. */
function troubled(runners: Iterable<PartitionRunner>): string | undefined {
  const list = [...runners].flatMap((r) => {
    const h = r.health();
    return h ? [`${r.kind}.${r.partition} ${h.state} (${h.attempts}x: ${h.error})`] : [];
  });
  return list.length > 0 ? list.join('; ') : undefined;
}

/**
 * A shard worker: hosts the partitions its placement gives it, each run by its own single-writer loop.
 * Static placement (config.placement 'static', or an explicit `partitions` list): a fixed set, taken at start.
 * Dynamic: see startDynamicWorker.
 */
export async function startWorker(opts: WorkerOptions): Promise<Worker> {
  const { nc, redis, config } = opts;
  const dynamic = !opts.partitions && config.placement === 'dynamic';
  const id = dynamic ? `worker-${config.workerIndex}-${randomBytes(3).toString('hex')}` : `worker-${config.workerIndex}`;
  // Every line of the worker, its partitions and its controller names it: `shopctl status` shows the same id.
  const log = opts.log.child({ workerId: id });
  const jsm = await untilJetStream('reach JetStream', () => nc.jetstreamManager(), log);
  const js = nc.jetstream();
  // The first worker of a cluster writes its layout; one whose partitions differ from the cluster's refuses to start,
  // before it changes anything (the streams' settings are the next step).
  const control = await untilJetStream('open the control bucket', () => openControlBucket(js, config), log);
  const layout = await untilJetStream('read the cluster layout', () => claimLayout(control, config, `worker ${id}`, log).catch((err: unknown) => (err instanceof LayoutMismatchError ? err : Promise.reject(err))), log);
  if (layout instanceof LayoutMismatchError) throw layout;
  await untilJetStream('create the streams', () => ensureStreams(jsm, config), log);
  const n = names(config.streamPrefix);
  const mux = new Mux(nc, n.inbox(config.natsUser || 'worker', `w${randomBytes(6).toString('hex')}`), faultLog(log), true);
  // Answers lost while this worker or a gateway changed servers go again (resend.ts).
  const resends = resendAnswers({ nc, mux, subject: n.resend, replies: n.replies, pingIntervalMs: config.natsPingIntervalMs, log });
  let current: () => Iterable<PartitionRunner> = () => [];
  let runnerOf: (kind: Kind, partition: number) => PartitionRunner | undefined = () => undefined;
  // Static placement: partition p of every kind runs on worker p % workerProcesses. Dynamic: the placement this worker follows.
  let locate = (_kind: Kind, partition: number): string | undefined => `worker-${partition % config.workerProcesses}`;
  const metrics = createWorkerMetrics(() => sampleOf(current()), opts.metrics, { partitions: config.partitions, kinds: config.kinds, streams: () => streamSamples(jsm, config) });
  const courier = new Courier({
    nc,
    mux,
    names: n,
    self: id,
    locate: (kind, partition) => locate(kind, partition),
    onParcel: (kind, partition, parcelId, commands, ackTo) => {
      const inbound: Inbound = { id: parcelId, ackTo, commands };
      runnerOf(kind, partition)?.deliverParcel(inbound); // not taken here: not acknowledged, so it comes again
    },
    log,
  });
  const loop = new BatchLoop({ config, log, metrics, ack: (to, ids) => courier.ack(to, ids) });
  // After a reconnect: a consumer that lived on the server this process lost would read nothing for a while
  // (PartitionRunner.reconnected), and parcels sent meanwhile may be lost (Courier.reconnected).
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type !== 'reconnect') continue;
      for (const r of current()) r.reconnected();
      courier.reconnected();
    }
  })().catch(() => {});
  // A stream's new leader: the consumers of its partitions here go at once (stream-leaders.ts).
  const leaders = watchStreamLeaders(nc, config.kinds.map((k) => n.stream(k)));
  for (const kind of config.kinds) {
    leaders.onElected(n.stream(kind), () => {
      for (const r of current()) if (r.kind === kind) r.streamLeaderElected();
    });
  }
  const warmMs = warmActorsOnce();
  if (warmMs) log.debug('actors warmed before taking partitions', { ms: warmMs });
  const kit: Kit = { nc, config, log, redis, mux, resends, courier, loop, js, jsm, metrics, leaders };
  const worker = dynamic
    ? await startDynamicWorker(kit, id, opts, metrics.registry, (follow) => (locate = follow))
    : await startStaticWorker(kit, id, opts.partitions ?? ownedPartitions(config), metrics.registry);
  current = () => worker.runners;
  runnerOf = (kind, partition) => worker.runner(kind, partition);
  return worker;
}

async function startStaticWorker(kit: Kit, id: string, partitions: { kind: Kind; partition: number }[], registry: Registry): Promise<Worker> {
  const { config, log, redis, mux, courier } = kit;
  const runners = partitions.map(({ kind, partition }) =>
    newRunner(kit, kind, partition, createPartitionStore(redis, config.redisPrefix, kind, partition, actorOf(kind).tables, replicationOf(config)), (r) =>
      log.warn('partition lost to a newer owner', { kind: r.kind, partition: r.partition }),
    ),
  );
  await Promise.all(runners.map((r) => r.start()));
  courier.announce();
  log.info('serving', { partitions: runners.map((r) => `${r.kind}-${r.partition}`).join(' ') });
  return {
    id,
    runners,
    runner: (kind, partition) => runners.find((r) => r.kind === kind && r.partition === partition),
    registry,
    ended: new Promise<WorkerEnd>(() => {}),
    ready() {
      const trouble = troubled(runners);
      if (trouble) return { ok: false, detail: trouble };
      const down = runners.filter((r) => r.state !== 'running');
      return down.length === 0 ? { ok: true } : { ok: false, detail: `not running: ${down.map((r) => `${r.kind}.${r.partition}`).join(' ')}` };
    },
    async close() {
      await Promise.all(runners.map((r) => r.stop()));
      courier.close();
      kit.resends.unsubscribe();
      kit.leaders.close();
      mux.close(new Error('worker closed'));
    },
  };
}

/** One partition of a dynamic worker: what the placement says about it, and the runner this process has for it. */
interface Slot {
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

/**
 * Dynamic placement. The worker registers under a fresh id in the workers bucket and heartbeats every
 * heartbeatIntervalMs, listing the partitions it runs. It watches the placement bucket and runs exactly the
 * partitions assigned to it: a gained partition is acquired at the placement's epoch (which fences any older
 * owner in Redis) once the previous owner has let go (its heartbeat no longer lists it) or a lease has passed;
 * a lost one is stopped (stop reading, finish the batch in hand, let go) and the next heartbeat says so at once.
 *
 * If its own heartbeats fail for workerLeaseMs less one interval, the controller may already have given its
 * partitions away: it stops every runner and `ended` resolves with 'lease-lost' (main.js exits; the supervisor
 * starts a fresh worker under a new id). On `drain` (shopctl) it gives everything away and `ended` resolves with
 * 'drained'. Every worker also runs a controller candidate (src/placement/controller.ts).
 *
 * The decisions are handoff.ts's (workerStep for the lifecycle and lease, slotStep per partition); this performs them.
 */
async function startDynamicWorker(kit: Kit, id: string, opts: WorkerOptions, registry: Registry, follow: (locate: (kind: Kind, partition: number) => string | undefined) => void): Promise<Worker> {
  const { nc, config, redis, mux, courier } = kit;
  const log = kit.log;
  const clock = opts.clock ?? systemClock;
  const fault = faultLog(log);
  const lease = config.workerLeaseMs;
  const interval = config.heartbeatIntervalMs;
  const limits: LeaseLimits = { leaseMs: lease, intervalMs: interval };
  const n = names(config.streamPrefix);
  const pulseSubject = n.pulse(id);
  // Answered while this process lives (and its connection is up): the leader asks when its pulses are late, and takes
  // a "no responders" for a death without waiting out the lease (membership.ts probeSilent).
  const probes = nc.subscribe(n.probe(id), { callback: (_err, msg) => msg.respond() });
  const buckets: Buckets = await untilJetStream('open the KV buckets', () => openBuckets(kit.js, config), log);
  // Heartbeats through a handle of their own with a short timeout: while the bucket elects a leader, a put can hang
  // for the client's whole timeout (5 s), and the next one must not wait for it (put()).
  const heartbeats = await untilJetStream(
    'bind the workers bucket',
    () => nc.jetstream({ timeout: heartbeatPutTimeoutMs(interval) }).views.kv(n.workersBucket, { bindOnly: true }),
    log,
  );
  const slots = new Map<string, Slot>();
  for (const kind of config.kinds) {
    for (let p = 0; p < config.partitions; p++) {
      const key = placementKey(kind, p);
      slots.set(key, { kind, partition: p, key, store: createPartitionStore(redis, config.redisPrefix, kind, p, actorOf(kind).tables, replicationOf(config)), assignedAt: 0, pass: 'idle', retryAt: 0 });
    }
  }
  const stale = new Map<string, number>();
  let state = newWorker(clock.now());
  const adminPort = opts.adminPort ?? 0;
  let endWith!: (end: WorkerEnd) => void;
  const ended = new Promise<WorkerEnd>((r) => (endWith = r));
  let closing: Promise<void> | undefined;

  const running = () => [...slots.values()].flatMap((s) => (s.runner ? [s.runner] : []));
  /** The worker of every partition of every kind, as the placement says: where saga parcels go. */
  const placed = new Map<string, string>();
  follow((kind, partition) => placed.get(placementKey(kind, partition)));

  // ---- the lifecycle and the lease: handoff.ts decides, this performs -------------------------------

  function dispatch(event: WorkerEvent): WorkerAction[] {
    const step = workerStep(state, event, limits);
    state = step.state;
    return step.actions;
  }

  /** Performs the actions; resolves when the heartbeats among them have been put (or failed). */
  function perform(actions: WorkerAction[]): Promise<void> {
    const puts: Promise<void>[] = [];
    for (const action of actions) {
      switch (action.do) {
        case 'put':
          puts.push(put(action.sentAt));
          break;
        case 'lose':
          log.error('lease lost: none of its heartbeats came back for longer than the lease allows; stopping every partition', { sinceLastMs: action.sinceAckMs, leaseMs: lease });
          // stop() unsubscribes reads and stops the reader at once; a commit in flight is refused by the epoch in Redis.
          for (const s of slots.values()) void reconcile(s);
          break;
        case 'end':
          endWith(action.how);
          break;
        case 'forgive':
          members.forgive(clock.now());
          break;
        case 'sweep':
          for (const s of slots.values()) if (s.pass === 'idle') void reconcile(s);
          break;
        case 'log':
          log.info(action.msg);
          break;
      }
    }
    return Promise.all(puts).then(() => {});
  }

  // ---- heartbeats -----------------------------------------------------------------------------------

  let beats = 0;
  const heartbeat = (sentAt: number): Heartbeat => ({
    id,
    seq: beats++,
    at: sentAt,
    pid: process.pid,
    host: hostname(),
    kinds: [...config.kinds],
    adminPort,
    draining: draining(state),
    held: running()
      .filter((r) => r.state !== 'fenced')
      .map((r) => {
        const trouble = r.health();
        return trouble ? { k: r.kind, p: r.partition, e: r.epoch, lag: r.lag(), t: trouble.state, n: trouble.attempts } : { k: r.kind, p: r.partition, e: r.epoch, lag: r.lag() };
      }),
    stale: Object.fromEntries(stale),
  });

  let puts = 0;
  /**
   * Sends the heartbeat: as a pulse on core NATS (membership.ts), and as a put in the workers bucket, without waiting
   * for the puts still in flight (at most HEARTBEAT_PUTS_INFLIGHT_MAX): one that hangs (its bucket electing a leader,
   * its server gone) must not hold up the next, which may find the new leader. The lease counts from the sending time
   * of the newest heartbeat that came back: its own pulse, heard through its server (heardBack), or its put, stored.
   */
  async function put(sentAt: number): Promise<void> {
    const bytes = toBytes(heartbeat(sentAt));
    try {
      nc.publish(pulseSubject, bytes);
    } catch (err) {
      log.debug('pulse not sent (connection closed?)', { err });
    }
    if (puts >= HEARTBEAT_PUTS_INFLIGHT_MAX) return;
    puts++;
    try {
      await heartbeats.put(id, bytes);
      void perform(dispatch({ kind: 'stored', sentAt }));
    } catch (err) {
      // While the bucket elects a leader its puts fail, and the pulses hold the lease: worth a warning only when they do not.
      const sinceLastMs = state.lease.phase === 'held' ? clock.now() - state.lease.ackedAt : undefined;
      const level = sinceLastMs !== undefined && sinceLastMs <= 2 * interval ? 'debug' : 'warn';
      log[level]('heartbeat not stored in the workers bucket', { err, sinceLastMs });
    } finally {
      puts--;
    }
  }
  /** Its own heartbeat, heard back through NATS (the pulse, or the bucket's watch): the lease holds. */
  function heardBack(): void {
    const sentAt = members.members.get(id)?.hb.at;
    if (sentAt !== undefined) void perform(dispatch({ kind: 'stored', sentAt }));
  }
  /** A heartbeat, if the lease still holds (a lease that lapsed stays lost: a heartbeat must not revive it). */
  const beat = () => perform(dispatch({ kind: 'beat', now: clock.now() }));
  /** A heartbeat now, not at the next tick: a handoff waits for it. */
  const beatNow = () => void beat();

  // ---- the placement --------------------------------------------------------------------------------

  async function reconcile(slot: Slot): Promise<void> {
    if (slot.pass !== 'idle') {
      slot.pass = 'again';
      return;
    }
    try {
      do {
        slot.pass = 'stepping';
        await step(slot);
      } while ((slot.pass as Slot['pass']) === 'again');
    } catch (err) {
      log.error('placement step failed', { kind: slot.kind, partition: slot.partition, err });
    } finally {
      slot.pass = 'idle';
    }
  }

  const prevHolds = (prev: string, slot: Slot) => {
    const m = members.members.get(prev);
    return m !== undefined && members.alive(prev) && m.hb.held.some((h) => h.k === slot.kind && h.p === slot.partition);
  };

  const viewOf = (slot: Slot): SlotView => ({
    self: id,
    assigned: slot.assigned,
    assignedAt: slot.assignedAt,
    runner: slot.runner && { state: slot.runner.state, epoch: slot.runner.epoch },
    stale: stale.get(slot.key),
    retryAt: slot.retryAt,
    prevHolds: slot.assigned?.prev !== undefined && prevHolds(slot.assigned.prev, slot),
    serving: serving(state),
  });

  async function step(slot: Slot): Promise<void> {
    for (;;) {
      const action = slotStep(viewOf(slot), clock.now(), lease);
      const r = slot.runner;
      switch (action.do) {
        case 'forget':
          break;
        case 'check':
          // Not stopped by us: its restart after a transport failure, retrying, or refused for good by a newer epoch.
          if ((await slot.store.epoch()) <= r!.epoch) return;
          break;
        case 'stop':
          await r!.stop();
          log.debug('let go', { kind: slot.kind, partition: slot.partition, epoch: r!.epoch });
          break;
        case 'start':
          return take(slot, action.epoch);
        case 'wait':
        case 'nothing':
          return;
      }
      // The runner is gone: say so at once, then see whether the partition is to be taken at a new epoch.
      slot.runner = undefined;
      beatNow();
    }
  }

  async function take(slot: Slot, epoch: number): Promise<void> {
    const runner = newRunner(kit, slot.kind, slot.partition, slot.store, (fenced) => {
      log.warn('partition lost to a newer owner', { kind: slot.kind, partition: slot.partition, epoch: fenced.epoch });
      void reconcile(slot);
    });
    slot.runner = runner;
    try {
      await runner.start(epoch);
      log.debug('owned', { kind: slot.kind, partition: slot.partition, epoch, waitedMs: clock.now() - slot.assignedAt });
    } catch (err) {
      slot.runner = undefined;
      if (err instanceof StaleEpochError) {
        log.warn('the placement epoch is older than the one in Redis; asking the controller for a newer one', { kind: slot.kind, partition: slot.partition, epoch, stored: err.stored });
        stale.set(slot.key, err.stored);
      } else {
        log.error('could not take the partition; retrying', { kind: slot.kind, partition: slot.partition, err });
        slot.retryAt = clock.now() + config.retryBackoffMs * 10;
        await runner.stop();
      }
    }
    beatNow();
    // Stopped serving while it started (lease lost, closing): let it go again.
    if (!serving(state)) slot.pass = 'again';
  }

  function onPlacement(entry: KvEntry): void {
    // Not an assignment: as if there were none (this worker lets go; the leader writes a good one, at a newer epoch).
    const a = entry.operation === 'PUT' ? kvValues.assignment(entry.value, fault, entry.key) : undefined;
    if (placed.get(entry.key) !== a?.worker) {
      if (a) placed.set(entry.key, a.worker);
      else placed.delete(entry.key);
      const where = parsePlacementKey(entry.key);
      if (where) courier.moved(where.kind, where.partition);
    }
    const slot = slots.get(entry.key);
    if (!slot) return; // a kind this worker does not host
    if (!a) slot.assigned = undefined;
    else {
      if (!slot.assigned || slot.assigned.epoch !== a.epoch || slot.assigned.worker !== a.worker) {
        slot.assigned = a;
        slot.assignedAt = clock.now();
        stale.delete(entry.key);
      }
    }
    void reconcile(slot);
  }

  /** Partitions whose owner was last seen running them, by key: parcels waiting for one go when it starts running. */
  const seenServing = new Map<string, string>();
  const members = new MembershipView(
    buckets.workers,
    lease,
    log,
    (worker) => {
      if (worker === id) heardBack();
      // A previous owner's heartbeat may say it let go: look at the partitions waiting for one.
      for (const s of slots.values()) if (!s.runner && s.assigned?.worker === id && s.assigned.prev) void reconcile(s);
      // A new owner's heartbeat may say it now runs a partition: what this worker's partitions owe it goes now, not
      // at its next retry (a moved partition drops what reaches it before it runs).
      for (const h of members.members.get(worker)?.hb.held ?? []) {
        const key = placementKey(h.k, h.p);
        if (h.t || placed.get(key) !== worker || seenServing.get(key) === `${worker}@${h.e}`) continue;
        seenServing.set(key, `${worker}@${h.e}`);
        courier.moved(h.k, h.p);
      }
    },
    clock,
    { nc, subject: n.pulses },
  );
  await untilJetStream('watch the workers bucket', () => members.start(), log);

  // Registered before anything is placed here (retried while the bucket elects a leader).
  await untilJetStream(`register worker ${id} in the ${n.workersBucket} bucket`, async () => {
    const sentAt = clock.now();
    await heartbeats.put(id, toBytes(heartbeat(sentAt)));
    void perform(dispatch({ kind: 'stored', sentAt }));
  }, log);

  // Heartbeats from now on, while the rest starts: watching the placement can take seconds while a bucket elects a
  // leader, and a worker that stopped pulsing meanwhile would lose the lease it just took.
  const timer = clock.setInterval(() => {
    const idle = running().length === 0 && ![...slots.values()].some((s) => s.assigned?.worker === id);
    void perform(dispatch({ kind: 'tick', now: clock.now(), idle }));
  }, interval);

  const watches: Watch[] = [];
  watches.push(await untilJetStream('watch the placement', () => watchKv(buckets.placement, '>', log, (e) => onPlacement(e)), log));
  watches.push(
    await untilJetStream(
      'watch for a drain',
      () =>
        watchKv(buckets.control, `drain.${id}`, log, (e) => {
          if (e.operation !== 'PUT' || !kvValues.drain(e.value, fault, e.key)) return;
          const actions = dispatch({ kind: 'drain', now: clock.now() });
          if (actions.length === 0) return; // draining already, or closing
          void perform(actions);
          beatNow();
        }),
      log,
    ),
  );


  const controller: Controller | undefined =
    opts.controller === false ? undefined : await untilJetStream('start the controller', () => startController({ nc, config, log: kit.log, id, buckets, seed: opts.controllerSeed, clock }), log);
  await Promise.all(watches.map((w) => w.ready));
  log.info('registered', { kinds: config.kinds.join(','), leaseMs: lease });

  /** True when no live worker but this one could take partitions of `kind`. */
  const alone = (kind: Kind) => !members.live().some((m) => m.hb.id !== id && !m.hb.draining && m.hb.kinds.includes(kind));

  return {
    id,
    get runners() {
      return running();
    },
    runner: (kind, partition) => slots.get(placementKey(kind, partition))?.runner,
    registry,
    ended,
    ready() {
      if (state.lease.phase === 'lost') return { ok: false, detail: 'lease lost' };
      if (state.life.phase === 'closed') return { ok: false, detail: 'closed' };
      const trouble = troubled(running());
      if (trouble) return { ok: false, detail: trouble };
      const missing = [...slots.values()].filter((s) => s.assigned?.worker === id && s.runner?.state !== 'running').map((s) => s.key);
      return missing.length === 0 ? { ok: true, detail: `${running().length} partitions` } : { ok: false, detail: `taking ${missing.join(' ')}` };
    },
    close() {
      closing ??= closeNow();
      return closing;
    },
  };

  async function closeNow(): Promise<void> {
    void perform(dispatch({ kind: 'close', now: clock.now() }));
    if (state.lease.phase === 'held') {
      // Hand the partitions over while still serving them, so a request waits at most for one handoff.
      await beat();
      const deadline = clock.now() + config.shutdownGraceMs * DRAIN_SHARE_OF_GRACE;
      while (clock.now() < deadline) {
        const held = running().filter((r) => r.state !== 'fenced');
        if (held.length === 0 || held.every((r) => alone(r.kind))) break;
        await clock.sleep(DRAIN_POLL_MS);
      }
    }
    void perform(dispatch({ kind: 'stop' }));
    clock.clearInterval(timer);
    await controller?.close();
    for (const w of watches) w.stop();
    members.stop();
    const deadline = clock.now() + config.shutdownGraceMs * STOP_SHARE_OF_GRACE;
    for (;;) {
      await Promise.all([...slots.values()].map((s) => reconcile(s)));
      if (![...slots.values()].some((s) => s.pass !== 'idle') || clock.now() > deadline) break;
      await clock.sleep(DRAIN_POLL_MS);
    }
    // Whatever is left (a runner in its own restart) is stopped directly.
    await Promise.all(running().map((r) => r.stop()));
    void perform(dispatch({ kind: 'closed' }));
    probes.unsubscribe();
    try {
      nc.publish(pulseSubject, GONE_PULSE); // the others stop waiting for its lease at once
    } catch {
      // connection closed: its lease runs out instead
    }
    await buckets.workers.delete(id).catch((err: unknown) => log.warn('could not deregister', { err }));
    courier.close();
    kit.resends.unsubscribe();
    kit.leaders.close();
    mux.close(new Error('worker closed'));
    log.info('closed');
  }
}
