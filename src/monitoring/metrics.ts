/**
 * Prometheus metrics of a worker and of a gateway, one registry per process (built by a factory, so tests can
 * build several in one process). Served as text by src/monitoring/admin-http.ts on /metrics.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Kind } from '../config.js';
import { ERRORS } from '../errors.js';
import { DEAD_LETTER_REASONS, type RunnerMetrics } from '../datapath/runner-metrics.js';

const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];
const COMMIT_BUCKETS_S = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1];
/** Sampling interval of the event-loop delay monitor: a delay is seen to within this. */
const EVENT_LOOP_RESOLUTION_MS = 10;
const HTTP_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** What the worker's lag and ownership gauges read at scrape time. */
export interface PartitionSample {
  kind: Kind;
  partition: number;
  epoch: number;
  lag: number;
  /** Held but not serving: restarting after failures, or refusing a stream behind its cursor. */
  trouble?: 'restarting' | 'refused' | undefined;
}

/** A JetStream stream's fill, read at scrape time. */
export interface StreamSample {
  stream: string;
  bytes: number;
  /** Its max_bytes (-1: no limit). */
  maxBytes: number;
}

export interface WorkerMetrics extends RunnerMetrics {
  readonly registry: Registry;
}

/** What a worker knows about the deployment, for the gauges the alert rules compare against (deploy/monitoring/alerts.yml). */
export interface WorkerShape {
  /** Partitions per kind of the cluster, and the kinds this worker runs. */
  partitions: number;
  kinds: readonly Kind[];
  /** The command streams' sizes; a failing read leaves them out of that scrape. */
  streams(): Promise<StreamSample[]>;
}

export function createWorkerMetrics(sample: () => PartitionSample[], extra?: RunnerMetrics, shape?: WorkerShape): WorkerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  if (shape) shapeMetrics(registry, shape);
  const commands = new Counter({ name: 'shop_commands_total', help: 'Commands applied and committed, by actor kind', labelNames: ['kind'], registers: [registry] });
  const batchSize = new Histogram({ name: 'shop_batch_commands', help: 'Commands per partition batch committed (the partitions of a worker that commit together share one Redis script call)', labelNames: ['kind'], buckets: BATCH_BUCKETS, registers: [registry] });
  const commit = new Histogram({ name: 'shop_commit_duration_seconds', help: 'Latency of one batch commit to Redis', labelNames: ['kind'], buckets: COMMIT_BUCKETS_S, registers: [registry] });
  const lastCommit = new Gauge({ name: 'shop_last_commit_timestamp_seconds', help: 'Wall-clock time of the last successful commit of this process', registers: [registry] });
  const sagas = new Counter({ name: 'shop_saga_outcomes_total', help: 'Checkouts decided by this process: paid, or refused with a code', labelNames: ['outcome'], registers: [registry] });
  const deadLetters = new Counter({ name: 'shop_dead_letters_total', help: 'Messages a partition could not apply and passed as dead letters, by kind and reason', labelNames: ['kind', 'reason'], registers: [registry] });
  const restarts = new Counter({ name: 'shop_partition_restarts_total', help: 'Restarts of a partition from its committed state after a failure, by kind', labelNames: ['kind'], registers: [registry] });
  // Every series of a known label set starts at 0, so that a rate or increase over it is 0 rather than no series
  // (a dashboard panel with nothing to draw, an alert that cannot tell "none" from "not scraped").
  for (const kind of shape?.kinds ?? []) {
    restarts.inc({ kind }, 0);
    for (const reason of DEAD_LETTER_REASONS) deadLetters.inc({ kind, reason }, 0);
  }
  /** A gauge with one series per owned partition, read from the sample at scrape time. */
  const perPartition = (name: string, help: string, value: (s: PartitionSample) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['kind', 'partition'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of sample()) if (!s.trouble) this.set({ kind: s.kind, partition: String(s.partition) }, value(s));
      },
    });
  perPartition('shop_partition_lag', 'Commands waiting for a partition this process owns (buffered or still in the stream)', (s) => s.lag);
  perPartition('shop_partition_epoch', 'Epoch at which this process owns a partition', (s) => s.epoch);
  new Gauge({
    name: 'shop_partition_trouble',
    help: 'Partitions this process holds but that do not serve: 1 per partition, by state (restarting after failures; refused: its stream is behind its committed cursor)',
    labelNames: ['kind', 'partition', 'state'],
    registers: [registry],
    collect() {
      this.reset();
      for (const s of sample()) if (s.trouble) this.set({ kind: s.kind, partition: String(s.partition), state: s.trouble }, 1);
    },
  });
  // What one partition's input may cost the others and the heartbeat (the lease) at worst, between two scrapes
  // (max_over_time of it gives any window; the first scrape covers everything since the worker started).
  const loopDelay = monitorEventLoopDelay({ resolution: EVENT_LOOP_RESOLUTION_MS });
  loopDelay.enable();
  new Gauge({
    name: 'shop_event_loop_delay_max_seconds',
    help: `Longest event-loop delay of this worker since the previous scrape (perf_hooks.monitorEventLoopDelay, ${EVENT_LOOP_RESOLUTION_MS} ms resolution)`,
    registers: [registry],
    collect() {
      this.set(loopDelay.max / 1e9);
      loopDelay.reset();
    },
  });
  new Gauge({
    name: 'shop_partitions_owned',
    help: 'Partitions this process owns, by kind',
    labelNames: ['kind'],
    registers: [registry],
    collect() {
      this.reset();
      const counts = new Map<Kind, number>();
      for (const s of sample()) if (!s.trouble) counts.set(s.kind, (counts.get(s.kind) ?? 0) + 1);
      for (const [kind, n] of counts) this.set({ kind }, n);
    },
  });
  const perKind = new Map<Kind, { commands: Counter.Internal; size: Histogram.Internal<'kind'>; commit: Histogram.Internal<'kind'> }>();
  return {
    registry,
    batch(kind, partition, n, commitMs) {
      // Once per partition of every batch: the labelled series are looked up once per kind, not hashed per call.
      let series = perKind.get(kind);
      if (!series) perKind.set(kind, (series = { commands: commands.labels({ kind }), size: batchSize.labels({ kind }), commit: commit.labels({ kind }) }));
      series.commands.inc(n);
      series.size.observe(n);
      series.commit.observe(commitMs / 1000);
      lastCommit.set(Date.now() / 1000);
      extra?.batch(kind, partition, n, commitMs);
    },
    sagaOutcome(ok, code, count) {
      sagas.inc({ outcome: ok ? 'paid' : (code ?? 'refused') }, count);
      extra?.sagaOutcome(ok, code, count);
    },
    deadLetter(kind, partition, reason) {
      deadLetters.inc({ kind, reason });
      extra?.deadLetter?.(kind, partition, reason);
    },
    partitionRestart(kind, partition) {
      restarts.inc({ kind });
      extra?.partitionRestart?.(kind, partition);
    },
  };
}

