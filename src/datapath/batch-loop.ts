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
 * The loop talks to a partition only through `Member`, which the partition runner implements.
 */
import type { MsgHdrs } from 'nats';
import { setImmediate as turn } from 'node:timers/promises';
import { checkCommand, describe, type Door } from '../actors/commands.js';
import { BATCH_INIT_CHUNK } from '../partitioning.js';
import type { Actor, Outgoing, ReplyTo } from '../actors/types.js';
import { decode, encode } from '../codec.js';
import type { Config, Kind } from '../config.js';
import { faultLog, type Fault } from '../faults.js';
import type { Log } from '../log.js';
import { BUNDLE_MAX, STREAM_MESSAGE_BYTES_MAX, fail, ID_MAX_CHARS, names, type Names, type Reply } from '../protocol.js';
import { Delivery, type Box, type Sink } from './local-delivery.js';
import { Draft, type Tables } from './draft.js';
import type { DeadLetterReason, RunnerMetrics } from './runner-metrics.js';
import { emptyEntry, encodeEntry, owesNothing, packCommands, type DeadLetter, type OutboxEntry } from './outbox.js';
import { commitTogether, type PreparedBatch } from './commit-group.js';
import type { PartitionStore } from './store.js';
import type { CommitResult } from './store-scripts.js';

/** The header JetStream de-duplicates publishes by. */
const MSG_ID_HEADER = 'Nats-Msg-Id';

/**
 * A batch ends early once it changes this many keys, or has applied commands for this long, and the loop lets the
 * event loop turn before the next one: a long stretch of synchronous work would delay the worker's heartbeats (and
 * so cost it its lease), its replies and its reads.
 */
const BATCH_KEYS_MAX = 5_000;
const BATCH_SLICE_MS = 10;
/** Longest a partition that lets go waits for the batches in hand that involve it (settled()). */
export const SETTLE_DEADLINE_MS = 10_000;
/** Longest reply subject a client command may name. */
const REPLY_SUBJECT_MAX_CHARS = 256;

/** A saga parcel from another worker, waiting in a partition's queue. */
export interface Inbound {
  id: string;
  /** Where to acknowledge it once its batch is committed. */
  ackTo: string;
  /** msgpack array of saga commands */
  commands: Uint8Array;
}

/**
 * A command message of a partition's stream, as its consumer delivers it, or as the runner reads it directly while
 * the consumer is being made again (runner.ts readWithoutConsumer). `pending`: what the stream holds after it for the
 * partition, when the consumer said so.
 */
export interface StreamMessage {
  seq: number;
  data: Uint8Array;
  headers?: MsgHdrs | undefined;
  pending?: number | undefined;
}

/** What a batch took from a partition's queues. */
export interface Taken {
  stream: StreamMessage[];
  parcels: Inbound[];
}

/**
 * Redis did not hold the partition's count of commits: `redis-behind`, fewer than it acknowledged (it lost commits:
 * restarted from files that miss them, or a replica that never had them); `redis-ahead`, more (the batch was written
 * already, by a command sent again over a new connection, or by another owner).
 */
