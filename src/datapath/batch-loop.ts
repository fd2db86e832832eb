/**
 * The one loop of a worker process: takes the queued messages of every partition the worker runs (clients'
 * commands from the streams, saga parcels from other workers), checks each at the boundary, applies them as one
 * batch, and commits the batch in one Redis script, all of it or (one partition fenced) none.
 *
 * A command one partition of the batch sends to another partition this worker runs (a checkout's reserve, debit,
 * answers, releases and forgets, when order, stock and payment partitions share the worker) is applied in the same
 * batch, in memory (datapath/local-delivery.ts), instead of leaving through the outbox: a whole checkout is then one stream
 * message in, one commit and one reply out. Each partition still has one writer and applies its commands one at a
 * time; what changes is the transport, which the saga does not depend on (it tolerates any order and repeats). The
 * commit being atomic across the batch's partitions is what makes this exact: a crash before it loses the commands
 * and everything they caused together, and the streams and the senders' outboxes deliver them again.
 *
 * A message that does not decode, fails its command's schema (actors/commands.ts), names no command of its kind, or
 * breaks an actor's invariant is a dead letter: the cursor moves past it with the batch, a copy goes to the
 * dead-letter stream through the outbox, it is counted and logged; the commands around it apply as usual.
 *
 * The loop talks to a partition only through `Participant` (datapath/participant.ts), which the partition runner
 * implements. Applying a batch is datapath/batch-apply.ts, committing it datapath/batch-commit.ts; this file decides
 * when: which partitions take part, what builds on the commit still in flight, and what to do when it fails.
 */
import { setImmediate as turn } from 'node:timers/promises';
import type { Kind } from '../config.js';
import type { Log } from '../log.js';
import { names } from '../protocol.js';
import { BatchApplier } from './batch-apply.js';
import { BatchCommitter, type CommitDeps, type InFlight } from './batch-commit.js';
import { Share } from './batch-share.js';
import { participantKey } from '../partitioning.js';
import type { Participant } from './participant.js';

/** Longest a partition that lets go waits for the batches in hand that involve it (settled()). */
const SETTLE_DEADLINE_MS = 10_000;

export interface BatchLoopDeps extends CommitDeps {
  log: Log;
  /** How long one batch may apply commands before the loop lets the event loop turn (BATCH_SLICE_MS). */
  sliceMs?: number;
}

export class BatchLoop {
  private readonly participants = new Map<string, Participant>();
  private readonly applier: BatchApplier;
  private readonly committer: BatchCommitter;
  private wakeUp: (() => void) | null = null;
  private running = false;
  /** Participants in the batches now being applied or committed, with how many they are in. */
  private readonly busy = new Map<Participant, number>();
  private settledWaiters: (() => void)[] = [];

  constructor(private readonly deps: BatchLoopDeps) {
    const { replies, deadLetterStream } = names(deps.config.streamPrefix);
    this.applier = new BatchApplier(deps.config, replies, deps.sliceMs);
    this.committer = new BatchCommitter(deps, deadLetterStream);
  }

  /** A runner that has taken its partition: its queued messages join the next batches. */
  add(participant: Participant): void {
    this.participants.set(participantKey(participant.kind, participant.partition), participant);
    if (!this.running) {
      this.running = true;
      void this.loop();
    }
    this.wake();
  }

  remove(participant: Participant): void {
    const k = participantKey(participant.kind, participant.partition);
    if (this.participants.get(k) === participant) this.participants.delete(k);
  }

  /** Something was queued, or an outbox finished sending. */
  wake(): void {
    this.wakeUp?.();
  }

  /**
   * Resolves true once no batch in hand involves the participant, or false after `deadlineMs` (a commit that hangs:
   * the caller lets go anyway, and a commit that lands later is refused by the next owner's epoch).
   */
  async settled(participant: Participant, deadlineMs = SETTLE_DEADLINE_MS): Promise<boolean> {
    const deadline = performance.now() + deadlineMs;
    while (this.busy.has(participant)) {
      const left = deadline - performance.now();
      if (left <= 0) return false;
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((r) => {
        this.settledWaiters.push(r);
        timer = setTimeout(r, left);
      });
      clearTimeout(timer);
    }
    return true;
  }

