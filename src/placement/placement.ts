/**
 * Dynamic placement, the pure part: the values kept in the NATS KV buckets and the balancing rule the controller
 * applies. No I/O here; the controller (src/placement/controller.ts) and the dynamic worker (dynamic-worker.ts) do it.
 */
import { Type, type Static } from '@sinclair/typebox';
import { KINDS, type Kind } from '../config.js';
import { decodeHeartbeat } from '../heartbeat.js';
import { jsonDecoder } from '../json-value.js';
import { fnv1a } from '../partitioning.js';

export type { Held, Heartbeat } from '../heartbeat.js';

// The values kept in the KV buckets. Each is defined once, as a schema; its type is derived from it, and every value
// read from a bucket is checked against it (kvValues below): anybody with access to NATS can put anything there,
// and a value of the wrong shape must be ignored where it is read, not crash whoever reads it.

/** What the placement bucket holds under `<kind>.<partition>`. */
const AssignmentSchema = Type.Object({
  worker: Type.String({ minLength: 1 }),
  /** The fencing token: the owner acquires the partition in Redis at this epoch. Raised on every change of owner. */
  epoch: Type.Integer({ minimum: 1 }),
  /**
   * The owner before this one, while it was alive when the partition moved: the new owner waits (at most a lease)
   * until it has let go, so the two never serve the partition at once.
   */
  prev: Type.Optional(Type.String()),
});
export type Assignment = Static<typeof AssignmentSchema>;

/** The control bucket's `leader`: the leading controller candidate, and when it last renewed (epoch ms). */
const LeaderSchema = Type.Object({ id: Type.String({ minLength: 1 }), at: Type.Number() });
export type Leader = Static<typeof LeaderSchema>;

/** The control bucket's `pin.<kind>.<partition>`: shopctl move keeps the partition on this worker. */
const PinSchema = Type.Object({ worker: Type.String({ minLength: 1 }) });
export type Pin = Static<typeof PinSchema>;

/** The control bucket's `drain.<worker>`: shopctl drain asked the worker to hand everything over (at: epoch ms). */
const DrainSchema = Type.Object({ at: Type.Number() });
export type Drain = Static<typeof DrainSchema>;

/** The one decoder of each kind of KV value: every read of a bucket goes through these. */
export const kvValues = {
  heartbeat: decodeHeartbeat,
  assignment: jsonDecoder(AssignmentSchema, 'placement'),
  leader: jsonDecoder(LeaderSchema, 'leader'),
  pin: jsonDecoder(PinSchema, 'pin'),
  drain: jsonDecoder(DrainSchema, 'drain'),
} as const;

export function placementKey(kind: Kind, partition: number): string {
  return `${kind}.${partition}`;
}

export function parsePlacementKey(key: string): { kind: Kind; partition: number } | undefined {
  const m = /^([a-z]+)\.(\d+)$/.exec(key);
  if (!m || !(KINDS as readonly string[]).includes(m[1]!)) return undefined;
  return { kind: m[1] as Kind, partition: Number(m[2]) };
}

const utf8 = new TextEncoder();
const text = new TextDecoder();
export const toBytes = (value: unknown): Uint8Array => utf8.encode(JSON.stringify(value));
/** For messages checked by their reader (admin requests and replies); KV values go through kvValues. */
export const fromBytes = <T>(bytes: Uint8Array): T => JSON.parse(text.decode(bytes)) as T;

/** murmur3's finalizer over FNV-1a: FNV alone spreads similar short strings poorly. */
function mix(s: string): number {
  let h = fnv1a(s);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Rendezvous (highest random weight) score of a worker for a partition: ties between equally good choices go the same
 * way in every controller. The kind does not count: partition p of every kind scores the same, so from the same
 * holdings every kind is placed alike and order p, stock p and payment p share a worker. That is what keeps a
 * checkout's debit on its order's worker (an order is made on its user's partition number: partitioning.ts,
 * drawIn). It is a preference, not a rule: after moves the kinds may differ for a while, which costs hops, not
 * correctness.
 */
export function score(seed: string, _kind: Kind, partition: number, worker: string): number {
  return mix(`${seed}|${partition}|${worker}`);
}

export interface BalanceInput {
  kind: Kind;
  partitions: number;
  /** Current owner of each partition (undefined: none yet). */
  current: readonly (string | undefined)[];
  /** Workers that may take partitions of this kind: alive, hosting the kind, not draining. */
  eligible: readonly string[];
  /** Partitions an operator moved by hand (shopctl move): kept on that worker while it is eligible. */
  pins?: ReadonlyMap<number, string>;
  /** Rendezvous seed; the same in every controller. */
  seed?: string;
}

/**
 * The owner of every partition of one kind: balanced (counts differ by at most one, pins aside) with as few
 * moves as that allows. A partition stays where it is unless its owner is no longer eligible or holds more than
 * its share; the partitions that must move go to the workers furthest below their share, ties broken by
 * rendezvous score. With no eligible worker, nothing changes (the partitions wait in their streams).
 */
export function balance({ kind, partitions: n, current, eligible, pins = new Map(), seed = '' }: BalanceInput): (string | undefined)[] {
  if (eligible.length === 0) return [...current];
  const workers = [...new Set(eligible)].sort();
  const isEligible = new Set(workers);
  const owner: (string | undefined)[] = new Array<string | undefined>(n).fill(undefined);
  const count = new Map(workers.map((w) => [w, 0]));
  const held = new Map(workers.map((w) => [w, 0]));
  for (let p = 0; p < n; p++) {
    const c = current[p];
    if (c !== undefined && isEligible.has(c)) held.set(c, held.get(c)! + 1);
  }
  for (const [p, w] of pins) {
    if (p < n && isEligible.has(w)) {
      owner[p] = w;
      count.set(w, count.get(w)! + 1);
    }
  }

  // Shares: n / workers each; the remainder goes to those holding most now, so it costs no move.
  const base = Math.floor(n / workers.length);
  const extra = n % workers.length;
  const byHolding = [...workers].sort((a, b) => held.get(b)! - held.get(a)! || mix(seed + a) - mix(seed + b) || (a < b ? -1 : 1));
  const quota = new Map(byHolding.map((w, i) => [w, Math.max(base + (i < extra ? 1 : 0), count.get(w)!)]));

  // Keep what each holds, up to its share; prefer keeping the partitions it scores highest for.
  const orphans: number[] = [];
  const mine = new Map<string, number[]>(workers.map((w) => [w, []]));
  for (let p = 0; p < n; p++) {
    if (owner[p] !== undefined) continue;
    const c = current[p];
    if (c !== undefined && isEligible.has(c)) mine.get(c)!.push(p);
    else orphans.push(p);
  }
  for (const w of workers) {
    const list = mine.get(w)!.sort((a, b) => score(seed, kind, b, w) - score(seed, kind, a, w));
    const room = quota.get(w)! - count.get(w)!;
    list.forEach((p, i) => {
      if (i < room) {
        owner[p] = w;
        count.set(w, count.get(w)! + 1);
      } else orphans.push(p);
    });
  }

  orphans.sort((a, b) => a - b);
  for (const p of orphans) {
    let best: string | undefined;
    let bestRoom = -Infinity;
    let bestScore = -1;
    for (const w of workers) {
      const room = quota.get(w)! - count.get(w)!;
      const s = score(seed, kind, p, w);
      if (room > bestRoom || (room === bestRoom && s > bestScore)) {
        best = w;
        bestRoom = room;
        bestScore = s;
      }
    }
    owner[p] = best!;
    count.set(best!, count.get(best!)! + 1);
  }
  return owner;
}
