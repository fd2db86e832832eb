/**
 * The courier carries saga messages between workers, on core NATS, and nothing stores or acknowledges them:
 *
 * - Out: the parcels that the partitions of this worker send partitions elsewhere leave at the end of the turn, one
 *   message per destination worker (`_saga.<worker>`: every parcel for any partition that worker runs), found with
 *   `locate` (the placement this worker follows). A parcel for a partition nobody runs now is dropped.
 * - In: a parcel for a partition this worker runs is handed to it (`onParcel`) and applied with its next batch.
 * - Later: commands that may wait (a coordinator's forgets, the actor's `deferrable`) are kept per partition and go
 *   with the next parcel for it, or at the next sweep, many merged into one (datapath/later.ts).
 * - Again: what a partition's committed state still owes (a running saga's holds and releases, a ledger's answers) is
 *   sent again by its reminders (datapath/reminders.ts), which the courier sweeps every SWEEP_INTERVAL_MS and hurries:
 *   what is owed to a partition that moves, and every running saga's requests when a worker comes up or this
 *   worker's connection moved (what was sent meanwhile may be lost).
 *
 * So a saga message is delivered at least once while its sender's state owes it, and the saga's ledger makes every
 * copy after the first change nothing (docs/architecture.md, "Exactly once, step by step"). JetStream carries only
 * the clients' commands. Parcels from a worker of an older version carry an id and ask to be acknowledged once
 * committed (`ack`): they are, so that such a worker's outbox empties during a rolling upgrade.
 */
import type { NatsConnection, Subscription } from 'nats';
import { KINDS, type Kind } from '../config.js';
import { decode, encode } from '../codec.js';
import { faultLog, type Fault } from '../faults.js';
import type { Log } from '../log.js';
import { participantKey } from '../partitioning.js';
import type { Names } from '../protocol.js';
import type { Mux } from '../transport/mux.js';
import type { Outgoing } from '../actors/types.js';

/** A saga message for a partition elsewhere: its kind and number, an id ('' : none, not acknowledged), its commands (msgpack array). */
export type Parcel = [kind: Kind, partition: number, id: string, commands: Uint8Array];

/** How often the partitions' reminders are looked at. */
const SWEEP_INTERVAL_MS = 100;
/** Most bytes of parcels in one message (NATS's max_payload is 1 MiB; one parcel is at most PARCEL_BYTES_MAX). */
const MESSAGE_BYTES_MAX = 512 * 1024;

/** What a partition's state still owes elsewhere, sent again when due (datapath/reminders.ts). */
export interface Reminding {
  /** Sends what is due, and what is owed to any of the partitions that `moved` (participantKey) whenever due. */
  remind(now: number, moved?: ReadonlySet<string>): void;
  /** Everything it owes goes at the next sweep (a coordinator's; others keep their time). */
  soon(): void;
}

/** Where the courier keeps commands that may leave late, per partition (datapath/later.ts's Later). */
export interface Keeper {
  readonly size: number;
  add(out: readonly Outgoing[], merge: ((cmds: unknown[]) => unknown[]) | undefined): void;
  take(kind: Kind, partition: number): Parcel[];
  takeAll(): Parcel[];
}

export interface CourierOptions {
  nc: NatsConnection;
  /** Publishes coalesced per event-loop turn. */
  mux: Mux;
  names: Names;
  /** This worker's id: it takes parcels on `names.saga(self)`. */
  self: string;
  /** The worker that runs a partition now, as far as this worker knows, or undefined. */
  locate(kind: Kind, partition: number): string | undefined;
  /** A parcel for a partition of this worker; `ackTo` is where to acknowledge it once committed, when it has an id. */
  onParcel(kind: Kind, partition: number, id: string, commands: Uint8Array, ackTo: string): void;
  /** Keeps the commands that may leave late (`later`). */
  kept: Keeper;
  log: Log;
}

export class Courier {
  /** Parcels to send at the end of this turn, by destination worker. */
  private readonly outgoing = new Map<string, Parcel[]>();
  /** Acknowledgements to send at the end of this turn, by subject (parcels of older workers). */
  private readonly acks = new Map<string, string[]>();
  private readonly reminding = new Set<Reminding>();
  /** Partitions that moved since the last sweep (`kind.partition`): what is owed to them goes at the next one. */
  private readonly movedSince = new Set<string>();
  private readonly subs: Subscription[];
  private readonly sweep: NodeJS.Timeout;
  /** Where an older worker would acknowledge this one's parcels: named in every message, listened to by nobody. */
  private readonly ackSubject: string;
  private readonly ackPattern: RegExp;
  /** Bad input from the bus is logged, once a minute per kind of fault at most, and otherwise ignored. */
  private readonly bad: Fault;
  private closed = false;

  constructor(private readonly o: CourierOptions) {
    this.bad = faultLog(o.log);
    this.ackSubject = o.names.sagaAck(o.self);
    // Acknowledgements go only to another worker's acknowledgement subject, whatever a message claims.
    const saga = o.names.saga('');
    this.ackPattern = new RegExp(`^${saga.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[^.*>\\s]+\\.ack$`);
    const up = o.names.saga('*') + '.up';
    this.subs = [
      o.nc.subscribe(o.names.saga(o.self), { callback: (err, msg) => (err ? undefined : this.receive(msg.data)) }),
      o.nc.subscribe(up, { callback: (err) => (err ? undefined : this.hurry()) }),
    ];
    o.mux.onFlush(() => this.flush());
    this.sweep = setInterval(() => this.remindAll(Date.now()), SWEEP_INTERVAL_MS);
    this.sweep.unref();
  }

