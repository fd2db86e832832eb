import type { ErrorCode } from '../errors.js';
import { drawIn, fnv1a, ownShare, partitionOf } from '../partitioning.js';
import { fail, ok, type Reply } from '../protocol.js';
import { seededRandom } from './random.js';
import { ORDER_LINES_MAX, type DebitCmd, type ForgetCmd, type OrderCmd, type ReleaseCmd, type ReserveCmd, type SagaAnswer } from './commands.js';
import { mergeForgets, parsePart, partOf, type Part, type SagaRef } from './saga.js';
import type { Actor, ApplyContext, Effects, Outgoing, ReadView, ReplyTo, StateView } from './types.js';

/** Where one participant of a running checkout stands. */
export type PartState = 'pending' | 'held' | 'rejected' | 'releasing' | 'released';

/** One participant of a running checkout. */
export interface PartStatus {
  part: Part;
  st: PartState;
  /** The participant's ledger entry for this saga, once it has answered. */
  at?: number;
}

/** A checkout in flight, kept in the order it pays for (one key: it commits with the order, atomically). */
export interface Saga {
  id: string;
  /** One entry per participant partition (a handful): a list of entries of one shape, cheap to copy and walk. */
  parts: PartStatus[];
  /** The first refusal: once set, the saga only compensates. */
  failed?: { code: ErrorCode; detail?: string };
  /** Gateways waiting for the outcome: every checkout of the order while this saga runs. */
  waiters: ReplyTo[];
}

export interface Order {
  user: string;
  items: [item: string, quantity: number][];
  total: number;
  paid: boolean;
  saga?: Saga;
  /** The saga that paid the order, with each participant's ledger sequence: tells a late copy of one of its
   *  answers (ignored) from a copy of its hold applied anew after it ended (given back). */
  paidBy?: { saga: string; ats: [part: Part, at: number][] };
}

export { ORDER_LINES_MAX, type OrderCmd };

export type OrderQuery = { k: 'find'; id: string };

const ORDERS = 'orders';
/** Most checkouts of one order waiting for its running saga; more are answered 503 (retry) instead of queued. */
export const SAGA_WAITERS_MAX = 256;

/**
 * How an order is kept in its table. An order with no saga running is a flat string
 * `paid|total|user|item:quantity,...`, and once a saga has paid it `...|saga|part=at,...` (its `paidBy`): ~100
 * bytes of heap with its map entry instead of ~370 as nested objects (1M orders: ~270 MB), and one string to encode
 * when it is committed. An order with a saga running, or with an id that holds a separator, is the object itself.
 */
type StoredOrder = Order | string;

const plainId = (id: string) => !/[|:,]/.test(id);

function storeOrder(order: Order): StoredOrder {
  if (order.saga || !plainId(order.user) || !order.items.every(([item]) => plainId(item))) return order;
  const flat = `${order.paid ? '1' : '0'}|${order.total}|${order.user}|${order.items.map(([item, q]) => `${item}:${q}`).join(',')}`;
  if (!order.paidBy) return flat;
  if (!plainId(order.paidBy.saga)) return order;
  return `${flat}|${order.paidBy.saga}|${order.paidBy.ats.map(([part, at]) => `${part}=${at}`).join(',')}`;
}

function loadOrder(stored: StoredOrder): Order {
  if (typeof stored !== 'string') return stored;
  const [paid, total, user, lines, saga, ats] = stored.split('|') as [string, string, string, string, string?, string?];
  const items: Order['items'] = lines === '' ? [] : lines.split(',').map((line) => {
    const at = line.lastIndexOf(':');
    return [line.slice(0, at), Number(line.slice(at + 1))];
  });
  const order: Order = { user, items, total: Number(total), paid: paid === '1' };
  if (saga !== undefined) {
    order.paidBy = {
      saga,
      ats: ats!.split(',').map((entry): [Part, number] => {
        const at = entry.indexOf('=');
        return [entry.slice(0, at) as Part, Number(entry.slice(at + 1))];
      }),
    };
  }
  return order;
}