export class CommitCountError extends Error {
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

/** A committed batch, as its partition hears of it. */
export interface Committed {
  /** Publish it: the batch's writes become what reads see. */
  draft: Draft;
  /** Last stream sequence applied, and the count of commands delivered within the worker. */
  cursor: number;
  local: number;
  /** The outbox entry the batch stored, and its field; null when it owes nothing. */
  field: string;
  entry: OutboxEntry | null;
  /** Ids of the parcels it applied. */
  parcels: string[];
  /** Stream messages it applied (or passed as dead letters). */
  streamMessages: number;
  /** Their message ids (Nats-Msg-Id), where they have one. */
  messageIds: string[];
}

/** What the batch loop needs of a partition; implemented by its runner (datapath/runner.ts). */
export interface Member {
  readonly kind: Kind;
  readonly partition: number;
  readonly actor: Actor<unknown, unknown>;
  readonly log: Log;
  readonly store: PartitionStore;
  /** The committed state; the batch drafts over it. */
  readonly live: Tables;
  readonly epoch: number;
  /** Last stream sequence committed. */
  readonly cursor: number;
  /** Commands delivered from within the worker, committed so far. */
  readonly local: number;
  /** Commits of the partition so far (one more with each `committed`): Redis must hold as many (store.ts checks it). */
  readonly commitCount: number;
  /** Has queued messages and room in its outbox: may join the next batch. */
  ready(): boolean;
  /** Runs now: commands the worker's other partitions make for it may be applied to it within a batch. */
  accepts(): boolean;
  /** Takes up to `max` queued stream messages, and the queued parcels. */
  take(max: number): Taken;
  /** Messages taken but not applied (a batch cut short, or withheld): first in line again. */
  giveBack(taken: Taken): void;
  /** A parcel this partition has applied and committed already. */
  seen(parcelId: string): boolean;
  /** A stream message with this id (Nats-Msg-Id) was applied and committed lately: a second copy of it. */
  seenMessage(messageId: string): boolean;
  /** Outbox fields that are done, for this commit to delete; and back, when the commit did not happen. */
  takeDone(): string[];
  giveBackDone(fields: string[]): void;
  committed(c: Committed): void;
  /** A newer owner holds the partition (the commit was refused): drop it. */
  fenced(): void;
  /**
   * The commit failed for a transport reason, or (`fault`) applying the batch threw: nothing of the batch is
   * visible; take the partition again.
   */
  failed(err: unknown, fault?: boolean): void;
  /**
   * Poison accounting (datapath/runner.ts). The message first in line has failed to commit over several starts: it
   * must be applied in a batch of its own, after `takeAlone()` has recorded the attempt (false: the partition is lost).
   */
  suspect?(): boolean;
  takeAlone?(): Promise<boolean>;
  /** Why the stream message `seq` is to be passed undecoded, as a dead letter; undefined for any other. */
  quarantined?(seq: number): string | undefined;
}

/** One partition's share of a batch. */
class Share implements Box {
  readonly draft: Draft;
  readonly taken: Taken = { stream: [], parcels: [] };
  /** Last stream sequence applied (the cursor after the batch). */
  last: number;
  /** The partition's local count after the batch: commands delivered from within the worker number -1, -2, ... */
  local: number;
  applied = 0;
  readonly replies: [ReplyTo, Uint8Array][] = [];
  /** Commands for partitions elsewhere, per target, in order. */
  readonly sends = new Map<string, { kind: Kind; partition: number; cmds: unknown[] }>();
  readonly dead: DeadLetter[] = [];
  /** Message ids of the stream messages it applied (in order, and as a set to look them up). */
  readonly messageIds: string[] = [];
  private readonly messageIdSet = new Set<string>();
  /** The order each dead letter was about, where it names one: said in its log line, not stored with it. */
  readonly deadOrders = new Map<DeadLetter, string>();
  /** Sagas this share decided, by outcome ('' for paid, else the refusal's code): counted once the batch commits. */
  readonly outcomes = new Map<string, number>();
  /** Parcels applied (to acknowledge once committed), and parcels seen before (acknowledged either way). */
  readonly parcels: Inbound[] = [];
  readonly repeats: Inbound[] = [];
  /** Cursor and local count the batch starts from: the partition's committed ones, or those of the batch still committing. */
  readonly fromCursor: number;
  readonly fromLocal: number;

  /** `below`: this partition's share of the batch still being committed, which this one builds on. */
  constructor(
    readonly member: Member,
    private below?: Share,
  ) {
    this.draft = new Draft(member.live, below?.draft);
    this.last = this.fromCursor = below ? below.last : member.cursor;
    this.local = this.fromLocal = below ? below.local : member.local;
  }

