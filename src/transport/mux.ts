import { Type } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from 'nats';
import { decode, encode } from '../codec.js';
import { preview, type Fault } from '../faults.js';
import { MSG_ID_HEADER } from '../protocol.js';

/** How often waiters are checked against their deadlines. */
const SWEEP_INTERVAL_MS = 25;

/** Rejection of a wait that reached its deadline. One shared instance: a timeout is an outcome here, not a bug, so it carries no stack. */
export const MUX_TIMEOUT: Error = Object.freeze(Object.assign(new Error('no answer before the deadline'), { stack: undefined }));

/** What a waiter receives: the answer's bytes, and its headers when it came as a message of its own. */
export interface Answer {
  data: Uint8Array;
  headers?: MsgHdrs | undefined;
}

/**
 * What a waiter's check returns for an answer it cannot read (undecodable, wrongly shaped): the answer is dropped
 * and the waiter keeps waiting, for a proper answer or its deadline. Anybody can publish on a reply subject; one
 * bad message must not decide a request.
 */
export const NOT_AN_ANSWER: unique symbol = Symbol('not an answer');

/** Reads an answer for its waiter, or NOT_AN_ANSWER. Reports its own faults (it knows what was wrong). */
export type Parse<T> = (answer: Answer) => T | typeof NOT_AN_ANSWER;

interface Waiter {
  deadline: number;
  parse: Parse<unknown> | undefined;
  resolve(value: unknown): void;
  reject(err: Error): void;
}

/**
 * The token of a message that carries several answers: a msgpack array of token, answer bytes, token, ... Tokens
 * are base-36 numbers in lower case, so this one is never a waiter's.
 */
const BATCH_TOKEN = 'B';
/** Most bytes of answers in one batch message (NATS's max_payload is 1 MiB). */
const BATCH_BYTES_MAX = 256 * 1024;
/**
 * How long a mux that keeps its answers (a worker's) keeps them, to send them again after a reconnect (resend.ts):
 * longer than it takes to notice a lost server and reconnect to another. At most ANSWERS_KEPT_BYTES_MAX of them.
 */
export const ANSWERS_KEPT_MS = 20_000;
const ANSWERS_KEPT_BYTES_MAX = 16 * 1024 * 1024;

/**
 * Request/reply for many calls over one subscription: call n gets the reply subject `<inbox>.<n>` (the inbox is
 * `<stream prefix>._reply.<user>.<process>`, protocol.ts's names().inbox), and one
 * wildcard subscription hands each answer to its waiter. Deadlines are checked by one sweep, not a timer per
 * call. Publishes are queued and sent together at the end of the event-loop turn, so every request that arrived
 * in one turn leaves in one socket write instead of one write each. Answers this process sends to another's
 * waiters (`reply`) are joined per process and turn: one message instead of one per answer.
 */
export class Mux {
  private readonly waiters = new Map<string, Waiter>();
  private readonly queue: [subject: string, data: Uint8Array, reply: string | undefined, msgId: string | undefined][] = [];
  /** Answers to other processes' waiters: their inbox -> token, bytes, token, bytes, ... and the bytes so far. */
  private readonly answers = new Map<string, { list: (string | Uint8Array)[]; bytes: number }>();
  /** Where every process's inbox lives (`_reply.`, after any stream prefix); an inbox is `<inboxes><user>.<process>`. */
  private readonly inboxes: string;
  private readonly sub: Subscription;
  private readonly sweep: NodeJS.Timeout;
  private flushScheduled = false;
  private flushing = false;
  /** Run at the start of every flush: see onFlush. */
  private readonly fills: (() => void)[] = [];
  private seq = 0;
  /** With keepAnswers: the answer messages sent lately, oldest first from `keptFrom`, and their bytes. */
  private readonly kept: [atMs: number, inbox: string, subject: string, data: Uint8Array][] = [];
  private keptFrom = 0;
  private keptBytes = 0;
  private closed = false;