/** The order with this id, whatever form it is kept in. */
export function readOrder(state: ReadView, id: string): Order | undefined {
  const stored = state.get<StoredOrder>(ORDERS, id);
  return stored === undefined ? undefined : loadOrder(stored);
}

function writeOrder(state: StateView, id: string, order: Order): void {
  state.set(ORDERS, id, storeOrder(order));
}

function withoutSaga(order: Order): Order {
  const { saga: _done, ...rest } = order;
  return rest;
}

/**
 * Below this many users per partition on average, batch_init lists a partition's users once per command instead of
 * drawing them: with so few, a partition may have none (then any user will do) and drawing would mostly miss.
 */
const DRAWN_USERS_PER_PARTITION_MIN = 8;

/** The users "0".."nUsers-1" of this partition number, when there are few enough to list (else undefined: drawn). */
function usersHere(nUsers: number, ctx: ApplyContext): string[] | undefined {
  if (nUsers >= DRAWN_USERS_PER_PARTITION_MIN * ctx.partitions) return undefined;
  return [...ownShare({ from: 0, to: nUsers }, ctx)];
}

/**
 * batch_init's random user of an order, among the users of the order's own partition number (any user when that
 * partition has none): the checkout's debit then stays on the order's worker (partitioning.ts, drawIn).
 */
function userHere(next: () => number, nUsers: number, ctx: ApplyContext, listed: string[] | undefined): string {
  const any = () => String(Math.floor(next() * nUsers));
  if (!listed) return drawIn(ctx.partition, ctx.partitions, any);
  return listed.length > 0 ? listed[Math.floor(next() * listed.length)]! : any();
}

/**
 * A checkout's holds: one reserve per stock partition with all its lines, one debit to the user's payment partition.
 * The same every time for the same saga (an order's lines cannot change while its saga runs), so the running saga
 * can send them again from the order alone.
 */
function holds(order: Order, ref: SagaRef, partitions: number): Outgoing[] {
  const perPartition = new Map<number, Map<string, number>>();
  for (const [item, quantity] of order.items) {
    const p = partitionOf(item, partitions);
    let lines = perPartition.get(p);
    if (!lines) perPartition.set(p, (lines = new Map()));
    lines.set(item, (lines.get(item) ?? 0) + quantity);
  }
  const send: Outgoing[] = [];
  for (const [p, lines] of perPartition) {
    const cmd: ReserveCmd = { k: 'reserve', ...ref, lines: [...lines] };
    send.push({ kind: 'stock', partition: p, cmd });
  }
  const debit: DebitCmd = { k: 'debit', ...ref, user: order.user, amount: order.total };
  send.push({ kind: 'payment', partition: partitionOf(order.user, partitions), cmd: debit });
  return send;
}

/** Starts the checkout: sends its holds, each participant pending. */
function begin(order: Order, id: string, ctx: ApplyContext): { saga: Saga; send: Outgoing[] } {
  const ref: SagaRef = { saga: `${id}#${ctx.seq}`, order: id, from: ctx.partition };
  const send = holds(order, ref, ctx.partitions);
  const parts = send.map((out): PartStatus => ({ part: partOf(out.kind, out.partition), st: 'pending' }));
  return { saga: { id: ref.saga, parts, waiters: ctx.replyTo ? [ctx.replyTo] : [] }, send };
}

/**
 * What an order's running saga waits for, sent again until it comes: the hold of each participant that has not
 * answered, the release of each that holds and must give back. Nothing once the saga has ended.
 */
function sagaOwes(id: string, stored: unknown, ctx: { partition: number; partitions: number }): Outgoing[] {
  const order = loadOrder(stored as StoredOrder);
  const saga = order.saga;
  if (!saga) return [];
  const ref: SagaRef = { saga: saga.id, order: id, from: ctx.partition };
  const waiting = new Map(saga.parts.map((p) => [p.part, p.st]));
  const send: Outgoing[] = [];
  for (const out of holds(order, ref, ctx.partitions)) if (waiting.get(partOf(out.kind, out.partition)) === 'pending') send.push(out);
  for (const p of saga.parts) if (p.st === 'releasing') send.push(toPart(p.part, releaseOf(ref)));
  return send;
}

