import { ConsumerEvents, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type NatsConnection, type Subscription } from 'nats';
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type { Actor, ReadView } from '../actors/types.js';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import { names, type Names } from '../protocol.js';
import type { BatchLoop } from './batch-loop.js';
import type { Committed, Inbound, Participant, StreamMessage, Taken } from './participant.js';
import type { Courier } from './courier.js';
import type { Tables } from './draft.js';
import type { RunnerMetrics } from './runner-metrics.js';
import type { Mux } from '../transport/mux.js';
import { checkStream, newestMark, publishMark } from './marks.js';
import { nextLeader, type StreamLeaders } from '../transport/stream-leaders.js';
import { decodeEntry, PartitionOutbox } from './outbox.js';
import { serveReads } from '../transport/reads.js';
import { StaleEpochError, type PartitionStore } from './store.js';

/** Longest a runner that lets go waits for its outbox to finish sending. */
const OUTBOX_DRAIN_MAX_MS = 5000;
/**
 * Most committed batches whose outbox is still being delivered before the batch loop stops taking this partition's
 * clients' commands. Parcels from other partitions are taken whatever the outbox holds: they are what lets the
 * other side's outbox drain (an answer acknowledged releases the hold that sent it), and refusing them while one's
 * own parcels wait for the other side to take them was a cycle that stalled every checkout (seen with 4 workers
 * and 64 partitions). What they add to the outbox is bounded by the sagas in flight.
 */
const OUTBOX_BATCHES_INFLIGHT_MAX = 64;
/**
 * Longest pause between two attempts of a partition that keeps failing to restart. Short: what fails a restart is
 * Redis or NATS being away (an attempt then waits in the client, or for WAIT's timeout, and costs nothing), and
 * a partition must serve again within a second of their return. With 30 s, a Redis failover of 5 s had partitions
 * sleeping for seconds after the new primary and its replica were there.
 */
export const RESTART_BACKOFF_MAX_MS = 1000;
/** Longest a starting partition spends deleting the stream consumers earlier owners left (dropOldConsumers). */
const CONSUMER_CLEANUP_MAX_MS = 1000;
/** How often a partition refused for a stream behind its cursor looks again (an operator may have mended it). */
const REFUSED_RECHECK_MS = 10_000;
/**
 * How long one pull of the ordered consumer lasts. An ordered consumer lives on one server (the stream leader when it
 * was made): when that server dies, this bounds how long the partition reads nothing (nats.js's default, 30 s, was
 * the whole of a 30 s request deadline on a NATS cluster that lost a node).
 */
const CONSUMER_PULL_EXPIRES_MS = 5000;
/**
 * How often the server sends a heartbeat on a pull that has nothing to deliver; two missed make nats.js pull again.
 * Short, not nats.js's half of the expiry, because nats-server 2.9 sometimes drops a waiting pull without a word
 * (consumer info says 0 waiting while the client counts one outstanding; seen at 64 partitions per kind, around
 * pull expiries): nothing more comes on that consumer until nats.js notices. At 2.5 s that was 5 s in which every
 * command of the partition waited, and under a closed-loop benchmark every client ended up waiting on it: seconds
 * without a single checkout answered. Costs an idle partition two small messages a second.
 */
const CONSUMER_HEARTBEAT_MS = 500;
/**
 * Heartbeats of the ordered consumer missed in a row after which this runner makes a new one, from the message after
 * the last it queued (1.5 s). nats.js re-creates an ordered consumer only once the server says it is gone; while the
 * one server it lived on is down, nothing says so, and the partition would read nothing until that server is back.
 * A dropped pull (above) is mended by nats.js's own pull after two. A consumer replaced that was alive after all
 * costs little: readWithoutConsumer reads on meanwhile.
 */
const CONSUMER_MISSED_HEARTBEATS_MAX = 3;
/** No message and no news of its pulls for this long: the consumer is taken for gone (see watchConsumer). */
const CONSUMER_SILENT_MAX_MS = 3 * CONSUMER_PULL_EXPIRES_MS;
/**
 * How long one JetStream API call of making a consumer may take (nats.js's default is 5 s). While the stream elects a
 * leader, or the cluster its meta leader (which places every new consumer), nothing answers; a short wait asks again
 * soon after they are there.
 */
const CONSUMER_API_TIMEOUT_MS = 1000;
/** How often readWithoutConsumer asks again when the stream has nothing new for the partition (or no leader). */
const DIRECT_READ_IDLE_MS = 100;
/**
 * Longest wait for a new stream consumer before the attempt is given up and made again: a little over the API
 * timeout. An attempt that got no answer by then waits on inside nats.js before it asks again; a fresh one asks at once.
 */
