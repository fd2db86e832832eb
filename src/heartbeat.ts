/**
 * A worker's heartbeat: what it says every interval, as a pulse on core NATS and under its id in the workers bucket
 * (placement/heartbeats.ts). Read by the placement (who is alive, what it runs) and by gateways (transport/owners.ts:
 * which worker runs which partition).
 */
import { Type, type Static } from '@sinclair/typebox';
import { KINDS } from './config.js';
import { jsonDecoder } from './json-value.js';

const KindSchema = Type.Union(KINDS.map((k) => Type.Literal(k)));

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
  /**
   * It applies a command carried in another partition's bundle on the partition the command names, or answers
   * `elsewhere` (batch-apply.ts): gateways bundle per owner only for workers that say so, so that a worker of an
   * older version, which would apply such a command to the carrier's partition, never gets one.
   */
  carries: Type.Optional(Type.Boolean()),
  /** Partitions it runs now (a runner that is not stopped or fenced). */
  held: Type.Array(HeldSchema),
  /** Placement entries it could not take because Redis holds a newer epoch: `<kind>.<partition>` -> stored epoch. */
  stale: Type.Record(Type.String(), Type.Integer({ minimum: 0 })),
});
export type Heartbeat = Static<typeof HeartbeatSchema>;

export const decodeHeartbeat = jsonDecoder(HeartbeatSchema, 'heartbeat');
