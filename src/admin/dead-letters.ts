/**
 * `shopctl dead-letters`: the messages partitions could not apply, read from the dead-letter stream (subject,
 * partition, command number, reason, detail, and the payload as JSON when it decodes safely, as hex when not),
 * and purged. Payloads go through the shop's bounded decoder (codec.ts): a dead letter is hostile input too.
 */
import type { NatsConnection } from 'nats';
import { decode } from '../codec.js';
import type { Config, Kind } from '../config.js';
import { DEAD_LETTER_HEADERS, names } from '../protocol.js';

/** Most dead letters one listing reads, and most payload bytes it shows as hex. */
export const DEAD_LETTERS_LIST_MAX = 10_000;
const HEX_BYTES_MAX = 256;
/** Longest wait for one fetch of dead letters. */
const DEAD_LETTERS_FETCH_MS = 2000;

export interface DeadLetterView {
  /** Sequence in the dead-letter stream. */
  seq: number;
  time: string;
  subject: string;
  partition: string;
  /** The command's number in its partition (stream sequence × BUNDLE_MAX + index, or -n within a worker). */
  command: string;
  reason: string;
  detail: string;
  bytes: number;
  /** The payload as JSON, when it decodes; else absent and `hex` holds its first bytes. */
  json?: string;
  hex?: string;
}

/** A decoded payload as JSON text: bytes as hex strings, undefined as null. */
function jsonOf(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? `hex:${Buffer.from(v).toString('hex')}` : v === undefined ? null : v));
}

export function viewOf(seq: number, time: Date, subject: string, header: (name: string) => string, data: Uint8Array): DeadLetterView {
  const view: DeadLetterView = {
    seq,
    time: time.toISOString(),
    subject,
    partition: header(DEAD_LETTER_HEADERS.partition),
    command: header(DEAD_LETTER_HEADERS.seq),
    reason: header(DEAD_LETTER_HEADERS.reason),
    detail: header(DEAD_LETTER_HEADERS.detail),
    bytes: data.length,
  };
  try {
    view.json = jsonOf(decode(data));
  } catch {
    view.hex = Buffer.from(data.subarray(0, HEX_BYTES_MAX)).toString('hex') + (data.length > HEX_BYTES_MAX ? '…' : '');
  }
  return view;
}

/** The dead-letter subject filter for a kind and partition, or all. */
function filterOf(config: Config, kind?: Kind, partition?: number): string {
  const n = names(config.streamPrefix);
  if (kind === undefined) return n.deadLetter('stock', 0).replace(/stock\.0$/, '>');
  return partition === undefined ? n.deadLetter(kind, 0).replace(/\.0$/, '.*') : n.deadLetter(kind, partition);
}

/** The oldest `limit` dead letters (of one kind, or one partition). */
export async function readDeadLetters(nc: NatsConnection, config: Config, opts: { kind?: Kind; partition?: number; limit?: number } = {}): Promise<DeadLetterView[]> {
  const stream = names(config.streamPrefix).deadLetterStream;
  // An ordered consumer (ephemeral, deleted when done): nats-server 2.9 has no "next message by subject" request.
  const consumer = await nc.jetstream().consumers.get(stream, { filterSubjects: filterOf(config, opts.kind, opts.partition) });
  const wanted = Math.min(opts.limit ?? 100, DEAD_LETTERS_LIST_MAX, (await consumer.info()).num_pending);
  const out: DeadLetterView[] = [];
  while (out.length < wanted) {
    const before = out.length;
    for await (const m of await consumer.fetch({ max_messages: wanted - out.length, expires: DEAD_LETTERS_FETCH_MS })) {
      out.push(viewOf(m.seq, new Date(m.info.timestampNanos / 1e6), m.subject, (h) => m.headers?.get(h) ?? '', m.data));
    }
    if (out.length === before) break; // nothing came: purged meanwhile
  }
  await consumer.delete().catch(() => false);
  return out;
}

/** Deletes the dead letters (of one kind, or one partition); returns how many. */
export async function purgeDeadLetters(nc: NatsConnection, config: Config, opts: { kind?: Kind; partition?: number } = {}): Promise<number> {
  const jsm = await nc.jetstreamManager();
  const stream = names(config.streamPrefix).deadLetterStream;
  const r = await jsm.streams.purge(stream, opts.kind === undefined ? undefined : { filter: filterOf(config, opts.kind, opts.partition) });
  return r.purged;
}

export function formatDeadLetters(list: DeadLetterView[]): string {
  if (list.length === 0) return 'no dead letters';
  return list
    .map((d) => `#${d.seq} ${d.time} ${d.partition} command ${d.command}: ${d.reason}: ${d.detail}\n  ${d.bytes} bytes: ${d.json !== undefined ? d.json : `hex ${d.hex}`}`)
    .join('\n');
}