  /** Sends parcels with this turn's messages; one for a partition nobody runs now is dropped (its sender's state re-sends it). */
  post(parcels: readonly Parcel[]): void {
    if (this.closed) return;
    for (const parcel of parcels) {
      const worker = this.o.locate(parcel[0], parcel[1]);
      if (worker === undefined) continue;
      let list = this.outgoing.get(worker);
      if (!list) this.outgoing.set(worker, (list = []));
      list.push(parcel);
    }
    this.o.mux.requestFlush();
  }

  /**
   * Commands of a committed batch that may leave late (the actor's `deferrable`), merged with `merge`: they go with
   * the next parcel for their partition, or at the next sweep (datapath/later.ts).
   */
  later(out: readonly Outgoing[], merge: ((cmds: unknown[]) => unknown[]) | undefined): void {
    if (this.closed) return;
    this.o.kept.add(out, merge);
  }

  /** Acknowledges parcels of an older worker that a committed batch applied. */
  ack(to: string, ids: readonly string[]): void {
    if (!this.ackPattern.test(to)) return this.bad('a parcel whose acknowledgement subject is not a worker\'s', { to: to.slice(0, 80) });
    let list = this.acks.get(to);
    if (!list) this.acks.set(to, (list = []));
    list.push(...ids);
    this.o.mux.requestFlush();
  }

  /** A partition's reminders, swept while it runs here. */
  track(r: Reminding): void {
    this.reminding.add(r);
  }

  untrack(r: Reminding): void {
    this.reminding.delete(r);
  }

  /**
   * A partition moved, or its new owner now runs it: what this worker's partitions owe it goes at the next sweep
   * rather than when next due (a participant's answer sent to the old owner was lost, for one).
   */
  moved(kind: Kind, partition: number): void {
    this.movedSince.add(participantKey(kind, partition));
  }

  /**
   * Tells every worker that this one has taken partitions: what they owe them goes now, not when next due (a worker
   * restarted under the same id, as with static placement, drops what reached it before it ran).
   */
  announce(): void {
    this.o.mux.publish(`${this.o.names.saga(this.o.self)}.up`, new Uint8Array(0));
  }

  /**
   * This worker's connection moved to another server: parcels sent meanwhile may be lost. Everything this worker's
   * partitions owe goes now, and the other workers are told to send what they owe this one now.
   */
  reconnected(): void {
    if (this.closed) return;
    this.hurry();
    this.announce();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweep);
    for (const s of this.subs) s.unsubscribe();
    this.reminding.clear();
  }

  private hurry(): void {
    for (const r of this.reminding) r.soon();
  }

  private remindAll(now: number): void {
    if (this.o.kept.size > 0) this.post(this.o.kept.takeAll());
    // A failover moves many partitions at once: what is owed to any of them is looked for once per sweep.
    const moved = this.movedSince.size > 0 ? new Set(this.movedSince) : undefined;
    this.movedSince.clear();
    for (const r of this.reminding) {
      try {
        r.remind(now, moved);
      } catch (err) {
        this.o.log.error('sending what a partition owes failed', { err });
      }
    }
  }

  /** One message per destination worker (more only past MESSAGE_BYTES_MAX), and one per acknowledgement subject: run by the mux's flush. */
  private flush(): void {
    if (this.closed) return;
    const { mux, names } = this.o;
    if (this.o.kept.size > 0) {
      // What is kept for a partition that a parcel goes to now goes along with it.
      for (const list of this.outgoing.values()) {
        const sent = list.length;
        for (let i = 0; i < sent; i++) list.push(...this.o.kept.take(list[i]![0], list[i]![1]));
      }
    }
    for (const [worker, list] of this.outgoing) {
      let items: unknown[] = [this.ackSubject];
      let bytes = 0;
      for (const parcel of list) {
        if (bytes > 0 && bytes + parcel[3].length > MESSAGE_BYTES_MAX) {
          mux.publish(names.saga(worker), encode(items));
          items = [this.ackSubject];
          bytes = 0;
        }
        items.push(...parcel);
        bytes += parcel[3].length;
      }
      if (items.length > 1) mux.publish(names.saga(worker), encode(items));
    }
    this.outgoing.clear();
    for (const [to, ids] of this.acks) mux.publish(to, encode(ids));
    this.acks.clear();
  }

  /** `[ackTo, kind, partition, id, commands, kind, partition, id, commands, ...]` */
  private receive(data: Uint8Array): void {
    let items: unknown;
    try {
      items = decode(data);
    } catch {
      return this.bad('undecodable saga message');
    }
    if (!Array.isArray(items) || typeof items[0] !== 'string' || (items.length - 1) % 4 !== 0) return this.bad('saga message of the wrong shape');
    const ackTo = items[0];
    for (let i = 1; i < items.length; i += 4) {
      const [kind, partition, id, commands] = [items[i], items[i + 1], items[i + 2], items[i + 3]];
      if (!(KINDS as readonly unknown[]).includes(kind) || !Number.isInteger(partition) || typeof id !== 'string' || !(commands instanceof Uint8Array)) {
        this.bad('parcel of the wrong shape');
        continue;
      }
      try {
        this.o.onParcel(kind as Kind, partition as number, id, commands, ackTo);
      } catch (err) {
        this.o.log.error('taking a parcel failed', { kind, partition, id, err });
      }
    }
  }
}
