/**
 * Dynamic placement, the pure part: the values kept in the NATS KV buckets and the balancing rule the controller
 * applies. No I/O here; the controller (src/placement/controller.ts) and the dynamic worker (dynamic-worker.ts) do it.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { KINDS, type Kind } from '../config.js';
import { preview, type Fault } from '../faults.js';
import { fnv1a } from '../partitioning.js';

const text = new TextDecoder();

// The values kept in the KV buckets. Each is defined once, as a schema; its type is derived from it, and every value
// read from a bucket is checked against it (kvValues below): anybody with access to NATS can put anything there,
// and a value of the wrong shape must be ignored where it is read, not crash whoever reads it.

const KindSchema = Type.Union(KINDS.map((k) => Type.Literal(k)));

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

/** One partition as a worker reports it in its heartbeat. */
const HeldSchema = Type.Object({
  k: KindSchema,
  p: Type.Integer({ minimum: 0 }),
  /** Epoch it runs at. */
  e: Type.Integer({ minimum: 0 }),
  /** Commands waiting for it (runner.lag()). */
  lag: Type.Number({ minimum: 0 }),
  /** Held but not serving: restarting after failures, or refusing a stream behind its cursor; with the attempts so far. */
  t: Type.Optional(Type.Union([Type.Literal('restarting'), Type.Literal('refused')])),
  n: Type.Optional(Type.Integer({ minimum: 0 })),
});
export type Held = Static<typeof HeldSchema>;

/** What a worker says every heartbeat: as a pulse on core NATS, and under its id in the workers bucket. */
const HeartbeatSchema = Type.Object({
  id: Type.String({ minLength: 1 }),
  /**
   * Its number among this worker's heartbeats, counting up: the same heartbeat arrives twice (pulse and bucket), and
   * one delayed on a path must not undo a newer one heard on the other (say, list a partition the worker let go).
   */
  seq: Type.Optional(Type.Integer({ minimum: 0 })),
  /** When the worker sent it, on its own clock: its lease counts from the newest one it hears back. */
  at: Type.Optional(Type.Number()),
  pid: Type.Integer({ minimum: 0 }),
  host: Type.String(),
  kinds: Type.Array(KindSchema),
  /** Its admin HTTP port (0 when it has none). */
  adminPort: Type.Integer({ minimum: 0, maximum: 65535 }),
  /** It is leaving (SIGTERM or shopctl drain): give it nothing, move what it holds. */
  draining: Type.Boolean(),
  /** Partitions it runs now (a runner that is not stopped or fenced). */
  held: Type.Array(HeldSchema),
  /** Placement entries it could not take because Redis holds a newer epoch: `<kind>.<partition>` -> stored epoch. */
  stale: Type.Record(Type.String(), Type.Integer({ minimum: 0 })),
});
export type Heartbeat = Static<typeof HeartbeatSchema>;

/** The control bucket's `leader`: the leading controller candidate, and when it last renewed (epoch ms). */
const LeaderSchema = Type.Object({ id: Type.String({ minLength: 1 }), at: Type.Number() });
export type Leader = Static<typeof LeaderSchema>;

/** The control bucket's `pin.<kind>.<partition>`: shopctl move keeps the partition on this worker. */
const PinSchema = Type.Object({ worker: Type.String({ minLength: 1 }) });
export type Pin = Static<typeof PinSchema>;

/** The control bucket's `drain.<worker>`: shopctl drain asked the worker to hand everything over (at: epoch ms). */
const DrainSchema = Type.Object({ at: Type.Number() });
export type Drain = Static<typeof DrainSchema>;

/** Reads a KV value: the value if it has its schema's shape, else undefined (reported to `fault` when given). */
export type KvDecoder<T> = (bytes: Uint8Array, fault?: Fault, key?: string) => T | undefined;

/** Most bytes of a KV value the shop reads (every one it writes is a small JSON object): checked before parsing. */
export const KV_VALUE_BYTES_MAX = 64 * 1024;

function kvDecoder<S extends TSchema>(schema: S, what: string): KvDecoder<Static<S>> {
  const check = TypeCompiler.Compile(schema);
  const kind = `an invalid ${what} in a KV bucket (treated as absent)`;
  return (bytes, fault, key) => {
    if (bytes.length > KV_VALUE_BYTES_MAX) {
      fault?.(kind, { key, why: `${bytes.length} bytes, over KV_VALUE_BYTES_MAX (${KV_VALUE_BYTES_MAX})`, ...preview(bytes) });
      return undefined;
    }
    let value: unknown;
    try {
      value = JSON.parse(text.decode(bytes));
    } catch {
      fault?.(kind, { key, why: 'not JSON', ...preview(bytes) });
      return undefined;
    }
    if (check.Check(value)) return value;
    const first = check.Errors(value).First();
    fault?.(kind, { key, why: first ? `${first.path || '/'}: ${first.message}` : 'wrong shape', ...preview(bytes) });
    return undefined;
  };
}

/** The one decoder of each kind of KV value: every read of a bucket goes through these. */
export const kvValues = {
  heartbeat: kvDecoder(HeartbeatSchema, 'heartbeat'),
  assignment: kvDecoder(AssignmentSchema, 'placement'),
  leader: kvDecoder(LeaderSchema, 'leader'),
  pin: kvDecoder(PinSchema, 'pin'),
  drain: kvDecoder(DrainSchema, 'drain'),
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
