/**
 * The KV buckets of dynamic placement, and who is alive: a live view of the workers' heartbeats.
 *
 * A worker's heartbeat travels two paths. Its pulse on core NATS is what keeps it alive: core subjects need no
 * JetStream leader, and a client moves to another server within its ping interval, so a lease can be a couple of
 * seconds where the bucket alone needed one longer than a JetStream election (4-10 s, bench/election.ts). Its put
 * in the workers bucket is the record: what a view starting now finds at once (who is there, what each holds), and
 * what `shopctl status` reads. Both feed the same view; a heartbeat's number (`seq`) keeps one heard late on a path
 * from undoing a newer one.
 *
 * Liveness is judged from when heartbeats arrive, never from the bucket's TTL: on NATS 2.9 a key that expires by
 * max_age leaves no delete marker a watcher could see. The TTL only keeps the bucket from growing.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { ErrorCode, KvWatchInclude, type JetStreamClient, type KV, type KvEntry, type NatsConnection, type QueuedIterator, type Subscription } from 'nats';
import type { Config } from '../config.js';
import { faultLog, type Fault } from '../faults.js';
import type { Log } from '../log.js';
import { names } from '../protocol.js';
import { systemClock, type Clock } from '../clock.js';
import { hear, isAlive, liveMembers, newLiveness, type Liveness, type Member } from './liveness.js';
import { kvValues, type Heartbeat } from './placement.js';

export interface Buckets {
  /** worker id -> Heartbeat */
  workers: KV;
  /** `<kind>.<partition>` -> Assignment */
  placement: KV;
  /** `leader`, `pin.<kind>.<partition>`, `drain.<worker>`, `layout` (transport/layout.ts) */
  control: KV;
}

/** Entries of the workers bucket outlive their last heartbeat by this many leases before NATS drops them. */
const WORKER_TTL_LEASES = 10;

/** Opens the three buckets, creating them on first use (every process may; creation is idempotent). */
export async function openBuckets(js: JetStreamClient, config: Config): Promise<Buckets> {
  const n = names(config.streamPrefix);
  const replicas = config.streamReplicas;
  const [workers, placement, control] = await Promise.all([
    js.views.kv(n.workersBucket, { history: 1, replicas, ttl: Math.max(WORKER_TTL_LEASES * config.workerLeaseMs, 10_000), description: 'live shop workers (heartbeats)' }),
    js.views.kv(n.placementBucket, { history: 1, replicas, description: 'partition -> owning worker and epoch' }),
    openControlBucket(js, config),
  ]);
  return { workers, placement, control };
}

/** The control bucket alone (static placement has no other): the leader, pins, drains and the cluster's layout. */
export function openControlBucket(js: JetStreamClient, config: Config): Promise<KV> {
  return js.views.kv(names(config.streamPrefix).controlBucket, { history: 1, replicas: config.streamReplicas, description: 'placement controller: leader, pins, drains; the cluster layout' });
}

export interface Watch {
  /** Resolves once the values present when the watch began have all been delivered. */
  readonly ready: Promise<void>;
  stop(): void;
}

/** Longest wait for a watch's initial values before it is treated as caught up. */
const WATCH_READY_MAX_MS = 2000;

/** Pause before a watch that ended by itself is made again. */
const REWATCH_PAUSE_MS = 500;

/**
 * Calls `onEntry` for the last value of every key (`initial` true) and then for every change, in order.
 * A failing callback is logged, never ends the watch. A watch that ends by itself (nats.js gives up re-creating its
 * consumer, e.g. while the bucket's stream elects a leader after a node was lost) is made again, from the revision
 * after the last one seen: nothing is missed and nothing is seen twice.
 */