const CONSUMER_OPEN_MAX_MS = CONSUMER_API_TIMEOUT_MS + 500;
/**
 * No message for this long: the runner asks the stream for the last command of its subject, and a command stored
 * this long ago and not delivered means the consumer is stuck (see watchConsumer).
 */
const CONSUMER_UNDELIVERED_MAX_MS = 5000;
/**
 * A trim (one JetStream API call) is skipped until this many stream messages were applied since the last one, or
 * TRIM_IDLE_INTERVALS trim intervals have passed: with 64 partitions per kind, a purge of every partition every
 * interval was a steady load of API calls on nats-server for a few messages each.
 */
const TRIM_MIN_MESSAGES = 256;
const TRIM_IDLE_INTERVALS = 12;
/** Most stream message ids a partition remembers (about 10 MB), see recentMessages. */
const RECENT_MESSAGES_MAX = 100_000;
/**
 * Poison accounting: starts at one cursor (counted in Redis, datapath/store.ts `attempt`) after which the message
 * at cursor + 1 is taken in a batch alone; and attempts of it alone after which it is quarantined, passed as a dead
 * letter without being decoded. A start by the same runner after a failure it saw itself (Redis or NATS away) does
 * not count, a start by another process (this one died, or the partition moved) or after a batch that threw does.
 * So a message that kills its worker takes its partition down twice at most: once in a batch, once alone.
 */
export const POISON_STARTS_MAX = 2;
export const POISON_SOLOS_MAX = 1;
/** Parcels remembered as applied, so that a copy sent again is acknowledged without being applied again. */
const SEEN_PARCELS_MAX = 8192;

/**
 * How long after a commit Redis may still lose it on a crash of its machine, by its appendfsync policy: the stream
 * is never trimmed past a cursor younger than this (the commands would be needed again). `no` leaves flushing to the
 * kernel, which writes dirty pages back within about 30 s.
 */
export function durableAfterMs(appendfsync: Config['redisAppendfsync']): number {
  return appendfsync === 'always' ? 0 : appendfsync === 'everysec' ? 2_000 : 35_000;
}

/**
 * The newest cursor Redis has surely made durable: the last of `commits` (time, cursor; oldest first) made at or
 * before `safeBefore`, or `durable` when none is; with the commits still too young to count.
 */
export function durableCursor(commits: readonly [atMs: number, cursor: number][], safeBefore: number, durable: number): { durable: number; younger: [number, number][] } {
  let aged = 0;
  while (aged < commits.length && commits[aged]![0] <= safeBefore) durable = Math.max(durable, commits[aged++]![1]);
  return { durable, younger: commits.slice(aged) };
}

export type RunnerState = 'idle' | 'starting' | 'running' | 'restarting' | 'refused' | 'stopping' | 'stopped' | 'fenced';

export interface RunnerDeps {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  /** Request/reply and coalesced publishing for this process (replies). */
  mux: Mux;
  /** Carries saga parcels to partitions of other workers. */
  courier: Courier;
  store: PartitionStore;
  /** The worker's batch loop: applies and commits this partition's messages together with its other partitions'. */
  loop: BatchLoop;
  config: Config;
  log: Log;
  actor: Actor<unknown, unknown>;
  partition: number;
  metrics?: RunnerMetrics | undefined;
  /** Called once when the partition is lost to a newer owner. */
  onFenced?: (runner: PartitionRunner) => void;
  /** News of its stream's new leader: a consumer that lived on the old one, or waits to be made, goes at once. */
  leaders?: StreamLeaders | undefined;
}

/** Why a partition does not serve although this worker holds it, for status, readiness and metrics. */
export interface Trouble {
  state: 'restarting' | 'refused';
  /** Restart attempts since the partition last committed. */
  attempts: number;
  error: string;
}

/**
 * The single writer of one partition: takes the partition (epoch, load, outbox re-sent), reads its clients'
 * commands in stream order from cursor + 1 and the saga parcels other workers send it into queues for the
 * worker's batch loop, which applies and commits them (state + cursor + outbox, fenced by epoch); then it makes the
 * batch visible and sends what the batch owes. Reads are answered from the committed state in memory.
 */
