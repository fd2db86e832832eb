/**
 * The courier carries saga messages between workers, on core NATS, with the sender's committed outbox as the
 * durable copy:
 *
 * - Out: the parcels that the partitions of this worker owe partitions elsewhere leave at the end of the turn, one
 *   message per destination worker (`_saga.<worker>`: every parcel for any partition that worker runs), found with
 *   `locate` (the placement this worker follows). Each parcel is sent again, to wherever its partition is then, until
 *   the receiver acknowledges it: after RESEND_FIRST_MS, doubling up to RESEND_MAX_MS, and at once when its
 *   partition moves. A parcel whose sender has let go of its partition is dropped: the next owner re-sends it.
 * - In: a parcel for a partition this worker runs is handed to it (`onParcel`); its batch loop applies it and, only
 *   once that batch is committed, acknowledges it (`ack`) to the sender's `_saga.<worker>.ack`.
 *
 * So a parcel is applied at least once, and the saga's ledger makes every copy after the first change nothing
 * (docs/architecture.md, "Why duplicates and reordering are safe"). JetStream carries only the clients' commands.
 */
import type { NatsConnection, Subscription } from 'nats';
import { KINDS, type Kind } from '../config.js';
import { decode, encode } from '../codec.js';
import { faultLog, type Fault } from '../faults.js';
import type { Log } from '../log.js';
import type { Names } from '../protocol.js';
import type { Mux } from '../transport/mux.js';

/** A saga message for a partition elsewhere: its kind and number, an id unique to the sending batch, its commands (msgpack array). */
export type Parcel = [kind: Kind, partition: number, id: string, commands: Uint8Array];

/** First wait for an acknowledgement before a parcel is sent again; it doubles up to RESEND_MAX_MS. */
const RESEND_FIRST_MS = 1000;
const RESEND_MAX_MS = 8000;
/** How often parcels are looked at for a resend. */
const SWEEP_INTERVAL_MS = 100;
/** Most bytes of parcels in one message (NATS's max_payload is 1 MiB; one parcel is at most PARCEL_BYTES_MAX). */
const MESSAGE_BYTES_MAX = 512 * 1024;

interface Entry {
  /** Parcels not yet acknowledged. */
  left: number;
  abandoned: () => boolean;
  done(arrived: boolean): void;
}

interface Pending {
  parcel: Parcel;
  entry: Entry;
  attempts: number;
  /** When to send it (again), in Date.now() ms. */
  dueAt: number;
  /** In this turn's outgoing messages already. */
  queued: boolean;
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
  /** A parcel for a partition of this worker; `ackTo` is where to acknowledge it once committed. */
  onParcel(kind: Kind, partition: number, id: string, commands: Uint8Array, ackTo: string): void;
  log: Log;
}

