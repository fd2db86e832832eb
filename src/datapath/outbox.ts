/**
 * The outbox: what a committed batch of one partition still owes the world, stored with the batch in Redis under
 * the field `<cursor>.<local count>`, sent after the commit, and deleted once it has all arrived.
 *
 * - replies: answers to waiting clients, on core NATS (fire and forget: a lost one is the client's deadline);
 * - dead letters: copies of messages the partition could not apply, for the dead-letter stream (JetStream).
 *
 * Saga messages are not in it: the partitions' state sends them again (datapath/reminders.ts). An entry stored by an
 * older version may hold `parcels`: they are sent once, and the state that made them sends them again if need be.
 *
 * An entry is done when every dead letter is stored. Done fields are deleted by the partition's next commit, or after
 * OUTBOX_CLEAR_IDLE_MS without one. A crash before that re-sends the entry from Redis on takeover: JetStream drops
 * dead-letter copies by message id, and a reply sent twice is taken once.
 */
import { headers as natsHeaders, type NatsConnection } from 'nats';
import { setTimeout as delay } from 'node:timers/promises';
import { decode, encode } from '../codec.js';
import type { Log } from '../log.js';
import { DEAD_LETTER_HEADERS, MSG_ID_HEADER } from '../protocol.js';
import type { Courier, Parcel } from './courier.js';
import { ACK_WAIT_MS, pubAck, type Mux } from '../transport/mux.js';

/** A message the partition could not apply, as it goes to the dead-letter stream. */
export interface DeadLetter {
  /** The command's number (stream sequence × BUNDLE_MAX + index, or -n within the worker). */
  seq: number;
  reason: string;
  detail: string;
  /** The message as it arrived (or the refused command, encoded). */
  data: Uint8Array;
}

export interface OutboxEntry {
  /** [subject, data] */
  replies: [string, Uint8Array][];
  /** Saga messages, in entries stored by an older version only. */
  parcels: Parcel[];
  dead: DeadLetter[];
}

export const emptyEntry = (): OutboxEntry => ({ replies: [], parcels: [], dead: [] });
export const owesNothing = (e: OutboxEntry) => e.replies.length === 0 && e.parcels.length === 0 && e.dead.length === 0;
export const encodeEntry = (e: OutboxEntry): Uint8Array => encode(e);
/** Most bytes of one outbox entry read back from Redis (its largest string). */
const OUTBOX_ENTRY_BYTES_MAX = 512 * 1024 * 1024;
export const decodeEntry = (bytes: Uint8Array): OutboxEntry => {
  const e = decode<Partial<OutboxEntry>>(bytes, OUTBOX_ENTRY_BYTES_MAX);
  return { replies: e.replies ?? [], parcels: e.parcels ?? [], dead: e.dead ?? [] };
};

/** Outbox fields are `<cursor>.<local count>` of the batch that wrote them: re-sent in that order. */
export function compareFields(a: string, b: string): number {
  const [ac, al] = a.split('.');
  const [bc, bl] = b.split('.');
  return Number(ac) - Number(bc) || Number(al ?? 0) - Number(bl ?? 0);
}

/** Most bytes of commands in one parcel, well below NATS's max_payload (1 MiB): a longer list is cut into several. */
export const PARCEL_BYTES_MAX = 256 * 1024;

/** The commands for one partition as few parcels as fit PARCEL_BYTES_MAX, in order. */
export function packCommands(cmds: readonly unknown[]): Uint8Array[] {
  const whole = encode(cmds);
  if (whole.length <= PARCEL_BYTES_MAX || cmds.length === 1) return [whole];
  const half = Math.ceil(cmds.length / 2);
  return [...packCommands(cmds.slice(0, half)), ...packCommands(cmds.slice(half))];
}

/**
 * Sent outbox entries are deleted by the partition's next commit; when none comes within this time they are
 * deleted on their own, so an idle partition does not re-send its last batch's messages after a restart.
 */
const OUTBOX_CLEAR_IDLE_MS = 250;


export interface PartitionOutboxDeps {
  /** For dead letters: JetStream publishes, rare, each acknowledged on its own. */
  nc: NatsConnection;
  /** For replies, joined per destination and turn. */
  mux: Mux;
  courier: Courier;
  log: Log;
  /** Dead-letter subject of this partition. */
  deadLetterSubject: string;
  /** `<kind>.<partition>`, for message ids and headers. */
  name: string;
  /** Deletes done fields when no commit comes to take them along. */
  clear(fields: string[]): Promise<void>;
  /** True once this owner has let go for good: what is unsent then stays in Redis for the next owner. */
  abandoned(): boolean;
  retryBackoffMs: number;
  /** An entry is done (every dead letter stored). */
  onDone?(): void;
}

