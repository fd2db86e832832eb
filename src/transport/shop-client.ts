import type { NatsConnection } from 'nats';
import { randomBytes } from 'node:crypto';
import { decode } from '../codec.js';
import type { Config, Kind } from '../config.js';
import { ShopError } from '../errors.js';
import { faultLog, preview, type Fault } from '../faults.js';
import type { Log } from '../log.js';
import { isReply, names, type CommandEnvelope, type Reply } from '../protocol.js';
import { createBundles, type BundledCommand } from './bundles.js';
import { Mux, MUX_TIMEOUT, NOT_AN_ANSWER, type Parse } from './mux.js';
import { createPublisher } from './publish.js';
import { createReadBatches } from './read-batches.js';
import { watchOwners } from './owners.js';
import { askForLostAnswers } from './resend.js';
import { watchStreamLeaders } from './stream-leaders.js';

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

/**
 * A command's check when it may travel on another partition of its owner (bundles.ts): an `elsewhere` (the worker it
 * reached does not run its partition now, and changed nothing) is not its outcome; the first one sends it again to
 * its partition's own subject, under the same reply subject, and any copy of it after that is dropped, so that it is
 * sent again once at most.
 */
function carriedReply(check: Parse<Reply>, envelope: CommandEnvelope, sendOwn: () => void): Parse<Reply> {
  let sentOwn = false;
  return (msg) => {
    const reply = check(msg);
    if (reply === NOT_AN_ANSWER || reply.ok || reply.code !== 'elsewhere') return reply;
    if (envelope.p === undefined || sentOwn) return NOT_AN_ANSWER; // not carried (a worker's bug), or a copy
    sentOwn = true;
    sendOwn();
    return NOT_AN_ANSWER;
  };
}

const overloaded = () => new ShopError('unavailable', 'this gateway has gatewayInflightMax requests in flight; retry later');

/**
 * The gateway's client: commands go to their stream in bundles (bundles.ts, published by publish.ts), reads to the
 * partition's owner in batches (read-batches.ts), all over one Mux whose inbox gets every answer.
 */
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
  // A publish waiting on a stream that elects a new leader goes again to it at once (stream-leaders.ts).
  const leaders = watchStreamLeaders(nc, config.kinds.map((k) => n.stream(k)));
  const store = createPublisher({ mux, leaders, fault, refused, retryBackoffMs: config.retryBackoffMs });
  const bundles = createBundles({ id, mux, store });
  // Who runs which partition, from the workers' pulses: one bundle per owner and turn (bundles.ts).
  const owners = config.gatewayBundles === 'owner' ? watchOwners({ nc, subject: n.pulses, freshMs: config.workerLeaseMs, fault }) : undefined;
  // A command carried to a worker that no longer ran its partition (moved, starting) is sent to the partition itself:
  // normal around a move, said once a minute.
  const sentOn = faultLog(log, undefined, undefined, 'sent on');
  const reads = createReadBatches({ mux, fault, log, retryBackoffMs: config.retryBackoffMs });
  // The turn's bundles and read batches leave with the mux's flush, in the same socket write as everything else.
  mux.onFlush(() => {
    bundles.flush();
    reads.flush();
  });

  return {
    id,
    command<V>(kind: Kind, partition: number, cmd: unknown, opts?: { alone?: boolean }): Promise<Reply<V>> {
      if (mux.pending() >= config.gatewayInflightMax) return Promise.reject(overloaded());
      const token = mux.token();
      const deadline = Date.now() + config.requestDeadlineMs;
      const command: BundledCommand = { subject: n.cmd(kind, partition), partition, stream: n.stream(kind), envelope: { c: cmd, r: mux.subject(token) }, token, deadline };
      const alone = opts?.alone === true;
      const owner = alone ? undefined : owners?.of(kind, partition);
      if (owner === undefined) {
        const outcome = mux.wait(token, deadline, replyCheck);
        bundles.add(command, alone);
        return settle(outcome);
      }
      const sendOwn = () => {
        sentOn('a command carried to a worker that does not run its partition now: sent to the partition itself', { kind, partition, worker: owner });
        owners!.forget(kind, partition, owner);
        bundles.add({ ...command, envelope: { c: cmd, r: command.envelope.r! } }, false);
      };
      const outcome = mux.wait(token, deadline, carriedReply(replyCheck, command.envelope, sendOwn));
      bundles.add(command, false, owner);
      return settle(outcome);
    },

    query<V>(kind: Kind, partition: number, query: unknown): Promise<Reply<V>> {
      if (mux.pending() + reads.waiting() >= config.gatewayInflightMax) return Promise.reject(overloaded());
      return reads.add(n.get(kind, partition), query, Date.now() + config.readDeadlineMs) as Promise<Reply<V>>;
    },

    inFlight: () => mux.pending() + reads.waiting(),

    async close(): Promise<void> {
      leaders.close();
      owners?.close();
      mux.close(new ShopError('unavailable', 'gateway shutting down'));
    },
  };
}