  get kind(): Kind {
    return this.member.kind;
  }
  get partition(): number {
    return this.member.partition;
  }
  get actor(): Actor<unknown, unknown> {
    return this.member.actor;
  }
  nextLocal(): number {
    return -++this.local;
  }
  /** The share below has committed and is in the live maps: read through to them from now on. */
  detach(): void {
    this.below = undefined;
    this.draft.detach();
  }
  /** A stream message with this id was applied by this share, or by the share below it that is still committing. */
  hasMessage(id: string): boolean {
    return this.messageIdSet.has(id) || (this.below?.hasMessage(id) ?? false);
  }
  addMessage(id: string): void {
    this.messageIds.push(id);
    this.messageIdSet.add(id);
  }
  /** It changes something in Redis: a stream message or a command from within the worker was applied. */
  get writes(): boolean {
    return this.last > this.fromCursor || this.local > this.fromLocal;
  }
}

export interface BatchLoopDeps {
  config: Config;
  log: Log;
  metrics?: RunnerMetrics | undefined;
  /** Acknowledges parcels applied by a committed batch (the courier). */
  ack(to: string, ids: string[]): void;
  /** Commits the prepared batches as one transaction: store.ts's commitTogether (tests pass their own). */
  commit?: (batches: readonly PreparedBatch[]) => Promise<CommitResult[]>;
}

const key = (kind: Kind, partition: number) => `${kind}.${partition}`;

/** With faultKillAfter 'poison', a client command about this id kills the worker (the poison tests). */
export const FAULT_POISON_ID = 'fault-poison';

/** Most bytes of a message kept in a dead letter when it is stored as it arrived (a command that threw). */
export const DEAD_LETTER_RAW_BYTES_MAX = 64 * 1024;

/** What was thrown, as text, whatever it is (an object without a prototype has no toString). */
export function errorText(err: unknown): string {
  try {
    return err instanceof Error ? err.message : String(err);
  } catch {
    return `a thrown ${typeof err} with no text`;
  }
}

/** A value's copy for a dead letter: encoded, or (a value that cannot be) why not. */
function copyOf(value: unknown): Uint8Array {
  try {
    return encode(value);
  } catch (err) {
    return encode(`(could not be encoded: ${errorText(err)})`);
  }
}

/** A batch whose commit is in flight. */
interface InFlight {
  shares: Map<Member, Share>;
  /** The shares that write, with what each owes and the done outbox fields its commit deletes. */
  writing: Share[];
  owed: { field: string; entry: OutboxEntry | null }[];
  done: string[][];
  started: number;
  results: Promise<CommitResult[] | { failure: unknown }>;
}

/**
 * The order a command is about, for the log line of a saga message or an order's command that went wrong: saga
 * messages name it, an order partition's own commands carry it as their id. Checked, since the command may be
 * one that failed its schema.
 */
function orderOf(kind: Kind, cmd: unknown): string | undefined {
  if (typeof cmd !== 'object' || cmd === null) return undefined;
  const { order, id } = cmd as { order?: unknown; id?: unknown };
  const found = typeof order === 'string' ? order : kind === 'order' ? id : undefined;
  return typeof found === 'string' && found.length <= ID_MAX_CHARS ? found : undefined;
}

/** What a partition's share of a batch owes once committed: its outbox entry and the field it is stored under. */
interface Owed {
  field: string;
  entry: OutboxEntry | null;
}

const onlyReplies = (e: OutboxEntry) => e.parcels.length === 0 && e.dead.length === 0;

/**
 * The replies of a batch travel in one stored outbox entry, not in one per partition (issue 20: every order
 * partition of a batch wrote an entry of replies and deleted it again, the largest fixed cost of a partition). They go
 * to an entry that is stored anyway (one with parcels or dead letters), else to the first partition's; the other
 * partitions then owe nothing. Any owner can send a reply (it is a gateway's inbox and bytes), so whoever re-sends
 * the carrying entry after a crash answers every waiter of the batch: the guarantee that a client waiting across a
 * crash gets the committed outcome holds as before, because the batch commits as one transaction.
 */
export function gatherReplies(owed: Owed[]): Owed[] {
  const carrier = owed.find((o) => o.entry && !onlyReplies(o.entry)) ?? owed.find((o) => o.entry);
  if (!carrier) return owed;
  return owed.map((o) => {
    if (o === carrier || !o.entry || !onlyReplies(o.entry)) return o;
    carrier.entry!.replies.push(...o.entry.replies);
    return { field: '', entry: null };
  });
}

export class BatchLoop {
  private readonly members = new Map<string, Member>();
  private readonly names: Names;
  private readonly replyPrefix: string;
  private wakeUp: (() => void) | null = null;
  private running = false;
  /** Members in the batches now being applied or committed, with how many they are in. */
  private readonly busy = new Map<Member, number>();
  private settledWaiters: (() => void)[] = [];
  /** Where the next batch starts taking messages (round robin over the members). */
  private next = 0;
  /** Dead letters are logged once a minute per partition and reason at most; all are counted (shop_dead_letters_total). */
  private readonly deadLogs = new WeakMap<Member, Fault>();
  private readonly copyLogs = new WeakMap<Member, Fault>();