export class PartitionRunner implements Participant {
  readonly kind: Kind;
  readonly partition: number;
  readonly actor: Actor<unknown, unknown>;
  readonly store: PartitionStore;
  readonly log: Log;
  private _state: RunnerState = 'idle';
  private _epoch = 0;
  private _cursor = 0;
  private _local = 0;
  private _commitCount = 0;
  private _live: Tables = new Map();
  /** Commands in the stream not yet delivered to this runner, as of the last batch (the consumer's pending count). */
  private streamPending = 0;
  private readonly names: Names;
  private queue: StreamMessage[] = [];
  private parcels: Inbound[] = [];
  private space: (() => void) | null = null;
  private messages: ConsumerMessages | null = null;
  /** Stream sequence of the last message queued from the consumer (a new consumer starts after it). */
  private queuedSeq = 0;
  /** When the consumer last gave a sign of life: a message, or news of a pull. */
  private consumerHeardAt = 0;
  /** When the consumer last delivered a message (or was made). */
  private deliveredAt = 0;
  /** The JetStream API of readWithoutConsumer (CONSUMER_API_TIMEOUT_MS). */
  private readerJsm: JetStreamManager | undefined;
  /** The JetStream client its consumers are made with (CONSUMER_API_TIMEOUT_MS). */
  private consumerJs: JetStreamClient | undefined;
  /** Replaces the consumer now (set while one runs; see watchConsumer). */
  private replaceConsumer: ((why: string) => void) | null = null;
  private reads: Subscription | null = null;
  private outbox: PartitionOutbox | null = null;
  private trimTimer: NodeJS.Timeout | null = null;
  private trimmedTo = 0;
  /** Stream messages applied since the last trim, and the trim ticks skipped since. */
  private untrimmed = 0;
  private trimSkips = 0;
  /** (time, cursor) of recent commits: the stream is trimmed only below a cursor Redis has surely made durable. */
  private commits: [atMs: number, cursor: number][] = [];
  /** The newest cursor committed at least durableAfterMs ago. */
  private durable = 0;
  /** Taken by its owner and not stopped since: a failing partition keeps trying while this holds. */
  private wanted = false;
  /** Parcels applied and committed lately, oldest first (a Set keeps insertion order). */
  private readonly seenIds = new Set<string>();
  /**
   * Message ids of the stream messages applied and committed within JetStream's duplicate window, with when (oldest
   * first), at most RECENT_MESSAGES_MAX: a second copy of one is passed (BatchLoop). Not only repeats within a
   * request deadline: a command a node stored while cut off from the others reappeared after the cut healed.
   */
  private readonly recentMessages = new Map<string, number>();
  private trouble: Trouble | undefined;
  /** Who records the attempts of this runner (see POISON_STARTS_MAX); whether its last batch threw. */
  private readonly attemptToken = randomUUID();
  private faulted = false;
  /** The stream message to take alone (0: none), and the one to quarantine, with why. */
  private suspectSeq = 0;
  private quarantine: { seq: number; why: string } | null = null;

  constructor(private readonly deps: RunnerDeps) {
    this.kind = deps.actor.kind;
    this.partition = deps.partition;
    this.actor = deps.actor;
    this.store = deps.store;
    this.names = names(deps.config.streamPrefix);
    this.log = deps.log.child({ name: `${this.kind}-${this.partition}`, kind: this.kind, partition: this.partition });
  }

  get state(): RunnerState {
    return this._state;
  }
  get epoch(): number {
    return this._epoch;
  }
  get cursor(): number {
    return this._cursor;
  }
  get local(): number {
    return this._local;
  }
  get commitCount(): number {
    return this._commitCount;
  }
  get live(): Tables {
    return this._live;
  }

  /** Reads see only committed state. */
  private readonly view: ReadView = { get: <T>(table: string, key: string) => this._live.get(table)?.get(key) as T | undefined };

  get subject(): string {
    return this.names.cmd(this.kind, this.partition);
  }

  /** Commands waiting for this partition: buffered here, or still in the stream. */
  lag(): number {
    return this.queue.length + this.parcels.length + this.streamPending;
  }

  /** Entries held in memory, per table (for status and tests). */
  size(): Record<string, number> {
    return Object.fromEntries([...this._live].map(([t, m]) => [t, m.size]));
  }

  /** Why it does not serve, while it restarts after failures or refuses a stream behind its cursor. */
  health(): Trouble | undefined {
    return this._state === 'restarting' || this._state === 'refused' ? this.trouble : undefined;
  }

  private setState(next: RunnerState): void {
    this.log.debug(`${this._state} -> ${next}`, { epoch: this._epoch, cursor: this._cursor });
    this._state = next;
  }

  /**
   * Takes ownership: raise the epoch (fencing older owners), load, re-send the outbox, then read from cursor + 1.
   * With an epoch (from the placement) it throws StaleEpochError if the partition is held at a newer one.
   */
  async start(epoch?: number): Promise<void> {
    const { store } = this.deps;
    this.wanted = true;
    this.setState('starting');
    try {
      this._epoch = await store.acquire(epoch);
    } catch (err) {
      this.setState('stopped');
      throw err;
    }
    try {
      await this.open();
    } catch (err) {
      // Half taken (Redis or NATS failed while loading): let go of what was set up, abandoning any re-sent
      // outbox (the next owner re-sends it); the caller decides what next.
      if (this._state === 'starting') this.setState('stopped');
      await this.release();
      throw err;
    }
  }