/** Gauges of the deployment's shape: the partitions each kind should have running, and how full the streams are. */
function shapeMetrics(registry: Registry, shape: WorkerShape): void {
  const expected = new Gauge({ name: 'shop_cluster_partitions', help: 'Partitions per kind of the cluster (each should be owned and running on some worker), for the kinds this process runs', labelNames: ['kind'], registers: [registry] });
  for (const kind of shape.kinds) expected.set({ kind }, shape.partitions);
  const bytes = new Gauge({ name: 'shop_stream_bytes', help: 'Bytes stored in a JetStream stream of the shop', labelNames: ['stream'], registers: [registry] });
  new Gauge({
    name: 'shop_stream_max_bytes',
    help: 'The max_bytes limit of a JetStream stream of the shop (past it the stream refuses new messages)',
    labelNames: ['stream'],
    registers: [registry],
    async collect() {
      this.reset();
      bytes.reset();
      for (const s of await shape.streams().catch(() => [])) {
        bytes.set({ stream: s.stream }, s.bytes);
        if (s.maxBytes > 0) this.set({ stream: s.stream }, s.maxBytes);
      }
    },
  });
}

/** A connection's state as the readiness probes see it: 1 up, 0 down (src/monitoring/health.ts). */
export function connectionMetrics(registry: Registry, connections: Record<string, () => boolean>): void {
  new Gauge({
    name: 'shop_connection_up',
    help: 'Whether this process reaches a server it needs (nats, redis): 1 when connected and answering pings, else 0',
    labelNames: ['server'],
    registers: [registry],
    collect() {
      for (const [server, up] of Object.entries(connections)) this.set({ server }, up() ? 1 : 0);
    },
  });
}

/** The `method` label's values; any other method counts as "other". */
export const HTTP_METHODS: ReadonlySet<string> = new Set(['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS']);
/** The `status` label's values: 200 and every status of the error table; any other counts as "other". */
export const HTTP_STATUSES: ReadonlySet<number> = new Set([200, ...Object.values(ERRORS).map((e) => e.status)]);

export interface GatewayMetrics {
  readonly registry: Registry;
  /** One answered HTTP request: its route pattern (bounded label set), method, status and duration. */
  request(method: string, route: string, status: number, seconds: number): void;
}

export function createGatewayMetrics(inFlight: () => number): GatewayMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const requests = new Counter({ name: 'shop_http_requests_total', help: 'HTTP requests answered, by route, method and status', labelNames: ['route', 'method', 'status'], registers: [registry] });
  const duration = new Histogram({ name: 'shop_http_request_duration_seconds', help: 'Time from request to answer, by route', labelNames: ['route'], buckets: HTTP_BUCKETS_S, registers: [registry] });
  new Gauge({
    name: 'shop_http_in_flight',
    help: 'Requests waiting for their outcome',
    registers: [registry],
    collect() {
      this.set(inFlight());
    },
  });
  // The labelled series, looked up once each: prom-client hashes the label object on every call otherwise.
  const counters = new Map<string, Counter.Internal>();
  const timers = new Map<string, Histogram.Internal<'route'>>();
  return {
    registry,
    request(rawMethod, route, rawStatus, seconds) {
      // Every label comes from a fixed set (the route from the route table or "unmatched"): a client sending
      // made-up methods must not make new series, each of which lives as long as the process.
      const method = HTTP_METHODS.has(rawMethod) ? rawMethod : 'other';
      const status = HTTP_STATUSES.has(rawStatus) ? String(rawStatus) : 'other';
      const key = `${method} ${status} ${route}`;
      let counter = counters.get(key);
      if (!counter) counters.set(key, (counter = requests.labels({ route, method, status })));
      counter.inc();
      let timer = timers.get(route);
      if (!timer) timers.set(route, (timer = duration.labels({ route })));
      timer.observe(seconds);
    },
  };
}
