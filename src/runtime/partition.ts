import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg, NatsConnection, Subscription } from 'nats';
import { setTimeout as delay } from 'node:timers/promises';
import type { Actor, ApplyContext, Effects, ReadView, ReplyTo, StateView } from '../actors/types.js';
import { decode, encode } from '../codec.js';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import { BUNDLE_MAX, bundles, fail, names, unbundle, type CommandEnvelope, type Names, type Reply, type StreamMessage } from '../protocol.js';
import type { RunnerMetrics } from './metrics.js';
import type { Courier } from './courier.js';
import type { Mux } from './mux.js';
import { StaleEpochError, type Changes, type Outbox, type PartitionStore } from './store.js';

const replyMessage = (to: ReplyTo, reply: Reply): [string, Uint8Array] => [to, encode(reply)];

/**
 * Sent outbox entries are deleted by the partition's next commit; when none comes within this time they are
 * deleted on their own, so an idle partition does not re-send its last batch's messages after a restart.
 */
const OUTBOX_CLEAR_IDLE_MS = 250;

/**
 * A batch ends early once it changes this many keys, or has applied commands for this long, and a batch cut short
 * lets the event loop turn before the next one: a worker runs many partitions on one thread, and a long stretch of
 * synchronous work would delay its heartbeats (and so cost it its lease), its replies and its reads.
 */
const BATCH_KEYS_MAX = 5_000;
const BATCH_SLICE_MS = 10;

/** Longest a runner that lets go waits for its outbox to finish sending. */
const OUTBOX_DRAIN_MAX_MS = 5000;

/** Most committed batches whose outbox is still being published before the loop waits. */
const OUTBOX_BATCHES_INFLIGHT_MAX = 64;

export type RunnerState = 'idle' | 'starting' | 'running' | 'stopping' | 'stopped' | 'fenced';

export interface RunnerDeps {
  nc: NatsConnection;
  js: JetStreamClient;
  /** Request/reply and coalesced publishing for this process (outbox messages, replies). */
  mux: Mux;
  /** Publishes committed outbox messages to JetStream, combined with those of the process's other partitions. */
  courier: Courier;
  jsm: JetStreamManager;
  store: PartitionStore;
  config: Config;
  log: Log;
  actor: Actor<unknown, unknown>;
  partition: number;
  metrics?: RunnerMetrics;
  /** Called once when the partition is lost to a newer owner. */
  onFenced?: (runner: PartitionRunner) => void;
}

/**
 * Batch draft over the live state: writes of the batch land here and reach the live maps (which reads see)
 * only after the batch has committed. Each command's writes are logged so that a command that throws is taken
 * back whole.
 */
class Draft implements StateView {
  readonly batch: Changes = new Map();
  /** Keys the batch changes. */
  size = 0;
  /** This command's writes: the table, the key, and what the draft held for it before (to take them back). */
  private readonly undo: [table: Map<string, unknown>, key: string, had: boolean, before: unknown][] = [];

  constructor(private readonly live: Map<string, Map<string, unknown>>) {}

  get<T>(table: string, key: string): T | undefined {
    const t = this.batch.get(table);
    if (t !== undefined && t.has(key)) return t.get(key) as T | undefined;
    return this.live.get(table)?.get(key) as T | undefined;
  }

  set(table: string, key: string, value: unknown): void {
    if (value === undefined) throw new Error('invariant: undefined value; use delete');
    this.write(table, key, value);
  }

  delete(table: string, key: string): void {
    this.write(table, key, undefined);
  }

  keepCommand(): void {
    this.undo.length = 0;
  }

  dropCommand(): void {
    for (let i = this.undo.length - 1; i >= 0; i--) {
      const [t, key, had, before] = this.undo[i]!;
      if (had) t.set(key, before);
      else t.delete(key), this.size--;
    }
    this.undo.length = 0;
  }

  publish(): void {
    for (const [table, changes] of this.batch) {
      const target = this.live.get(table)!;
      for (const [k, v] of changes) {
        if (v === undefined) target.delete(k);
        else target.set(k, v);
      }
    }
  }

  private write(table: string, key: string, value: unknown): void {
    let t = this.batch.get(table);
    if (!t) {
      if (!this.live.has(table)) throw new Error(`invariant: unknown table ${table}`);
      this.batch.set(table, (t = new Map()));
    }
    const had = t.has(key);
    this.undo.push([t, key, had, t.get(key)]);
    if (!had) this.size++;
    t.set(key, value);
  }
}

/**
 * The single writer of one partition: reads its commands in stream order from cursor + 1, applies them in
 * batches with the actor's pure logic, commits each batch once (state + cursor + outbox, fenced by epoch),
 * then sends replies and outgoing commands. Reads are answered from the committed state in memory.
 */