export async function watchKv(kv: KV, key: string, log: Log, onEntry: (entry: KvEntry, initial: boolean) => void): Promise<Watch> {
  let initial = true;
  let stopped = false;
  let revision = 0;
  let markReady!: () => void;
  const ready = new Promise<void>((r) => (markReady = r));
  const initialized = () => {
    if (!initial) return;
    initial = false;
    clearTimeout(fallback);
    markReady();
  };
  // nats-server 2.9 can fail to signal the end of the initial values of a bucket whose entries expire by TTL
  // (nats-server issue 3481): rather than wait forever, go on after WATCH_READY_MAX_MS; every live worker's
  // heartbeat arrives within an interval anyway.
  const fallback = setTimeout(() => {
    if (initial) log.warn('watch: no end of the initial values in time; going on with what arrived', { key, afterMs: WATCH_READY_MAX_MS });
    initialized();
  }, WATCH_READY_MAX_MS);
  fallback.unref();
  const follow = async (iter: QueuedIterator<KvEntry>) => {
    try {
      for await (const entry of iter) {
        revision = Math.max(revision, entry.revision);
        try {
          onEntry(entry, initial);
        } catch (err) {
          log.error('watch callback failed', { key: entry.key, err });
        }
      }
      if (!stopped) log.warn('watch ended; watching again', { key, from: revision + 1 });
    } catch (err) {
      if (!stopped) log.warn('watch ended; watching again', { key, from: revision + 1, err });
    }
    while (!stopped) {
      await delay(REWATCH_PAUSE_MS);
      if (stopped) return;
      try {
        current = await kv.watch(revision > 0 ? { key, resumeFromRevision: revision + 1 } : { key, include: KvWatchInclude.LastValue, initializedFn: initialized });
        if (stopped) return current.stop();
        void follow(current);
        return;
      } catch (err) {
        log.warn('could not watch again yet; retrying', { key, err });
      }
    }
  };
  let current: QueuedIterator<KvEntry> = await kv.watch({ key, include: KvWatchInclude.LastValue, initializedFn: initialized });
  void follow(current);
  return {
    ready,
    stop: () => {
      stopped = true;
      current.stop();
    },
  };
}

/** The heartbeat in a workers-bucket entry, or undefined (reported) when it is not one, or not this key's worker's. */
export function heartbeatOf(entry: { key: string; value: Uint8Array }, fault: Fault): Heartbeat | undefined {
  const hb = kvValues.heartbeat(entry.value, fault, entry.key);
  if (hb && hb.id !== entry.key) {
    fault('a heartbeat under another worker\'s key (treated as absent)', { key: entry.key, id: hb.id });
    return undefined;
  }
  return hb;
}

export type { Member } from './liveness.js';

/** Where a view hears the workers' pulses. */
export interface PulseSource {
  nc: NatsConnection;
  /** Every worker's pulse subject (names().pulses); the worker's id is its last token. */
  subject: string;
  /** A worker's probe subject (names().probe): see probeSilent. */
  probe?: (workerId: string) => string;
}

/** Probes in a row that found nobody before a silent worker counts as gone (one could fall in a reconnect). */
const PROBES_UNANSWERED_MAX = 2;

/** A worker's pulse when it leaves: an empty message (its key in the bucket is deleted as well). */
export const GONE_PULSE = new Uint8Array(0);

/** The workers' pulses and bucket as a map of members with the time each was last heard from, for liveness.ts. */
export class MembershipView {
  private view: Liveness;
  private watch: Watch | undefined;
  private pulses: Subscription | undefined;
  private readonly fault: Fault;
  /** Workers with a probe in flight, and the probes in a row that found nobody (probeSilent). */
  private readonly probing = new Set<string>();
  private readonly unanswered = new Map<string, number>();

  constructor(
    private readonly kv: KV,
    private readonly leaseMs: number,
    private readonly log: Log,
    private readonly onChange: (id: string) => void = () => {},
    private readonly clock: Clock = systemClock,
    private readonly pulseSource?: PulseSource,
  ) {
    this.fault = faultLog(log);
    this.view = newLiveness(clock.now());
  }

  get members(): ReadonlyMap<string, Member> {
    return this.view.members;
  }

  /** What is known now, for the pure decisions (liveness.ts, moves.ts). */
  get snapshot(): Liveness {
    return this.view;
  }