  constructor(private readonly deps: BatchLoopDeps) {
    this.names = names(deps.config.streamPrefix);
    this.replyPrefix = this.names.replies;
  }

  /** A partition that has taken its partition: its queued messages join the next batches. */
  add(member: Member): void {
    this.members.set(key(member.kind, member.partition), member);
    if (!this.running) {
      this.running = true;
      void this.loop();
    }
    this.wake();
  }

  remove(member: Member): void {
    const k = key(member.kind, member.partition);
    if (this.members.get(k) === member) this.members.delete(k);
  }

  /** Something was queued, or an outbox finished sending. */
  wake(): void {
    this.wakeUp?.();
  }

  /**
   * Resolves true once no batch in hand involves the member, or false after `deadlineMs` (a commit that hangs:
   * the caller lets go anyway, and a commit that lands later is refused by the next owner's epoch).
   */
  async settled(member: Member, deadlineMs = SETTLE_DEADLINE_MS): Promise<boolean> {
    const deadline = performance.now() + deadlineMs;
    while (this.busy.has(member)) {
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
   */
  private async loop(): Promise<void> {
    let inflight: InFlight | null = null;
    for (;;) {
      let takers = [...this.members.values()].filter((m) => m.ready());
      if (takers.length === 0) {
        // Idle: wait for work; or, with a commit in flight, for it to return or for work to apply meanwhile.
        const woken = new Promise<boolean>((r) => (this.wakeUp = () => r(true)));
        const woke = await (inflight ? Promise.race([woken, inflight.results.then(() => false)]) : woken);
        this.wakeUp = null;
        if (!inflight) continue;
        if (woke) {
          takers = [...this.members.values()].filter((m) => m.ready());
          if (takers.length === 0) continue; // woken for nothing to take (an outbox finished): keep waiting
        }
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
      let next: Map<Member, Share> | null = null;
      let applying = false;
      try {
        if (takers.length > 0) {
          applying = true;
          this.apply(takers, inflight?.shares, (next = new Map()), alone);
          applying = false;
        }
        if (inflight) {
          const committed = await this.finish(inflight, next);
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
        }
        if (next) {
          inflight = this.start(next);
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
        const members = new Set([...(inflight?.shares.keys() ?? []), ...(next?.keys() ?? [])]);
        // Those whose messages were being applied count it against the message first in line (poison accounting).
        for (const member of members) member.failed(err, applying && next?.has(member));
        this.release(members);
        inflight = null;
        await turn();
      }
    }
  }

  /**
   * Applies one batch into `shares` (on the drafts of `below`, the batch still committing, where a partition is in
   * both). Filled as it goes, so that if this throws the loop still knows every member it involved.
   */
  private apply(takers: Member[], below: Map<Member, Share> | undefined, shares: Map<Member, Share>, alone = false): void {
    const { config } = this.deps;
    const began = performance.now();
    const share = (member: Member) => this.share(shares, member, below);
    const delivery = new Delivery<Share>(config.partitions, (kind, partition) => {
      const target = this.members.get(key(kind, partition));
      return target?.accepts() ? share(target) : undefined;
    }, this.sink);
    let applied = 0;
    let keysCheckedAt = 0;
    const full = () => {
      if (applied === 0) return false;
      if (performance.now() - began >= BATCH_SLICE_MS) return true;
      if (applied - keysCheckedAt < 64) return false; // summing the drafts' sizes on every message costs more than it saves
      keysCheckedAt = applied;
      let keys = 0;
      for (const p of shares.values()) keys += p.draft.size;
      return keys >= BATCH_KEYS_MAX;
    };
    const start = this.next++ % takers.length;
    for (let n = 0; n < takers.length && !full(); n++) {
      const member = takers[(start + n) % takers.length]!;
      const p = share(member);
      const taken = member.take(alone ? 1 : config.batchMax);
      if (alone && taken.parcels.length > 0) {
        member.giveBack({ stream: [], parcels: taken.parcels });
        taken.parcels = [];
      }
      let s = 0;
      for (; s < taken.stream.length && !full(); s++) applied += this.applyStream(delivery, p, taken.stream[s]!);
      let q = 0;
      for (; q < taken.parcels.length && !full(); q++) applied += this.applyParcel(delivery, p, taken.parcels[q]!);
      p.taken.stream.push(...(s === taken.stream.length ? taken.stream : taken.stream.slice(0, s)));
      p.taken.parcels.push(...(q === taken.parcels.length ? taken.parcels : taken.parcels.slice(0, q)));
      if (s < taken.stream.length || q < taken.parcels.length) member.giveBack({ stream: taken.stream.slice(s), parcels: taken.parcels.slice(q) });
    }
  }

  private share(shares: Map<Member, Share>, member: Member, below: Map<Member, Share> | undefined): Share {
    let share = shares.get(member);
    if (!share) {
      this.busy.set(member, (this.busy.get(member) ?? 0) + 1);
      shares.set(member, (share = new Share(member, below?.get(member))));
    }
    return share;
  }

  /** The batch no longer involves these members. */
  private release(members: Iterable<Member>): void {
    for (const m of members) {
      const n = (this.busy.get(m) ?? 1) - 1;
      if (n > 0) this.busy.set(m, n);
      else this.busy.delete(m);
    }
    const wake = this.settledWaiters.splice(0);
    for (const w of wake) w();
  }

  /** One stream message: a client's command, or a bundle of them. Returns the commands applied (dead letters count). */
  private applyStream(delivery: Delivery<Share>, share: Share, m: StreamMessage): number {
    if (m.seq <= share.fromCursor) return 0; // already applied (a consumer reset can re-deliver)
    share.last = m.seq;
    const base = m.seq * BUNDLE_MAX;
    const quarantined = share.member.quarantined?.(m.seq);
    if (quarantined !== undefined) {
      this.dead(share, base, 'quarantined', quarantined, m.data.subarray(0, DEAD_LETTER_RAW_BYTES_MAX));
      return 1;
    }
    // A second copy of a message in the stream: nats-server 2.9 does not de-duplicate deterministically across a
    // stream leader change, so a command can be stored twice. Passed, with the cursor moving over it.
    const id = m.headers?.get(MSG_ID_HEADER);
    if (id) {
      if (share.member.seenMessage(id) || share.hasMessage(id)) {
        this.copies(share, m.seq, id);
        return 0;
      }
      share.addMessage(id);
    }
    let message: unknown;
    try {
      message = decode(m.data, STREAM_MESSAGE_BYTES_MAX);
    } catch (err) {
      this.dead(share, base, 'undecodable', (err as Error).message, m.data);
      return 1;
    }
    const envelopes = Array.isArray(message) ? message : [message];
    if (envelopes.length === 0) {
      this.dead(share, base, 'invalid', 'an empty bundle: not one command', m.data);
      return 1;
    }
    if (envelopes.length > BUNDLE_MAX) {
      this.dead(share, base, 'oversized', `a bundle of ${envelopes.length} commands is over BUNDLE_MAX (${BUNDLE_MAX})`, m.data);
      return 1;
    }
    for (let e = 0; e < envelopes.length; e++) {
      const seq = base + e;
      const deadBefore = share.dead.length;
      try {
        this.applyEnvelope(delivery, share, envelopes[e], seq, envelopes.length > 1);
      } catch (err) {
        // Isolation: whatever one command does, it is one dead letter and the batch goes on (issue 19).
        this.poisoned(share, seq, 'while being checked or applied', err, deadBefore, m.data);
      }
      share.applied++;
    }
    return envelopes.length;
  }

  private applyEnvelope(delivery: Delivery<Share>, share: Share, value: unknown, seq: number, inBundle: boolean): void {
    const envelope = value as { c?: unknown; r?: unknown } | null;
    const replyTo = typeof envelope === 'object' && envelope !== null ? envelope.r : undefined;
    if (typeof envelope !== 'object' || envelope === null || Array.isArray(envelope) || !('c' in envelope)) {
      this.dead(share, seq, 'invalid', 'not a command envelope {c, r?}', copyOf(envelope));
    } else if (replyTo !== undefined && !this.replySubject(replyTo)) {
      this.dead(share, seq, 'invalid', `reply subject ${describe(replyTo)} is not a reply inbox`, copyOf(envelope));
    } else if (!this.check(share, 'client', envelope.c, seq, envelope, replyTo as string | undefined)) {
      // refused: a dead letter already
    } else if (inBundle && (envelope.c as { k: string }).k === 'batchInit') {
      // The key budget of a batch: a batchInit writes up to BATCH_INIT_CHUNK keys, and a batch is cut only between
      // messages, so one bundle of them would be one batch of millions of keys (seconds without a heartbeat).
      const detail = `a batchInit travels alone in its stream message (it writes up to ${BATCH_INIT_CHUNK} keys); this one came in a bundle of several commands`;
      this.dead(share, seq, 'oversized', detail, copyOf(envelope), envelope.c);
      if (replyTo !== undefined) share.replies.push([replyTo as string, encode(fail('invalid_command', detail))]);
    } else {
      if (this.deps.config.faultKillAfter === 'poison' && (envelope.c as { id?: unknown }).id === FAULT_POISON_ID) process.kill(process.pid, 'SIGKILL');
      delivery.deliver(share, envelope.c, seq, replyTo as string | undefined);
    }
  }

  /**
   * A command that threw out of the checks, the actor's delivery or its own dead-lettering: whatever dead letters it
   * had begun are replaced by one, holding `raw` (the message as it arrived, capped) and why.
   */
  private poisoned(share: Share, seq: number, when: string, err: unknown, deadBefore: number, raw: Uint8Array): void {
    for (const d of share.dead.splice(deadBefore)) share.deadOrders.delete(d);
    this.dead(share, seq, 'invalid', `threw ${when}: ${errorText(err)}`, raw.subarray(0, DEAD_LETTER_RAW_BYTES_MAX));
  }

  /** One parcel of saga commands from a partition of another worker. */
  private applyParcel(delivery: Delivery<Share>, share: Share, inbound: Inbound): number {
    if (share.member.seen(inbound.id)) {
      share.repeats.push(inbound);
      return 0;
    }
    let cmds: unknown;
    try {
      cmds = decode(inbound.commands);
    } catch (err) {
      cmds = err as Error;
    }
    if (Array.isArray(cmds) && cmds.length === 0) {
      share.repeats.push(inbound); // nothing to apply, nothing to wait for
      return 0;
    }
    // Acknowledged once this batch commits, whatever its commands turn out to be: sending a bad one again helps nobody.
    share.parcels.push(inbound);
    if (!Array.isArray(cmds)) {
      const [reason, detail]: [DeadLetterReason, string] = cmds instanceof Error ? ['undecodable', cmds.message] : ['invalid', 'not a list of commands'];
      this.dead(share, share.nextLocal(), reason, `parcel ${inbound.id}: ${detail}`, inbound.commands);
      return 1;
    }
    for (const cmd of cmds) {
      const seq = share.nextLocal();
      const deadBefore = share.dead.length;
      try {
        if (this.check(share, 'saga', cmd, seq, cmd, undefined)) delivery.deliver(share, cmd, seq);
      } catch (err) {
        this.poisoned(share, seq, `in parcel ${inbound.id}`, err, deadBefore, inbound.commands);
      }
      share.applied++;
    }
    return cmds.length;
  }

  /** The command passes its kind's schema for its door; otherwise it becomes a dead letter and its waiter hears why. */
  private check(share: Share, door: Door, cmd: unknown, seq: number, original: unknown, replyTo: ReplyTo | undefined): boolean {
    const verdict = checkCommand(share.kind, door, cmd);
    if (verdict.ok) return true;
    this.dead(share, seq, verdict.reason, verdict.detail, copyOf(original), cmd);
    if (replyTo !== undefined) share.replies.push([replyTo, encode(fail('invalid_command', verdict.detail))]);
    return false;
  }

  /** A reply subject a client command may name: one of the reply inboxes, nothing else a worker may publish to. */
  private replySubject(r: unknown): boolean {
    return typeof r === 'string' && r.length <= REPLY_SUBJECT_MAX_CHARS && r.startsWith(this.replyPrefix) && !/[\s*>]/.test(r);
  }

  /** A second copy of a stream message, passed: said once a minute per partition at most. */
  private copies(share: Share, seq: number, id: string): void {
    let log = this.copyLogs.get(share.member);
    if (!log) this.copyLogs.set(share.member, (log = faultLog(share.member.log)));
    log('a second copy of a stream message it applied (passed; JetStream stored a command twice)', { seq, id });
  }

  private dead(share: Share, seq: number, reason: DeadLetterReason, detail: string, data: Uint8Array, cmd?: unknown): void {
    const d: DeadLetter = { seq, reason, detail, data };
    share.dead.push(d);
    const order = orderOf(share.kind, cmd);
    if (order !== undefined) share.deadOrders.set(d, order);
  }

  /** Where delivered commands' effects go: into the shares of the batch. */
  private readonly sink: Sink<Share> = {
    reply: (share, to, reply) => void share.replies.push([to, encode(reply)]),
    decided: (share, outcome) => {
      const code = outcome.ok ? '' : outcome.code;
      share.outcomes.set(code, (share.outcomes.get(code) ?? 0) + 1);
    },
    send: (share, out: Outgoing) => {
      const k = key(out.kind, out.partition);
      let target = share.sends.get(k);
      if (!target) share.sends.set(k, (target = { kind: out.kind, partition: out.partition, cmds: [] }));
      target.cmds.push(out.cmd);
    },
    failed: (share, cmd, seq, replyTo, err) => {
      this.dead(share, seq, 'invariant', errorText(err), copyOf(cmd), cmd);
      if (replyTo !== undefined) share.replies.push([replyTo, encode(fail('internal', `command ${seq} at ${share.kind}.${share.partition} broke an invariant`) satisfies Reply)]);
    },
  };

  /** What a share owes once committed: replies, parcels with ids fixed by the batch, dead letters. */
  private entryOf(share: Share): Owed {
    const entry = emptyEntry();
    entry.replies = share.replies;
    entry.dead = share.dead;
    const merge = share.actor.mergeOutgoing;
    let i = 0;
    for (const { kind, partition, cmds } of share.sends.values()) {
      for (const data of packCommands(merge ? merge(cmds) : cmds)) entry.parcels.push([kind, partition, `${share.kind}.${share.partition}.${share.last}.${share.local}.${i++}`, data]);
    }
    if (owesNothing(entry)) return { field: '', entry: null };
    return { field: `${share.last}.${share.local}`, entry };
  }

  /** Sends a batch's commit; null when it has nothing to write. */
  private start(all: Map<Member, Share>): InFlight | null {
    // Parcels seen before were committed before: acknowledged whatever happens to this batch.
    for (const p of all.values()) if (p.repeats.length > 0) this.acknowledge(p.repeats);
    // A share that only skipped what it had already applied has nothing to write.
    const writing = [...all.values()].filter((p) => p.writes);
    if (writing.length === 0) return null;
    const owed = gatherReplies(writing.map((p) => this.entryOf(p)));
    const done = writing.map((p) => p.member.takeDone());
    const prepared: PreparedBatch[] = writing.map((p, i) =>
      p.member.store.prepare({
        epoch: p.member.epoch,
        commits: p.member.commitCount + 1,
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
  private async finish(batch: InFlight, next: Map<Member, Share> | null): Promise<boolean> {
    const { writing: shares, owed, done, started } = batch;
    const results = await batch.results;
    if ('failure' in results || results.some((r) => r !== 'committed')) {
      // What was applied on top of it goes back first, so that this batch's messages end up ahead of it.
      for (const p of next?.values() ?? []) p.member.giveBack(p.taken);
      if ('failure' in results) {
        // A transport failure: nothing of the batch is visible; each partition takes itself again from Redis.
        for (const p of shares) p.member.failed(results.failure);
        return false;
      }
      // A newer owner holds some partition: nothing was written. It drops its partition; the others apply their
      // messages again in the next batch, where the fenced partition is no longer a local target.
      shares.forEach((p, i) => {
        if (results[i] === 'fenced') return p.member.fenced();
        // Redis holds fewer or more commits of the partition than it has acknowledged: it takes itself again from
        // what Redis holds, where the stream's marks decide whether it may serve (marks.ts).
        if (results[i] === 'redis-behind' || results[i] === 'redis-ahead') return p.member.failed(new CommitCountError(results[i], p.member.commitCount));
        p.member.giveBack(p.taken);
        p.member.giveBackDone(done[i]!);
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
    if (this.deps.config.faultKillAfter === 'commit' && owed.some((o) => o.entry && (o.entry.replies.length > 0 || o.entry.parcels.length > 0))) process.kill(process.pid, 'SIGKILL');
    shares.forEach((p, i) => p.member.committed({ draft: p.draft, cursor: p.last, local: p.local, field: owed[i]!.field, entry: owed[i]!.entry, parcels: p.parcels.map((x) => x.id), streamMessages: p.taken.stream.length, messageIds: p.messageIds }));
    this.acknowledge(shares.flatMap((p) => p.parcels));
    return true;
  }

  /** Parcels applied and committed: their senders may forget them. One acknowledgement per sender. */
  private acknowledge(parcels: Inbound[]): void {
    const bySender = new Map<string, string[]>();
    for (const { id, ackTo } of parcels) {
      let ids = bySender.get(ackTo);
      if (!ids) bySender.set(ackTo, (ids = []));
      ids.push(id);
    }
    for (const [to, ids] of bySender) this.deps.ack(to, ids);
  }

  private logDead(share: Share, d: DeadLetter): void {
    let log = this.deadLogs.get(share.member);
    if (!log) this.deadLogs.set(share.member, (log = faultLog(share.member.log, undefined, undefined, 'dead letter')));
    log(`a message this partition cannot apply (${d.reason}) was passed and copied to ${this.names.deadLetterStream}`, { seq: d.seq, detail: d.detail, order: share.deadOrders.get(d) });
  }

}
