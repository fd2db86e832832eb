/**
 * A gateway's reads of one partition within one event-loop turn leave as one request (an array of queries) and come
 * back as one answer (the array of replies): one round trip through NATS for all of them (reads.ts is the format).
 */
import { setTimeout as delay } from 'node:timers/promises';
import { encode } from '../codec.js';
import { ShopError } from '../errors.js';
import type { Fault } from '../faults.js';
import type { Log } from '../log.js';
import { BUNDLE_MAX, type Reply } from '../protocol.js';
import { MUX_TIMEOUT, type Mux } from './mux.js';
import { readAnswer } from './reads.js';

/**
 * Longest wait for one read attempt before it is asked again (reads are idempotent). A request sent while the
 * connection is re-establishing can be lost without a no-responders answer; a short attempt recovers from that.
 */
const READ_ATTEMPT_MS = 1000;

interface ReadWaiter {
  query: unknown;
  deadline: number;
  resolve(reply: Reply): void;
  reject(err: Error): void;
}

export interface ReadBatches {
  /** Adds a query to its partition's batch of this turn; resolves with its reply, or rejects ShopError('unavailable') past `deadline`. */
  add(subject: string, query: unknown, deadline: number): Promise<Reply>;
  /** Asks every open batch: called with the mux's flush. */
  flush(): void;
  /** Queries waiting for their reply. */
  waiting(): number;
}

export function createReadBatches({ mux, fault, log, retryBackoffMs }: { mux: Mux; fault: Fault; log: Log; retryBackoffMs: number }): ReadBatches {
  const reads = new Map<string, ReadWaiter[]>();
  let readsWaiting = 0;

  /** Asks for a batch of reads; every waiter of the batch is settled, whatever happens (this never rejects). */
  function ask(subject: string, batch: ReadWaiter[]): void {
    askUntilAnswered(subject, batch).catch((err: unknown) => {
      log.error('a read failed unexpectedly', { subject, err });
      settleReads(batch, (w) => w.reject(err instanceof Error ? err : new Error(String(err))));
    });
  }

  function settleReads(batch: ReadWaiter[], each: (w: ReadWaiter, i: number) => void): void {
    readsWaiting -= batch.length;
    batch.forEach(each);
  }

  /**
   * Asks the partition's owner by core NATS request; retries while nobody owns it; `unavailable` past the deadline.
   * An answer too large for one message comes back SPLIT: each half of the batch is asked again on its own.
   */
  async function askUntilAnswered(subject: string, batch: ReadWaiter[]): Promise<void> {
    const data = encode(batch.length === 1 ? batch[0]!.query : batch.map((w) => w.query));
    const check = readAnswer(batch.length, fault);
    const deadline = batch[0]!.deadline;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) return settleReads(batch, (w) => w.reject(new ShopError('unavailable', `no owner of ${subject} answered`)));
      let answer;
      try {
        answer = await mux.request(subject, data, Math.min(left, READ_ATTEMPT_MS), undefined, check);
      } catch (err) {
        if (err === MUX_TIMEOUT) continue;
        return settleReads(batch, (w) => w.reject(err as Error));
      }
      if (answer === 'split') {
        const half = Math.ceil(batch.length / 2);
        ask(subject, batch.slice(0, half));
        ask(subject, batch.slice(half));
        return;
      }
      if (answer !== 'no-responders') {
        const { replies } = answer;
        return settleReads(batch, (w, i) => w.resolve(replies[i]!));
      }
      await delay(retryBackoffMs); // nobody owns the partition right now (start-up or a move)
    }
  }

  return {
    add(subject, query, deadline) {
      return new Promise<Reply>((resolve, reject) => {
        let batch = reads.get(subject);
        if (!batch) reads.set(subject, (batch = []));
        batch.push({ query, deadline, resolve, reject });
        readsWaiting++;
        if (batch.length >= BUNDLE_MAX) {
          reads.delete(subject);
          ask(subject, batch);
        }
        mux.requestFlush();
      });
    },
    flush() {
      for (const [subject, batch] of reads) ask(subject, batch);
      reads.clear();
    },
    waiting: () => readsWaiting,
  };
}
