import { Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import type { Kind } from './config.js';
import { encode } from './codec.js';
import { ERRORS, type ErrorCode } from './errors.js';

/**
 * Names on NATS. One stream per actor kind (STOCK, PAYMENT, ORDER) holding every command to that kind;
 * the partition is the last subject token, so `nats stream view STOCK --subject stock.cmd.7` shows one partition.
 */
export interface Names {
  stream(kind: Kind): string;
  /** JetStream subject of a partition's commands. */
  cmd(kind: Kind, partition: number): string;
  /** Subject of a partition's trim marks (datapath/marks.ts), in its kind's stream; only workers publish there. */
  mark(kind: Kind, partition: number): string;
  /** Every subject of a partition in its kind's stream (commands and marks): what a trim purges. */
  partitionSubjects(kind: Kind, partition: number): string;
  /** Core NATS subject on which the owner answers reads. */
  get(kind: Kind, partition: number): string;
  /**
   * Reply subjects of one process (gateway or worker): `<inbox>.<token>`, one wildcard subscription for all. The
   * inbox is `_reply.<user>.<process>`: the NATS user's permission `_reply.<user>.>` covers the inboxes of all its
   * processes and nobody else's. `user` is the process's NATS user, or its role when it connects without one.
   */
  inbox(user: string, processId: string): string;
  /** Where every process's inbox lives: `_reply.` after any stream prefix. */
  replies: string;
  /** Core NATS subject on which a worker takes saga messages from other workers' partitions (see datapath/courier.ts). */
  saga(workerId: string): string;
  /** Core NATS subject on which a worker hears that its saga messages were applied and committed. */
  sagaAck(workerId: string): string;
  /** The stream of dead letters: copies of messages a partition could not apply. */
  deadLetterStream: string;
  /** Dead-letter subject of one partition. */
  deadLetter(kind: Kind, partition: number): string;
  /** KV bucket of live workers: worker id -> heartbeat (dynamic placement). */
  workersBucket: string;
  /** Core NATS subject of one worker's pulses: its heartbeat, heard without any JetStream leader (membership.ts). */
  pulse(workerId: string): string;
  /** Every worker's pulses. */
  pulses: string;
  /** Core NATS subject a worker answers on while its process lives: asked when its pulses are late (membership.ts). */
  probe(workerId: string): string;
  /** KV bucket of the placement: `<kind>.<partition>` -> { worker, epoch }. */
  placementBucket: string;
  /** KV bucket of the controller: `leader`, `pin.<kind>.<partition>`, `drain.<worker>`. */
  controlBucket: string;
  /** Core NATS subject on which the leading controller answers shopctl's move, drain and rebalance. */
  admin: string;
  /** Core NATS subject on which a gateway that reconnected asks the workers to send its answers again (transport/resend.ts). */
  resend: string;
}

export function names(prefix: string): Names {
  const p = prefix ? `${prefix}.` : '';
  const s = prefix ? `${prefix}_` : '';
  return {
    stream: (kind) => `${s}${kind.toUpperCase()}`,
    cmd: (kind, partition) => `${p}${kind}.cmd.${partition}`,
    mark: (kind, partition) => `${p}${kind}.mark.${partition}`,
    partitionSubjects: (kind, partition) => `${p}${kind}.*.${partition}`,
    get: (kind, partition) => `${p}${kind}.get.${partition}`,
    inbox: (user, processId) => `${p}_reply.${user}.${processId}`,
    replies: `${p}_reply.`,
    saga: (workerId) => `${p}_saga.${workerId}`,
    sagaAck: (workerId) => `${p}_saga.${workerId}.ack`,
    deadLetterStream: `${s}DEADLETTER`,
    deadLetter: (kind, partition) => `${p}deadletter.${kind}.${partition}`,
    workersBucket: `${s}SHOP_WORKERS`,
    pulse: (workerId) => `${p}_shop.pulse.${workerId}`,
    pulses: `${p}_shop.pulse.*`,
    probe: (workerId) => `${p}_shop.pulse.${workerId}.probe`,
    placementBucket: `${s}SHOP_PLACEMENT`,
    controlBucket: `${s}SHOP_CONTROL`,
    admin: `${p}_shop.admin`,
    resend: `${p}_shop.resend`,
  };
}

/** The header JetStream de-duplicates publishes by; a partition also remembers the ids it applied (resequence.ts). */
export const MSG_ID_HEADER = 'Nats-Msg-Id';

/** Headers of a dead-letter copy (datapath/outbox.ts writes them, shopctl dead-letters reads them). */
export const DEAD_LETTER_HEADERS = { partition: 'Shop-Partition', seq: 'Shop-Seq', reason: 'Shop-Reason', detail: 'Shop-Detail' } as const;

/** The outcome of a command or read: a value, or a business failure as a stable code. */
export type Reply<V = unknown> = { ok: true; v: V } | { ok: false; code: ErrorCode; detail?: string };

/**
 * The shape of a Reply on the wire, checked where one arrives from another process (the value inside is the
 * route's to read). Every Reply passes it: a business failure's code is one of the error table's.
 */
const ReplySchema = Type.Union([
  Type.Object({ ok: Type.Literal(true), v: Type.Unknown() }),
  Type.Object({ ok: Type.Literal(false), code: Type.Union((Object.keys(ERRORS) as ErrorCode[]).map((code) => Type.Literal(code))), detail: Type.Optional(Type.String()) }),
]);
const replyCheck = TypeCompiler.Compile(ReplySchema);
export const isReply = (value: unknown): value is Reply => replyCheck.Check(value);

/**
 * Longest id anything is asked about. Every id is made by this system (a UUID, or "0".."n-1" from batch_init), so
 * a longer one cannot exist: the gateway answers it not_found without asking an actor, and an owner refuses a read
 * of one as a bad request.
 */
export const ID_MAX_CHARS = 128;

export const ok = <V>(v: V): Reply<V> => ({ ok: true, v });
export const fail = (code: ErrorCode, detail?: string): Reply<never> =>
  detail === undefined ? { ok: false, code } : { ok: false, code, detail };

/** One command. `r` is set by a gateway waiting for the outcome: the owner publishes the Reply there. */
export interface CommandEnvelope<C = unknown> {
  c: C;
  /** reply subject */
  r?: string;
  /**
   * The partition the command is for, when the stream message travels on another partition of the same owner (a
   * gateway's bundle per owning worker, transport/bundles.ts): the owner applies it there within the same batch, or,
   * not owning it (any more), answers `elsewhere` and changes nothing.
   */
  p?: number;
}

/**
 * Most commands in one stream message. Commands to one partition that leave a process together travel as one
 * message (a bundle: an array of envelopes), applied in order within one batch. A stream command's number within
 * its partition, unique and the same on every replay, is `stream sequence * BUNDLE_MAX + index in the bundle`
 * (a command delivered within the worker numbers -1, -2, ...: see datapath/batch-loop.ts).
 */
export const BUNDLE_MAX = 1024;

/** What a command subject carries: one envelope, or a bundle of them. */
export type StreamMessage = CommandEnvelope | CommandEnvelope[];

/** Most bytes in one bundle, well below NATS's max_payload (1 MiB): a bundle past it is split in two. */
export const BUNDLE_BYTES_MAX = 256 * 1024;
/**
 * Most bytes in one message on a command subject: the command streams' `max_msg_size`, and the cap a partition
 * checks before decoding one. A bundle is at most BUNDLE_BYTES_MAX, and one client command is far smaller.
 */
export const STREAM_MESSAGE_BYTES_MAX = BUNDLE_BYTES_MAX;

/**
 * Encodes envelopes for one subject as few messages as possible, none over BUNDLE_MAX commands or
 * BUNDLE_BYTES_MAX, in order; each message says which envelopes [from, to) it carries.
 */
export function bundleRanges(envelopes: CommandEnvelope[], from = 0, to = envelopes.length): { from: number; to: number; data: Uint8Array }[] {
  if (to - from === 1) return [{ from, to, data: encode(envelopes[from]) }];
  if (to - from > BUNDLE_MAX) {
    const out: { from: number; to: number; data: Uint8Array }[] = [];
    for (let i = from; i < to; i += BUNDLE_MAX) out.push(...bundleRanges(envelopes, i, Math.min(to, i + BUNDLE_MAX)));
    return out;
  }
  const data = encode(envelopes.slice(from, to));
  if (data.length <= BUNDLE_BYTES_MAX) return [{ from, to, data }];
  const half = from + Math.ceil((to - from) / 2);
  return [...bundleRanges(envelopes, from, half), ...bundleRanges(envelopes, half, to)];
}

/** The messages of bundleRanges, without their ranges. */
export function bundles(envelopes: CommandEnvelope[]): Uint8Array[] {
  return bundleRanges(envelopes).map((b) => b.data);
}

/** The envelopes of a stream message; throws for a bundle over BUNDLE_MAX (its commands' numbers would collide). */
export function unbundle(msg: StreamMessage): CommandEnvelope[] {
  if (!Array.isArray(msg)) return [msg];
  if (msg.length > BUNDLE_MAX) throw new Error(`a bundle of ${msg.length} commands is over BUNDLE_MAX (${BUNDLE_MAX})`);
  return msg;
}

/** A stream message's commands as raw msgpack: how many, and where the first begins (after the array header). */
function bundleBody(data: Uint8Array): { count: number; offset: number } {
  const b = data[0]!;
  if ((b & 0xf0) === 0x90) return { count: b & 0x0f, offset: 1 };
  if (b === 0xdc) return { count: (data[1]! << 8) | data[2]!, offset: 3 };
  if (b === 0xdd) return { count: ((data[1]! << 24) | (data[2]! << 16) | (data[3]! << 8) | data[4]!) >>> 0, offset: 5 };
  return { count: 1, offset: 0 }; // one envelope, not in an array
}

/** Commands in an encoded stream message, without decoding it. */
export const bundleCount = (data: Uint8Array): number => bundleBody(data).count;

/**
 * One stream message holding the commands of several, in order, made without decoding them: a msgpack array
 * header for the total, then each message's commands as they are.
 */
export function joinBundles(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const bodies = parts.map((p) => ({ p, ...bundleBody(p) }));
  const count = bodies.reduce((n, b) => n + b.count, 0);
  const header = count < 16 ? [0x90 | count] : count < 0x10000 ? [0xdc, count >> 8, count & 0xff] : [0xdd, count >>> 24, (count >> 16) & 0xff, (count >> 8) & 0xff, count & 0xff];
  const out = new Uint8Array(header.length + bodies.reduce((n, b) => n + b.p.length - b.offset, 0));
  out.set(header, 0);
  let at = header.length;
  for (const { p, offset } of bodies) {
    out.set(offset === 0 ? p : p.subarray(offset), at);
    at += p.length - offset;
  }
  return out;
}
