/**
 * The probation of a partition's new stream consumer (command-reader.ts): the pure check of a delivery against what
 * the stream's leader holds.
 */

/**
 * How long a new consumer is on probation: each message it delivers is queued only once the stream's leader agrees
 * that it is the partition's next one. nats-server 2.9 places a new consumer on any of the stream's replicas, and a
 * consumer made while a replica was behind or catching up (after a node was lost, paused, cut off or restarted) was
 * seen to skip a command the leader had stored and acknowledged and deliver the ones after it, or to deliver another
 * command under the sequence the leader had given it (replicas whose sequences drifted): the partition read on past
 * the command, and its client waited for nothing until its deadline (the NATS fault tests' 503s, 1 to 110 a run).
 */
export const CONSUMER_PROBATION_MS = 10_000;

/** A stream message as the consumer delivered it, or as the stream's leader holds it: its sequence and its bytes. */
export interface Held {
  seq: number;
  data: Uint8Array;
}

/** What a consumer's delivery is, next to what the stream's leader holds after the last message queued. */
export type Delivery = 'next' | 'leader-first' | 'not-held';

/**
 * `leaderNext`: the partition's first message after the last one queued, as the stream's leader holds it (undefined:
 * none). `next`: the delivery is that message. `leader-first`: the leader holds another one at or before the
 * delivery's sequence (the consumer skipped it, or its replica's sequences drifted and it holds other bytes there):
 * queue the leader's, make a new consumer. `not-held`: the leader holds nothing there (queue nothing, make a new one).
 */
export function delivery(delivered: Held, leaderNext: Held | undefined): Delivery {
  if (!leaderNext || leaderNext.seq > delivered.seq) return 'not-held';
  return leaderNext.seq === delivered.seq && Buffer.compare(leaderNext.data, delivered.data) === 0 ? 'next' : 'leader-first';
}

/** A JetStream API answer that the stream holds no such message (404), as against no answer at all. */
export function isNotFound(err: unknown): boolean {
  return (err as { api_error?: { code?: number } }).api_error?.code === 404 || (err as { code?: string }).code === '404';
}
