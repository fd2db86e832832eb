/**
 * Reads, both sides. A gateway asks a partition's owner with one core NATS request per partition and event-loop
 * turn, carrying one query or an array of them; the owner answers from committed memory with the reply, or the
 * array of replies in the same order. An array of replies that would not fit in one NATS message is answered
 * SPLIT instead, and the gateway asks each half again (read-batches.ts). One reply always fits (READ_REPLY_BYTES_MAX).
 *
 * Everything that arrives is checked here: a query that is not one gets a bad_request reply (the subscription
 * goes on), and an answer that is not one is dropped by the gateway, which keeps waiting for a proper one.
 */
import { Type, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import type { Msg, NatsConnection, Subscription } from 'nats';
import { decode, encode } from '../codec.js';
import { faultLog, preview, type Fault } from '../faults.js';
import type { Log } from '../log.js';
import { BUNDLE_MAX, fail, ID_MAX_CHARS, isReply, type Reply } from '../protocol.js';
import { isNoResponders, NOT_AN_ANSWER, type Parse } from './mux.js';

/** Most queries in one read request: a gateway sends at most BUNDLE_MAX per partition and turn. */
export const READ_QUERIES_MAX = BUNDLE_MAX;
/** Most bytes of a read request, checked before decoding: READ_QUERIES_MAX queries of an id of ID_MAX_CHARS and their keys. */
export const READ_REQUEST_BYTES_MAX = READ_QUERIES_MAX * (ID_MAX_CHARS * 4 + 32);

/** nats-server's default max_payload, used until the server has said its own. */
export const NATS_MAX_PAYLOAD_DEFAULT_BYTES = 1024 * 1024;

/**
 * Most bytes one encoded reply can take: an order of ORDER_LINES_MAX (1000) lines, each an item id of up to
 * ID_MAX_CHARS (128) UTF-16 code units, at most 3 bytes each in UTF-8 (a surrogate pair is 4 bytes for 2 units),
 * so 384 bytes plus a 3-byte string header, and a quantity up to 2^53-1 (9 bytes as a float64), in a 1-byte
 * array header: 397 bytes a line, 397,000 for the lines; the user id, total, flags and keys add under 500 more.
 * Well below nats-server's default max_payload (1 MiB), which is why a batch can always be split down to replies
 * that fit (test/integration/reads.test.ts encodes the largest order and checks this bound).
 */
export const READ_REPLY_BYTES_MAX = 398_000;

/** Every read an actor answers: find by id. */
const QuerySchema = Type.Object({ k: Type.Literal('find'), id: Type.String({ minLength: 1, maxLength: ID_MAX_CHARS }) });
export type Query = Static<typeof QuerySchema>;
const queryCheck = TypeCompiler.Compile(QuerySchema);

/** The answer to a batch whose replies are too large for one message: ask each half again. */
export const SPLIT = { split: true } as const;
const SplitSchema = Type.Object({ split: Type.Literal(true) });
const splitCheck = TypeCompiler.Compile(SplitSchema);

const badQuery = (): Reply => fail('bad_request', `a read is {k: "find", id: <1 to ${ID_MAX_CHARS} characters>}, or an array of 1 to ${READ_QUERIES_MAX} of them`);

export interface ServeReadsOptions {
  nc: NatsConnection;
  /** The partition's read subject, `<kind>.get.<p>`. */
  subject: string;
  /** The reply to one valid query, from committed state. A throw is a bug: that query is answered `internal`. */
  answer: (query: Query) => Reply;
  log: Log;
}

/** Answers the reads of one partition until unsubscribed. Nothing a peer sends can end the subscription. */
export function serveReads({ nc, subject, answer, log }: ServeReadsOptions): Subscription {
  const fault = faultLog(log);
  const one = (query: unknown): Reply => {
    if (!queryCheck.Check(query)) return badQuery();
    try {
      return answer(query);
    } catch (err) {
      log.error('query failed', { err });
      return fail('internal', 'query failed');
    }
  };
  const replyTo = (msg: Msg): Uint8Array => {
    let request: unknown;
    try {
      request = decode(msg.data, READ_REQUEST_BYTES_MAX);
    } catch {
      fault('a read that is not msgpack', { subject, ...preview(msg.data) });
      return encode(badQuery());
    }
    if (!Array.isArray(request)) return encode(one(request));
    if (request.length === 0 || request.length > READ_QUERIES_MAX) return encode(badQuery());
    const data = encode(request.map(one));
    if (data.length <= maxPayload(nc)) return data;
    // Too large for one message: the gateway asks each half again, down to single replies, which always fit.
    return encode(SPLIT);
  };
  return nc.subscribe(subject, {
    // Nothing may throw out of here: nats.js would stop reading the connection for good.
    callback: (err, msg) => {
      if (err) return log.error('read subscription failed', { err });
      try {
        let data = replyTo(msg);
        if (data.length > maxPayload(nc)) {
          // One reply over the limit: only if the server's max_payload is far below its default (see READ_REPLY_BYTES_MAX).
          fault('a read reply over the NATS server max_payload', { subject, bytes: data.length, maxPayload: maxPayload(nc) });
          data = encode(fail('too_large', `the reply of ${data.length} bytes is over the NATS server's max_payload (${maxPayload(nc)} bytes); raise max_payload to at least ${READ_REPLY_BYTES_MAX}`));
        }
        msg.respond(data);
      } catch (e) {
        fault('a read that could not be answered', { subject, err: String(e) });
      }
    },
  });
}

const maxPayload = (nc: NatsConnection): number => nc.info?.max_payload ?? NATS_MAX_PAYLOAD_DEFAULT_BYTES;

/** What an answer to a read request says. */
export type ReadAnswer = { replies: Reply[] } | 'split' | 'no-responders';

/**
 * The gateway's check of an answer to `count` queries: the replies in order (one Reply for a single query, an
 * array of exactly `count` for a batch), SPLIT for a batch, or "no responders" (nobody owns the partition).
 * Anything else is reported and dropped; the asker keeps waiting.
 */
export function readAnswer(count: number, fault: Fault): Parse<ReadAnswer> {
  return (msg) => {
    if (isNoResponders(msg)) return 'no-responders';
    let value: unknown;
    try {
      value = decode(msg.data);
    } catch {
      fault('a read answer that is not msgpack', preview(msg.data));
      return NOT_AN_ANSWER;
    }
    if (count === 1 && isReply(value)) return { replies: [value] };
    if (count > 1 && Array.isArray(value) && value.length === count && value.every(isReply)) return { replies: value };
    if (count > 1 && splitCheck.Check(value)) return 'split';
    fault('a read answer of the wrong shape', { queries: count, ...preview(msg.data) });
    return NOT_AN_ANSWER;
  };
}
