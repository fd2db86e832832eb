/**
 * Applying one batch, without I/O: takes the queued messages of the participants in turn, within the batch's budget,
 * checks each at the boundary and applies it through the in-memory delivery (datapath/local-delivery.ts) into the
 * partitions' shares (datapath/batch-share.ts). What cannot be applied becomes a dead letter of its share.
 */
import { checkCommand, describe, type Door } from '../actors/commands.js';
import type { Outgoing, ReplyTo } from '../actors/types.js';
import { decode, encode } from '../codec.js';
import type { Config, Kind } from '../config.js';
import { faultLog, type Fault } from '../faults.js';
import { BATCH_INIT_CHUNK } from '../partitioning.js';
import { BUNDLE_MAX, MSG_ID_HEADER, STREAM_MESSAGE_BYTES_MAX, fail, type Reply } from '../protocol.js';
import type { Share } from './batch-share.js';
import { Delivery, type Sink } from './local-delivery.js';
import type { Inbound, Participant, StreamMessage } from './participant.js';
import type { DeadLetterReason } from './runner-metrics.js';

/**
 * A batch ends early once it changes this many keys, or has applied commands for this long, and the loop lets the
 * event loop turn before the next one: a long stretch of synchronous work would delay the worker's heartbeats (and
 * so cost it its lease), its replies and its reads.
 */
const BATCH_KEYS_MAX = 5_000;
const BATCH_SLICE_MS = 10;
/** Longest reply subject a client command may name. */
const REPLY_SUBJECT_MAX_CHARS = 256;

/** With faultKillAfter 'poison', a client command about this id kills the worker (the poison tests). */
export const FAULT_POISON_ID = 'fault-poison';

/** Most bytes of a message kept in a dead letter when it is stored as it arrived (a command that threw). */
const DEAD_LETTER_RAW_BYTES_MAX = 64 * 1024;