export class PartitionRunner {
  readonly kind: Kind;
  readonly partition: number;
  state: RunnerState = 'idle';
  /** Commands in the stream not yet delivered to this runner, as of the last batch (the consumer's pending count). */
  private streamPending = 0;
  epoch = 0;
  cursor = 0;
  private readonly names: Names;
  private readonly log: Log;
  private live = new Map<string, Map<string, unknown>>();
  private queue: JsMsg[] = [];
  private wake: (() => void) | null = null;
  private space: (() => void) | null = null;
  private messages: ConsumerMessages | null = null;
  private reads: Subscription | null = null;
  private loopDone: Promise<void> = Promise.resolve();
  private outboxInflight = 0;
  /** Waiters for an outbox batch to finish sending (the loop, past its in-flight bound, and release). */
  private outboxWaiters: (() => void)[] = [];
  /** Outbox fields fully published; deleted by the next commit, or after OUTBOX_CLEAR_IDLE_MS without one. */
  private cleared: string[] = [];
  private clearTimer: NodeJS.Timeout | null = null;
  private trimTimer: NodeJS.Timeout | null = null;
  private trimmedTo = 0;

  constructor(private readonly deps: RunnerDeps) {
    this.kind = deps.actor.kind;
    this.partition = deps.partition;
    this.names = names(deps.config.streamPrefix);
    this.log = deps.log.child(`${this.kind}-${this.partition}`);
  }

  /** Reads see only committed state. */
  private readonly committed: ReadView = { get: <T>(table: string, key: string) => this.live.get(table)?.get(key) as T | undefined };

  get subject(): string {
    return this.names.cmd(this.kind, this.partition);
  }

  /** Commands waiting for this partition: buffered here, or still in the stream. */
  lag(): number {
    return this.queue.length + this.streamPending;
  }

  /** Entries held in memory, per table (for status and tests). */
  size(): Record<string, number> {
    return Object.fromEntries([...this.live].map(([t, m]) => [t, m.size]));
  }

  private setState(next: RunnerState): void {
    this.log.debug(`${this.state} -> ${next}`, { epoch: this.epoch, cursor: this.cursor });
    this.state = next;
  }

  /**
   * Takes ownership: raise the epoch (fencing older owners), load, re-send the outbox, then read from cursor + 1.
   * With an epoch (from the placement) it throws StaleEpochError if the partition is held at a newer one.
   */
  async start(epoch?: number): Promise<void> {
    const { store } = this.deps;
    this.setState('starting');
    try {
      this.epoch = await store.acquire(epoch);
    } catch (err) {
      this.setState('stopped');
      throw err;
    }
    try {
      await this.open();
    } catch (err) {
      // Half taken (Redis or NATS failed while loading): let go of what was set up, abandoning any re-sent
      // outbox (the next owner re-sends it); the caller decides what next.
      this.setState('stopped');
      await this.release();
      throw err;
    }
  }

  private async open(): Promise<void> {
    const { store, actor, js, nc, config } = this.deps;
    const loaded = await store.load();
    this.cursor = loaded.cursor;
    this.trimmedTo = 0;
    this.live = new Map(actor.tables.map((t) => [t, loaded.tables.get(t) ?? new Map()]));
    for (const [field, outbox] of loaded.outbox) this.send(field, outbox);

    // A read is one query, or an array of queries (a gateway's reads of this partition from one turn): the answer
    // is the reply, or the array of replies in the same order.
    const answer = (query: unknown): Reply => {
      try {
        return actor.query(this.committed, query);
      } catch (e) {
        this.log.error('query failed', { err: e });
        return fail('internal', 'query failed');
      }
    };
    this.reads = nc.subscribe(this.names.get(this.kind, this.partition), {
      callback: (err, msg) => {
        if (err) return this.log.error('read subscription failed', { err });
        let query: unknown;
        try {
          query = decode(msg.data);
        } catch {
          return msg.respond(encode(fail('internal', 'undecodable query')));
        }
        msg.respond(encode(Array.isArray(query) ? query.map(answer) : answer(query)));
      },
    });

    const consumer = await js.consumers.get(this.names.stream(this.kind), {
      filterSubjects: this.subject,
      opt_start_seq: this.cursor + 1,
    });
    this.messages = await consumer.consume({ max_messages: Math.min(config.queueMax, config.batchMax * 2) });
    void this.pump(this.messages);
    this.loopDone = this.loop();
    this.trimTimer = setInterval(() => void this.trim(), config.trimIntervalMs);
    this.trimTimer.unref();
    this.setState('running');
    this.log.debug('owned', { epoch: this.epoch, cursor: this.cursor, ...this.size(), outbox: loaded.outbox.length });
  }

