import type { JsMsg } from 'nats';
import { setImmediate as turn } from 'node:timers/promises';
import type { ApplyContext, Effects, ReplyTo, StateView } from '../actors/types.js';
import { decode, encode } from '../codec.js';
import type { Config, Kind } from '../config.js';
import type { Log } from '../log.js';
import { BUNDLE_MAX, bundles, fail, names, unbundle, type CommandEnvelope, type Names, type StreamMessage } from '../protocol.js';
import type { RunnerMetrics } from './metrics.js';
import type { PartitionRunner } from './partition.js';
import { commitTogether, type Changes, type Outbox, type PreparedBatch } from './store.js';

/**
 * A batch ends early once it changes this many keys, or has applied stream commands for this long, and the loop
 * lets the event loop turn before the next one: a long stretch of synchronous work would delay the worker's
 * heartbeats (and so cost it its lease), its replies and its reads.
 */
const BATCH_KEYS_MAX = 5_000;
const BATCH_SLICE_MS = 10;

/**
 * Batch draft over a partition's live state: writes of the batch land here and reach the live maps (which reads
 * see) only after the batch has committed. Each command's writes are logged so that a command that throws is taken
 * back whole. Deleting a key the batch created and the live state does not hold leaves no trace (a saga's ledger
 * entry made and forgotten within one batch costs Redis nothing).
 */
export class Draft implements StateView {
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
      const has = t.has(key);
      if (had) {
        if (!has) this.size++;
        t.set(key, before);
      } else if (has) {
        t.delete(key);
        this.size--;
      }
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
    if (value === undefined && !this.live.get(table)!.has(key)) {
      // Nothing committed to delete: drop what the batch wrote, if anything.
      if (had) t.delete(key), this.size--;
      return;
    }
    if (!had) this.size++;
    t.set(key, value);
  }
}

/** One partition's share of a batch. */
export interface Part {
  readonly runner: PartitionRunner;
  readonly draft: Draft;
  /** Stream messages taken from the runner's queue (given back if the batch is withheld). */
  taken: JsMsg[];
  /** Last stream sequence applied (the cursor after the batch). */
  last: number;
  /** The partition's local count after the batch: commands delivered from within the worker number -1, -2, ... */
  local: number;
  /** Commands applied. */
  applied: number;
  replies: [ReplyTo, Uint8Array][];
  /** Commands for partitions outside this batch, per subject, in order. */
  sends: Map<string, unknown[]>;
  /** Sagas this part decided, by outcome ('' for paid, else the refusal's code): counted once the batch commits. */
  outcomes: Map<string, number>;
}

/** A committed part's outbox, with the field it is stored under ('' when it owes nothing). */
export interface Owed {
  field: string;
  outbox: Outbox | null;
}

export interface BatchLoopDeps {
  config: Config;
  log: Log;
  metrics?: RunnerMetrics | undefined;
}

const key = (kind: Kind, partition: number) => `${kind}.${partition}`;

/**
 * The one loop of a worker process: takes the queued stream commands of every partition the worker runs, applies
 * them as one batch, and commits the batch in one Redis script, all of it or (one partition fenced) none.
 *
 * A command one partition of the batch sends to another partition this worker runs (a checkout's reserve, debit,
 * answers, releases and forgets, when order, stock and payment partitions share the worker) is applied in the same
 * batch, in memory, instead of leaving through the outbox and the stream: a whole checkout is then one stream
 * message in, one commit and one reply out. Each partition still has one writer and applies its commands one at a
 * time; what changes is the transport, which the saga does not depend on (it tolerates any order and repeats). The
 * commit being atomic across the batch's partitions is what makes this exact: a crash before it loses the commands
 * and everything they caused together, and the streams replay them.
 */
export class BatchLoop {
  private readonly runners = new Map<string, PartitionRunner>();
  private readonly names: Names;
  private wakeUp: (() => void) | null = null;
  private running = false;
  /** Runners in the batch now being applied or committed. */
  private readonly busy = new Set<PartitionRunner>();
  private batchDone: Promise<void> = Promise.resolve();
  /** Where the next batch starts taking stream commands (round robin over the runners). */
  private next = 0;

  constructor(private readonly deps: BatchLoopDeps) {
    this.names = names(deps.config.streamPrefix);
  }

