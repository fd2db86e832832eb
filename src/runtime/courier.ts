import { createHash } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import type { Log } from '../log.js';
import { BUNDLE_BYTES_MAX, BUNDLE_MAX, bundleCount, joinBundles } from '../protocol.js';
import { ACK_WAIT_MS, Mux, MUX_TIMEOUT, pubAck } from './mux.js';

interface Parcel {
  msgId: string;
  data: Uint8Array;
  count: number;
  /** True once the sender no longer needs the message stored (it lost its partition; the next owner re-sends). */
  abandoned: () => boolean;
  done(stored: boolean): void;
}

/**
 * Publishes the committed outbox messages of all the partitions of one process. Messages handed over in one
 * event-loop turn for the same subject, by any partitions, leave as one stream message: their commands
 * concatenated in order, up to BUNDLE_MAX commands and BUNDLE_BYTES_MAX bytes. Under load the partitions of a
 * worker commit together (one group commit), so this turns their many small messages to a partition into one.
 *
 * Every message is published until the stream acknowledges it, always with the same Nats-Msg-Id: a message sent
 * alone keeps its own id (the outbox's), a combined one gets an id derived from the ids it carries. A message
 * re-sent after a crash goes out as it was stored in its partition's outbox, which may not be how it was combined
 * before; the stream then stores a copy, and the saga's messages are idempotent for exactly that reason.
 */
export class Courier {
  private queue = new Map<string, Parcel[]>();
  private scheduled = false;

  constructor(
    private readonly mux: Mux,
    private readonly log: Log,
    private readonly retryBackoffMs: number,
  ) {}

  /** Resolves true once the stream holds the message, false if every sender with it in its message gave up. */
  deliver(subject: string, msgId: string, data: Uint8Array, abandoned: () => boolean): Promise<boolean> {
    return new Promise((done) => {
      let parcels = this.queue.get(subject);
      if (!parcels) this.queue.set(subject, (parcels = []));
      parcels.push({ msgId, data, count: bundleCount(data), abandoned, done });
      if (this.scheduled) return;
      this.scheduled = true;
      setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    this.scheduled = false;
    const queue = this.queue;
    this.queue = new Map();
    for (const [subject, parcels] of queue) {
      let combo: Parcel[] = [];
      let count = 0;
      let bytes = 0;
      for (const p of parcels) {
        if (combo.length > 0 && (count + p.count > BUNDLE_MAX || bytes + p.data.length > BUNDLE_BYTES_MAX)) {
          void this.publish(subject, combo);
          combo = [];
          count = bytes = 0;
        }
        combo.push(p);
        count += p.count;
        bytes += p.data.length;
      }
      void this.publish(subject, combo);
    }
    this.mux.flush(); // this is already the end of a turn: publish now rather than at the end of the next one
  }

  private async publish(subject: string, parcels: Parcel[]): Promise<void> {
    const data = joinBundles(parcels.map((p) => p.data));
    const msgId = parcels.length === 1 ? parcels[0]!.msgId : `c.${createHash('sha1').update(parcels.map((p) => p.msgId).join('\n')).digest('base64url')}`;
    for (;;) {
      let refusal: string;
      try {
        const ack = pubAck(await this.mux.request(subject, data, ACK_WAIT_MS, msgId));
        if (!ack.error) break;
        refusal = ack.error.description;
      } catch (err) {
        refusal = err === MUX_TIMEOUT ? 'no acknowledgement in time' : (err as Error).message;
      }
      if (parcels.every((p) => p.abandoned())) {
        for (const p of parcels) p.done(false);
        return;
      }
      this.log.warn('outbox publish not stored; retrying with the same message id', { subject, refusal });
      await delay(this.retryBackoffMs);
    }
    for (const p of parcels) p.done(true);
  }
}