/** What was thrown, as text, whatever it is (an object without a prototype has no toString). */
function errorText(err: unknown): string {
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

/**
 * The share of a partition this worker runs and that takes commands now; undefined for any other, and (`joined`)
 * for one that has no share in the batch yet.
 */
type Route = (kind: Kind, partition: number, joined?: boolean) => Share | undefined;

export class BatchApplier {
  /** Where the next batch starts taking messages (round robin over the participants). */
  private next = 0;
  /** Per participant, the log of the second copies it passes (copies()). */
  private readonly copyLogs = new WeakMap<Participant, Fault>();

  constructor(
    private readonly config: Config,
    /** The reply inboxes' subject prefix: the only subjects a client command may name for its reply. */
    private readonly replyPrefix: string,
    /** BATCH_SLICE_MS (tests that check what one batch holds give a longer one: a loaded machine cut it early). */
    private readonly sliceMs = BATCH_SLICE_MS,
  ) {}

  /**
   * Applies one batch into `shares`, taking from each of `takers` in turn; `shareOf` finds or makes a participant's
   * share (adding it to `shares`, so that if this throws the loop still knows every participant it involved), and
   * `local` finds the participant of a partition this worker runs, for the commands applied within the batch.
   * `alone`: the first stream message of the one taker, in a batch of its own (poison accounting).
   */
  apply(
    takers: Participant[],
    shares: ReadonlyMap<Participant, Share>,
    shareOf: (participant: Participant) => Share,
    local: (kind: Kind, partition: number) => Participant | undefined,
    alone: boolean,
  ): void {
    const { config } = this;
    const began = performance.now();
    // The share of a partition this worker runs and that takes commands now, for a command applied within the batch.
    const route: Route = (kind, partition, joined) => {
      const target = local(kind, partition);
      if (!target?.accepts() || (joined && !shares.has(target))) return undefined;
      return shareOf(target);
    };
    const delivery = new Delivery<Share>(config.partitions, route, this.sink);
    let applied = 0;
    let keysCheckedAt = 0;
    const full = () => {
      if (applied === 0) return false;
      if (performance.now() - began >= this.sliceMs) return true;
      if (applied - keysCheckedAt < 64) return false; // summing the drafts' sizes on every message costs more than it saves
      keysCheckedAt = applied;
      let keys = 0;
      for (const p of shares.values()) keys += p.draft.size;
      return keys >= BATCH_KEYS_MAX;
    };
    const start = this.next++ % takers.length;
    for (let n = 0; n < takers.length && !full(); n++) {
      const participant = takers[(start + n) % takers.length]!;
      const p = shareOf(participant);
      const taken = participant.take(alone ? 1 : config.batchMax);
      if (alone && taken.parcels.length > 0) {
        participant.giveBack({ stream: [], parcels: taken.parcels });
        taken.parcels = [];
      }
      let s = 0;
      for (; s < taken.stream.length && !full(); s++) applied += this.applyStream(delivery, route, p, taken.stream[s]!);
      let q = 0;
      for (; q < taken.parcels.length && !full(); q++) applied += this.applyParcel(delivery, p, taken.parcels[q]!);
      p.taken.stream.push(...(s === taken.stream.length ? taken.stream : taken.stream.slice(0, s)));
      p.taken.parcels.push(...(q === taken.parcels.length ? taken.parcels : taken.parcels.slice(0, q)));
      if (s < taken.stream.length || q < taken.parcels.length) participant.giveBack({ stream: taken.stream.slice(s), parcels: taken.parcels.slice(q) });
    }
  }

  /** One stream message: a client's command, or a bundle of them. Returns the commands applied (dead letters count). */
  private applyStream(delivery: Delivery<Share>, route: Route, share: Share, m: StreamMessage): number {
    // A message read again under a sequence at or below the cursor (resequence.ts): applied without moving the cursor,
    // its commands numbered from the local count like a parcel's (their stream sequences were those of others).
    const again = m.resequenced === true;
    if (!again) {
      if (m.seq <= share.fromCursor) return 0; // already applied (a consumer reset can re-deliver)
      share.last = m.seq;
    }
    const base = m.seq * BUNDLE_MAX;
    const seqOf = (e: number) => (again ? share.nextLocal() : base + e);
    const wholeSeq = () => seqOf(0); // a dead letter of the whole message
    const quarantined = again ? undefined : share.participant.quarantined?.(m.seq);
    if (quarantined !== undefined) {
      share.deadLetter(base, 'quarantined', quarantined, m.data.subarray(0, DEAD_LETTER_RAW_BYTES_MAX));
      return 1;
    }
    // A second copy of a message in the stream: nats-server 2.9 does not de-duplicate deterministically across a
    // stream leader change, so a command can be stored twice. Passed, with the cursor moving over it.
    const id = m.headers?.get(MSG_ID_HEADER);
    if (id) {
      if (share.participant.seenMessage(id) || share.hasMessage(id)) {
        this.copies(share, m.seq, id);
        return 0;
      }
      share.addMessage(id);
    }
    let message: unknown;
    try {
      message = decode(m.data, STREAM_MESSAGE_BYTES_MAX);
    } catch (err) {
      share.deadLetter(wholeSeq(), 'undecodable', (err as Error).message, m.data);
      return 1;
    }
    const envelopes = Array.isArray(message) ? message : [message];
    if (envelopes.length === 0) {
      share.deadLetter(wholeSeq(), 'invalid', 'an empty bundle: not one command', m.data);
      return 1;
    }
    if (envelopes.length > BUNDLE_MAX) {
      share.deadLetter(wholeSeq(), 'oversized', `a bundle of ${envelopes.length} commands is over BUNDLE_MAX (${BUNDLE_MAX})`, m.data);
      return 1;
    }
    for (let e = 0; e < envelopes.length; e++) {
      const seq = seqOf(e);
      const deadBefore = share.dead.length;
      try {
        this.applyEnvelope(delivery, route, share, envelopes[e], seq, envelopes.length > 1);
      } catch (err) {
        // Isolation: whatever one command does, it is one dead letter and the batch goes on (issue 19).
        this.poisoned(share, seq, 'while being checked or applied', err, deadBefore, m.data);
      }
      share.applied++;
    }
    return envelopes.length;
  }

  private applyEnvelope(delivery: Delivery<Share>, route: Route, share: Share, value: unknown, seq: number, inBundle: boolean): void {
    const envelope = value as { c?: unknown; r?: unknown; p?: unknown } | null;
    const replyTo = typeof envelope === 'object' && envelope !== null ? envelope.r : undefined;
    if (typeof envelope !== 'object' || envelope === null || Array.isArray(envelope) || !('c' in envelope)) {
      share.deadLetter(seq, 'invalid', 'not a command envelope {c, r?, p?}', copyOf(envelope));
    } else if (replyTo !== undefined && !this.replySubject(replyTo)) {
      share.deadLetter(seq, 'invalid', `reply subject ${describe(replyTo)} is not a reply inbox`, copyOf(envelope));
    } else if (envelope.p !== undefined && !(Number.isSafeInteger(envelope.p) && (envelope.p as number) >= 0 && (envelope.p as number) < this.config.partitions)) {
      this.refuse(share, seq, 'invalid', `partition ${describe(envelope.p)} is not one of the ${this.config.partitions} partitions of ${share.kind}`, envelope, replyTo as string | undefined);
    } else if (!this.check(share, 'client', envelope.c, seq, envelope, replyTo as string | undefined)) {
      // refused: a dead letter already
    } else if (inBundle && (envelope.c as { k: string }).k === 'batchInit') {
      // The key budget of a batch: a batchInit writes up to BATCH_INIT_CHUNK keys, and a batch is cut only between
      // messages, so one bundle of them would be one batch of millions of keys (seconds without a heartbeat).
      const detail = `a batchInit travels alone in its stream message (it writes up to ${BATCH_INIT_CHUNK} keys); this one came in a bundle of several commands`;
      this.refuse(share, seq, 'oversized', detail, envelope, replyTo as string | undefined, envelope.c);
    } else {
      if (this.config.faultKillAfter === 'poison' && (envelope.c as { id?: unknown }).id === FAULT_POISON_ID) process.kill(process.pid, 'SIGKILL');
      if (envelope.p === undefined || envelope.p === share.partition) delivery.deliver(share, envelope.c, seq, replyTo as string | undefined);
      else this.forward(delivery, route, share, seq, envelope.p as number, envelope.c, replyTo as string | undefined);
    }
  }

  /**
   * A command for another partition of the kind, travelling in this one's stream message (a gateway's bundle per
   * owning worker, transport/bundles.ts). When this worker runs that partition it is applied there, in this batch
   * (one transaction with the carrier's cursor: exactly once), numbered from that partition's local count (the
   * stream sequence is the carrier's, and the carrier may apply the message again under another); else it is
   * answered `elsewhere` and changes nothing: the gateway sends it to the partition's own subject.
   */
  private forward(delivery: Delivery<Share>, route: Route, share: Share, seq: number, partition: number, cmd: unknown, replyTo: string | undefined): void {
    const target = route(share.kind, partition);
    if (target) return delivery.deliver(target, cmd, target.nextLocal(), replyTo);
    const detail = `${share.kind}.${partition} is not served by this worker now`;
    if (replyTo !== undefined) share.replies.push([replyTo, encode(fail('elsewhere', detail))]);
    // Nobody waits to send it to its partition (a gateway always names a reply subject): kept as a dead letter.
    else share.deadLetter(seq, 'invalid', `${detail}, and the command names no reply subject to say so`, copyOf({ c: cmd, p: partition }), cmd);
  }

  /**
   * A command that threw out of the checks, the actor's delivery or its own dead-lettering: whatever dead letters it
   * had begun are replaced by one, holding `raw` (the message as it arrived, capped) and why.
   */
  private poisoned(share: Share, seq: number, when: string, err: unknown, deadBefore: number, raw: Uint8Array): void {
    share.dropDeadSince(deadBefore);
    share.deadLetter(seq, 'invalid', `threw ${when}: ${errorText(err)}`, raw.subarray(0, DEAD_LETTER_RAW_BYTES_MAX));
  }

  /** One parcel of saga commands from a partition of another worker. */
  private applyParcel(delivery: Delivery<Share>, share: Share, inbound: Inbound): number {
    if (inbound.id !== '' && share.participant.seen(inbound.id)) {
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
      share.deadLetter(share.nextLocal(), reason, `parcel ${inbound.id}: ${detail}`, inbound.commands);
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
    this.refuse(share, seq, verdict.reason, verdict.detail, original, replyTo, cmd);
    return false;
  }

  /**
   * A command refused at the boundary: one dead letter holding `original` (and naming the order `cmd` is about, where
   * it names one), and its waiter, if any, hears why as `invalid_command`.
   */
  private refuse(share: Share, seq: number, reason: DeadLetterReason, detail: string, original: unknown, replyTo: ReplyTo | undefined, cmd?: unknown): void {
    share.deadLetter(seq, reason, detail, copyOf(original), cmd);
    if (replyTo !== undefined) share.replies.push([replyTo, encode(fail('invalid_command', detail))]);
  }

  /** A reply subject a client command may name: one of the reply inboxes, nothing else a worker may publish to. */
  private replySubject(r: unknown): boolean {
    return typeof r === 'string' && r.length <= REPLY_SUBJECT_MAX_CHARS && r.startsWith(this.replyPrefix) && !/[\s*>]/.test(r);
  }

  /** A second copy of a stream message, passed: said once a minute per partition at most. */
  private copies(share: Share, seq: number, id: string): void {
    let log = this.copyLogs.get(share.participant);
    if (!log) this.copyLogs.set(share.participant, (log = faultLog(share.participant.log)));
    log('a second copy of a stream message it applied (passed; JetStream stored a command twice)', { seq, id });
  }

  /** Where delivered commands' effects go: into the shares of the batch. */
  private readonly sink: Sink<Share> = {
    reply: (share, to, reply) => void share.replies.push([to, encode(reply)]),
    decided: (share, outcome) => share.decided(outcome.ok ? '' : outcome.code),
    send: (share, out: Outgoing) => share.send(out),
    failed: (share, cmd, seq, replyTo, err) => {
      share.deadLetter(seq, 'invariant', errorText(err), copyOf(cmd), cmd);
      if (replyTo !== undefined) share.replies.push([replyTo, encode(fail('internal', `command ${seq} at ${share.kind}.${share.partition} broke an invariant`) satisfies Reply)]);
    },
  };
}
