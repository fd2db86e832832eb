/**
 * Committing one batch: sends the shares that write to Redis as one transaction (store.ts prepares each, the commit
 * group sends them), then tells each participant what became of its share, counts and logs what the batch did, and
 * acknowledges the parcels of older workers it applied.
 */
import type { Config } from '../config.js';
import { faultLog, type Fault } from '../faults.js';
import { bySender, gatherReplies, owedBy, type Owed } from './batch-owed.js';
import type { Share } from './batch-share.js';
import { commitTogether, type PreparedBatch } from './commit-group.js';
import { encodeEntry, type DeadLetter } from './outbox.js';
import type { Inbound, Participant } from './participant.js';
import type { DeadLetterReason, RunnerMetrics } from './runner-metrics.js';
import type { CommitResult } from './store-scripts.js';

/** What committing needs besides the batches. */
export interface CommitDeps {
  config: Config;
  metrics?: RunnerMetrics | undefined;
  /** Acknowledges older workers' parcels applied by a committed batch (the courier). */
  ack(to: string, ids: string[]): void;
  /** Commits the prepared batches as one transaction: commit-group.ts's commitTogether (tests pass their own). */
  commit?: (batches: readonly PreparedBatch[]) => Promise<CommitResult[]>;
}

/**
 * Redis did not hold the partition's count of commits: `redis-behind`, fewer than it acknowledged (it lost commits:
 * restarted from files that miss them, or a replica that never had them); `redis-ahead`, more (the batch was written
 * already, by a command sent again over a new connection, or by another owner).
 */
class CommitCountError extends Error {
  override name = 'CommitCountError';
  constructor(
    readonly result: 'redis-behind' | 'redis-ahead',
    readonly committed: number,
  ) {
    super(
      result === 'redis-behind'
        ? `Redis holds fewer commits of this partition than the ${committed} it acknowledged: it lost some (restarted from files that miss them, or a replica that never had them). The partition takes itself again from what Redis holds, and serves only if its stream still has every command since (docs/operations.md, "A partition refuses its stream")`
        : `Redis holds more commits of this partition than the ${committed} this owner made: the batch was written already, or by another owner. The partition takes itself again from what Redis holds`,
    );
  }
}

/** A batch whose commit is in flight. */
export interface InFlight {
  shares: Map<Participant, Share>;
  /** The shares that write, with what each owes and the done outbox fields its commit deletes. */
  writing: Share[];
  owed: Owed[];
  done: string[][];
  started: number;
  results: Promise<CommitResult[] | { failure: unknown }>;
}

export class BatchCommitter {
  /** Dead letters are logged once a minute per partition and reason at most; all are counted (shop_dead_letters_total). */
  private readonly deadLogs = new WeakMap<Participant, Fault>();

  constructor(
    private readonly deps: CommitDeps,
    /** Where dead letters go, for their log line. */
    private readonly deadLetterStream: string,
  ) {}

  /** Sends a batch's commit; null when it has nothing to write. */
  start(all: Map<Participant, Share>): InFlight | null {
    // Parcels seen before were committed before: acknowledged whatever happens to this batch.
    for (const p of all.values()) if (p.repeats.length > 0) this.acknowledge(p.repeats);
    // A share that only skipped what it had already applied has nothing to write.
    const writing = [...all.values()].filter((p) => p.writes);
    if (writing.length === 0) return null;
    const owed = gatherReplies(writing.map(owedBy));
    const done = writing.map((p) => p.participant.takeDone());
    const prepared: PreparedBatch[] = writing.map((p, i) =>
      p.participant.store.prepare({
        epoch: p.participant.epoch,
        commits: p.participant.commitCount + 1,
        cursor: p.last,
        local: p.local,
        changes: p.draft.batch,
        outboxField: owed[i]!.field,
        outbox: owed[i]!.entry ? encodeEntry(owed[i]!.entry!) : null,
        cleared: done[i]!,
      }),
    );
    const started = performance.now();
    // Settles with the results, or the transport failure: never rejects.
    const results = (this.deps.commit ?? commitTogether)(prepared).then(
      (r) => r,
      (err: unknown) => ({ failure: err }),
    );
    return { shares: all, writing, owed, done, started, results };
  }

  /**
   * Waits for a batch's commit and acts on it; `next`, applied on top of it meanwhile, is thrown away (its messages
   * queued again) when it did not commit whole. True when it committed.
   */
  async finish(batch: InFlight, next: Map<Participant, Share> | null): Promise<boolean> {
    const { writing: shares, owed, done, started } = batch;
    const results = await batch.results;
    if ('failure' in results || results.some((r) => r !== 'committed')) {
      // What was applied on top of it goes back first, so that this batch's messages end up ahead of it.
      for (const p of next?.values() ?? []) p.participant.giveBack(p.taken);
      if ('failure' in results) {
        // A transport failure: nothing of the batch is visible; each partition takes itself again from Redis.
        for (const p of shares) p.participant.failed(results.failure);
        return false;
      }
      // A newer owner holds some partition: nothing was written. It drops its partition; the others apply their
      // messages again in the next batch, where the fenced partition is no longer a local target.
      shares.forEach((p, i) => {
        if (results[i] === 'fenced') return p.participant.fenced();
        // Redis holds fewer or more commits of the partition than it has acknowledged: it takes itself again from
        // what Redis holds, where the stream's marks decide whether it may serve (marks.ts).
        if (results[i] === 'redis-behind' || results[i] === 'redis-ahead') return p.participant.failed(new CommitCountError(results[i], p.participant.commitCount));
        p.participant.giveBack(p.taken);
        p.participant.giveBackDone(done[i]!);
      });
      // A share that wrote nothing still took messages (repeats acknowledged, skipped ones): they are gone for good.
      return false;
    }
    const ms = performance.now() - started;
    const { metrics } = this.deps;
    for (const p of shares) {
      metrics?.batch(p.kind, p.partition, p.applied, ms);
      for (const [outcome, n] of p.outcomes) metrics?.sagaOutcome(outcome === '', outcome || undefined, n);
      for (const d of p.dead) {
        metrics?.deadLetter?.(p.kind, p.partition, d.reason as DeadLetterReason);
        this.logDead(p, d);
      }
    }
    if (this.deps.config.faultKillAfter === 'commit' && owed.some((o) => (o.entry && o.entry.replies.length > 0) || o.parcels.length > 0)) process.kill(process.pid, 'SIGKILL');
    shares.forEach((p, i) => {
      const { field, entry, parcels, later } = owed[i]!;
      p.participant.committed({ draft: p.draft, cursor: p.last, local: p.local, field, entry, sends: parcels, later, parcels: p.parcels.map((x) => x.id), streamMessages: p.taken.stream.length, messageIds: p.messageIds });
    });
    this.acknowledge(shares.flatMap((p) => p.parcels));
    return true;
  }

  /** Parcels applied and committed: their senders may forget them. One acknowledgement per sender. */
  private acknowledge(parcels: Inbound[]): void {
    for (const [to, ids] of bySender(parcels)) this.deps.ack(to, ids);
  }

  private logDead(share: Share, d: DeadLetter): void {
    let log = this.deadLogs.get(share.participant);
    if (!log) this.deadLogs.set(share.participant, (log = faultLog(share.participant.log, undefined, undefined, 'dead letter')));
    log(`a message this partition cannot apply (${d.reason}) was passed and copied to ${this.deadLetterStream}`, { seq: d.seq, detail: d.detail, order: share.deadOrders.get(d) });
  }
}