  constructor(
    private readonly nc: NatsConnection,
    readonly inbox: string,
    /** Hears answers that are dropped as unreadable (rate-limited by the caller's faultLog); silent without one. */
    private readonly fault: Fault = () => {},
    /** Keep the answers sent to other processes' waiters for ANSWERS_KEPT_MS, for resendAnswers. */
    private readonly keepAnswers = false,
  ) {
    const skip = inbox.length + 1;
    this.inboxes = inbox.slice(0, inbox.lastIndexOf('.', inbox.lastIndexOf('.') - 1) + 1);
    this.sub = nc.subscribe(`${inbox}.>`, {
      // Nothing may throw out of here: nats.js would stop reading the connection for good.
      callback: (err, msg) => {
        if (err) return;
        try {
          this.receive(msg, msg.subject.slice(skip));
        } catch (e) {
          this.fault('a reply the mux could not handle', { subject: msg.subject, err: String(e) });
        }
      },
    });
    this.sweep = setInterval(() => this.expire(Date.now()), SWEEP_INTERVAL_MS);
    this.sweep.unref();
  }

  /** A new token, unique for this mux; its reply subject is `subject(token)`. */
  token(): string {
    return (++this.seq).toString(36);
  }

  subject(token: string): string {
    return `${this.inbox}.${token}`;
  }

  /** One message on the inbox: an answer for one waiter, or a batch of them (BATCH_TOKEN). */
  private receive(msg: Msg, token: string): void {
    if (token !== BATCH_TOKEN) return this.answer(token, msg);
    let list: unknown;
    try {
      list = decode(msg.data);
    } catch {
      return this.fault('an undecodable batch of answers', { subject: msg.subject, ...preview(msg.data) }); // its waiters hear their deadline
    }
    if (!isBatch(list)) return this.fault('a batch of answers of the wrong shape', { subject: msg.subject, ...preview(msg.data) });
    for (let i = 0; i < list.length; i += 2) this.answer(list[i] as string, { data: list[i + 1] as Uint8Array });
  }

  private answer(token: string, answer: Answer): void {
    const waiter = this.waiters.get(token);
    if (!waiter) return; // late: its deadline passed, or a copy re-sent after a takeover
    let value: unknown = answer;
    if (waiter.parse) {
      try {
        value = waiter.parse(answer);
      } catch (err) {
        this.fault('an answer its check threw on', { token, err: String(err) });
        value = NOT_AN_ANSWER;
      }
      if (value === NOT_AN_ANSWER) return; // dropped: the waiter keeps waiting
    }
    this.waiters.delete(token);
    waiter.resolve(value);
  }

  /**
   * Resolves with the first answer sent to `subject(token)` (read by `parse`, which may refuse it: then the wait
   * goes on); rejects with MUX_TIMEOUT at `deadline` (epoch ms).
   */
  wait(token: string, deadline: number): Promise<Answer>;
  wait<T>(token: string, deadline: number, parse: Parse<T>): Promise<T>;
  wait(token: string, deadline: number, parse?: Parse<unknown>): Promise<unknown> {
    return new Promise((resolve, reject) => this.waiters.set(token, { deadline, parse, resolve, reject }));
  }

  /** Ends a wait early (its answer no longer matters). */
  cancel(token: string, err: Error): void {
    const waiter = this.waiters.get(token);
    if (!waiter) return;
    this.waiters.delete(token);
    waiter.reject(err);
  }

  /** Queues a publish for the end of this event-loop turn. `msgId` sets Nats-Msg-Id (JetStream de-duplication). */
  publish(subject: string, data: Uint8Array, reply?: string, msgId?: string): void {
    this.queue.push([subject, data, reply, msgId]);
    this.schedule();
  }

