import type { JetStreamManager, NatsConnection, Subscription } from 'nats';
import { setTimeout as delay } from 'node:timers/promises';
import type { Actor, ReadView } from '../actors/types.js';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import { names, type Names } from '../protocol.js';
import { Applied } from './applied.js';
import type { BatchLoop } from './batch-loop.js';
import { CommandReader } from './command-reader.js';
import type { Committed, Inbound, Participant, Taken } from './participant.js';
import type { Courier } from './courier.js';
import type { Tables } from './draft.js';
import { failedAgain, isActive, lifecycleStep, REFUSED_RECHECK_MS, retryPauseMs, type LifecycleAction, type LifecycleEvent, type RunnerState, type Trouble } from './lifecycle.js';
import type { RunnerMetrics } from './runner-metrics.js';
import type { Mux } from '../transport/mux.js';
import type { StreamLeaders } from '../transport/stream-leaders.js';
import type { PartitionOutbox } from './outbox.js';
import { closeOwnerOutbox, openOwnerOutbox, roomInOutbox } from './owner-outbox.js';
import { PartitionMarks } from './partition-marks.js';
import { PoisonWatch } from './poison.js';
import { parcelsOfOutgoing } from './batch-owed.js';
import { PartitionReminders } from './reminders.js';
import { serveReads } from '../transport/reads.js';
import { StaleEpochError, type PartitionStore } from './store.js';
import { Trimming } from './trimming.js';

interface RunnerDeps {
  nc: NatsConnection;
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
  /** Its clients' commands, read from its stream in order. */
  private readonly reader: CommandReader;
  private parcels: Inbound[] = [];
  private reads: Subscription | null = null;
  private outbox: PartitionOutbox | null = null;
  /** What its committed state owes other partitions, sent again when due while it runs (reminders.ts). */
  private reminders: PartitionReminders | null = null;
  private readonly marks: PartitionMarks;
  private readonly trimming: Trimming;
  /** Taken by its owner and not stopped since: a failing partition keeps trying while this holds. */
  private wanted = false;
  private readonly applied: Applied;
  private readonly poison: PoisonWatch;
  private trouble: Trouble | undefined;

