/**
 * The batch loop's contract with a partition (datapath/batch-loop.ts): what it takes from the partition's queues,
 * what it tells the partition once a batch commits, and the `Participant` interface the partition's runner
 * (datapath/runner.ts) implements. test/unit/batch-loop.test.ts drives the loop with fake participants.
 */
import type { MsgHdrs } from 'nats';
import type { Actor, Outgoing } from '../actors/types.js';
import type { Kind } from '../config.js';
import type { Log } from '../log.js';
import type { Draft, Tables } from './draft.js';
import type { Parcel } from './courier.js';
import type { OutboxEntry } from './outbox.js';
import type { PartitionStore } from './store.js';

/** A saga parcel from another worker, waiting in a partition's queue. */
export interface Inbound {
  id: string;
  /** Where to acknowledge it once its batch is committed, if it has an id (an older worker's parcel). */
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
  /** Read again under a sequence at or below the cursor, where a new stream leader stored it (resequence.ts). */
  resequenced?: true;
}

/** What a batch took from a partition's queues. */
export interface Taken {
  stream: StreamMessage[];
  parcels: Inbound[];
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
  /** Saga messages for partitions elsewhere, to send now (not stored: the partitions' state sends them again). */
  sends: Parcel[];
  /** Those that may leave later (the actor's `deferrable`), merged by the courier with others for the same partition. */
  later: Outgoing[];
  /** Ids of the parcels it applied ('' for those that have none). */
  parcels: string[];
  /** Stream messages it applied (or passed as dead letters). */
  streamMessages: number;
  /** Their message ids (Nats-Msg-Id), where they have one. */
  messageIds: string[];
}

/** A partition as the batch loop sees it: what the loop needs of it; implemented by its runner (datapath/runner.ts). */
export interface Participant {
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
  /** A parcel (with an id) this partition has applied and committed already. */
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
   * Poison accounting (datapath/poison.ts). A partition's first take of stream messages since it started is recorded
   * in Redis before it is applied (`recordStart()`, which fences or fails the participant itself).
   */
  mustRecordStart?(): boolean;
  recordStart?(): Promise<void>;
  /**
   * The message first in line has failed to commit over several starts: it
   * must be applied in a batch of its own, after `takeAlone()` has recorded the attempt (false: the partition is lost).
   */
  suspect?(): boolean;
  takeAlone?(): Promise<boolean>;
  /** Why the stream message `seq` is to be passed undecoded, as a dead letter; undefined for any other. */
  quarantined?(seq: number): string | undefined;
}
