/**
 * Stream marks: what a partition's command stream says about how far it was trimmed, so that a partition starting
 * from Redis can tell whether Redis holds everything the stream no longer does.
 *
 * Before each trim, the owner publishes a mark on `<kind>.mark.<n>` (a subject only workers may publish to, captured
 * by the kind's stream): the cursor it is about to purge up to, a cursor Redis has made durable. The purge that follows
 * takes the commands and the older marks below it, never the new mark; so the stream always ends with the newest
 * mark, and Redis records the mark's sequence. At start the partition checks, before it reads on:
 *
 * - the stream ends below the cursor: the NATS store was rolled back (the partition would skip new commands);
 * - Redis recorded a mark the stream does not have (none, or only an older one): the stream was made anew or lost
 *   its store (a stream's creation time is no identity on nats-server 2.9: an idempotent create in a cluster
 *   changes it, seen when a whole cluster profile restarted);
 * - the cursor Redis holds is below the newest mark: Redis lost commits whose commands are no longer in the stream
 *   (restarted from files that miss them, or a replica that never had them). Replaying what is left would serve
 *   state without them, silently.
 *
 * Any of these, and the partition refuses to serve, loudly (runner.ts). Otherwise nothing was lost that the stream
 * cannot give again: the partition reads on from its cursor.
 */
import type { JetStreamManager, NatsConnection } from 'nats';
import { ACK_WAIT_MS, pubAck } from '../transport/mux.js';

export interface Mark {
  /** Its stream sequence. */
  seq: number;
  /** The cursor the stream was trimmed up to when it was published. */
  upTo: number;
}

export type StreamVerdict =
  | { ok: true }
  | { ok: false; why: 'stream-behind' | 'stream-anew' | 'redis-behind'; error: string };

/** Where docs/operations.md says what to do. */
const RECOVERY = 'docs/operations.md, "A partition refuses its stream"';

/**
 * The pure check of a starting partition: its stream's last sequence and newest mark against what Redis holds (its
 * cursor, and the sequence of the last mark it recorded, 0 for none).
 */
export function checkStream(s: { stream: string; lastSeq: number; mark: Mark | undefined; cursor: number; recordedMark: number }): StreamVerdict {
  if (s.lastSeq < s.cursor) {
    return {
      ok: false,
      why: 'stream-behind',
      error: `stream ${s.stream}'s last sequence is ${s.lastSeq}, below this partition's committed cursor ${s.cursor}: the stream lost commands this partition had applied, and reading on would skip new ones. Restore the NATS store, or accept the loss and reset the cursor (${RECOVERY})`,
    };
  }
  if (s.recordedMark > 0 && (s.mark === undefined || s.mark.seq < s.recordedMark)) {
    return {
      ok: false,
      why: 'stream-anew',
      error: `stream ${s.stream} was made anew since this partition last ran (its newest trim mark is ${s.mark ? `at ${s.mark.seq}` : 'gone'}, Redis recorded one at ${s.recordedMark}; the partition's committed cursor is ${s.cursor}): the stream lost commands, and reading on would skip new ones. Restore the NATS store, or accept the loss and reset the cursor (${RECOVERY})`,
    };
  }
  if (s.mark !== undefined && s.cursor < s.mark.upTo) {
    return {
      ok: false,
      why: 'redis-behind',
      error: `Redis holds this partition at cursor ${s.cursor}, but its commands up to ${s.mark.upTo} were committed and then trimmed from stream ${s.stream}: Redis lost commits (restarted from files that miss them?), and the stream cannot give them again. Restore Redis's files, or accept the loss (${RECOVERY})`,
    };
  }
  return { ok: true };
}

/** The mark's payload: the cursor in decimal. */
export const encodeMark = (upTo: number) => new TextEncoder().encode(String(upTo));

/** A mark's payload, or undefined when it is not one (only workers may publish marks, but nothing from the bus is trusted). */
export function decodeMark(data: Uint8Array): number | undefined {
  if (data.length === 0 || data.length > 16) return undefined;
  const text = new TextDecoder().decode(data);
  if (!/^\d+$/.test(text)) return undefined;
  const upTo = Number(text);
  return Number.isSafeInteger(upTo) ? upTo : undefined;
}

/** The newest mark on `subject`, or undefined when there is none (or none that reads as a mark). */
export async function newestMark(jsm: JetStreamManager, stream: string, subject: string): Promise<Mark | undefined> {
  let stored;
  try {
    stored = await jsm.streams.getMessage(stream, { last_by_subj: subject });
  } catch (err) {
    if (/no message found/i.test((err as Error).message) || (err as { code?: string }).code === '404') return undefined;
    throw err;
  }
  const upTo = decodeMark(stored.data);
  return upTo === undefined ? undefined : { seq: stored.seq, upTo };
}

/** Publishes a mark and returns its stream sequence (once the stream has stored it). */
export async function publishMark(nc: NatsConnection, subject: string, upTo: number): Promise<number> {
  const ack = pubAck(await nc.request(subject, encodeMark(upTo), { timeout: ACK_WAIT_MS }));
  if (ack.error || ack.seq === undefined) throw new Error(`the stream did not store the trim mark on ${subject}: ${ack.error?.description ?? 'no sequence'}`);
  return ack.seq;
}