export class Courier {
  private readonly pending = new Map<string, Pending>();
  /** Parcels to send at the end of this turn, by destination worker. */
  private readonly outgoing = new Map<string, Pending[]>();
  /** Acknowledgements to send at the end of this turn, by subject. */
  private readonly acks = new Map<string, string[]>();
  private readonly subs: Subscription[];
  private readonly sweep: NodeJS.Timeout;
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
      o.nc.subscribe(this.ackSubject, { callback: (err, msg) => (err ? undefined : this.acknowledged(msg.data)) }),
      o.nc.subscribe(up, { callback: (err, msg) => (err ? undefined : this.resendTo(msg.subject.slice(o.names.saga('').length, -'.up'.length))) }),
    ];
    o.mux.onFlush(() => this.flush());
    this.sweep = setInterval(() => this.resendDue(Date.now()), SWEEP_INTERVAL_MS);
    this.sweep.unref();
  }

  /** Sends an entry's parcels; resolves true once every one is acknowledged, false if the sender let go first. */
  deliver(parcels: readonly Parcel[], abandoned: () => boolean): Promise<boolean> {
    return new Promise((done) => {
      const entry: Entry = { left: parcels.length, abandoned, done };
      const now = Date.now();
      for (const parcel of parcels) {
        const id = parcel[2];
        const before = this.pending.get(id);
        if (before) this.forget(before, false); // the same parcel from an owner that let go: this one carries it now
        const p: Pending = { parcel, entry, attempts: 0, dueAt: now, queued: false };
        this.pending.set(id, p);
        this.send(p, now);
      }
    });
  }

  /** Acknowledges parcels that a committed batch applied. */
  ack(to: string, ids: readonly string[]): void {
    if (!this.ackPattern.test(to)) return this.bad('a parcel whose acknowledgement subject is not a worker\'s', { to: to.slice(0, 80) });
    let list = this.acks.get(to);
    if (!list) this.acks.set(to, (list = []));
    list.push(...ids);
    this.schedule();
  }

  /** A partition moved: what waits for it goes to its new place now rather than at its next retry. */
  moved(kind: Kind, partition: number): void {
    const now = Date.now();
    for (const p of this.pending.values()) {
      if (p.parcel[0] === kind && p.parcel[1] === partition) this.send(p, now);
    }
  }

  /**
   * Tells every worker that this one has taken partitions: what they owe them goes now, not at its next retry (a
   * worker restarted under the same id, as with static placement, drops what reached it before it ran).
   */
  announce(): void {
    this.o.mux.publish(`${this.o.names.saga(this.o.self)}.up`, new Uint8Array(0));
  }

  /**
   * This worker's connection moved to another server: parcels and acknowledgements sent or due meanwhile may be
   * lost. Everything unacknowledged goes now, and the other workers are told to send what they owe this one now.
   */
  reconnected(): void {
    if (this.closed) return;
    const now = Date.now();
    for (const p of this.pending.values()) this.send(p, now);
    this.announce();
  }

  private resendTo(worker: string): void {
    const now = Date.now();
    for (const p of this.pending.values()) if (this.o.locate(p.parcel[0], p.parcel[1]) === worker) this.send(p, now);
  }

  /** Parcels waiting for an acknowledgement. */
  inFlight(): number {
    return this.pending.size;
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweep);
    for (const s of this.subs) s.unsubscribe();
    for (const p of [...this.pending.values()]) this.forget(p, false);
  }

  private send(p: Pending, now: number): void {
    p.dueAt = now + Math.min(RESEND_MAX_MS, RESEND_FIRST_MS * 2 ** p.attempts);
    p.attempts++;
    const worker = this.o.locate(p.parcel[0], p.parcel[1]);
    if (worker === undefined || p.queued) return; // nobody runs it now: tried again when it moves or at dueAt
    p.queued = true;
    let list = this.outgoing.get(worker);
    if (!list) this.outgoing.set(worker, (list = []));
    list.push(p);
    this.schedule();
  }

  private schedule(): void {
    this.o.mux.requestFlush();
  }

  /** One message per destination worker (more only past MESSAGE_BYTES_MAX), and one per acknowledgement subject: run by the mux's flush. */
  private flush(): void {
    if (this.closed) return;
    const { mux, names } = this.o;
    for (const [worker, list] of this.outgoing) {
      let items: unknown[] = [this.ackSubject];
      let bytes = 0;
      for (const p of list) {
        p.queued = false;
        if (this.pending.get(p.parcel[2]) !== p) continue; // acknowledged meanwhile
        if (bytes > 0 && bytes + p.parcel[3].length > MESSAGE_BYTES_MAX) {
          mux.publish(names.saga(worker), encode(items));
          items = [this.ackSubject];
          bytes = 0;
        }
        items.push(...p.parcel);
        bytes += p.parcel[3].length;
      }
      if (items.length > 1) mux.publish(names.saga(worker), encode(items));
    }
    this.outgoing.clear();
    for (const [to, ids] of this.acks) mux.publish(to, encode(ids));
    this.acks.clear();
  }

  private resendDue(now: number): void {
    for (const p of this.pending.values()) {
      if (p.dueAt > now) continue;
      if (p.entry.abandoned()) this.forget(p, false);
      else this.send(p, now);
    }
  }

  /** Drops a parcel; its entry is done when its last parcel is acknowledged, or not done (false) once one is dropped. */
  private forget(p: Pending, acknowledged: boolean): void {
    if (this.pending.get(p.parcel[2]) === p) this.pending.delete(p.parcel[2]);
    if (acknowledged) {
      if (--p.entry.left === 0) p.entry.done(true);
      return;
    }
    if (p.entry.left > 0) {
      p.entry.left = -1; // done(false) once, whatever happens to its other parcels
      p.entry.done(false);
    }
  }

  private acknowledged(data: Uint8Array): void {
    let ids: unknown;
    try {
      ids = decode(data);
    } catch {
      return this.bad('undecodable acknowledgement');
    }
    if (!Array.isArray(ids)) return this.bad('acknowledgement that is not a list of ids');
    for (const id of ids) {
      const p = typeof id === 'string' ? this.pending.get(id) : undefined;
      if (p) this.forget(p, true);
    }
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