  private async open(): Promise<void> {
    const { store, actor, js, jsm, nc, config } = this.deps;
    const loaded = await store.load();
    this._cursor = loaded.cursor;
    this._local = loaded.local;
    this._commitCount = loaded.commits;
    this.trimmedTo = 0;
    this.untrimmed = 0;
    this.trimSkips = 0;
    this.durable = 0;
    // What an earlier owner committed counts as committed now: once Redis has surely made it durable, this owner may
    // trim it (a partition that moved, and then had no command of its own, used to keep its predecessor's forever).
    this.commits = [[Date.now(), loaded.cursor]];
    this._live = new Map(actor.tables.map((t) => [t, loaded.tables.get(t) ?? new Map()]));

    // Does the stream still hold every command after the cursor Redis gave back, and is it the stream this partition
    // read before? (marks.ts)
    const streamName = this.names.stream(this.kind);
    const markSubject = this.names.mark(this.kind, this.partition);
    const [stream, mark] = await Promise.all([jsm.streams.info(streamName), newestMark(jsm, streamName, markSubject)]);
    const verdict = checkStream({ stream: streamName, lastSeq: stream.state.last_seq, mark, cursor: this._cursor, recordedMark: loaded.mark });
    if (!verdict.ok) {
      this.refuse(verdict.error, { why: verdict.why, lastSeq: stream.state.last_seq, cursor: this._cursor, mark, recordedMark: loaded.mark });
      return;
    }
    // A partition that never marked this stream marks it now, so that a stream made anew is known for one.
    if (!mark || loaded.mark === 0) await this.recordMark(await publishMark(nc, markSubject, this._cursor));
    if (this._state !== 'starting') throw new Error('stopped while starting');
    await this.countAttempt();

    this.outbox = new PartitionOutbox({
      nc,
      mux: this.deps.mux,
      courier: this.deps.courier,
      log: this.log,
      deadLetterSubject: this.names.deadLetter(this.kind, this.partition),
      name: `${this.kind}.${this.partition}`,
      clear: (fields) => store.clearOutbox(fields),
      abandoned: () => !this.active && this._state !== 'stopping', // the next owner re-sends it
      retryBackoffMs: config.retryBackoffMs,
      onDone: () => {
        if (config.faultKillAfter === 'send') process.kill(process.pid, 'SIGKILL');
        this.deps.loop.wake();
      },
    });
    for (const [field, bytes] of loaded.outbox) this.outbox.send(field, decodeEntry(bytes));

    // Reads are answered from the committed view (transport/reads.ts: batches, checks, size).
    this.reads = serveReads({ nc, subject: this.names.get(this.kind, this.partition), answer: (query) => actor.query(this.view, query), log: this.log });

    this.queuedSeq = this._cursor;
    await this.dropOldConsumers();
    await this.openConsumer();
    if (this._state !== 'starting') throw new Error('stopped while starting');
    this.trimTimer = setInterval(() => void this.trim(), config.trimIntervalMs);
    this.trimTimer.unref();
    this.setState('running');
    this.deps.loop.add(this);
    this.log.debug('owned', { epoch: this._epoch, cursor: this._cursor, ...this.size(), outbox: loaded.outbox.length });
  }

  /** Records this start against the message at cursor + 1, and decides from the count how to take it. */
  /** Records a mark it published, as the owner at its epoch (store.ts: a deposed owner's mark is not recorded). */
  private async recordMark(seq: number): Promise<void> {
    if (!(await this.store.recordMark(this._epoch, seq))) throw new StaleEpochError(this._epoch, await this.store.epoch());
  }

  private async countAttempt(): Promise<void> {
    const attempts = await this.store.attempt(this._epoch, this._cursor, this.attemptToken, this.faulted ? 'fault' : 'start');
    this.faulted = false;
    if (!attempts) throw new StaleEpochError(this._epoch, await this.store.epoch());
    const seq = this._cursor + 1;
    this.suspectSeq = 0;
    this.quarantine = null;
    if (attempts.solos >= POISON_SOLOS_MAX) {
      const why = `stream message ${seq} was taken ${attempts.starts - 1} times without being committed (${attempts.solos} of them alone): a poison message, quarantined without being decoded`;
      this.quarantine = { seq, why };
      this.log.error(`passing ${why}`, { seq, ...attempts });
    } else if (attempts.starts >= POISON_STARTS_MAX) {
      this.suspectSeq = seq;
      this.log.warn('the message after the cursor was not committed by the last starts: it is taken alone', { seq, ...attempts });
    }
  }

