import type { NatsConnection } from 'nats';
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { decode, encode } from '../codec.js';
import type { Config, Kind } from '../config.js';
import { ShopError } from '../errors.js';
import { faultLog, preview, type Fault } from '../faults.js';
import type { Log } from '../log.js';
import { BUNDLE_MAX, bundleRanges, isReply, names, type CommandEnvelope, type Reply } from '../protocol.js';
import { ACK_WAIT_MS, Mux, MUX_TIMEOUT, NOT_AN_ANSWER, parsePubAck, type Parse } from './mux.js';
import { readAnswer } from './reads.js';
import { askForLostAnswers } from './resend.js';
import { nextLeader, watchStreamLeaders } from './stream-leaders.js';

/**
 * Longest wait for one read attempt before it is asked again (reads are idempotent). A request sent while the
 * connection is re-establishing can be lost without a no-responders answer; a short attempt recovers from that.
 */
const READ_ATTEMPT_MS = 1000;

/** The gateway's side of the runtime: sends a command or read to the owner of a partition and waits for the outcome. */
export interface ShopClient {
  readonly id: string;
  /**
   * Publishes to the partition's stream and resolves with the committed outcome; throws ShopError('unavailable')
   * past the deadline. `alone`: send it as a stream message of its own, never in a bundle, for a command that is
   * heavy to apply (a batch_init range), so that the owner can end a batch after it.
   */
  command<V = unknown>(kind: Kind, partition: number, cmd: unknown, opts?: { alone?: boolean }): Promise<Reply<V>>;
  /** Asks the partition's owner by core NATS request; retries while nobody owns it; throws ShopError('unavailable') past the deadline. */
  query<V = unknown>(kind: Kind, partition: number, query: unknown): Promise<Reply<V>>;
  /** Requests waiting for an outcome. */
  inFlight(): number;
  close(): Promise<void>;
}

/** The outcome's reply, or ShopError('unavailable') when its deadline passed. */
function settle<V>(outcome: Promise<Reply>): Promise<Reply<V>> {
  return outcome.then(
    (reply) => reply as Reply<V>,
    (err) => {
      throw err === MUX_TIMEOUT ? new ShopError('unavailable', 'no outcome before the deadline') : err;
    },
  );
}

/** A command's outcome as a waiter's check: a Reply, or dropped (the command waits on for its real outcome). */
function commandReply(fault: Fault): Parse<Reply> {
  return (msg) => {
    let value: unknown;
    try {
      value = decode(msg.data);
    } catch {
      fault('a command outcome that is not msgpack', preview(msg.data));
      return NOT_AN_ANSWER;
    }
    if (isReply(value)) return value;
    fault('a command outcome of the wrong shape', preview(msg.data));
    return NOT_AN_ANSWER;
  };
}

const overloaded = () => new ShopError('unavailable', 'this gateway has gatewayInflightMax requests in flight; retry later');

interface ReadWaiter {
  query: unknown;
  deadline: number;
  resolve(reply: Reply): void;
  reject(err: Error): void;
}

interface Bundle {
  subject: string;
  /** The stream that stores it (its kind's). */
  stream: string;
  envelopes: CommandEnvelope[];
  /** The waiting commands' reply tokens, failed together if the stream refuses the bundle to the end. */
  tokens: string[];
  /** The first command's deadline: the earliest of the bundle. */
  deadline: number;
}