  /** Lets go: stop reading, finish the batch in hand, wait for its outbox. */
  async stop(): Promise<void> {
    if (this.state !== 'running' && this.state !== 'starting') return;
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
    this.wake?.();
    this.space?.();
    for (const wake of this.outboxWaiters.splice(0)) wake(); // a loop waiting on its outbox bound re-checks and ends
    await this.loopDone;
    // Let the outbox finish, within a bound: what is still unsent then stays in Redis for the next owner to send.
    const giveUpAt = Date.now() + OUTBOX_DRAIN_MAX_MS;
    while (this.outboxInflight > 0 && Date.now() < giveUpAt) await this.outboxSent(giveUpAt - Date.now());
    if (this.outboxInflight > 0) this.log.warn('letting go with outbox messages unsent; the next owner sends them', { batches: this.outboxInflight });
    this.queue = [];
  }

  private get active(): boolean {
    return this.state === 'running' || this.state === 'starting';
  }

  private async pump(messages: ConsumerMessages): Promise<void> {
    try {
      for await (const m of messages) {
        this.queue.push(m);
        this.wake?.();
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

  private async loop(): Promise<void> {
    const { config } = this.deps;
    while (this.active) {
      if (this.queue.length === 0) {
        await new Promise<void>((r) => (this.wake = r));
        this.wake = null;
        continue;
      }
      while (this.outboxInflight >= OUTBOX_BATCHES_INFLIGHT_MAX && this.active) {
        await this.outboxSent();
      }
      const batch = this.queue.length <= config.batchMax ? this.queue : this.queue.slice(0, config.batchMax);
      this.queue = batch === this.queue ? [] : this.queue.slice(config.batchMax);
      this.space?.();
      try {
        const applied = await this.apply(batch);
        if (applied < batch.length) {
          this.queue = batch.slice(applied).concat(this.queue);
          await new Promise<void>((r) => setImmediate(r));
        }
      } catch (err) {
        // A commit that failed for a transport reason: nothing of the batch is visible; let it be re-read.
        this.log.error('batch failed; restarting the partition from its committed cursor', { err });
        void this.restart();
        return;
      }
    }
  }

  private ctx(seq: number, replyTo: ReplyTo | undefined): ApplyContext {
    const ctx: ApplyContext = { partition: this.partition, partitions: this.deps.config.partitions, seq };
    if (replyTo) ctx.replyTo = replyTo;
    return ctx;
  }

  /** Applies one command to the draft; a command that throws leaves nothing and answers `internal`. */
  private applyOne(draft: Draft, envelope: CommandEnvelope, seq: number): Effects {
    try {
      const effects = this.deps.actor.apply(draft, envelope.c, this.ctx(seq, envelope.r));
      draft.keepCommand();
      return effects;
    } catch (err) {
      draft.dropCommand();
      this.log.error('command failed; nothing of it applied', { seq, err });
      return { reply: fail('internal', `command ${seq} at ${this.subject} failed`) };
    }
  }

  /** Applies and commits a prefix of the batch (all of it, unless it hits BATCH_KEYS_MAX or BATCH_SLICE_MS); returns its length. */
  private async apply(batch: JsMsg[]): Promise<number> {
    const { store } = this.deps;
    const began = performance.now();
    let applied = 0;
    const draft = new Draft(this.live);
    const outbox: Outbox = { js: [], replies: [] };
    this.streamPending = batch[batch.length - 1]!.info.pending;
    const sends = new Map<string, unknown[]>();
    let last = this.cursor;
    for (const m of batch) {
      if (applied > 0 && (draft.size >= BATCH_KEYS_MAX || performance.now() - began >= BATCH_SLICE_MS)) break;
      applied++;
      last = m.seq;
      if (m.seq <= this.cursor) continue; // already applied (a consumer reset can re-deliver)
      let envelopes: CommandEnvelope[];
      try {
        envelopes = unbundle(decode<StreamMessage>(m.data));
      } catch (err) {
        this.log.error('undecodable command skipped', { seq: m.seq, err });
        continue;
      }
      envelopes.forEach((envelope, i) => {
        const effects = this.applyOne(draft, envelope, m.seq * BUNDLE_MAX + i);
        if (envelope.r && effects.reply) outbox.replies.push(replyMessage(envelope.r, effects.reply));
        for (const { to, reply } of effects.replies ?? []) outbox.replies.push(replyMessage(to, reply));
        const decided = effects.replies?.[0]?.reply; // deferred answers are the outcome of a saga
        if (decided) this.deps.metrics?.sagaOutcome(decided.ok, decided.ok ? undefined : decided.code);
        for (const out of effects.send ?? []) {
          const subject = this.names.cmd(out.kind, out.partition);
          let list = sends.get(subject);
          if (!list) sends.set(subject, (list = []));
          list.push(out.cmd);
        }
      });
    }
    // One message per target partition for the whole batch; ids derive from the batch, stored with the outbox.
    const merge = this.deps.actor.mergeOutgoing;
    for (const [subject, cmds] of sends) {
      const envelopes: CommandEnvelope[] = (merge ? merge(cmds) : cmds).map((c) => ({ c }));
      for (const data of bundles(envelopes)) outbox.js.push([subject, `${this.kind}.${this.partition}.${last}.${outbox.js.length}`, data]);
    }
    if (last <= this.cursor) return applied;
    const hasOutbox = outbox.js.length > 0 || outbox.replies.length > 0;
    const field = hasOutbox ? String(last) : '';
    const cleared = this.cleared;
    this.cleared = [];
    const started = performance.now();
    const committed = await store.commit(this.epoch, last, draft.batch, field, hasOutbox ? outbox : null, cleared);
    if (!committed) {
      this.fenced();
      return batch.length;
    }
    this.deps.metrics?.batch(this.kind, this.partition, applied, performance.now() - started);
    if (this.deps.config.faultKillAfter === 'commit' && hasOutbox) process.kill(process.pid, 'SIGKILL');
    draft.publish();
    this.cursor = last;
    if (hasOutbox) this.send(field, outbox);
    return applied;
  }

  /** Sends a committed batch's messages; the courier publishes them until they are stored (or we lose the partition). */
  private send(field: string, outbox: Outbox): void {
    const { mux, courier, config } = this.deps;
    for (const [subject, data] of outbox.replies) mux.reply(subject, data);
    if (outbox.js.length === 0) return this.sent(field);
    this.outboxInflight++;
    const abandoned = () => !this.active && this.state !== 'stopping'; // the next owner re-sends it
    void Promise.all(outbox.js.map(([subject, msgId, data]) => courier.deliver(subject, msgId, data, abandoned))).then((stored) => {
      if (stored.every(Boolean)) {
        if (config.faultKillAfter === 'send') process.kill(process.pid, 'SIGKILL');
        this.sent(field);
      }
      this.outboxInflight--;
      for (const wake of this.outboxWaiters.splice(0)) wake();
    });
  }

  /** Resolves when an outbox batch finishes sending (or after `maxMs`). */
  private outboxSent(maxMs?: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.outboxWaiters.push(resolve);
      if (maxMs !== undefined) setTimeout(resolve, maxMs).unref();
    });
  }

  /** An outbox entry is fully sent: it goes with the next commit, or on its own if the partition stays idle. */
  private sent(field: string): void {
    this.cleared.push(field);
    if (this.clearTimer) return;
    this.clearTimer = setTimeout(() => {
      this.clearTimer = null;
      if (this.cleared.length === 0 || !this.active) return;
      const fields = this.cleared;
      this.cleared = [];
      // Without the epoch check: deleting a sent entry is harmless even for an owner that has just been fenced.
      this.deps.store.clearOutbox(fields).catch((err) => {
        this.log.warn('outbox clear failed; the next commit takes the entries along', { err });
        this.cleared.push(...fields);
      });
    }, OUTBOX_CLEAR_IDLE_MS);
    this.clearTimer.unref();
  }

  private fenced(): void {
    if (!this.active) return;
    this.log.warn('fenced: a newer owner holds the partition; dropping it', { epoch: this.epoch });
    this.setState('fenced');
    this.queue = [];
    this.live = new Map();
    void this.release().then(() => this.deps.onFenced?.(this));
  }

  /** After a transport failure mid-batch: drop everything in memory and take the partition again from Redis. */
  private async restart(): Promise<void> {
    const state = this.state;
    if (state !== 'running') return;
    this.setState('stopping');
    await this.release();
    for (;;) {
      try {
        await this.start(this.epoch);
        return;
      } catch (err) {
        if (err instanceof StaleEpochError) return this.log.warn('not restarting: a newer owner holds the partition', { epoch: this.epoch });
        this.log.error('restart failed; retrying', { err });
        await delay(this.deps.config.retryBackoffMs * 10);
      }
    }
  }

  /** Purges this partition's commands that are below the committed cursor: the stream holds only what is unapplied. */
  private async trim(): Promise<void> {
    const upTo = this.cursor;
    if (upTo <= this.trimmedTo || !this.active) return;
    try {
      await this.deps.jsm.streams.purge(this.names.stream(this.kind), { filter: this.subject, seq: upTo + 1 });
      this.trimmedTo = upTo;
    } catch (err) {
      this.log.warn('trim failed', { err });
    }
  }
}
