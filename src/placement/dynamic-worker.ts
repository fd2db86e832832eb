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
 * The decisions are handoff.ts's (workerStep for the lifecycle and lease, hostedStep per partition) and
 * worker-rules.ts's; this wires the parts that perform them: worker-lifecycle.ts, heartbeats.ts, reconciler.ts,
 * placement-follower.ts and drain.ts.
 */
import type { Registry } from 'prom-client';
import { systemClock } from '../clock.js';
import { untilJetStream } from '../datapath/streams.js';
import { faultLog } from '../faults.js';
import { names } from '../protocol.js';
import { startController, type Controller } from './controller.js';
import { closeDynamic, watchDrain, type Closing } from './drain.js';
import { serving, type WorkerEnd } from './handoff.js';
import { bindHeartbeatBucket, createHeartbeats } from './heartbeats.js';
import { createLifecycle } from './worker-lifecycle.js';
import { MembershipView, openBuckets, watchKv, type Buckets, type Watch } from './membership.js';
import { createPlacementFollower } from './placement-follower.js';
import { placementKey } from './placement.js';
import { createReconciler, hostedPartitions, runnersOf } from './reconciler.js';
import { troubled, type Kit, type Locate, type Worker, type WorkerOptions } from './worker-kit.js';
import { idle } from './worker-rules.js';

export async function startDynamicWorker(kit: Kit, id: string, opts: WorkerOptions, registry: Registry, follow: (locate: Locate) => void): Promise<Worker> {
  const { nc, config, log } = kit;
  const clock = opts.clock ?? systemClock;
  const fault = faultLog(log);
  const lease = config.workerLeaseMs;
  const n = names(config.streamPrefix);
  // Answered while this process lives (and its connection is up): the leader asks when its pulses are late, and takes
  // a "no responders" for a death without waiting out the lease (membership.ts probeSilent).
  const probes = nc.subscribe(n.probe(id), { callback: (_err, msg) => msg.respond() });
  const buckets: Buckets = await untilJetStream('open the KV buckets', () => openBuckets(kit.js, config), log);
  const workersBucket = await bindHeartbeatBucket(nc, config, log);
  const hosted = hostedPartitions(kit.redis, config);
  const stale = new Map<string, number>();
  let endWith!: (end: WorkerEnd) => void;
  const ended = new Promise<WorkerEnd>((r) => (endWith = r));

  // The parts call each other through these closures; none is called before all exist.
  const life = createLifecycle(clock.now(), { leaseMs: lease, intervalMs: config.heartbeatIntervalMs }, log, {
    put: (sentAt) => heartbeats.put(sentAt),
    stepAll: () => void reconciler.all(),
    sweep: () => reconciler.sweep(),
    end: (how) => endWith(how),
    forgive: () => members.forgive(clock.now()),
  });
  const beatNow = () => void life.act({ kind: 'beat', now: clock.now() });
  const heartbeats = createHeartbeats({
    nc,
    config,
    log,
    clock,
    id,
    adminPort: opts.adminPort ?? 0,
    bucket: workersBucket,
    runners: () => runnersOf(hosted),
    stale,
    state: () => life.state,
    cameBack: (sentAt) => void life.act({ kind: 'stored', sentAt }),
  });
  const reconciler = createReconciler({
    kit,
    self: id,
    clock,
    hosted,
    stale,
    beatNow,
    serving: () => serving(life.state),
    liveHeartbeat: (worker) => (members.alive(worker) ? members.members.get(worker)?.hb : undefined),
  });
  const follower = createPlacementFollower({ self: id, clock, fault, courier: kit.courier, hosted, stale, reconciler, heartbeatOf: (worker) => members.members.get(worker)?.hb });
  follow(follower.locate);
  const members = new MembershipView(
    buckets.workers,
    lease,
    log,
    (worker) => {
      if (worker === id) heartbeats.heardBack(members.members.get(id)?.hb);
      follower.onHeartbeat(worker);
    },
    clock,
    { nc, subject: n.pulses },
  );
  await untilJetStream('watch the workers bucket', () => members.start(), log);

  // Registered before anything is placed here (retried while the bucket elects a leader).
  await heartbeats.register();

  // Heartbeats from now on, while the rest starts: watching the placement can take seconds while a bucket elects a
  // leader, and a worker that stopped pulsing meanwhile would lose the lease it just took.
  const timer = clock.setInterval(() => void life.act({ kind: 'tick', now: clock.now(), idle: idle(hosted.values(), id) }), config.heartbeatIntervalMs);

  const watches: Watch[] = [];
  watches.push(await untilJetStream('watch the placement', () => watchKv(buckets.placement, '>', log, (e) => follower.onPlacement(e)), log));
  watches.push(await watchDrain(buckets.control, id, log, fault, clock, life));

  const controller: Controller | undefined =
    opts.controller === false ? undefined : await untilJetStream('start the controller', () => startController({ nc, config, log, id, buckets, seed: opts.controllerSeed, clock }), log);
  await Promise.all(watches.map((w) => w.ready));
  log.info('registered', { kinds: config.kinds.join(','), leaseMs: lease });

  return dynamicWorker({ kit, id, clock, life, hosted, reconciler, members, timer, controller, watches, probes, pulseSubject: heartbeats.pulseSubject, workersBucket }, registry, ended);
}

/** The Worker of the parts above. */
function dynamicWorker(parts: Closing, registry: Registry, ended: Promise<WorkerEnd>): Worker {
  const { id, life, hosted } = parts;
  let closing: Promise<void> | undefined;
  return {
    id,
    get runners() {
      return runnersOf(hosted);
    },
    runner: (kind, partition) => hosted.get(placementKey(kind, partition))?.runner,
    registry,
    ended,
    ready() {
      if (life.state.lease.phase === 'lost') return { ok: false, detail: 'lease lost' };
      if (life.state.life.phase === 'closed') return { ok: false, detail: 'closed' };
      const trouble = troubled(runnersOf(hosted));
      if (trouble) return { ok: false, detail: trouble };
      const missing = [...hosted.values()].filter((p) => p.assigned?.worker === id && p.runner?.state !== 'running').map((p) => p.key);
      return missing.length === 0 ? { ok: true, detail: `${runnersOf(hosted).length} partitions` } : { ok: false, detail: `taking ${missing.join(' ')}` };
    },
    close() {
      closing ??= closeDynamic(parts);
      return closing;
    },
  };
}
