/**
 * What every worker, static or dynamic, is built on: the mux, the courier, the batch loop and the stream-leader
 * watch its runners share, opened once per process (openKit), and the late-bound wiring around them: the courier,
 * the metrics and the reconnect and leader events need the worker's runners, which exist only once the worker is
 * built (bind, follow).
 */
import type { Redis } from 'ioredis';
import type { NatsConnection, Subscription } from 'nats';
import { randomBytes } from 'node:crypto';
import type { Registry } from 'prom-client';
import { actorOf } from '../actors/index.js';
import type { Clock } from '../clock.js';
import type { Config, Kind } from '../config.js';
import { BatchLoop } from '../datapath/batch-loop.js';
import type { Inbound } from '../datapath/participant.js';
import { Courier } from '../datapath/courier.js';
import { Later } from '../datapath/later.js';
import type { RunnerMetrics } from '../datapath/runner-metrics.js';
import { PartitionRunner } from '../datapath/runner.js';
import { createPartitionStore, type PartitionStore } from '../datapath/store.js';
import { warmActorsOnce } from '../datapath/warm-up.js';
import { faultLog } from '../faults.js';
import type { Log } from '../log.js';
import { createWorkerMetrics, type PartitionSample, type StreamSample } from '../monitoring/metrics.js';
import { names } from '../protocol.js';
import { Mux } from '../transport/mux.js';
import { resendAnswers } from '../transport/resend.js';
import { watchStreamLeaders, type StreamLeaders } from '../transport/stream-leaders.js';
import type { WorkerEnd } from './handoff.js';

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

/** What a worker needs to build runners. */
export interface Kit {
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

/** Where a partition runs, as far as this worker knows: the worker id the courier sends its parcels to. */
export type Locate = (kind: Kind, partition: number) => string | undefined;

/** How many replicas must have each commit, from the settings. */
const replicationOf = (config: Config) => ({ waitReplicas: config.redisWaitReplicas, waitTimeoutMs: config.redisWaitTimeoutMs });

/** The Redis store of one partition. */
export const partitionStore = (redis: Redis, config: Config, kind: Kind, partition: number): PartitionStore =>
  createPartitionStore(redis, config.redisPrefix, kind, partition, actorOf(kind).tables, replicationOf(config));

export function newRunner(kit: Kit, kind: Kind, partition: number, store: PartitionStore, onFenced: (r: PartitionRunner) => void): PartitionRunner {
  const { nc, jsm, mux, courier, loop, config, log, metrics, leaders } = kit;
  return new PartitionRunner({ nc, jsm, mux, courier, loop, config, log, metrics, leaders, actor: actorOf(kind), partition, store, onFenced });
}

/** Partitions held but not serving (restarting after failures, or refusing a stream behind their cursor), for readiness. */
export function troubled(runners: Iterable<PartitionRunner>): string | undefined {
  const list = [...runners].flatMap((r) => {
    const h = r.health();
    return h ? [`${r.kind}.${r.partition} ${h.state} (${h.attempts}x: ${h.error})`] : [];
  });
  return list.length > 0 ? list.join('; ') : undefined;
}

/** Ends what the kit opened, once the runners have stopped. */
export function closeKit(kit: Kit): void {
  kit.courier.close();
  kit.resends.unsubscribe();
  kit.leaders.close();
  kit.mux.close(new Error('worker closed'));
}

const sampleOf = (runners: Iterable<PartitionRunner>): PartitionSample[] =>
  [...runners].filter((r) => r.state === 'running' || r.health()).map((r) => ({ kind: r.kind, partition: r.partition, epoch: r.epoch, lag: r.lag(), trouble: r.health()?.state }));

/** The fill of the kinds' command streams, one stream-info request each (the dead-letter stream drops its oldest when full). */
async function streamSamples(jsm: Kit['jsm'], config: Config): Promise<StreamSample[]> {
  const n = names(config.streamPrefix);
  const infos = await Promise.all(config.kinds.map((k) => n.stream(k)).map((s) => jsm.streams.info(s).catch(() => undefined)));
  return infos.flatMap((i) => (i ? [{ stream: i.config.name, bytes: i.state.bytes, maxBytes: i.config.max_bytes }] : []));
}

export interface OpenKit {
  kit: Kit;
  registry: Registry;
  /** The worker built on the kit: its runners get the parcels, the reconnects and the leader changes from now on. */
  bind(worker: Worker): void;
  /** Dynamic: where partitions run is what the placement says, not partition % workerProcesses. */
  follow(locate: Locate): void;
}

/** Opens what the runners of worker `id` share; its JetStream and streams are ready. */
export function openKit(opts: WorkerOptions, id: string, log: Log, js: Kit['js'], jsm: Kit['jsm']): OpenKit {
  const { nc, redis, config } = opts;
  const n = names(config.streamPrefix);
  const mux = new Mux(nc, n.inbox(config.natsUser || 'worker', `w${randomBytes(6).toString('hex')}`), faultLog(log), true);
  // Answers lost while this worker or a gateway changed servers go again (resend.ts).
  const resends = resendAnswers({ nc, mux, subject: n.resend, replies: n.replies, pingIntervalMs: config.natsPingIntervalMs, log });
  let current: () => Iterable<PartitionRunner> = () => [];
  let runnerOf: (kind: Kind, partition: number) => PartitionRunner | undefined = () => undefined;
  // Static placement: partition p of every kind runs on worker p % workerProcesses. Dynamic: the placement this worker follows.
  let locate: Locate = (_kind, partition) => `worker-${partition % config.workerProcesses}`;
  const metrics = createWorkerMetrics(() => sampleOf(current()), opts.metrics, { partitions: config.partitions, kinds: config.kinds, streams: () => streamSamples(jsm, config) });
  const courier = new Courier({
    nc,
    mux,
    names: n,
    self: id,
    locate: (kind, partition) => locate(kind, partition),
    onParcel: (kind, partition, parcelId, commands, ackTo) => {
      const inbound: Inbound = { id: parcelId, ackTo, commands };
      runnerOf(kind, partition)?.deliverParcel(inbound); // not taken here: dropped, and its sender's state sends it again
    },
    kept: new Later(),
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
  return {
    kit: { nc, config, log, redis, mux, resends, courier, loop, js, jsm, metrics, leaders },
    registry: metrics.registry,
    bind(worker) {
      current = () => worker.runners;
      runnerOf = (kind, partition) => worker.runner(kind, partition);
    },
    follow: (follow) => (locate = follow),
  };
}
