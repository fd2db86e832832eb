import type { Kind } from '../config.js';
import type { Reply } from '../protocol.js';

/** Read access to a partition's state: tables of key -> value. */
export interface ReadView {
  get<T>(table: string, key: string): T | undefined;
}

/** Read and write access; writes go to a draft that the runtime commits with the batch. */
export interface StateView extends ReadView {
  set(table: string, key: string, value: unknown): void;
  delete(table: string, key: string): void;
  /** Every entry of a table, as the command sees it. For small tables only (a saga ledger), never the entities. */
  entries<T>(table: string): Iterable<[key: string, value: T]>;
}

export interface ApplyContext {
  /** This partition's number and the kind's partition count. */
  partition: number;
  partitions: number;
  /**
   * The command's number within its partition, unique: for a command read from the stream, positive, increasing
   * and the same on every replay; for a command another partition of the same worker sent within the batch,
   * -1, -2, ... in the order they were applied (committed with the batch, so never given twice).
   */
  seq: number;
  /** Where a waiting gateway expects the outcome, when one waits; an actor may keep it to answer later. */
  replyTo?: ReplyTo;
}

/** A waiting gateway's reply subject. */
export type ReplyTo = string;

/** A command for another partition, published through the outbox after the batch commits. */
export interface Outgoing {
  kind: Kind;
  partition: number;
  cmd: unknown;
}

export interface Effects {
  /** The answer to this command's waiter (if one waits). */
  reply?: Reply;
  /** Answers to waiters kept from earlier commands (a saga that has decided answers every checkout waiting on it). */
  replies?: { to: ReplyTo; reply: Reply }[];
  send?: Outgoing[];
}

/**
 * What a partition's committed state says it owes other partitions, until the state changes: a coordinator's running
 * sagas owe their holds and releases, a participant's ledger owes each saga its answer. The partition's runner sends it
 * again from the committed state (datapath/reminders.ts), so saga messages are neither stored in the outbox nor
 * acknowledged: one that is lost is made again from the state that made it.
 */
export interface Reminders {
  /** The table whose entries owe messages. */
  table: string;
  /** How long after a commit that sent them they are sent again, doubling with each time up to `maxMs`. */
  firstMs: number;
  maxMs: number;
  /** How long after the partition is taken (its state loaded) they are first sent again. */
  startMs: number;
  /**
   * Sent again at once when a partition moves, a worker comes up or the connection moved (what was sent meanwhile may
   * be lost): a coordinator's; a participant's answers wait for their turn, since the coordinator's re-sent holds
   * bring them sooner anyway.
   */
  hurried: boolean;
  /** Whether an entry of this value may owe anything (cheap: checked for every entry a commit changes). */
  owes(value: unknown): boolean;
  /** What this entry owes now: nothing once its saga has moved on. */
  owed(key: string, value: unknown, ctx: { partition: number; partitions: number }): Outgoing[];
}

/**
 * An actor kind: pure logic over its partition's state. No I/O, no clock, no randomness: the
 * same commands on the same state give the same effects, which is what makes replay after a crash exact.
 */
export interface Actor<Cmd = never, Query = never> {
  kind: Kind;
  /** Tables the state is kept in; each is one Redis hash per partition. */
  tables: readonly string[];
  apply(state: StateView, cmd: Cmd, ctx: ApplyContext): Effects;
  query(state: ReadView, query: Query): Reply;
  /**
   * The commands one batch sends to one partition, in the order they were made, before they leave: a chance to
   * merge several into one. The receiver must end in the same state from the result as from the list.
   */
  mergeOutgoing?(cmds: unknown[]): unknown[];
  /**
   * A command that may leave late (a coordinator's forget): the worker keeps it until it sends that partition
   * something else, or its next sweep (datapath/courier.ts), and merges it there with others of the kind, from any
   * batch and any partition of the actor (`mergeOutgoing`). Only for a command whose loss the protocol repairs on its
   * own and whose order relative to the others does not matter; one for a partition of the same worker is applied in
   * the batch only when that partition is in the batch anyway.
   */
  deferrable?(cmd: unknown): boolean;
  /** The saga messages its state owes (order, stock, payment). */
  reminders?: Reminders;
}
