import { ConsumerEvents, type ConsumerMessages, type JetStreamClient, type JetStreamManager, type NatsConnection, type StoredMsg } from 'nats';
import { setTimeout as delay } from 'node:timers/promises';
import type { Config } from '../config.js';
import type { Log } from '../log.js';
import { nextLeader, type StreamLeaders } from '../transport/stream-leaders.js';
import type { StreamMessage } from './participant.js';
import { CONSUMER_PROBATION_MS, delivery, isNotFound, type Held } from './probation.js';
import { Rereads } from './resequence.js';

/** Longest a starting partition spends deleting the stream consumers earlier owners left (dropOldConsumers). */
const CONSUMER_CLEANUP_MAX_MS = 1000;
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
export interface CommandReaderDeps {
  nc: NatsConnection;
  jsm: JetStreamManager;
  config: Pick<Config, 'queueMax' | 'batchMax' | 'retryBackoffMs'>;
  log: Log;
  /** News of its stream's new leader: a consumer that lived on the old one, or waits to be made, goes at once. */
  leaders?: StreamLeaders | undefined;
  /** The partition's command stream, and its commands' subject in it. */
  stream: string;
  subject: string;
  /** The runner reads its stream (running or starting): when not, the reader stops. */
  active: () => boolean;
  /** Something was queued: the batch loop may take it. */
  wake: () => void;
  /** The stream sequence up to which the partition trimmed its commands (trimming.ts): no leader holds those. */
  trimmed?: () => number;
  /** Makes the partition's consumer from stream sequence `from` (tests give one of their own). */
  consume?: (from: number) => Promise<ConsumerMessages>;
}

/**
 * Reads one partition's commands in stream order into a bounded queue for the batch loop, through an ordered
 * consumer it watches and makes again when it falls silent (and by direct gets while none is there).
 */
export class CommandReader {
  private queue: StreamMessage[] = [];
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
  /** The last messages queued, and the looks for commands under sequences already read (resequence.ts). */
  private readonly rereads: Rereads;
  /** Replaces the consumer now (set while one runs; see watchConsumer). */
  private replaceConsumer: ((why: string) => void) | null = null;

  constructor(private readonly deps: CommandReaderDeps) {
    this.rereads = new Rereads({
      get: (seq, next) => this.leaderGet(seq, next),
      subject: deps.subject,
      active: () => this.active,
      trimmed: deps.trimmed,
      queue: (found, cursor) => {
        this.deps.log.warn(`the stream's leader holds commands under sequences this partition read past (it lacks ones read from the leader before it); applying them`, { seqs: found.map((m) => m.seq), cursor });
        for (const m of found) this.queue.push({ seq: m.seq, data: m.data, headers: m.header, resequenced: true });
        this.deps.wake();
      },
    });
  }

  private get active(): boolean {
    return this.deps.active();
  }

  private get subject(): string {
    return this.deps.subject;
  }

  /** Messages queued and not taken. */
  get queued(): number {
    return this.queue.length;
  }

  first(): StreamMessage | undefined {
    return this.queue[0];
  }

  /** Takes up to `max` messages from the queue (0: none), making room for the consumer. */
  take(max: number): StreamMessage[] {
    let taken: StreamMessage[] = [];
    if (max > 0 && this.queue.length > 0) {
      taken = this.queue.length <= max ? this.queue : this.queue.slice(0, max);
      this.queue = taken === this.queue ? [] : this.queue.slice(max);
    }
    this.space?.();
    return taken;
  }

  /** Puts back, first in the queue, messages a batch took and did not apply. */
  giveBack(taken: StreamMessage[]): void {
    if (taken.length > 0) this.queue = taken.concat(this.queue);
  }

  clear(): void {
    this.queue = [];
  }

  /** Reads from the message after `cursor`: drops the consumers earlier owners left, and makes its own. */
  async open(cursor: number): Promise<void> {
    this.queuedSeq = cursor;
    this.rereads.clear();
    await this.dropOldConsumers();
    await this.openConsumer();
  }

  /** Stops reading (what is queued stays until cleared). */
  stop(): void {
    this.messages?.stop();
    this.messages = null;
    this.space?.();
  }