/**
 * A running saga's messages go again after a second without an answer, doubling up to 8 s, and at once when a new
 * owner takes the partition: the courier neither stores nor acknowledges them (docs/architecture.md, "Exactly once").
 */
const SAGA_REMIND_FIRST_MS = 1000;
const SAGA_REMIND_MAX_MS = 8000;

function toPart(part: Part, cmd: unknown): Outgoing {
  const { kind, partition } = parsePart(part);
  return { kind, partition, cmd };
}

const releaseOf = (ref: SagaRef, at?: number): ReleaseCmd => (at === undefined ? { k: 'release', ...ref } : { k: 'release', ...ref, at });

/** One participant's answer moves the saga; when every part has settled, the order's outcome is decided and committed. */
function onAnswer(state: StateView, answer: SagaAnswer, ctx: ApplyContext): Effects {
  const msg = answer as SagaAnswer & { part: Part }; // the schema checked its shape: "<kind>:<partition>"
  const ref: SagaRef = { saga: msg.saga, order: msg.order, from: ctx.partition };
  const order = readOrder(state, msg.order);
  const current = order?.saga;
  if (!order || !current || current.id !== msg.saga) {
    // Not the running saga: a late copy of an answer, the answer to a copy of a hold re-sent after the saga ended, or
    // a participant's reminder. A successful hold that the paying saga did not count (by its `at`) is given back,
    // exactly that one; for a hold already given back or forgotten, the release finds nothing to undo. Whatever else
    // the participant holds for a saga that has ended is settled (the sale, which `paidBy` counted; a refusal; a hold
    // given back): it may forget that entry. The participant sends its answer until it does, so a lost forget is
    // sent again too.
    const counted = order?.paidBy?.saga === msg.saga && order.paidBy.ats.some(([part, at]) => part === msg.part && at === msg.at);
    if (msg.phase === 'hold' && msg.ok && !counted) return { send: [toPart(msg.part, releaseOf(ref, msg.at))] };
    return { send: [toPart(msg.part, { k: 'forget', sagas: [[msg.saga, msg.at]] } satisfies ForgetCmd)] };
  }
  const i = current.parts.findIndex((p) => p.part === msg.part);
  const was = current.parts[i];
  const parts = current.parts.slice();
  let failed = current.failed;
  const send: Outgoing[] = [];
  if (msg.phase === 'hold' && was?.st === 'pending') {
    if (msg.ok && !failed) parts[i] = { part: msg.part, st: 'held', at: msg.at };
    else if (msg.ok) {
      parts[i] = { part: msg.part, st: 'releasing', at: msg.at };
      send.push(toPart(msg.part, releaseOf(ref)));
    } else {
      parts[i] = { part: msg.part, st: 'rejected', at: msg.at };
      if (!failed) {
        failed = msg.detail === undefined ? { code: msg.code ?? 'internal' } : { code: msg.code ?? 'internal', detail: msg.detail };
        for (let j = 0; j < parts.length; j++) {
          const p = parts[j]!;
          if (p.st !== 'held') continue;
          parts[j] = { ...p, st: 'releasing' };
          send.push(toPart(p.part, releaseOf(ref)));
        }
      }
    }
  } else if (msg.phase === 'release' && was?.st === 'releasing') {
    parts[i] = { ...was, st: 'released' };
  } else {
    return {}; // a repeated answer: already counted
  }

  const succeeded = !failed && parts.every((p) => p.st === 'held');
  const settled = failed !== undefined && parts.every((p) => p.st === 'rejected' || p.st === 'released');
  if (!succeeded && !settled) {
    const saga: Saga = { ...current, parts };
    if (failed) saga.failed = failed;
    writeOrder(state, msg.order, { ...order, saga });
    return { send };
  }
  for (const p of parts) send.push(toPart(p.part, { k: 'forget', sagas: [[current.id, p.at!]] } satisfies ForgetCmd));
  const outcome: Reply = succeeded ? ok({ paid: true }) : fail(failed!.code, failed!.detail);
  const ended: Order = { ...withoutSaga(order), paid: succeeded };
  if (succeeded) ended.paidBy = { saga: current.id, ats: parts.map((p): [Part, number] => [p.part, p.at!]) };
  writeOrder(state, msg.order, ended);
  return { send, replies: current.waiters.map((to) => ({ to, reply: outcome })) };
}

