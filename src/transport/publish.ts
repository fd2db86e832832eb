/**
 * A gateway's publish of a command (or a bundle of them) to its kind's stream: sent again until the stream has
 * stored it, with the same Nats-Msg-Id so that JetStream de-duplicates every copy. A lost or late acknowledgement
 * sends it again; a stream that elects a new leader gets it again at once (stream-leaders.ts); a stream that refuses
 * it (none takes the subject yet, or it is full) gets it again after retryBackoffMs, until the deadline.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { ShopError } from '../errors.js';
import type { Fault } from '../faults.js';
import { ACK_WAIT_MS, MUX_TIMEOUT, parsePubAck, type Mux } from './mux.js';
import { nextLeader, type StreamLeaders } from './stream-leaders.js';

export interface PublisherOptions {
  mux: Mux;
  leaders: StreamLeaders;
  /** Reports an answer that is not an acknowledgement. */
  fault: Fault;
  /** Reports a refusal (said once a minute per stream, not once per retry). */
  refused: Fault;
  /** Pause before publishing a refused message again. */
  retryBackoffMs: number;
}

/** Publishes `data` until `stream` has stored it; rejects only when the stream refuses it until `deadline`. */
export type Store = (subject: string, stream: string, data: Uint8Array, msgId: string, deadline: number) => Promise<void>;

export function createPublisher({ mux, leaders, fault, refused, retryBackoffMs }: PublisherOptions): Store {
  const ackCheck = parsePubAck(fault);
  return async function store(subject, stream, data, msgId, deadline) {
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) return; // the outcome's own wait expires
      let refusal: string;
      const leader = nextLeader(leaders, stream);
      try {
        // An answer that is not an acknowledgement is dropped: as for a lost one, the wait ends and the same id goes again.
        const acked = mux.request(subject, data, Math.min(left, ACK_WAIT_MS), msgId, ackCheck);
        const ack = await Promise.race([acked, leader.elected]);
        if (ack === 'elected') {
          acked.catch(() => {}); // its answer, if one comes, is the same message's: de-duplicated by its id
          continue; // a new leader: publish to it now
        }
        if (!ack.error) return;
        refusal = ack.error.description;
      } catch (err) {
        if (err !== MUX_TIMEOUT) throw err;
        continue; // acknowledgement lost or late: publish again
      } finally {
        leader.stop();
      }
      refused(`the stream refused a command on ${subject.slice(0, subject.lastIndexOf('.'))}.*: ${refusal}`, { subject });
      if (deadline - Date.now() <= retryBackoffMs) throw new ShopError('unavailable', `the stream refused ${subject}: ${refusal}`);
      await delay(retryBackoffMs);
    }
  };
}