  /** A runner that has taken its partition: its queued commands join the next batches. */
  add(runner: PartitionRunner): void {
    this.runners.set(key(runner.kind, runner.partition), runner);
    if (!this.running) {
      this.running = true;
      void this.loop();
    }
    this.wake();
  }

  remove(runner: PartitionRunner): void {
    const k = key(runner.kind, runner.partition);
    if (this.runners.get(k) === runner) this.runners.delete(k);
  }

  /** Something was queued, or an outbox finished sending. */
  wake(): void {
    this.wakeUp?.();
  }

  /** Resolves once no batch in hand involves the runner. */
  async settled(runner: PartitionRunner): Promise<void> {
    while (this.busy.has(runner)) await this.batchDone;
  }

  private async loop(): Promise<void> {
    for (;;) {
      const takers = [...this.runners.values()].filter((r) => r.ready());
      if (takers.length === 0) {
        await new Promise<void>((r) => (this.wakeUp = r));
        this.wakeUp = null;
        continue;
      }
      let done!: () => void;
      this.batchDone = new Promise<void>((r) => (done = r));
      try {
        const committed = await this.batch(takers);
        if (!committed) await turn();
      } catch (err) {
        // Not the actors (a command that throws is dropped alone), so a fault of this code: what the batch took is
        // neither committed nor queued any more. Every partition in it takes itself again from Redis and its stream.
        for (const runner of this.busy) runner.failed(err);
        await turn();
      } finally {
        this.busy.clear();
        done();
      }
    }
  }

  /** Applies and commits one batch; false when it had nothing to commit. */
  private async batch(takers: PartitionRunner[]): Promise<boolean> {
    const { config } = this.deps;
    const began = performance.now();
    const parts = new Map<PartitionRunner, Part>();
    const local: [Part, unknown][] = [];
    let applied = 0;
    const full = () => {
      if (applied === 0) return false;
      if (performance.now() - began >= BATCH_SLICE_MS) return true;
      let keys = 0;
      for (const p of parts.values()) keys += p.draft.size;
      return keys >= BATCH_KEYS_MAX;
    };
    const start = this.next++ % takers.length;
    for (let n = 0; n < takers.length && !full(); n++) {
      const runner = takers[(start + n) % takers.length]!;
      const part = this.part(parts, runner);
      const msgs = runner.take(config.batchMax);
      let i = 0;
      for (; i < msgs.length && !full(); i++) {
        const m = msgs[i]!;
        runner.streamPending = m.info.pending;
        if (m.seq <= runner.cursor) continue; // already applied (a consumer reset can re-deliver)
        part.last = m.seq;
        let envelopes: CommandEnvelope[];
        try {
          envelopes = unbundle(decode<StreamMessage>(m.data));
        } catch (err) {
          runner.log.error('undecodable command skipped', { seq: m.seq, err });
          continue;
        }
        for (let e = 0; e < envelopes.length; e++) {
          this.deliver(parts, local, part, envelopes[e]!.c, envelopes[e]!.r, m.seq * BUNDLE_MAX + e);
          applied++;
        }
        // What the commands sent within the worker, and what that sends on, until the sagas rest.
        for (let j = 0; j < local.length; j++) {
          const [to, cmd] = local[j]!;
          this.deliver(parts, local, to, cmd, undefined, -++to.local);
          applied++;
        }
        local.length = 0;
      }
      part.taken = i === msgs.length ? msgs : msgs.slice(0, i);
      if (i < msgs.length) runner.giveBack(msgs.slice(i));
    }
    return this.commit([...parts.values()]);
  }

  private part(parts: Map<PartitionRunner, Part>, runner: PartitionRunner): Part {
    let part = parts.get(runner);
    if (!part) {
      this.busy.add(runner);
      parts.set(runner, (part = { runner, draft: new Draft(runner.live), taken: [], last: runner.cursor, local: runner.local, applied: 0, replies: [], sends: new Map(), outcomes: new Map() }));
    }
    return part;
  }