  constructor(private readonly deps: RunnerDeps) {
    this.kind = deps.actor.kind;
    this.partition = deps.partition;
    this.actor = deps.actor;
    this.store = deps.store;
    this.names = names(deps.config.streamPrefix);
    this.log = deps.log.child({ name: `${this.kind}-${this.partition}`, kind: this.kind, partition: this.partition });
    const { nc, jsm, config, leaders } = deps;
    const active = () => this.active;
    const stream = this.names.stream(this.kind);
    this.reader = new CommandReader({ nc, jsm, config, log: this.log, leaders, stream, subject: this.names.cmd(this.kind, this.partition), active, wake: () => deps.loop.wake(), trimmed: () => this.trimming.trimmedTo });
    this.applied = new Applied(config.duplicateWindowMs);
    this.poison = new PoisonWatch(deps.store, this.log);
    this.marks = new PartitionMarks({ nc, jsm, store: deps.store, stream, subject: this.names.mark(this.kind, this.partition), epoch: () => this._epoch });
    this.trimming = new Trimming({ jsm, names: this.names, kind: this.kind, partition: this.partition, config, log: this.log, active, mark: (upTo) => this.marks.mark(upTo) });
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

  /** Commands waiting for this partition: buffered here, or still in the stream. */
  lag(): number {
    return this.reader.queued + this.parcels.length + this.streamPending;
  }

  /** Entries held in memory, per table (for status and tests). */
  size(): Record<string, number> {
    return Object.fromEntries([...this._live].map(([t, m]) => [t, m.size]));
  }

  /** Why it does not serve, while it restarts after failures or refuses a stream behind its cursor. */
  health(): Trouble | undefined {
    return this._state === 'restarting' || this._state === 'refused' ? this.trouble : undefined;
  }

  /**
   * The one place its state changes (lifecycle.ts decides): logs the change and returns what to perform, or
   * undefined when the event does not apply in the state it meets.
   */
  private transition(event: LifecycleEvent): LifecycleAction[] | undefined {
    const step = lifecycleStep(this._state, event);
    if (!step) return undefined;
    this.log.debug(`${this._state} -> ${step.state}`, { epoch: this._epoch, cursor: this._cursor });
    this._state = step.state;
    return step.actions;
  }

  /** Performs the actions of a transition in order; what takes no time is done within the call (a release starts in it). */
  private async perform(actions: LifecycleAction[]): Promise<void> {
    for (const action of actions) {
      switch (action.do) {
        case 'serve':
          this.trimming.start();
          this.deps.loop.add(this);
          if (this.reminders) this.deps.courier.track(this.reminders);
          break;
        case 'drop':
          this.forgetReminders();
          this.reader.clear();
          this.parcels = [];
          this._live = new Map();
          break;
        case 'release':
          await this.release();
          break;
        case 'retry':
          await this.retry();
          break;
        case 'recheck':
          void delay(REFUSED_RECHECK_MS).then(() => {
            if (this._state === 'refused') void this.retry();
          });
          break;
        case 'tell-owner':
          this.deps.onFenced?.(this);
          break;
      }
    }
  }

  /**
   * Takes ownership: raise the epoch (fencing older owners), load, re-send the outbox, then read from cursor + 1.
   * With an epoch (from the placement) it throws StaleEpochError if the partition is held at a newer one.
   */
  async start(epoch?: number): Promise<void> {
    if (!this.transition({ kind: 'start' })) throw new Error(`the runner of ${this.kind}.${this.partition} cannot start while ${this._state}: make a new one`);
    this.wanted = true;
    try {
      this._epoch = await this.store.acquire(epoch);
    } catch (err) {
      this.transition({ kind: 'startFailed' });
      throw err;
    }
    try {
      await this.open();
    } catch (err) {
      // Half taken (Redis or NATS failed while loading): let go of what was set up, abandoning any re-sent
      // outbox (the next owner re-sends it); the caller decides what next.
      this.transition({ kind: 'startFailed' });
      await this.release();
      throw err;
    }
  }

  private async open(): Promise<void> {
    const { store, actor, nc } = this.deps;
    const loaded = await store.load();
    this._cursor = loaded.cursor;
    this._local = loaded.local;
    this._commitCount = loaded.commits;
    this.trimming.reset(loaded.cursor);
    this._live = new Map(actor.tables.map((t) => [t, loaded.tables.get(t) ?? new Map()]));

    const refused = await this.marks.check(this._cursor, loaded.mark);
    if (refused) return this.refuse(refused.error, refused.details);
    if (this._state !== 'starting') throw new Error('stopped while starting');
    this.poison.started();
    const abandoned = () => !this.active && this._state !== 'stopping'; // the next owner re-sends it
    this.outbox = openOwnerOutbox({ ...this.deps, names: this.names, kind: this.kind, log: this.log, abandoned, wake: () => this.deps.loop.wake() }, loaded.outbox);
    this.remindFromHere();

    // Reads are answered from the committed view (transport/reads.ts: batches, checks, size).
    this.reads = serveReads({ nc, subject: this.names.get(this.kind, this.partition), answer: (query) => actor.query(this.view, query), log: this.log });

    await this.reader.open(this._cursor);
    const serve = this.transition({ kind: 'opened' });
    if (!serve) throw new Error('stopped while starting');
    void this.perform(serve);
    this.log.debug('owned', { epoch: this._epoch, cursor: this._cursor, ...this.size(), outbox: loaded.outbox.length });
  }

  /**
   * This process's NATS connection moved to another server. The consumer may have lived on the server that went
   * away, and after a reconnect nats.js waits for that server to tell it about its consumer before it watches the
   * heartbeats again: a new consumer now, instead of a silence of the consumer long enough for its watchdog
   * (command-reader.ts) to take it for gone.
   */
  reconnected(): void {
    this.reader.replace('may have lived on the server this process lost');
  }

  /** Its stream elected a new leader (stream-leaders.ts): the consumer may have lived on the old one. */
  streamLeaderElected(): void {
    this.reader.replace('may have lived on the old leader of its stream');
  }

  /**
   * The stream and Redis do not hold together everything this partition applied (marks.ts: the stream lost commands
   * or was made anew, or Redis lost commits the stream no longer has). Reading on would skip commands, or serve state
   * without them, silently. Refuse, loudly, and look again every REFUSED_RECHECK_MS, so a partition an operator has
   * mended serves again by itself.
   */
  private refuse(error: string, details: Record<string, unknown>): void {
    const recheck = this.transition({ kind: 'refuse' });
    if (!recheck) return; // stopped meanwhile
    this.trouble = failedAgain(this.trouble, 'refused', error);
    if (this.trouble.attempts === 1) this.log.error(`refusing to serve: ${error}`, { stream: this.names.stream(this.kind), ...details });
    this.deps.metrics?.partitionRestart?.(this.kind, this.partition);
    void this.perform(recheck);
  }

  /** Lets go: stop reading, finish the batch in hand, wait for its outbox. */
  async stop(): Promise<void> {
    this.wanted = false;
    const release = this.transition({ kind: 'stop' });
    if (!release) return;
    await this.perform(release);
    this.transition({ kind: 'released' });
    void this.poison.left(this._cursor); // not awaited: a Redis away must not hold up a handover
  }

  /** Sends again, when due, what the loaded state owes (a running saga's holds, a ledger's answers); swept by the courier once it serves. */
  private remindFromHere(): void {
    const { actor, courier, config } = this.deps;
    const r = actor.reminders;
    if (!r) return;
    const table = r.table;
    const reminders = new PartitionReminders(r, { partition: this.partition, partitions: config.partitions }, () => this._live.get(table), (out) => courier.post(parcelsOfOutgoing(out, actor.mergeOutgoing)));
    reminders.loaded(Date.now());
    this.forgetReminders();
    this.reminders = reminders;
  }

  private forgetReminders(): void {
    if (this.reminders) this.deps.courier.untrack(this.reminders);
    this.reminders = null;
  }

  private async release(): Promise<void> {
    this.forgetReminders();
    this.trimming.stop();
    this.reads?.unsubscribe();
    this.reads = null;
    this.reader.stop();
    this.deps.loop.remove(this);
    if (!(await this.deps.loop.settled(this))) this.log.warn('letting go with a batch still committing after SETTLE_DEADLINE_MS (its commit, if it lands, is refused by a newer epoch or its outbox is sent by the next owner)');
    if (this.outbox) await closeOwnerOutbox(this.outbox, this.log);
    this.outbox = null;
    this.reader.clear();
    this.parcels = [];
  }

  private get active(): boolean {
    return isActive(this._state);
  }

  /** A saga parcel from a partition of another worker; false when this runner does not take it now (dropped: its sender's state sends it again). */
  deliverParcel(inbound: Inbound): boolean {
    if (!this.active || this.parcels.length >= this.deps.config.queueMax) return false;
    this.parcels.push(inbound);
    if (this._state === 'running') this.deps.loop.wake();
    return true;
  }

  // ---- Participant: what the batch loop sees ----------------------------------------------------------

  ready(): boolean {
    return this._state === 'running' && (this.parcels.length > 0 || (this.reader.queued > 0 && roomInOutbox(this.outbox)));
  }

  accepts(): boolean {
    return this._state === 'running';
  }

  mustRecordStart(): boolean {
    return this._state === 'running' && this.poison.mustRecord(this.reader.queued);
  }

  async recordStart(): Promise<void> {
    try {
      if (!(await this.poison.record(this._epoch, this._cursor))) this.fenced();
    } catch (err) {
      this.failed(err);
    }
  }

  suspect(): boolean {
    return this._state === 'running' && this.poison.suspect(this.reader.first()) && roomInOutbox(this.outbox);
  }

  async takeAlone(): Promise<boolean> {
    if (await this.poison.takeAlone(this._epoch)) return true;
    this.fenced();
    return false;
  }

  quarantined(seq: number): string | undefined {
    return this.poison.quarantined(seq);
  }

  take(max: number): Taken {
    // Backpressure on clients' commands only (owner-outbox.ts).
    const stream = this.reader.take(roomInOutbox(this.outbox) ? max : 0);
    const last = stream[stream.length - 1];
    if (last?.pending !== undefined) this.streamPending = last.pending;
    const parcels = this.parcels;
    this.parcels = [];
    return { stream, parcels };
  }

  giveBack(taken: Taken): void {
    if (!this.active) return;
    this.reader.giveBack(taken.stream);
    if (taken.parcels.length > 0) this.parcels = taken.parcels.concat(this.parcels);
  }

  seen(parcelId: string): boolean {
    return this.applied.parcel(parcelId);
  }

  seenMessage(messageId: string): boolean {
    return this.applied.message(messageId);
  }

  takeDone(): string[] {
    return this.outbox?.takeDone() ?? [];
  }

  giveBackDone(fields: string[]): void {
    this.outbox?.giveBackDone(fields);
  }

  committed(c: Committed): void {
    c.draft.publish();
    if (c.cursor !== this._cursor) this.poison.moved(c.cursor);
    this.trimming.committed(c.cursor, c.streamMessages);
    this._cursor = c.cursor;
    this._local = c.local;
    this._commitCount++;
    this.trouble = undefined;
    const now = Date.now();
    this.applied.committed(c.parcels, c.messageIds, now);
    if (c.entry) this.outbox?.send(c.field, c.entry);
    const { courier, actor, config } = this.deps;
    if (actor.reminders) this.reminders?.committed(c.draft.batch.get(actor.reminders.table), now);
    if (c.later.length > 0) courier.later(c.later, actor.mergeOutgoing);
    if (c.sends.length > 0) {
      courier.post(c.sends);
      // The saga-crash tests: the worker dies once its saga messages have left (after the mux's flush, queued before
      // this), before any answer is applied.
      if (config.faultKillAfter === 'send') setImmediate(() => void this.deps.nc.flush().then(() => process.kill(process.pid, 'SIGKILL')));
    }
  }

  fenced(): void {
    const drop = this.transition({ kind: 'fence' });
    if (!drop) return;
    this.log.warn('fenced: a newer owner holds the partition; dropping it', { epoch: this._epoch });
    void this.perform(drop).then(() => this.poison.left(this._cursor));
  }

  failed(err: unknown, fault?: boolean): void {
    const restart = this.transition({ kind: 'batchFailed' });
    if (!restart) return;
    if (fault) this.poison.threw();
    this.trouble = failedAgain(this.trouble, 'restarting', (err as Error)?.message ?? String(err));
    this.log.error('batch failed; restarting the partition from its committed state', { err, attempts: this.trouble.attempts });
    void this.perform(restart);
  }

  /**
   * Takes the partition again from Redis and its stream, after a pause that doubles with every attempt since it
   * last committed (retryPauseMs, up to PARTITION_RETRY_MAX_MS), until it runs, is refused for good by a newer
   * epoch, or is stopped.
   */
  private async retry(): Promise<void> {
    const { config, metrics } = this.deps;
    for (;;) {
      const attempts = this.trouble?.attempts ?? 1;
      await delay(retryPauseMs(attempts, config.retryBackoffMs));
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
        this.trouble = failedAgain(trouble, 'restarting', (err as Error).message);
        this.transition({ kind: 'restartFailed' });
        this.log.error('restart failed; trying again', { err, attempts: this.trouble.attempts });
      }
    }
  }
}
