import { ErrorCode as NatsErrorCode, type JetStreamClient, type NatsConnection, type Subscription } from 'nats';
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { decode, encode } from '../codec.js';
import type { Config, Kind } from '../config.js';
import { ShopError } from '../errors.js';
import type { Log } from '../log.js';
import { names, type CommandEnvelope, type Reply, type ReplyEnvelope } from '../protocol.js';

/** How often pending commands are checked against their deadline. */
const DEADLINE_SWEEP_MS = 50;
/**
 * Longest wait for one read attempt before it is asked again (reads are idempotent). A request sent while the
 * connection is re-establishing can be lost without a no-responders answer; a short attempt recovers from that.
 */
const READ_ATTEMPT_MS = 1000;

/** The gateway's side of the runtime: sends a command or read to the owner of a partition and waits for the outcome. */
export interface ShopClient {
  readonly id: string;
  /** Publishes to the partition's stream and resolves with the committed outcome; throws ShopError('unavailable') past the deadline. */
  command<V = unknown>(kind: Kind, partition: number, cmd: unknown): Promise<Reply<V>>;
  /** Asks the partition's owner by core NATS request; retries while nobody owns it; throws ShopError('unavailable') past the deadline. */
  query<V = unknown>(kind: Kind, partition: number, query: unknown): Promise<Reply<V>>;
  /** Requests waiting for an outcome. */
  inFlight(): number;
  close(): Promise<void>;
}

interface Waiter {
  deadline: number;
  resolve(reply: Reply): void;
  reject(err: Error): void;
}

export function createShopClient({ nc, config, log }: { nc: NatsConnection; config: Config; log: Log }): ShopClient {
  const id = randomBytes(6).toString('hex');
  const n = names(config.streamPrefix);
  const replySubject = n.reply(id);
  const js: JetStreamClient = nc.jetstream();
  // Insertion order is deadline order (every command gets the same deadline), so the sweep stops at the first live one.
  const pending = new Map<number, Waiter>();
  let seq = 0;

  const sub: Subscription = nc.subscribe(replySubject, {
    callback: (err, msg) => {
      if (err) return log.error('reply subscription failed', { err });
      const [q, reply] = decode<ReplyEnvelope>(msg.data);
      const waiter = pending.get(q);
      // A reply for a request that is gone (deadline passed, or a re-sent outbox after takeover) is dropped.
      if (!waiter) return;
      pending.delete(q);
      waiter.resolve(reply);
    },
  });

  const sweep = setInterval(() => {
    const now = Date.now();
    for (const [q, waiter] of pending) {
      if (waiter.deadline > now) break;
      pending.delete(q);
      waiter.reject(new ShopError('unavailable', 'no outcome before the deadline'));
    }
  }, DEADLINE_SWEEP_MS);
  sweep.unref();

  async function publish(q: number, subject: string, data: Uint8Array, deadline: number): Promise<void> {
    const msgID = `${id}.${q}`;
    for (;;) {
      try {
        // The same Nats-Msg-Id on every attempt: the stream's duplicate window keeps one copy.
        await js.publish(subject, data, { msgID, timeout: Math.max(1, Math.min(deadline - Date.now(), config.readDeadlineMs)) });
        return;
      } catch (err) {
        if (!pending.has(q)) return; // answered or expired meanwhile
        if (Date.now() + config.retryBackoffMs >= deadline) {
          const waiter = pending.get(q);
          pending.delete(q);
          waiter?.reject(new ShopError('unavailable', `publish to ${subject} failed: ${(err as Error).message}`));
          return;
        }
        log.debug('publish retry', { subject, err });
        await delay(config.retryBackoffMs);
      }
    }
  }

  return {
    id,
    command<V>(kind: Kind, partition: number, cmd: unknown): Promise<Reply<V>> {
      const q = ++seq;
      const deadline = Date.now() + config.requestDeadlineMs;
      const envelope: CommandEnvelope = { c: cmd, r: replySubject, q };
      const result = new Promise<Reply>((resolve, reject) => pending.set(q, { deadline, resolve, reject }));
      void publish(q, n.cmd(kind, partition), encode(envelope), deadline);
      return result as Promise<Reply<V>>;
    },

    async query<V>(kind: Kind, partition: number, query: unknown): Promise<Reply<V>> {
      const deadline = Date.now() + config.readDeadlineMs;
      const subject = n.get(kind, partition);
      const data = encode(query);
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) throw new ShopError('unavailable', `no owner of ${subject} answered`);
        try {
          const msg = await nc.request(subject, data, { timeout: Math.min(left, READ_ATTEMPT_MS) });
          return decode<Reply<V>>(msg.data);
        } catch (err) {
          const code = (err as { code?: string }).code;
          if (code === NatsErrorCode.NoResponders) {
            await delay(config.retryBackoffMs); // nobody owns the partition right now (start-up or a move)
            continue;
          }
          if (code === NatsErrorCode.Timeout) continue;
          throw err;
        }
      }
    },

    inFlight: () => pending.size,

    async close(): Promise<void> {
      clearInterval(sweep);
      sub.unsubscribe();
      for (const [q, waiter] of pending) {
        pending.delete(q);
        waiter.reject(new ShopError('unavailable', 'gateway shutting down'));
      }
    },
  };
}
