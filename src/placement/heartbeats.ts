/**
 * A dynamic worker's heartbeats: what it says (the partitions it runs, whether it is leaving, the stale epochs it
 * found), sent as a pulse on core NATS and put in the workers bucket. When to send one and what its coming back means
 * for the lease is handoff.ts's workerStep; this sends them.
 */
import type { KV, NatsConnection } from 'nats';
import { hostname } from 'node:os';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import type { PartitionRunner } from '../datapath/runner.js';
import { untilJetStream } from '../datapath/streams.js';
import type { Log } from '../log.js';
import { names } from '../protocol.js';
import { draining, type WorkerState } from './handoff.js';
import { toBytes, type Heartbeat } from './placement.js';
import { unstoredHeartbeatLevel } from './worker-rules.js';

/** Heartbeat puts in flight at once, at most (each ends within heartbeatPutTimeoutMs). */
const HEARTBEAT_PUTS_INFLIGHT_MAX = 8;
/** How long one heartbeat put may take: twice the interval, at least 1 s (the puts after it do not wait for it). */
const heartbeatPutTimeoutMs = (intervalMs: number) => Math.max(2 * intervalMs, 1000);

/**
 * The workers bucket, through a handle of its own with a short timeout: while the bucket elects a leader, a put can
 * hang for the client's whole timeout (5 s), and the next one must not wait for it (Heartbeats.put()).
 */
export function bindHeartbeatBucket(nc: NatsConnection, config: Config, log: Log): Promise<KV> {
  return untilJetStream(
    'bind the workers bucket',
    () => nc.jetstream({ timeout: heartbeatPutTimeoutMs(config.heartbeatIntervalMs) }).views.kv(names(config.streamPrefix).workersBucket, { bindOnly: true }),
    log,
  );
}

export interface HeartbeatOptions {
  nc: NatsConnection;
  config: Config;
  log: Log;
  clock: Clock;
  id: string;
  /** The port of this process's admin HTTP (0 when it has none). */
  adminPort: number;
  bucket: KV;
  runners: () => PartitionRunner[];
  /** Epochs Redis holds above the placement's, by key. */
  stale: ReadonlyMap<string, number>;
  state: () => WorkerState;
  /** A heartbeat sent at `sentAt` came back (stored, or its pulse heard): the lease holds. */
  cameBack: (sentAt: number) => void;
}

export interface Heartbeats {
  /** The core NATS subject of its pulses. */
  readonly pulseSubject: string;
  /** Puts its first heartbeat, retried while the bucket elects a leader. */
  register(): Promise<void>;
  put(sentAt: number): Promise<void>;
  /** Its own heartbeat, heard back through NATS (the pulse, or the bucket's watch). */
  heardBack(own: Heartbeat | undefined): void;
}

export function createHeartbeats(o: HeartbeatOptions): Heartbeats {
  const { nc, config, log, clock, id, bucket } = o;
  const pulseSubject = names(config.streamPrefix).pulse(id);
  let beats = 0;
  const heartbeat = (sentAt: number): Heartbeat => ({
    id,
    seq: beats++,
    at: sentAt,
    pid: process.pid,
    host: hostname(),
    kinds: [...config.kinds],
    adminPort: o.adminPort,
    draining: draining(o.state()),
    carries: true,
    held: o
      .runners()
      .filter((r) => r.state !== 'fenced')
      .map((r) => {
        const trouble = r.health();
        return trouble ? { k: r.kind, p: r.partition, e: r.epoch, lag: r.lag(), t: trouble.state, n: trouble.attempts } : { k: r.kind, p: r.partition, e: r.epoch, lag: r.lag() };
      }),
    stale: Object.fromEntries(o.stale),
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
      await bucket.put(id, bytes);
      o.cameBack(sentAt);
    } catch (err) {
      const { level, sinceLastMs } = unstoredHeartbeatLevel(o.state().lease, clock.now(), config.heartbeatIntervalMs);
      log[level]('heartbeat not stored in the workers bucket', { err, sinceLastMs });
    } finally {
      puts--;
    }
  }

  return {
    pulseSubject,
    put,
    register: () =>
      untilJetStream(`register worker ${id} in the ${names(config.streamPrefix).workersBucket} bucket`, async () => {
        const sentAt = clock.now();
        await bucket.put(id, toBytes(heartbeat(sentAt)));
        o.cameBack(sentAt);
      }, log),
    heardBack(own) {
      if (own?.at !== undefined) o.cameBack(own.at);
    },
  };
}