  async start(): Promise<void> {
    this.view = { ...this.view, lastArrival: this.clock.now() };
    if (this.pulseSource) this.pulses = this.listen(this.pulseSource);
    this.watch = await watchKv(this.kv, '>', this.log, (entry, initial) => {
      this.heard(entry.key, entry.operation === 'PUT' ? entry.value : undefined, initial, entry.created.getTime());
    });
    await this.watch.ready;
  }

  /** The pulses, as they come (a subscription's callback: no queue between NATS and the view). */
  private listen({ nc, subject }: PulseSource): Subscription {
    return nc.subscribe(subject, {
      callback: (err, msg) => {
        if (err) return;
        const id = msg.subject.slice(msg.subject.lastIndexOf('.') + 1);
        try {
          this.heard(id, msg.data.length === 0 ? undefined : msg.data, false, this.clock.now());
        } catch (e) {
          this.log.error('pulse callback failed', { id, err: e });
        }
      },
    });
  }

  /** `value` under `id` (undefined: the worker left), from either path. */
  private heard(id: string, value: Uint8Array | undefined, initial: boolean, storedAt: number): void {
    if (value === undefined) {
      this.view = hear(this.view, { kind: 'gone', id }, this.leaseMs);
    } else {
      const hb = heartbeatOf({ key: id, value }, this.fault);
      // Not a heartbeat: ignored. What was known of that worker stands and its clock is not restarted, so a bad
      // write over a live worker's key moves nothing, and a dead worker's key stays dead.
      if (!hb) return;
      this.view = hear(this.view, { kind: 'heartbeat', hb, now: this.clock.now(), initial, storedAt }, this.leaseMs);
    }
    this.onChange(id);
  }

  /**
   * Asks every worker whose pulses are late (silent for over `lateMs`, still within its lease) whether its process
   * lives: each answers on its probe subject while its NATS connection is up. A process that died (SIGKILL, a crash)
   * closed that connection, and NATS answers "no responders" at once; twice in a row and it is gone, without waiting
   * out its lease. A paused process, or one behind a cut link, still holds its subscription: the probe goes unanswered
   * (a timeout, not "no responders") and the lease decides, as for a stalled one. Returns the workers found gone.
   */
  async probeSilent(lateMs: number, timeoutMs: number, only?: readonly string[], now = this.clock.now()): Promise<string[]> {
    const source = this.pulseSource;
    if (!source?.probe) return [];
    const late = liveMembers(this.view, now, this.leaseMs).filter((m) => now - m.seenAt > lateMs && !this.probing.has(m.hb.id) && (!only || only.includes(m.hb.id)));
    const gone = await Promise.all(
      late.map(async (m) => {
        const id = m.hb.id;
        this.probing.add(id);
        try {
          await source.nc.request(source.probe!(id), undefined, { timeout: timeoutMs });
          this.unanswered.delete(id);
        } catch (err) {
          if ((err as { code?: string }).code !== ErrorCode.NoResponders) return undefined; // a timeout: maybe paused, the lease decides
          const n = (this.unanswered.get(id) ?? 0) + 1;
          this.unanswered.set(id, n);
          if (n < PROBES_UNANSWERED_MAX || this.view.members.get(id)?.seenAt !== m.seenAt) return undefined;
          this.unanswered.delete(id);
          this.log.warn('a worker whose pulses stopped is gone: nothing answers its probe', { worker: id, silentMs: Math.round(this.clock.now() - m.seenAt) });
          this.heard(id, undefined, false, this.clock.now());
          return id;
        } finally {
          this.probing.delete(id);
        }
        return undefined;
      }),
    );
    return gone.filter((id): id is string => id !== undefined);
  }

  alive(id: string, now = this.clock.now()): boolean {
    return isAlive(this.view, id, now, this.leaseMs);
  }

  /** Live members, by id. */
  live(now = this.clock.now()): Member[] {
    return liveMembers(this.view, now, this.leaseMs);
  }

  /** After this process itself was not running for a while (a stall, SIGSTOP): it knows nothing about who died meanwhile, so it starts the clocks again. */
  forgive(now = this.clock.now()): void {
    this.view = hear(this.view, { kind: 'stalled', now }, this.leaseMs);
  }

  stop(): void {
    this.watch?.stop();
    this.pulses?.unsubscribe();
  }
}
