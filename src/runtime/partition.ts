import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg, NatsConnection, Subscription } from 'nats';
import { setTimeout as delay } from 'node:timers/promises';
import type { Actor, ReadView } from '../actors/types.js';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import { names, type Names } from '../protocol.js';
import type { BatchLoop, Owed, Part } from './batch.js';
import type { Courier } from './courier.js';
import type { Mux } from './mux.js';
import { serveReads } from './reads.js';
import { StaleEpochError, type Outbox, type PartitionStore } from './store.js';

/**
 * Sent outbox entries are deleted by the partition's next commit; when none comes within this time they are
 * deleted on their own, so an idle partition does not re-send its last batch's messages after a restart.
 */
const OUTBOX_CLEAR_IDLE_MS = 250;

/** Longest a runner that lets go waits for its outbox to finish sending. */
const OUTBOX_DRAIN_MAX_MS = 5000;

/** Most committed batches whose outbox is still being published before the batch loop stops taking this partition's commands. */
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
  /** The worker's batch loop: applies and commits this partition's commands together with its other partitions'. */
  loop: BatchLoop;
  config: Config;
  log: Log;
  actor: Actor<unknown, unknown>;
  partition: number;
  /** Called once when the partition is lost to a newer owner. */
  onFenced?: (runner: PartitionRunner) => void;
}

/**
 * The single writer of one partition: takes the partition (epoch, load, outbox re-sent), reads its commands in
 * stream order from cursor + 1 into a queue for the worker's batch loop, which applies them with the actor's
 * pure logic and commits them (state + cursor + outbox, fenced by epoch); then the runner sends the batch's
 * replies and outgoing commands. Reads are answered from the committed state in memory.
 */
export class PartitionRunner {
  readonly kind: Kind;
  readonly partition: number;
  readonly actor: Actor<unknown, unknown>;
  readonly store: PartitionStore;
  readonly log: Log;
  state: RunnerState = 'idle';
  /** Commands in the stream not yet delivered to this runner, as of the last batch (the consumer's pending count). */
  streamPending = 0;
  epoch = 0;
  /** Last stream sequence committed. */
  cursor = 0;
  /** Commands delivered from within the worker, committed so far. */
  local = 0;
  /** The committed state; the batch loop drafts over it. */
  live = new Map<string, Map<string, unknown>>();
  private readonly names: Names;
  private queue: JsMsg[] = [];
  private space: (() => void) | null = null;
  private messages: ConsumerMessages | null = null;
  private reads: Subscription | null = null;
  private outboxInflight = 0;
  /** Waiters for an outbox batch to finish sending (release). */
  private outboxWaiters: (() => void)[] = [];
  /** Outbox fields fully published; deleted by the next commit, or after OUTBOX_CLEAR_IDLE_MS without one. */
  private cleared: string[] = [];
  private clearTimer: NodeJS.Timeout | null = null;
  private trimTimer: NodeJS.Timeout | null = null;
  private trimmedTo = 0;

  constructor(private readonly deps: RunnerDeps) {
    this.kind = deps.actor.kind;
    this.partition = deps.partition;
    this.actor = deps.actor;
    this.store = deps.store;
    this.names = names(deps.config.streamPrefix);
    this.log = deps.log.child(`${this.kind}-${this.partition}`);
  }

  /** Reads see only committed state. */
  private readonly view: ReadView = { get: <T>(table: string, key: string) => this.live.get(table)?.get(key) as T | undefined };

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
    this.local = loaded.local;
    this.trimmedTo = 0;
    this.live = new Map(actor.tables.map((t) => [t, loaded.tables.get(t) ?? new Map()]));
    for (const [field, outbox] of loaded.outbox) this.send(field, outbox);

    // Reads are answered from the committed view (runtime/reads.ts: batches, checks, size).
    this.reads = serveReads({ nc, subject: this.names.get(this.kind, this.partition), answer: (query) => actor.query(this.view, query), log: this.log });

    const consumer = await js.consumers.get(this.names.stream(this.kind), {
      filterSubjects: this.subject,
      opt_start_seq: this.cursor + 1,
    });
    this.messages = await consumer.consume({ max_messages: Math.min(config.queueMax, config.batchMax * 2) });
    void this.pump(this.messages);
    this.trimTimer = setInterval(() => void this.trim(), config.trimIntervalMs);
    this.trimTimer.unref();
    this.setState('running');
    this.deps.loop.add(this);
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
    this.space?.();
    this.deps.loop.remove(this);
    await this.deps.loop.settled(this);
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

  /** Commands are queued and its outbox is within its bound: the batch loop may take from it. */
  ready(): boolean {
    return this.state === 'running' && this.queue.length > 0 && this.outboxInflight < OUTBOX_BATCHES_INFLIGHT_MAX;
  }

  /** Takes up to `max` queued stream messages for a batch. */
  take(max: number): JsMsg[] {
    const taken = this.queue.length <= max ? this.queue : this.queue.slice(0, max);
    this.queue = taken === this.queue ? [] : this.queue.slice(max);
    this.space?.();
    return taken;
  }

  /** Messages taken but not applied (a batch cut short, or withheld): first in line again. */
  giveBack(msgs: JsMsg[]): void {
    if (msgs.length > 0 && this.active) this.queue = msgs.concat(this.queue);
  }

  /** The sent outbox fields, for the next commit to delete. */
  takeCleared(): string[] {
    const fields = this.cleared;
    this.cleared = [];
    return fields;
  }

  giveCleared(fields: string[]): void {
    this.cleared.push(...fields);
  }

  /** The batch with this partition's part in it is in Redis: make it visible, then send what it owes. */
  committed(part: Part, owed: Owed): void {
    part.draft.publish();
    this.cursor = part.last;
    this.local = part.local;
    if (owed.outbox) this.send(owed.field, owed.outbox);
  }

  /** A commit failed for a transport reason: nothing of the batch is visible; take the partition again from Redis. */
  failed(err: unknown): void {
    this.log.error('batch failed; restarting the partition from its committed cursor', { err });
    void this.restart();
  }

  /** Sends a committed batch's messages  /** Sends a committed batch's messages; the courier publishes them until they are stored (or we lose the partition). */
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
      this.deps.loop.wake();
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

  /** A newer owner holds the partition (a commit was refused): drop it. */
  fenced(): void {
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