  /**
   * Deletes the consumers earlier owners left on this partition's subject: a worker that died leaves its ordered
   * consumers behind for nats.js's inactive threshold, 5 minutes (which nats.js 2.29 sets only on a consumer that
   * starts at the stream's first message, so not on ours): after 11 worker restarts every command stream had 24.
   * The owner that was fenced reads nothing more from its own. Best effort, and at most CONSUMER_CLEANUP_MAX_MS
   * before this partition makes its own consumer: while the stream elects a leader every call would wait for its
   * timeout, one after the other, and a partition took tens of seconds to start (the NATS fault tests' windows went
   * from 8 to 44 s). Nothing is deleted once that time is up, so its own new consumer is never among them.
   */
  private async dropOldConsumers(): Promise<void> {
    const stream = this.names.stream(this.kind);
    let late = false;
    const work = (async () => {
      const jsm = await this.deps.nc.jetstreamManager({ timeout: CONSUMER_CLEANUP_MAX_MS, checkAPI: false });
      for (const c of await jsm.consumers.list(stream).next()) {
        if (late) return;
        const filters = c.config.filter_subjects ?? (c.config.filter_subject ? [c.config.filter_subject] : []);
        if (filters.length === 1 && filters[0] === this.subject) await jsm.consumers.delete(stream, c.name).catch(() => false);
      }
    })().catch((err: unknown) => this.log.warn('could not delete the stream consumers of earlier owners', { err }));
    await Promise.race([work, delay(CONSUMER_CLEANUP_MAX_MS)]);
    late = true;
  }