  /** Applies one command to its partition's draft and routes its effects. */
  private deliver(parts: Map<PartitionRunner, Part>, local: [Part, unknown][], part: Part, cmd: unknown, replyTo: ReplyTo | undefined, seq: number): void {
    const effects = this.applyOne(part, cmd, replyTo, seq);
    part.applied++;
    if (replyTo && effects.reply) part.replies.push([replyTo, encode(effects.reply)]);
    if (effects.replies) {
      for (const { to, reply } of effects.replies) part.replies.push([to, encode(reply)]);
      const decided = effects.replies[0]?.reply; // deferred answers are the outcome of a saga
      if (decided) {
        const outcome = decided.ok ? '' : decided.code;
        part.outcomes.set(outcome, (part.outcomes.get(outcome) ?? 0) + 1);
      }
    }
    for (const out of effects.send ?? []) {
      const target = this.runners.get(key(out.kind, out.partition));
      if (target?.state === 'running') {
        local.push([this.part(parts, target), out.cmd]);
        continue;
      }
      const subject = this.names.cmd(out.kind, out.partition);
      let list = part.sends.get(subject);
      if (!list) part.sends.set(subject, (list = []));
      list.push(out.cmd);
    }
  }

  /** A command that throws leaves nothing and answers `internal`. */
  private applyOne(part: Part, cmd: unknown, replyTo: ReplyTo | undefined, seq: number): Effects {
    const { runner, draft } = part;
    const ctx: ApplyContext = { partition: runner.partition, partitions: this.deps.config.partitions, seq };
    if (replyTo) ctx.replyTo = replyTo;
    try {
      const effects = runner.actor.apply(draft, cmd as never, ctx);
      draft.keepCommand();
      return effects;
    } catch (err) {
      draft.dropCommand();
      runner.log.error('command failed; nothing of it applied', { seq, err });
      return { reply: fail('internal', `command ${seq} at ${runner.subject} failed`) };
    }
  }

  /** What a part owes once committed: replies, and one message per subject with ids fixed by the batch. */
  private owed(part: Part): Owed {
    const { runner } = part;
    const outbox: Outbox = { js: [], replies: part.replies };
    const merge = runner.actor.mergeOutgoing;
    for (const [subject, cmds] of part.sends) {
      const envelopes: CommandEnvelope[] = (merge ? merge(cmds) : cmds).map((c) => ({ c }));
      for (const data of bundles(envelopes)) outbox.js.push([subject, `${runner.kind}.${runner.partition}.${part.last}.${part.local}.${outbox.js.length}`, data]);
    }
    if (outbox.js.length === 0 && outbox.replies.length === 0) return { field: '', outbox: null };
    return { field: `${part.last}.${part.local}`, outbox };
  }

  private async commit(all: Part[]): Promise<boolean> {
    // A part that only skipped messages it had already applied has nothing to write.
    const parts = all.filter((p) => p.last > p.runner.cursor || p.local > p.runner.local);
    if (parts.length === 0) return false;
    const owed = parts.map((p) => this.owed(p));
    const cleared = parts.map((p) => p.runner.takeCleared());
    const prepared: PreparedBatch[] = parts.map((p, i) =>
      p.runner.store.prepare({ epoch: p.runner.epoch, cursor: p.last, local: p.local, changes: p.draft.batch, outboxField: owed[i]!.field, outbox: owed[i]!.outbox, cleared: cleared[i]! }),
    );
    const started = performance.now();
    let results;
    try {
      results = await commitTogether(prepared);
    } catch (err) {
      // A transport failure: nothing of the batch is visible; each partition takes itself again from Redis.
      for (const p of parts) p.runner.failed(err);
      return true;
    }
    if (results.some((r) => r !== 'committed')) {
      // A newer owner holds some partition: nothing was written. It drops its partition; the others apply their
      // commands again in the next batch, where the fenced partition is no longer a local target.
      parts.forEach((p, i) => {
        if (results[i] === 'fenced') return p.runner.fenced();
        p.runner.giveBack(p.taken);
        p.runner.giveCleared(cleared[i]!);
      });
      return true;
    }
    const ms = performance.now() - started;
    for (const p of parts) {
      this.deps.metrics?.batch(p.runner.kind, p.runner.partition, p.applied, ms);
      for (const [outcome, n] of p.outcomes) this.deps.metrics?.sagaOutcome(outcome === '', outcome || undefined, n);
    }
    if (this.deps.config.faultKillAfter === 'commit' && owed.some((o) => o.outbox)) process.kill(process.pid, 'SIGKILL');
    parts.forEach((p, i) => p.runner.committed(p, owed[i]!));
    return true;
  }
}