export const order: Actor<OrderCmd, OrderQuery> = {
  kind: 'order',
  tables: [ORDERS],
  mergeOutgoing: mergeForgets,
  // A forget only lets a participant drop a ledger entry of a saga that has ended: one that waits, or is lost, leaves
  // the entry a little longer (its answer, re-sent after 10 s, brings the forget again). Sent late, many in one.
  deferrable: (cmd) => (cmd as { k?: unknown }).k === 'forget',
  reminders: { table: ORDERS, firstMs: SAGA_REMIND_FIRST_MS, maxMs: SAGA_REMIND_MAX_MS, startMs: 0, hurried: true, owes: (stored) => typeof stored === 'object' && stored !== null && (stored as Order).saga !== undefined, owed: sagaOwes },

  apply(state: StateView, cmd: OrderCmd, ctx: ApplyContext): Effects {
    switch (cmd.k) {
      case 'create':
        writeOrder(state, cmd.id, { user: cmd.user, items: [], total: 0, paid: false } satisfies Order);
        return { reply: ok({}) };
      case 'batchInit': {
        const total = 2 * cmd.price;
        if (!Number.isSafeInteger(total)) return { reply: fail('overflow', '2 * item_price') };
        const users = usersHere(cmd.nUsers, ctx);
        for (const id of ownShare(cmd, ctx)) {
          const next = seededRandom(cmd.seed ^ fnv1a(id)); // the same "random" lines on every replay
          const item = () => String(Math.floor(next() * cmd.nItems));
          const items: Order['items'] = [[item(), 1], [item(), 1]];
          const user = userHere(next, cmd.nUsers, ctx, users);
          writeOrder(state, id, { user, items, total, paid: false } satisfies Order);
        }
        return { reply: ok({}) };
      }
      case 'addItem': {
        const order = readOrder(state, cmd.id);
        if (!order) return { reply: fail('not_found', `order ${cmd.id}`) };
        if (order.paid) return { reply: fail('order_paid', `order ${cmd.id}`) };
        if (order.saga) return { reply: fail('checkout_in_progress', `order ${cmd.id}`) };
        if (order.items.length >= ORDER_LINES_MAX) return { reply: fail('order_full', `order ${cmd.id} has ${order.items.length} lines`) };
        const total = order.total + cmd.quantity * cmd.price;
        if (!Number.isSafeInteger(total)) return { reply: fail('overflow', `order ${cmd.id} total`) };
        writeOrder(state, cmd.id, { ...order, items: [...order.items, [cmd.item, cmd.quantity]], total } satisfies Order);
        return { reply: ok({ total }) };
      }
      case 'checkout': {
        const order = readOrder(state, cmd.id);
        if (!order) return { reply: fail('not_found', `order ${cmd.id}`) };
        if (order.paid) return { reply: ok({ paid: true }) };
        if (order.saga) {
          // One transaction per order: a second checkout waits for the running one's outcome.
          if (!ctx.replyTo) return {};
          if (order.saga.waiters.length >= SAGA_WAITERS_MAX) return { reply: fail('unavailable', `${SAGA_WAITERS_MAX} checkouts of order ${cmd.id} already wait`) };
          writeOrder(state, cmd.id, { ...order, saga: { ...order.saga, waiters: [...order.saga.waiters, ctx.replyTo] } });
          return {};
        }
        const { saga, send } = begin(order, cmd.id, ctx);
        writeOrder(state, cmd.id, { ...order, saga } satisfies Order);
        return { send };
      }
      case 'answer':
        return onAnswer(state, cmd, ctx);
    }
  },

  query(state: ReadView, query: OrderQuery): Reply {
    const order = readOrder(state, query.id);
    if (!order) return fail('not_found', `order ${query.id}`);
    return ok({ paid: order.paid, items: order.items, user: order.user, total: order.total });
  },
};