  private schedule(): void {
    if (this.flushScheduled || this.flushing) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  /**
   * `fill` runs at the start of every flush, before the queue leaves: a caller that collects messages over a turn
   * (the gateway's bundles and reads, the courier's parcels and acknowledgements) publishes them then, so that
   * everything one turn sends leaves in one socket write (nats.js writes once per microtask checkpoint, and
   * separate setImmediate callbacks each get one).
   */
  onFlush(fill: () => void): void {
    this.fills.push(fill);
  }

  /** A flush at the end of this turn, for a caller whose messages wait in its own `onFlush` fill. */
  requestFlush(): void {
    this.schedule();
  }

  /** Moves one process's answers to the publish queue: as they are when there is one, else as one batch. */
  private queueAnswers(inbox: string, list: (string | Uint8Array)[]): void {
    this.answers.delete(inbox);
    const [subject, data] = list.length === 2 ? [`${inbox}.${list[0] as string}`, list[1] as Uint8Array] : [`${inbox}.${BATCH_TOKEN}`, encode(list)];
    this.queue.push([subject, data, undefined, undefined]);
    if (this.keepAnswers) this.keep(inbox, subject, data);
  }

  private keep(inbox: string, subject: string, data: Uint8Array): void {
    const now = Date.now();
    this.kept.push([now, inbox, subject, data]);
    this.keptBytes += data.length;
    while (this.keptFrom < this.kept.length && (this.kept[this.keptFrom]![0] < now - ANSWERS_KEPT_MS || this.keptBytes > ANSWERS_KEPT_BYTES_MAX)) {
      this.keptBytes -= this.kept[this.keptFrom]![3].length;
      this.keptFrom++;
    }
    if (this.keptFrom > 1024 && this.keptFrom * 2 > this.kept.length) {
      this.kept.splice(0, this.keptFrom);
      this.keptFrom = 0;
    }
  }

  /**
   * Publishes again the kept answers sent within the last `ms` (to `inbox` only, or all): after a reconnect they may
   * have been lost (resend.ts). A copy of an answer its waiter already had is dropped there. Returns how many.
   */
  resendAnswers(ms: number, inbox?: string): number {
    if (this.closed) return 0;
    const since = Date.now() - ms;
    let sent = 0;
    for (let i = this.kept.length - 1; i >= this.keptFrom && this.kept[i]![0] >= since; i--) {
      const [, to, subject, data] = this.kept[i]!;
      if (inbox !== undefined && to !== inbox) continue;
      this.queue.push([subject, data, undefined, undefined]);
      sent++;
    }
    if (sent > 0) this.schedule();
    return sent;
  }

  /**
   * Queues an answer for another process's waiter (a reply subject from its mux). The answers to one process from
   * one turn leave together, as one message when there are several; any other subject is published as it is.
   */
  reply(subject: string, data: Uint8Array): void {
    const dot = subject.lastIndexOf('.');
    const inbox = subject.slice(0, dot);
    // `<inboxes><user>.<process>.<token>`: exactly one dot between the root and the token.
    const user = inbox.indexOf('.', this.inboxes.length);
    const ours = dot > 0 && inbox.startsWith(this.inboxes) && user > this.inboxes.length && user + 1 < inbox.length && !inbox.includes('.', user + 1);
    if (!ours) return this.publish(subject, data);
    let batch = this.answers.get(inbox);
    if (!batch) this.answers.set(inbox, (batch = { list: [], bytes: 0 }));
    batch.list.push(subject.slice(dot + 1), data);
    batch.bytes += data.length;
    if (batch.bytes >= BATCH_BYTES_MAX) this.queueAnswers(inbox, batch.list);
    this.schedule();
  }

  /** Publishes with a reply subject of its own and waits up to `timeoutMs` for the first answer (`parse` accepts). */
  request(subject: string, data: Uint8Array, timeoutMs: number, msgId?: string): Promise<Answer>;
  request<T>(subject: string, data: Uint8Array, timeoutMs: number, msgId: string | undefined, parse: Parse<T>): Promise<T>;
  request(subject: string, data: Uint8Array, timeoutMs: number, msgId?: string, parse?: Parse<unknown>): Promise<unknown> {
    const token = this.token();
    const answer = parse ? this.wait(token, Date.now() + timeoutMs, parse) : this.wait(token, Date.now() + timeoutMs);
    this.publish(subject, data, this.subject(token), msgId);
    return answer;
  }

  pending(): number {
    return this.waiters.size;
  }

  close(err: Error): void {
    this.closed = true;
    this.kept.length = 0;
    clearInterval(this.sweep);
    this.flush();
    this.sub.unsubscribe();
    for (const token of [...this.waiters.keys()]) this.cancel(token, err);
  }

  /** Sends the queued publishes now (a caller already running at the end of a turn saves the wait for the next one). */
  flush(): void {
    this.flushing = true;
    try {
      for (const fill of this.fills) fill();
      this.send();
    } finally {
      this.flushing = false;
      this.flushScheduled = false;
    }
  }

  private send(): void {
    for (const [inbox, { list }] of this.answers) this.queueAnswers(inbox, list);
    if (this.nc.isClosed()) {
      this.queue.length = 0;
      return;
    }
    const skip = this.inbox.length + 1;
    for (const [subject, data, reply, msgId] of this.queue) {
      try {
        if (msgId === undefined) {
          this.nc.publish(subject, data, reply === undefined ? undefined : { reply });
          continue;
        }
        const h = natsHeaders();
        h.set(MSG_ID_HEADER, msgId);
        this.nc.publish(subject, data, reply === undefined ? { headers: h } : { reply, headers: h });
      } catch (err) {
        // Refused by the client (e.g. over max_payload): the caller hears it as the answer's failure.
        if (reply?.startsWith(this.inbox)) this.cancel(reply.slice(skip), err as Error);
      }
    }
    this.queue.length = 0;
  }

  private expire(now: number): void {
    for (const [token, waiter] of this.waiters) {
      if (waiter.deadline > now) continue;
      this.waiters.delete(token);
      waiter.reject(MUX_TIMEOUT);
    }
  }
}

/** A core NATS "no responders" status: nobody subscribes to the subject (an unowned partition, or no stream). */
export function isNoResponders(msg: Answer): boolean {
  return msg.data.length === 0 && msg.headers?.code === 503;
}

/** A batch message: token, answer bytes, token, answer bytes, ... */
function isBatch(list: unknown): list is (string | Uint8Array)[] {
  if (!Array.isArray(list) || list.length % 2 !== 0) return false;
  for (let i = 0; i < list.length; i += 2) if (typeof list[i] !== 'string' || !(list[i + 1] instanceof Uint8Array)) return false;
  return true;
}

/**
 * A JetStream publish acknowledgement: stored (stream and sequence) or refused (an error). Anything else, even
 * `{}`, is not one: taking it for "stored" could lose a command.
 */
const PubAckSchema = Type.Union([
  Type.Object({ stream: Type.String(), seq: Type.Integer(), duplicate: Type.Optional(Type.Boolean()), error: Type.Optional(Type.Undefined()) }),
  Type.Object({ error: Type.Object({ code: Type.Number(), err_code: Type.Optional(Type.Number()), description: Type.String() }) }),
]);
const pubAckCheck = TypeCompiler.Compile(PubAckSchema);

export interface PubAck {
  stream?: string;
  seq?: number;
  duplicate?: boolean;
  error?: { code: number; err_code?: number; description: string };
}

/** Longest wait for the stream's acknowledgement of a publish before it is published again (same Nats-Msg-Id). */
export const ACK_WAIT_MS = 2000;

const utf8 = new TextDecoder();

/** The acknowledgement in an answer, or undefined when the answer is not one. */
function readPubAck(msg: Answer): PubAck | undefined {
  if (isNoResponders(msg)) return { error: { code: 503, description: 'no stream takes this subject' } };
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(msg.data));
  } catch {
    return undefined;
  }
  return pubAckCheck.Check(value) ? value : undefined;
}

/**
 * Reads a JetStream publish acknowledgement (JSON), or the no-responders status when no stream takes the subject.
 * Throws for an answer that is neither: the caller publishes again with the same message id, as for a lost one.
 */
export function pubAck(msg: Answer): PubAck {
  const ack = readPubAck(msg);
  if (!ack) throw new Error('the answer to a publish is not a JetStream acknowledgement');
  return ack;
}

/**
 * pubAck as a waiter's check: an answer that is not an acknowledgement is dropped and the wait goes on (to the
 * acknowledgement, or to ACK_WAIT_MS and a publish again with the same message id).
 */
export function parsePubAck(fault: Fault): Parse<PubAck> {
  return (msg) => {
    const ack = readPubAck(msg);
    if (ack) return ack;
    fault('an answer to a publish that is not a JetStream acknowledgement', preview(msg.data));
    return NOT_AN_ANSWER;
  };
}