  /** Makes the consumer again now, if one runs (its server may be gone). */
  replace(why: string): void {
    this.replaceConsumer?.(why);
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
    const stream = this.deps.stream;
    let late = false;
    const work = (async () => {
      const jsm = await this.deps.nc.jetstreamManager({ timeout: CONSUMER_CLEANUP_MAX_MS, checkAPI: false });
      for (const c of await jsm.consumers.list(stream).next()) {
        if (late) return;
        const filters = c.config.filter_subjects ?? (c.config.filter_subject ? [c.config.filter_subject] : []);
        if (filters.length === 1 && filters[0] === this.subject) await jsm.consumers.delete(stream, c.name).catch(() => false);
      }
    })().catch((err: unknown) => this.deps.log.warn('could not delete the stream consumers of earlier owners', { err }));
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
    const stream = this.deps.stream;
    let late = false;
    const consume = this.deps.consume ?? (async (from: number) => {
      const consumer = await js.consumers.get(stream, { filterSubjects: this.subject, opt_start_seq: from });
      return consumer.consume({ max_messages: Math.min(config.queueMax, config.batchMax * 2), expires: CONSUMER_PULL_EXPIRES_MS, idle_heartbeat: CONSUMER_HEARTBEAT_MS });
    });
    const made = (async () => {
      const messages = await consume(this.queuedSeq + 1);
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
    void this.pump(messages, Date.now() + CONSUMER_PROBATION_MS);
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
      this.deps.log.warn(`the stream consumer ${why}; reading on through a new one`, { from: this.queuedSeq + 1 });
      messages.stop();
      this.messages = null;
      void this.readWithoutConsumer();
      this.rereads.look(this.queuedSeq);
      void (async () => {
        while (this.active && this.messages === null) {
          const leader = nextLeader(this.deps.leaders, this.deps.stream);
          try {
            await this.openConsumer();
          } catch (err) {
            this.deps.log.warn('could not make a new stream consumer yet; retrying', { err });
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
        .getMessage(this.deps.stream, { last_by_subj: this.subject })
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
    while (this.active && this.messages === null) {
      if (this.queue.length >= this.deps.config.queueMax) {
        await delay(DIRECT_READ_IDLE_MS);
        continue;
      }
      const stored = await this.leaderGet(this.queuedSeq + 1, true).catch(() => undefined);
      if (!stored) {
        await delay(DIRECT_READ_IDLE_MS); // nothing after the cursor yet, or no leader to ask
        continue;
      }
      if (this.messages !== null || !this.active) return; // the consumer is back: it delivers this one
      if (stored.seq <= this.queuedSeq) continue;
      this.push({ seq: stored.seq, data: stored.data, headers: stored.header });
    }
  }

  /**
   * Whether the stream's leader holds `delivered` as the partition's next message, same sequence and same bytes (see
   * CONSUMER_PROBATION_MS); asks again until it answers or the consumer is replaced. When the leader holds another
   * one first, queues the leader's; either way a consumer that disagrees is replaced (readWithoutConsumer reads on).
   */
  private async confirmed(messages: ConsumerMessages, delivered: Held): Promise<boolean> {
    while (messages === this.messages && this.active) {
      let next: StoredMsg | undefined;
      try {
        next = await this.leaderGet(this.queuedSeq + 1, true);
      } catch {
        await delay(DIRECT_READ_IDLE_MS); // no leader to ask now: the delivery waits for one
        continue;
      }
      if (messages !== this.messages) return false;
      const verdict = delivery(delivered, next);
      if (verdict === 'next') return true;
      if (verdict === 'leader-first') this.push({ seq: next!.seq, data: next!.data, headers: next!.header });
      this.replace(
        verdict === 'leader-first'
          ? `delivered command ${delivered.seq} where its stream's leader holds command ${next!.seq}${next!.seq === delivered.seq ? ' with other bytes' : ''} next`
          : `delivered command ${delivered.seq}, which its stream's leader does not hold after ${this.queuedSeq}`,
      );
      return false;
    }
    return false;
  }

  /**
   * The stream leader's message at `seq`, or the partition's first at or after it (`next`, a message get by subject);
   * undefined when it holds none. Throws when no leader answers.
   */
  private async leaderGet(seq: number, next: boolean): Promise<StoredMsg | undefined> {
    const query = next ? { seq, next_by_subj: this.subject } : { seq };
    return (await this.jsm()).streams.getMessage(this.deps.stream, query as { seq: number }).catch((err: unknown) => {
      if (isNotFound(err)) return undefined;
      throw err;
    });
  }

  /** The JetStream API of the direct reads (CONSUMER_API_TIMEOUT_MS). */
  private async jsm(): Promise<JetStreamManager> {
    return (this.readerJsm ??= await this.deps.nc.jetstreamManager({ timeout: CONSUMER_API_TIMEOUT_MS, checkAPI: false }));
  }

  /** Queues a message read from the stream's leader. */
  private push(m: StreamMessage): void {
    this.rereads.read(m.seq, m.headers);
    this.queuedSeq = m.seq;
    this.deliveredAt = Date.now();
    this.queue.push(m);
    this.deps.wake();
  }

  private async pump(messages: ConsumerMessages, probationUntil: number): Promise<void> {
    try {
      for await (const m of messages) {
        // A replaced consumer may still hand over what it had; the new one starts after the last message queued.
        if (messages !== this.messages || m.seq <= this.queuedSeq) continue;
        if (Date.now() < probationUntil && !(await this.confirmed(messages, m))) continue;
        if (messages !== this.messages || m.seq <= this.queuedSeq) continue;
        this.rereads.read(m.seq, m.headers);
        this.queuedSeq = m.seq;
        this.consumerHeardAt = this.deliveredAt = Date.now();
        this.queue.push({ seq: m.seq, data: m.data, headers: m.headers, pending: m.info.pending });
        this.deps.wake();
        // Backpressure: stop pulling from the stream while the queue is full.
        while (this.queue.length >= this.deps.config.queueMax && this.active) {
          await new Promise<void>((r) => (this.space = r));
        }
        if (!this.active) break;
      }
    } catch (err) {
      if (this.active) this.deps.log.error('reader failed', { err });
    }
  }
}