  /**
   * An ordered consumer from the message after the last one queued, pumping into the queue. Given up after
   * CONSUMER_OPEN_MAX_MS: when the server does not answer its creation (its stream electing a leader), nats.js
   * retries by itself for minutes before it says so.
   */
  private async openConsumer(): Promise<void> {
    const { config } = this.deps;
    const js = (this.consumerJs ??= this.deps.nc.jetstream({ timeout: CONSUMER_API_TIMEOUT_MS }));
    const stream = this.names.stream(this.kind);
    let late = false;
    const made = (async () => {
      const consumer = await js.consumers.get(stream, { filterSubjects: this.subject, opt_start_seq: this.queuedSeq + 1 });
      const messages = await consumer.consume({ max_messages: Math.min(config.queueMax, config.batchMax * 2), expires: CONSUMER_PULL_EXPIRES_MS, idle_heartbeat: CONSUMER_HEARTBEAT_MS });
      if (late) messages.stop();
      return messages;
    })();
    let timer: NodeJS.Timeout | undefined;
    const messages = await Promise.race([
      made,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          late = true;
          made.catch(() => {});
          reject(new Error(`no stream consumer of ${stream} within ${CONSUMER_OPEN_MAX_MS} ms`));
        }, CONSUMER_OPEN_MAX_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    if (!this.active) return messages.stop();
    this.messages = messages;
    void this.pump(messages);
    void this.watchConsumer(messages);
  }

  /**
   * Replaces the consumer when it falls silent: when its server misses CONSUMER_MISSED_HEARTBEATS_MAX heartbeats, or
   * when neither a message nor any news of its pulls (each ends at least every CONSUMER_PULL_EXPIRES_MS) came for
   * CONSUMER_SILENT_MAX_MS. The second covers a reconnect: nats.js then stops watching heartbeats until it has asked
   * the consumer's server about it, which never answers if that server is the one that went away. And when it
   * delivered nothing for CONSUMER_UNDELIVERED_MAX_MS while the stream holds a command for this partition, stored
   * that long ago, that it has not delivered: a consumer made while its stream elected a leader was seen to stay
   * alive and deliver nothing.
   */
  private async watchConsumer(messages: ConsumerMessages): Promise<void> {
    this.consumerHeardAt = Date.now();
    this.deliveredAt = Date.now();
    let asking = false;
    let replacing = false;
    const replace = (why: string) => {
      if (replacing || messages !== this.messages || !this.active) return;
      replacing = true;
      clearInterval(watchdog);
      this.log.warn(`the stream consumer ${why}; reading on through a new one`, { from: this.queuedSeq + 1 });
      messages.stop();
      this.messages = null;
      void this.readWithoutConsumer();
      void (async () => {
        while (this.active && this.messages === null) {
          const leader = nextLeader(this.deps.leaders, this.names.stream(this.kind));
          try {
            await this.openConsumer();
          } catch (err) {
            this.log.warn('could not make a new stream consumer yet; retrying', { err });
            await Promise.race([delay(this.deps.config.retryBackoffMs * 10), leader.elected]);
          } finally {
            leader.stop();
          }
        }
      })();
    };
    this.replaceConsumer = replace;
    const watchdog = setInterval(() => {
      if (messages !== this.messages || !this.active) return clearInterval(watchdog);
      // Held back by a full queue (backpressure), the pump asks for nothing: its silence is ours.
      if (this.queue.length >= this.deps.config.queueMax) this.consumerHeardAt = Date.now();
      if (Date.now() - this.consumerHeardAt > CONSUMER_SILENT_MAX_MS) return replace(`was silent for ${CONSUMER_SILENT_MAX_MS} ms (its server is gone?)`);
      if (asking || this.queue.length > 0 || Date.now() - this.deliveredAt < CONSUMER_UNDELIVERED_MAX_MS) return;
      asking = true;
      void this.deps.jsm.streams
        .getMessage(this.names.stream(this.kind), { last_by_subj: this.subject })
        .then(
          (last) => {
            if (last.seq > this.queuedSeq && Date.now() - last.time.getTime() > CONSUMER_UNDELIVERED_MAX_MS) replace(`has not delivered command ${last.seq}, stored ${Date.now() - last.time.getTime()} ms ago`);
            else this.deliveredAt = Date.now(); // nothing missed: an idle partition asks once per CONSUMER_UNDELIVERED_MAX_MS
          },
          () => {}, // none stored (trimmed), or no answer now: asked again at the next tick
        )
        .finally(() => (asking = false));
    }, CONSUMER_PULL_EXPIRES_MS / 2);
    watchdog.unref();
    try {
      for await (const s of await messages.status()) {
        if (messages !== this.messages || !this.active) break;
        this.consumerHeardAt = Date.now();
        if (s.type === ConsumerEvents.HeartbeatsMissed && (s.data as number) >= CONSUMER_MISSED_HEARTBEATS_MAX) replace(`missed ${s.data} heartbeats (its server is gone?)`);
      }
    } catch {
      // the consumer stopped: nothing to watch
    }
    clearInterval(watchdog);
  }

  /**
   * Reads the partition's commands one by one from the stream's leader (a message get by subject, after the last one
   * queued) while its consumer is being made again: a stream has a leader again seconds before a new consumer can be
   * made (nats-server 2.9 places each consumer through the cluster's meta leader, and was seen to refuse or lose new
   * ones for 4-20 s after a node was lost, placing some on the node that was gone). Stops as soon as the consumer is
   * back, which starts after the last message queued either way.
   */
  private async readWithoutConsumer(): Promise<void> {
    const stream = this.names.stream(this.kind);
    const jsm = (this.readerJsm ??= await this.deps.nc.jetstreamManager({ timeout: CONSUMER_API_TIMEOUT_MS, checkAPI: false }));
    while (this.active && this.messages === null) {
      if (this.queue.length >= this.deps.config.queueMax) {
        await delay(DIRECT_READ_IDLE_MS);
        continue;
      }
      let stored;
      try {
        stored = await jsm.streams.getMessage(stream, { seq: this.queuedSeq + 1, next_by_subj: this.subject } as unknown as { seq: number });
      } catch {
        await delay(DIRECT_READ_IDLE_MS); // nothing after the cursor yet, or no leader to ask
        continue;
      }
      if (this.messages !== null || !this.active) return; // the consumer is back: it delivers this one
      if (stored.seq <= this.queuedSeq) continue;
      this.queuedSeq = stored.seq;
      this.deliveredAt = Date.now();
      this.queue.push({ seq: stored.seq, data: stored.data, headers: stored.header });
      this.deps.loop.wake();
    }
  }

  /**
   * This process's NATS connection moved to another server. The consumer may have lived on the server that went
   * away, and after a reconnect nats.js waits for that server to tell it about its consumer before it watches the
   * heartbeats again: a new consumer now, instead of CONSUMER_SILENT_MAX_MS of reading nothing.
   */
  reconnected(): void {
    this.replaceConsumer?.('may have lived on the server this process lost');
  }

  /** Its stream elected a new leader (stream-leaders.ts): the consumer may have lived on the old one. */
  streamLeaderElected(): void {
    this.replaceConsumer?.('may have lived on the old leader of its stream');
  }

  /**
   * The stream and Redis do not hold together everything this partition applied (marks.ts: the stream lost commands
   * or was made anew, or Redis lost commits the stream no longer has). Reading on would skip commands, or serve state
   * without them, silently. Refuse, loudly, and look again every REFUSED_RECHECK_MS, so a partition an operator has
   * mended serves again by itself.
   */
  private refuse(error: string, details: Record<string, unknown>): void {
    this.trouble = { state: 'refused', attempts: (this.trouble?.attempts ?? 0) + 1, error };
    this.setState('refused');
    if (this.trouble.attempts === 1) this.log.error(`refusing to serve: ${error}`, { stream: this.names.stream(this.kind), ...details });
    this.deps.metrics?.partitionRestart?.(this.kind, this.partition);
    void delay(REFUSED_RECHECK_MS).then(() => {
      if (this._state === 'refused') void this.retry();
    });
  }

  /** Lets go: stop reading, finish the batch in hand, wait for its outbox. */
  async stop(): Promise<void> {
    this.wanted = false;
    if (!['running', 'starting', 'restarting', 'refused'].includes(this._state)) return;
    this.setState('stopping');
    await this.release();
    this.setState('stopped');
  }

  private async release(): Promise<void> {
    if (this.trimTimer) clearInterval(this.trimTimer);
    this.trimTimer = null;
    this.reads?.unsubscribe();
    this.reads = null;
    this.messages?.stop();
    this.messages = null;
    this.space?.();
    this.deps.loop.remove(this);
    if (!(await this.deps.loop.settled(this))) this.log.warn('letting go with a batch still committing after SETTLE_DEADLINE_MS (its commit, if it lands, is refused by a newer epoch or its outbox is sent by the next owner)');
    // Let the outbox finish, within a bound: what is still unsent then stays in Redis for the next owner to send.
    const outbox = this.outbox;
    if (outbox) {
      if (!(await outbox.drain(OUTBOX_DRAIN_MAX_MS))) this.log.warn('letting go with outbox messages undelivered; the next owner sends them', { batches: outbox.pending });
      outbox.close();
    }
    this.outbox = null;
    this.queue = [];
    this.parcels = [];
  }

  private get active(): boolean {
    return this._state === 'running' || this._state === 'starting';
  }

  private async pump(messages: ConsumerMessages): Promise<void> {
    try {
      for await (const m of messages) {
        // A replaced consumer may still hand over what it had; the new one starts after the last message queued.
        if (messages !== this.messages || m.seq <= this.queuedSeq) continue;
        this.queuedSeq = m.seq;
        this.consumerHeardAt = this.deliveredAt = Date.now();
        this.queue.push({ seq: m.seq, data: m.data, headers: m.headers, pending: m.info.pending });
        this.deps.loop.wake();
        // Backpressure: stop pulling from the stream while the queue is full.
        while (this.queue.length >= this.deps.config.queueMax && this.active) {
          await new Promise<void>((r) => (this.space = r));
        }
        if (!this.active) break;
      }
    } catch (err) {
      if (this.active) this.log.error('reader failed', { err });
    }
  }

  /** A saga parcel from a partition of another worker; false when this runner does not take it now (not acknowledged then: it comes again). */
  deliverParcel(inbound: Inbound): boolean {
    if (!this.active || this.parcels.length >= this.deps.config.queueMax) return false;
    this.parcels.push(inbound);
    if (this._state === 'running') this.deps.loop.wake();
    return true;
  }

  // ---- Participant: what the batch loop sees ----------------------------------------------------------

  ready(): boolean {
    return this._state === 'running' && (this.parcels.length > 0 || (this.queue.length > 0 && this.roomInOutbox()));
  }

  private roomInOutbox(): boolean {
    return (this.outbox?.pending ?? 0) < OUTBOX_BATCHES_INFLIGHT_MAX;
  }

  accepts(): boolean {
    return this._state === 'running';
  }

  suspect(): boolean {
    if (this.suspectSeq === 0 || this._state !== 'running') return false;
    const first = this.queue[0];
    if (first && first.seq > this.suspectSeq) this.suspectSeq = 0; // not in the stream any more (trimmed): nothing to take alone
    return first?.seq === this.suspectSeq && this.roomInOutbox();
  }

  async takeAlone(): Promise<boolean> {
    const seq = this.suspectSeq;
    this.suspectSeq = 0;
    if ((await this.store.attempt(this._epoch, seq - 1, this.attemptToken, 'solo')) !== null) return true;
    this.fenced();
    return false;
  }

  quarantined(seq: number): string | undefined {
    return this.quarantine?.seq === seq ? this.quarantine.why : undefined;
  }

  take(max: number): Taken {
    let stream: StreamMessage[] = [];
    // Backpressure on clients' commands only (see OUTBOX_BATCHES_INFLIGHT_MAX).
    if (this.roomInOutbox() && this.queue.length > 0) {
      stream = this.queue.length <= max ? this.queue : this.queue.slice(0, max);
      this.queue = stream === this.queue ? [] : this.queue.slice(max);
    }
    const last = stream[stream.length - 1];
    if (last?.pending !== undefined) this.streamPending = last.pending;
    this.space?.();
    const parcels = this.parcels;
    this.parcels = [];
    return { stream, parcels };
  }

  giveBack(taken: Taken): void {
    if (!this.active) return;
    if (taken.stream.length > 0) this.queue = taken.stream.concat(this.queue);
    if (taken.parcels.length > 0) this.parcels = taken.parcels.concat(this.parcels);
  }

  seen(parcelId: string): boolean {
    return this.seenIds.has(parcelId);
  }

  seenMessage(messageId: string): boolean {
    return this.recentMessages.has(messageId);
  }

  takeDone(): string[] {
    return this.outbox?.takeDone() ?? [];
  }

  giveBackDone(fields: string[]): void {
    this.outbox?.giveBackDone(fields);
  }

  committed(c: Committed): void {
    c.draft.publish();
    if (c.cursor > this._cursor) this.commits.push([Date.now(), c.cursor]);
    this.untrimmed += c.streamMessages;
    this._cursor = c.cursor;
    this._local = c.local;
    this._commitCount++;
    this.trouble = undefined;
    for (const id of c.parcels) this.seenIds.add(id);
    const now = Date.now();
    for (const id of c.messageIds) this.recentMessages.set(id, now);
    const keepAfter = now - this.deps.config.duplicateWindowMs;
    for (const [id, at] of this.recentMessages) {
      if (at >= keepAfter && this.recentMessages.size <= RECENT_MESSAGES_MAX) break;
      this.recentMessages.delete(id);
    }
    for (const id of this.seenIds) {
      if (this.seenIds.size <= SEEN_PARCELS_MAX) break;
      this.seenIds.delete(id);
    }
    if (c.entry) this.outbox?.send(c.field, c.entry);
  }

  fenced(): void {
    if (!this.active) return;
    this.log.warn('fenced: a newer owner holds the partition; dropping it', { epoch: this._epoch });
    this.setState('fenced');
    this.queue = [];
    this.parcels = [];
    this._live = new Map();
    void this.release().then(() => this.deps.onFenced?.(this));
  }

  failed(err: unknown, fault?: boolean): void {
    if (this._state !== 'running') return;
    if (fault) this.faulted = true;
    const attempts = (this.trouble?.attempts ?? 0) + 1;
    this.trouble = { state: 'restarting', attempts, error: (err as Error)?.message ?? String(err) };
    this.log.error('batch failed; restarting the partition from its committed state', { err, attempts });
    this.setState('restarting');
    void this.release().then(() => this.retry());
  }

  /**
   * Takes the partition again from Redis and its stream, after a pause that doubles with every attempt since it
   * last committed (retryBackoffMs up to RESTART_BACKOFF_MAX_MS), until it runs, is refused for good by a newer
   * epoch, or is stopped.
   */
  private async retry(): Promise<void> {
    const { config, metrics } = this.deps;
    for (;;) {
      const attempts = this.trouble?.attempts ?? 1;
      await delay(Math.min(RESTART_BACKOFF_MAX_MS, config.retryBackoffMs * 2 ** Math.min(20, attempts - 1)));
      if (!this.wanted || (this._state !== 'restarting' && this._state !== 'refused')) return; // stopped meanwhile
      metrics?.partitionRestart?.(this.kind, this.partition);
      const trouble = this.trouble;
      try {
        await this.start(this._epoch);
        if ((this._state as RunnerState) === 'running') this.log.info('running again', { attempts });
        return;
      } catch (err) {
        if (err instanceof StaleEpochError) return this.log.warn('not restarting: a newer owner holds the partition', { epoch: this._epoch });
        if (!this.wanted) return;
        this.trouble = { state: 'restarting', attempts: (trouble?.attempts ?? 0) + 1, error: (err as Error).message };
        this.setState('restarting');
        this.log.error('restart failed; trying again', { err, attempts: this.trouble.attempts });
      }
    }
  }

  /**
   * Purges this partition's commands below the committed cursor that Redis has surely made durable (durableAfterMs
   * ago): the stream holds only what is unapplied, or applied too recently to be safe on disk.
   */
  private async trim(): Promise<void> {
    if (!this.active) return;
    ({ durable: this.durable, younger: this.commits } = durableCursor(this.commits, Date.now() - durableAfterMs(this.deps.config.redisAppendfsync), this.durable));
    const upTo = this.durable;
    if (upTo <= this.trimmedTo) return;
    if (this.untrimmed < TRIM_MIN_MESSAGES && ++this.trimSkips < TRIM_IDLE_INTERVALS) return;
    this.untrimmed = 0;
    this.trimSkips = 0;
    try {
      // The mark first (marks.ts): the stream then always says how far it was trimmed. The purge takes this
      // partition's commands and older marks up to upTo (`<kind>.*.<n>`), never the new mark, stored after them.
      await this.recordMark(await publishMark(this.deps.nc, this.names.mark(this.kind, this.partition), upTo));
      await this.deps.jsm.streams.purge(this.names.stream(this.kind), { filter: this.names.partitionSubjects(this.kind, this.partition), seq: upTo + 1 });
      this.trimmedTo = upTo;
    } catch (err) {
      this.log.warn('trim failed', { err });
    }
  }
}
