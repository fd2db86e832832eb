/**
 * Which worker runs each partition, as a gateway learns it from the workers' pulses (their heartbeats on core NATS,
 * placement/heartbeats.ts): what lets it send one stream message per owning worker and turn instead of one per
 * partition (bundles.ts). A hint, never a promise: a command carried to a worker that no longer runs its partition
 * is answered `elsewhere` there, having changed nothing, and the gateway sends it to the partition itself.
 */
import type { NatsConnection } from 'nats';
import type { Kind } from '../config.js';
import type { Fault } from '../faults.js';
import { decodeHeartbeat, type Heartbeat } from '../heartbeat.js';

/**
 * The claims of the pulses heard so far: per partition, the worker that last said it runs it (serving, not
 * draining, and applying carried commands where they belong: `carries`), at which epoch. A claim at an older epoch than the one held does not replace it; a worker's pulse that
 * no longer lists a partition drops its claim; a claim counts while its worker's last pulse is younger than
 * `freshMs` (the workers' lease).
 */
export class OwnerClaims {
  private readonly claims = new Map<string, { worker: string; epoch: number }>();
  /** Per worker: when its last pulse came, and the partitions it claimed in it. */
  private readonly workers = new Map<string, { at: number; held: string[] }>();

  constructor(private readonly freshMs: number) {}

  heard(hb: Heartbeat, now: number): void {
    const held: string[] = [];
    // A worker leaving, or one that would not apply a carried command where it belongs (an older version), claims
    // nothing; nor does a partition held but not serving: commands go to the partition itself.
    const claiming = !hb.draining && hb.carries === true;
    for (const h of hb.held) {
      if (!claiming || h.t !== undefined) continue;
      const key = `${h.k}.${h.p}`;
      const claim = this.claims.get(key);
      if (claim && claim.worker !== hb.id && claim.epoch > h.e) continue; // a newer owner claimed it already
      this.claims.set(key, { worker: hb.id, epoch: h.e });
      held.push(key);
    }
    const before = this.workers.get(hb.id);
    this.workers.set(hb.id, { at: now, held });
    if (!before) return;
    const kept = new Set(held);
    for (const key of before.held) if (!kept.has(key) && this.claims.get(key)?.worker === hb.id) this.claims.delete(key);
  }

  of(kind: Kind, partition: number, now: number): string | undefined {
    const claim = this.claims.get(`${kind}.${partition}`);
    if (!claim) return undefined;
    const at = this.workers.get(claim.worker)?.at;
    return at !== undefined && now - at < this.freshMs ? claim.worker : undefined;
  }

  /** A command carried to `worker` for this partition came back `elsewhere`: that claim is forgotten. */
  forget(kind: Kind, partition: number, worker: string): void {
    const key = `${kind}.${partition}`;
    if (this.claims.get(key)?.worker === worker) this.claims.delete(key);
  }
}

export interface Owners {
  /** The worker that runs the partition by the pulses, or undefined. */
  of(kind: Kind, partition: number): string | undefined;
  forget(kind: Kind, partition: number, worker: string): void;
  close(): void;
}

/** The claims of the pulses on `subject` (every worker's); a pulse that is not a heartbeat is reported and ignored. */
export function watchOwners({ nc, subject, freshMs, fault }: { nc: NatsConnection; subject: string; freshMs: number; fault: Fault }): Owners {
  const claims = new OwnerClaims(freshMs);
  const sub = nc.subscribe(subject, {
    callback: (err, msg) => {
      const hb = err ? undefined : decodeHeartbeat(msg.data, fault, msg.subject);
      if (hb) claims.heard(hb, Date.now());
    },
  });
  return {
    of: (kind, partition) => claims.of(kind, partition, Date.now()),
    forget: (kind, partition, worker) => claims.forget(kind, partition, worker),
    close: () => sub.unsubscribe(),
  };
}
