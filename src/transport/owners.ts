/**
 * Which worker runs each partition, as a gateway learns it from the workers' pulses (their heartbeats on core NATS,
 * placement/heartbeats.ts): what lets it send one stream message per owning worker and turn instead of one per
 * partition (bundles.ts). A hint, never a promise: a command carried to a worker that no longer runs its partition
 * is answered `elsewhere` there, having changed nothing, and the gateway sends it to the partition itself.
 */
import type { NatsConnection, Subscription } from 'nats';
import type { Kind } from '../config.js';
import type { Fault } from '../faults.js';
import { decodeHeartbeat } from '../heartbeat.js';

/** One partition's owner by the newest pulses: the worker, at which epoch. */
interface Claim {
  worker: string;
  epoch: number;
}

export interface Owners {
  /** The worker that ran the partition by its last pulse, if that pulse is younger than `freshMs`. */
  of(kind: Kind, partition: number): string | undefined;
  /** A command carried to `worker` for this partition came back `elsewhere`: forget that claim. */
  forget(kind: Kind, partition: number, worker: string): void;
  close(): void;
}

/** `freshMs`: a worker's claims count while its last pulse is younger (the workers' lease). */
export function watchOwners({ nc, subject, freshMs, fault, now = Date.now }: { nc: NatsConnection; subject: string; freshMs: number; fault: Fault; now?: () => number }): Owners {
  const claims = new Map<string, Claim>();
  /** Per worker: when its last pulse came, and the partitions it claimed in it. */
  const workers = new Map<string, { at: number; held: string[] }>();

  function pulse(bytes: Uint8Array): void {
    const hb = decodeHeartbeat(bytes, fault, subject);
    if (!hb) return;
    const held: string[] = [];
    for (const h of hb.held) {
      if (h.t !== undefined || hb.draining) continue; // held but not serving, or leaving: send to the partition itself
      const key = `${h.k}.${h.p}`;
      const claim = claims.get(key);
      if (claim && claim.worker !== hb.id && claim.epoch > h.e) continue; // a newer owner claimed it already
      claims.set(key, { worker: hb.id, epoch: h.e });
      held.push(key);
    }
    const before = workers.get(hb.id);
    workers.set(hb.id, { at: now(), held });
    if (!before) return;
    const kept = new Set(held);
    for (const key of before.held) if (!kept.has(key) && claims.get(key)?.worker === hb.id) claims.delete(key);
  }

  const sub: Subscription = nc.subscribe(subject, {
    callback: (err, msg) => {
      if (!err) pulse(msg.data);
    },
  });

  return {
    of(kind, partition) {
      const claim = claims.get(`${kind}.${partition}`);
      if (!claim) return undefined;
      const at = workers.get(claim.worker)?.at;
      return at !== undefined && now() - at < freshMs ? claim.worker : undefined;
    },
    forget(kind, partition, worker) {
      const key = `${kind}.${partition}`;
      if (claims.get(key)?.worker === worker) claims.delete(key);
    },
    close() {
      sub.unsubscribe();
    },
  };
}
