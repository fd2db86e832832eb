/**
 * One partition's share of a batch (datapath/batch-loop.ts): its draft over the committed state, what it took from
 * the partition's queues, and everything its commands caused (replies, commands for elsewhere, dead letters,
 * decided sagas) until the batch commits. In memory only.
 */
import type { Actor, Outgoing, ReplyTo } from '../actors/types.js';
import type { Kind } from '../config.js';
import { ID_MAX_CHARS } from '../protocol.js';
import { Draft } from './draft.js';
import type { Box } from './local-delivery.js';
import type { DeadLetter } from './outbox.js';
import { participantKey } from '../partitioning.js';
import type { Inbound, Participant, Taken } from './participant.js';
import type { DeadLetterReason } from './runner-metrics.js';

/** Commands a share sends to one partition elsewhere, in order. */
export interface Sends {
  kind: Kind;
  partition: number;
  cmds: unknown[];
}

/** Adds a command to the commands for its target partition (keyed `kind.partition`), after those made before it. */
export function addSend(sends: Map<string, Sends>, out: Outgoing): void {
  const k = participantKey(out.kind, out.partition);
  let target = sends.get(k);
  if (!target) sends.set(k, (target = { kind: out.kind, partition: out.partition, cmds: [] }));
  target.cmds.push(out.cmd);
}

export class Share implements Box {
  readonly draft: Draft;
  readonly taken: Taken = { stream: [], parcels: [] };
  /** Last stream sequence applied (the cursor after the batch). */
  last: number;
  /** The partition's local count after the batch: commands delivered from within the worker number -1, -2, ... */
  local: number;
  applied = 0;
  readonly replies: [ReplyTo, Uint8Array][] = [];
  /** Commands for partitions elsewhere, per target, in order. */
  readonly sends = new Map<string, Sends>();
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
    readonly participant: Participant,
    private below?: Share,
  ) {
    this.draft = new Draft(participant.live, below?.draft);
    this.last = this.fromCursor = below ? below.last : participant.cursor;
    this.local = this.fromLocal = below ? below.local : participant.local;
  }

  get kind(): Kind {
    return this.participant.kind;
  }
  get partition(): number {
    return this.participant.partition;
  }
  get actor(): Actor<unknown, unknown> {
    return this.participant.actor;
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

  /** A message or command passed as a dead letter; `cmd`, where there is one, may name the order it was about. */
  deadLetter(seq: number, reason: DeadLetterReason, detail: string, data: Uint8Array, cmd?: unknown): void {
    const d: DeadLetter = { seq, reason, detail, data };
    this.dead.push(d);
    const order = orderOf(this.kind, cmd);
    if (order !== undefined) this.deadOrders.set(d, order);
  }
  /** Drops the dead letters recorded since there were `count` (a command that threw is replaced by one). */
  dropDeadSince(count: number): void {
    for (const d of this.dead.splice(count)) this.deadOrders.delete(d);
  }
  /** A command for a partition elsewhere. */
  send(out: Outgoing): void {
    addSend(this.sends, out);
  }
  /** A saga this share decided: '' for paid, else the refusal's code. */
  decided(code: string): void {
    this.outcomes.set(code, (this.outcomes.get(code) ?? 0) + 1);
  }
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