export function createShopClient({ nc, config, log }: { nc: NatsConnection; config: Config; log: Log }): ShopClient {
  const id = randomBytes(6).toString('hex');
  const n = names(config.streamPrefix);
  // Answers that are not ones (garbage on a reply subject) are dropped and logged at most once a minute per kind.
  const fault = faultLog(log);
  // A stream that refuses a command (none takes its subject yet: no worker has made it; or it is full) is retried
  // until the command's deadline: said once a minute per stream, not once per retry.
  const refused = faultLog(log, undefined, undefined, 'retrying');
  const mux = new Mux(nc, n.inbox(config.natsUser || 'gateway', id), fault);
  // Outcomes sent while this gateway changed servers were lost: the workers send them again when asked (resend.ts).
  askForLostAnswers({ nc, subject: n.resend, inbox: mux.inbox, pingIntervalMs: config.natsPingIntervalMs, log });
  const replyCheck = commandReply(fault);
  const ackCheck = parsePubAck(fault);
  // A publish waiting on a stream that elects a new leader goes again to it at once (stream-leaders.ts).
  const leaders = watchStreamLeaders(nc, config.kinds.map((k) => n.stream(k)));

  /** Publishes a message until the stream has stored it; gives up only when the stream refuses it until the deadline. */
  async function store(subject: string, stream: string, data: Uint8Array, msgId: string, deadline: number): Promise<void> {
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
      if (deadline - Date.now() <= config.retryBackoffMs) throw new ShopError('unavailable', `the stream refused ${subject}: ${refusal}`);
      await delay(config.retryBackoffMs);
    }
  }

  /**
   * Commands to one partition within one event-loop turn leave as one stream message (a bundle): one publish,
   * one acknowledgement and one delivery instead of one each. Each command keeps its own reply subject.
   */
  const open = new Map<string, Bundle>();

  function sendBundle(bundle: Bundle): void {
    try {
      // Usually one message; more only when the bundle is over BUNDLE_BYTES_MAX.
      for (const { from, to, data } of bundleRanges(bundle.envelopes)) {
        store(bundle.subject, bundle.stream, data, `${id}.${mux.token()}`, bundle.deadline).catch((err: Error) => {
          for (const token of bundle.tokens.slice(from, to)) mux.cancel(token, err);
        });
      }
    } catch (err) {
      // A command that cannot be encoded is a bug in a route: its requests fail (500), the process goes on.
      for (const token of bundle.tokens) mux.cancel(token, err as Error);
    }
  }

  function flushBundles(): void {
    for (const bundle of open.values()) sendBundle(bundle);
    open.clear();
  }

  /**
   * Reads of one partition within one event-loop turn leave as one request (an array of queries) and come back as
   * one answer (the array of replies): one round trip through NATS for all of them.
   */
  const reads = new Map<string, ReadWaiter[]>();
  let readsWaiting = 0;

  function flushReads(): void {
    for (const [subject, batch] of reads) ask(subject, batch);
    reads.clear();
  }

  // The turn's bundles and read batches leave with the mux's flush, in the same socket write as everything else.
  mux.onFlush(() => {
    flushBundles();
    flushReads();
  });

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
      await delay(config.retryBackoffMs); // nobody owns the partition right now (start-up or a move)
    }
  }

  return {
    id,
    command<V>(kind: Kind, partition: number, cmd: unknown, opts?: { alone?: boolean }): Promise<Reply<V>> {
      if (mux.pending() >= config.gatewayInflightMax) return Promise.reject(overloaded());
      const token = mux.token();
      const deadline = Date.now() + config.requestDeadlineMs;
      const outcome = mux.wait(token, deadline, replyCheck);
      const subject = n.cmd(kind, partition);
      const stream = n.stream(kind);
      const envelope: CommandEnvelope = { c: cmd, r: mux.subject(token) };
      if (opts?.alone) {
        sendBundle({ subject, stream, envelopes: [envelope], tokens: [token], deadline });
        return settle(outcome);
      }
      let bundle = open.get(subject);
      if (!bundle) {
        open.set(subject, (bundle = { subject, stream, envelopes: [], tokens: [], deadline }));
        mux.requestFlush();
      }
      bundle.envelopes.push(envelope);
      bundle.tokens.push(token);
      if (bundle.envelopes.length >= BUNDLE_MAX) {
        open.delete(subject);
        sendBundle(bundle);
      }
      return settle(outcome);
    },

    query<V>(kind: Kind, partition: number, query: unknown): Promise<Reply<V>> {
      if (mux.pending() + readsWaiting >= config.gatewayInflightMax) return Promise.reject(overloaded());
      const subject = n.get(kind, partition);
      return new Promise<Reply<V>>((resolve, reject) => {
        let batch = reads.get(subject);
        if (!batch) reads.set(subject, (batch = []));
        batch.push({ query, deadline: Date.now() + config.readDeadlineMs, resolve: resolve as (r: Reply) => void, reject });
        readsWaiting++;
        if (batch.length >= BUNDLE_MAX) {
          reads.delete(subject);
          ask(subject, batch);
        }
        mux.requestFlush();
      });
    },

    inFlight: () => mux.pending() + readsWaiting,

    async close(): Promise<void> {
      leaders.close();
      mux.close(new ShopError('unavailable', 'gateway shutting down'));
    },
  };
}