  /**
   * Applies a batch while the previous one commits: the next batch's drafts sit on the drafts of the one in flight,
   * and it is committed only once that one is (or thrown away and applied again, if it was not). One commit in
   * flight at a time, so a worker's cycle is the longer of applying and committing, not their sum: with many
   * partitions per batch, or sagas crossing workers, a commit is long and the loop used to wait it out idle.
   * What arrives while that commit is out joins the next batch before it is sent (group commit).
   */
  private async loop(): Promise<void> {
    let inflight: InFlight | null = null;
    for (;;) {
      let takers = [...this.participants.values()].filter((m) => m.ready());
      if (takers.length === 0) {
        // Idle: wait for work; or, with a commit in flight, for it to return or for work to apply meanwhile.
        const woken = new Promise<boolean>((r) => (this.wakeUp = () => r(true)));
        const woke = await (inflight ? Promise.race([woken, inflight.results.then(() => false)]) : woken);
        this.wakeUp = null;
        if (!inflight) continue;
        if (woke) {
          takers = [...this.participants.values()].filter((m) => m.ready());
          if (takers.length === 0) continue; // woken for nothing to take (an outbox finished): keep waiting
        }
      }
      // A partition's first take since it started counts as an attempt at the message after its cursor once it is
      // recorded in Redis (not before: an owner that loses the partition before it takes anything took nothing).
      const starting = takers.filter((m) => m.mustRecordStart?.());
      if (starting.length > 0) {
        await Promise.all(starting.map((m) => m.recordStart!()));
        takers = takers.filter((m) => m.ready());
        if (takers.length === 0) continue;
      }
      // A partition whose first message failed to commit over several starts: that message goes in a batch alone,
      // once the attempt is recorded in Redis (so that if it takes the worker down again, the next start passes it).
      let alone = false;
      const suspect = takers.find((m) => m.suspect?.());
      if (suspect) {
        try {
          if (!(await suspect.takeAlone!())) continue;
        } catch (err) {
          suspect.failed(err);
          continue;
        }
        takers = [suspect];
        alone = true;
      }
      let next: Map<Participant, Share> | null = null;
      let applying = false;
      try {
        if (takers.length > 0) {
          applying = true;
          this.apply(takers, inflight?.shares, (next = new Map()), alone);
          applying = false;
        }
        if (inflight) {
          const committed = await this.committer.finish(inflight, next);
          this.release(inflight.shares.keys());
          inflight = null;
          if (!committed && next) {
            this.release(next.keys()); // thrown away by finish(): its messages are queued again
            next = null;
          }
          // The batch below is committed and published into the live maps: the next one no longer builds on it.
          // (Else every batch of a busy worker would hold on to all those before it: a chain that grows while the
          // loop never idles, and that every read of a draft walks.)
          for (const p of next?.values() ?? []) p.detach();
          // What arrived while that commit was out joins the batch about to be committed (group commit): else the
          // batch applied at the first wake went out with the one message that woke it, and every other commit of a
          // worker whose partitions wait on each other (sagas across workers) carried next to nothing.
          if (next && !alone) {
            const more = [...this.participants.values()].filter((m) => m.ready() && !m.mustRecordStart?.() && !m.suspect?.());
            if (more.length > 0) {
              applying = true;
              this.apply(more, undefined, next, false);
              applying = false;
            }
          }
        }
        if (next) {
          inflight = this.committer.start(next);
          if (!inflight) {
            this.release(next.keys());
            await turn(); // it only skipped messages it had applied: nothing to write
          }
        }
      } catch (err) {
        // Not the messages (a bad one is a dead letter) nor the actors (a throwing command is one), so a fault of
        // this code: what the batches took is neither committed nor queued any more. Every partition in them takes
        // itself again from Redis and its stream, with a growing pause if it keeps failing.
        this.deps.log.error('batch failed', { err });
        const participants = new Set([...(inflight?.shares.keys() ?? []), ...(next?.keys() ?? [])]);
        // Those whose messages were being applied count it against the message first in line (poison accounting).
        for (const participant of participants) participant.failed(err, applying && next?.has(participant));
        this.release(participants);
        inflight = null;
        await turn();
      }
    }
  }

  /**
   * Applies one batch into `shares` (on the drafts of `below`, the batch still committing, where a partition is in
   * both). Filled as it goes, so that if this throws the loop still knows every participant it involved.
   */
  private apply(takers: Participant[], below: Map<Participant, Share> | undefined, shares: Map<Participant, Share>, alone: boolean): void {
    const shareOf = (participant: Participant) => this.share(shares, participant, below);
    this.applier.apply(takers, shares, shareOf, (kind: Kind, partition: number) => this.participants.get(participantKey(kind, partition)), alone);
  }

  private share(shares: Map<Participant, Share>, participant: Participant, below: Map<Participant, Share> | undefined): Share {
    let share = shares.get(participant);
    if (!share) {
      this.busy.set(participant, (this.busy.get(participant) ?? 0) + 1);
      shares.set(participant, (share = new Share(participant, below?.get(participant))));
    }
    return share;
  }

  /** The batch no longer involves these participants. */
  private release(participants: Iterable<Participant>): void {
    for (const m of participants) {
      const n = (this.busy.get(m) ?? 1) - 1;
      if (n > 0) this.busy.set(m, n);
      else this.busy.delete(m);
    }
    const wake = this.settledWaiters.splice(0);
    for (const w of wake) w();
  }
}