/** The outbox of one partition for one term of ownership. */
export class PartitionOutbox {
  private inflight = 0;
  private waiters: (() => void)[] = [];
  /** Fields whose entry is done; deleted by the next commit, or after OUTBOX_CLEAR_IDLE_MS without one. */
  private done: string[] = [];
  private clearTimer: NodeJS.Timeout | null = null;

  constructor(private readonly deps: PartitionOutboxDeps) {}

  /** Entries sent and not yet done. */
  get pending(): number {
    return this.inflight;
  }

  /** Sends a committed entry; replies (and an older version's parcels) at once, dead letters until stored or this owner lets go. */
  send(field: string, entry: OutboxEntry): void {
    const { mux, courier } = this.deps;
    for (const [subject, data] of entry.replies) mux.reply(subject, data);
    if (entry.parcels.length > 0) courier.post(entry.parcels);
    if (entry.dead.length === 0) return this.finished(field);
    this.inflight++;
    void Promise.all(entry.dead.map((dead) => this.storeDeadLetter(dead))).then((arrived) => {
      this.inflight--;
      if (arrived.every(Boolean)) {
        this.finished(field);
        this.deps.onDone?.();
      }
      for (const wake of this.waiters.splice(0)) wake();
    });
  }

  /** The done fields, for the next commit to delete. */
  takeDone(): string[] {
    const fields = this.done;
    this.done = [];
    return fields;
  }

  /** A commit that was to delete them did not happen. */
  giveBackDone(fields: string[]): void {
    this.done.push(...fields);
  }

  /** Resolves when no entry is in flight any more, or after `maxMs`; true when nothing is left. */
  async drain(maxMs: number): Promise<boolean> {
    const giveUpAt = Date.now() + maxMs;
    while (this.inflight > 0 && Date.now() < giveUpAt) {
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, Math.max(0, giveUpAt - Date.now())).unref();
      });
    }
    return this.inflight === 0;
  }

  close(): void {
    if (this.clearTimer) clearTimeout(this.clearTimer);
    this.clearTimer = null;
    for (const wake of this.waiters.splice(0)) wake();
  }

  private finished(field: string): void {
    this.done.push(field);
    if (this.clearTimer) return;
    this.clearTimer = setTimeout(() => {
      this.clearTimer = null;
      if (this.done.length === 0 || this.deps.abandoned()) return;
      const fields = this.takeDone();
      // Without the epoch check: deleting a done entry is harmless even for an owner that has just been fenced.
      this.deps.clear(fields).catch((err: unknown) => {
        this.deps.log.warn('outbox clear failed; the next commit takes the entries along', { err });
        this.giveBackDone(fields);
      });
    }, OUTBOX_CLEAR_IDLE_MS);
    this.clearTimer.unref();
  }

  /** Publishes a dead letter to its stream until stored (the same message id every time), or this owner lets go. */
  private async storeDeadLetter(dead: DeadLetter): Promise<boolean> {
    const { nc, log, deadLetterSubject, name } = this.deps;
    const h = natsHeaders();
    h.set(MSG_ID_HEADER, `dl.${name}.${dead.seq}`);
    h.set(DEAD_LETTER_HEADERS.partition, name);
    h.set(DEAD_LETTER_HEADERS.seq, String(dead.seq));
    h.set(DEAD_LETTER_HEADERS.reason, dead.reason);
    h.set(DEAD_LETTER_HEADERS.detail, dead.detail.replace(/[\r\n]/g, ' '));
    for (;;) {
      let refusal: string;
      try {
        const ack = pubAck(await nc.request(deadLetterSubject, dead.data, { timeout: ACK_WAIT_MS, headers: h }));
        if (!ack.error) return true;
        refusal = ack.error.description;
      } catch (err) {
        refusal = (err as Error).message; // a timeout, or no stream takes the subject yet
      }
      if (this.deps.abandoned()) return false;
      log.warn('dead letter not stored; retrying', { subject: deadLetterSubject, refusal });
      await delay(this.deps.retryBackoffMs);
    }
  }
}
