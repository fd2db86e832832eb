import fc from 'fast-check';
import t from 'tap';
import { ACTORS } from '../../src/actors/index.js';
import { readOrder, SAGA_WAITERS_MAX } from '../../src/actors/order.js';
import type { LedgerEntry } from '../../src/actors/saga.js';
import type { ReadView, ReplyTo } from '../../src/actors/types.js';
import { Delivery, type Box } from '../../src/datapath/local-delivery.js';
import { Draft, type Tables } from '../../src/datapath/draft.js';
import type { Kind } from '../../src/config.js';
import { partitionOf } from '../../src/partitioning.js';
import type { Reply } from '../../src/protocol.js';

/**
 * The whole checkout protocol on pure actors, over a network that delivers saga messages in any order, delivers some
 * of them twice and loses some for good (the courier neither stores nor acknowledges them), while every partition's
 * reminders (the actors' `reminders`: what a running saga waits for, what a ledger entry answers) send again what
 * the committed state still owes, at any moment and whenever nothing else is in flight. That is every way the
 * courier, a crash after a commit (what it sent is lost, the state that sent it stays) and a new owner (it re-sends
 * from the loaded state) can fail a message. When nothing is in flight and nothing is owed any more, stock and credit
 * must be conserved, every waiting checkout answered with the committed outcome, and every ledger empty.
 */

const PARTITIONS = 3;
const KINDS: Kind[] = ['stock', 'payment', 'order'];

interface Msg {
  kind: Kind;
  partition: number;
  cmd: unknown;
  replyTo?: ReplyTo;
}

/**
 * Every partition of every kind in memory, each command delivered through the worker's own in-memory delivery
 * (datapath/local-delivery.ts) with nothing routed locally: every saga message it makes goes back to the test's network,
 * which decides when (and how often) it arrives.
 */
class World {
  readonly states = new Map<string, ReadView & { tables: Tables }>();
  private readonly seqs = new Map<string, number>();
  readonly replies = new Map<number, Reply[]>();
  private out: Msg[] = [];

  /** What every partition's committed state owes, as its reminders would send it now. */
  owed(): Msg[] {
    const out: Msg[] = [];
    for (const kind of KINDS) {
      const r = ACTORS[kind].reminders!;
      for (let partition = 0; partition < PARTITIONS; partition++) {
        for (const [key, value] of this.state(kind, partition).tables.get(r.table)!) {
          if (r.owes(value)) for (const o of r.owed(key, value, { partition, partitions: PARTITIONS })) out.push({ kind: o.kind, partition: o.partition, cmd: o.cmd });
        }
      }
    }
    return out;
  }
  private readonly delivery = new Delivery<Box>(PARTITIONS, () => undefined, {
    reply: (_box, to, reply) => this.answer(to, reply),
    send: (_box, o) => void this.out.push({ kind: o.kind, partition: o.partition, cmd: o.cmd }),
    failed: (_box, _cmd, _seq, _to, err) => {
      throw err;
    },
  });

  constructor() {
    for (const kind of KINDS) {
      for (let p = 0; p < PARTITIONS; p++) {
        const tables: Tables = new Map(ACTORS[kind].tables.map((t) => [t, new Map()]));
        this.states.set(`${kind}:${p}`, { tables, get: <T>(t: string, k: string) => tables.get(t)!.get(k) as T | undefined });
      }
    }
  }

  state(kind: Kind, partition: number) {
    return this.states.get(`${kind}:${partition}`)!;
  }

  deliver(msg: Msg): Msg[] {
    const key = `${msg.kind}:${msg.partition}`;
    const seq = (this.seqs.get(key) ?? 0) + 1;
    this.seqs.set(key, seq);
    const draft = new Draft(this.state(msg.kind, msg.partition).tables);
    const box: Box = { kind: msg.kind, partition: msg.partition, actor: ACTORS[msg.kind], draft, nextLocal: () => -seq };
    this.out = [];
    this.delivery.deliver(box, msg.cmd, seq, msg.replyTo);
    draft.publish();
    return this.out;
  }

  private answer(to: ReplyTo, reply: Reply) {
    const q = Number(to.split('.')[1]);
    this.replies.set(q, [...(this.replies.get(q) ?? []), reply]);
  }
}

const setup = fc.record({
  stock: fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 4, maxLength: 4 }),
  prices: fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 4, maxLength: 4 }),
  credit: fc.array(fc.integer({ min: 0, max: 12 }), { minLength: 3, maxLength: 3 }),
  orders: fc.array(
    fc.record({ user: fc.integer({ min: 0, max: 3 }), lines: fc.array(fc.tuple(fc.integer({ min: 0, max: 4 }), fc.integer({ min: 1, max: 3 })), { maxLength: 3 }) }),
    { minLength: 1, maxLength: 4 },
  ),
  checkouts: fc.array(fc.nat(), { minLength: 1, maxLength: 8 }),
  /** Per step: which message in flight, and what happens to it (see FATE). */
  schedule: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 6 })), { maxLength: 400 }),
});

/** What a step of the schedule does with the message it picks (other values: delivered once). */
const FATE = { duplicated: 2, lost: 3, remind: 4, late: 5 } as const;
/** Most copies and losses per run, so that every run ends. */
const FAULTS_MAX = 60;

t.test('checkout saga under reordering, duplicates and messages lost for good, with state-driven re-sends: conserved, all-or-nothing, every waiter answered, every ledger emptied', async (t) => {
  let paidRuns = 0;
  let refusedRuns = 0;
  let lossRuns = 0;
  let remindRuns = 0;
  let lateRuns = 0;
  fc.assert(
    fc.property(setup, ({ stock, prices, credit, orders, checkouts, schedule }) => {
      const world = new World();
      const boot = (kind: Kind, id: string, cmd: unknown) => world.deliver({ kind, partition: partitionOf(id, PARTITIONS), cmd });
      // Item "4" and user "3" are never created: lines and orders that name them must be refused.
      stock.forEach((s, i) => {
        boot('stock', String(i), { k: 'create', id: String(i), price: prices[i] });
        if (s > 0) boot('stock', String(i), { k: 'add', id: String(i), amount: s });
      });
      credit.forEach((c, i) => {
        boot('payment', String(i), { k: 'create', id: String(i) });
        if (c > 0) boot('payment', String(i), { k: 'addFunds', id: String(i), amount: c });
      });
      orders.forEach((o, i) => {
        const id = `o${i}`;
        boot('order', id, { k: 'create', id, user: String(o.user) });
        for (const [item, quantity] of o.lines) boot('order', id, { k: 'addItem', id, item: String(item), quantity, price: prices[item] ?? 1 });
      });

      const network: Msg[] = checkouts.map((c, q) => {
        const id = `o${c % orders.length}`;
        return { kind: 'order', partition: partitionOf(id, PARTITIONS), cmd: { k: 'checkout', id }, replyTo: `client.${q}` };
      });
      let dups = 0;
      let losses = 0;
      let reminded = 0;
      let late = 0;
      /** Every saga message delivered so far: a copy of any of them may turn up again, however late. */
      const past: Msg[] = [];
      for (let step = 0; ; step++) {
        if (step > 20_000) throw new Error('the saga did not settle');
        const [pick, fate] = schedule[step] ?? [0, 0];
        // The partitions' reminders: at any moment, and always when nothing else is in flight (a sender's timer).
        if (fate === FATE.remind || network.length === 0) {
          const owed = world.owed();
          if (owed.length > 0) reminded++;
          network.push(...owed);
          if (network.length === 0) break; // nothing in flight, nothing owed: settled
        }
        const [msg] = network.splice(pick % network.length, 1);
        // Lost for good: a saga message only. A client's command is read from its stream in order from the cursor, so
        // one that is not applied comes again before any later command of its partition, never after them.
        if (fate === FATE.lost && losses < FAULTS_MAX && !msg!.replyTo) {
          losses++;
          continue;
        }
        // Delivered twice. Not a client's checkout: its stream message is applied once (the cursor and the message
        // id), and each of its copies would be one more waiter.
        if (fate === FATE.duplicated && dups < FAULTS_MAX && !msg!.replyTo) {
          network.push(msg!);
          dups++;
        }
        // A copy of a message delivered long ago (held up in a connection that was cut, sent by an owner that had
        // lost its partition without knowing it) turns up now, after whatever has happened since.
        if (fate === FATE.late && late < FAULTS_MAX && past.length > 0) {
          network.push(past[pick % past.length]!);
          late++;
        }
        if (!msg!.replyTo) past.push(msg!);
        network.push(...world.deliver(msg!));
      }
      if (reminded > 0) remindRuns++;
      if (late > 0) lateRuns++;
      if (losses > 0) lossRuns++;

      const sold = new Map<string, number>();
      const charged = new Map<string, number>();
      orders.forEach((_o, i) => {
        const id = `o${i}`;
        const order = readOrder(world.state('order', partitionOf(id, PARTITIONS)), id)!;
        if (order.saga) throw new Error(`order ${id} still has a saga in flight`);
        const answers = checkouts.flatMap((c, q): (Reply | null)[] => (c % orders.length === i ? (world.replies.get(q) ?? [null]) : []));
        for (const a of answers) {
          if (a === null) throw new Error(`a checkout of ${id} was never answered`);
          if (a.ok !== order.paid) throw new Error(`checkout of ${id} answered ${JSON.stringify(a)} but paid is ${order.paid}`);
        }
        if (!order.paid) return;
        for (const [item, quantity] of order.items) sold.set(item, (sold.get(item) ?? 0) + quantity);
        charged.set(order.user, (charged.get(order.user) ?? 0) + order.total);
      });
      if ([...world.replies.values()].some((r) => r.length !== 1)) throw new Error('a checkout was answered twice');
      stock.forEach((initial, i) => {
        const id = String(i);
        const now = world.state('stock', partitionOf(id, PARTITIONS)).get<{ stock: number }>('items', id)!.stock;
        if (now + (sold.get(id) ?? 0) !== initial) throw new Error(`item ${id}: ${now} left + ${sold.get(id) ?? 0} sold != ${initial}`);
      });
      credit.forEach((initial, i) => {
        const id = String(i);
        const now = world.state('payment', partitionOf(id, PARTITIONS)).get<number>('users', id)!;
        if (now + (charged.get(id) ?? 0) !== initial) throw new Error(`user ${id}: ${now} left + ${charged.get(id) ?? 0} charged != ${initial}`);
      });
      for (const [name, s] of world.states) {
        for (const [saga, entry] of s.tables.get('ledger') ?? []) throw new Error(`${name} still has the ledger entry ${JSON.stringify(entry as LedgerEntry<unknown>)} of saga ${saga}`);
      }
      if (sold.size > 0) paidRuns++;
      if ([...world.replies.values()].some((r) => r[0] && !r[0].ok)) refusedRuns++;
    }),
    { numRuns: 20000 },
  );
  t.ok(paidRuns > 20, `runs where some checkout paid: ${paidRuns}`);
  t.ok(refusedRuns > 20, `runs where some checkout was refused: ${refusedRuns}`);
  t.ok(lossRuns > 1000, `runs where some message was lost: ${lossRuns}`);
  t.ok(remindRuns > 1000, `runs where a reminder sent something again: ${remindRuns}`);
  t.ok(lateRuns > 1000, `runs where a copy of an old message turned up late: ${lateRuns}`);
});

t.test('a release that overtakes its hold leaves a tombstone: the late hold takes nothing', async (t) => {
  const world = new World();
  const p = partitionOf('0', PARTITIONS);
  world.deliver({ kind: 'stock', partition: p, cmd: { k: 'create', id: '0', price: 1 } });
  world.deliver({ kind: 'stock', partition: p, cmd: { k: 'add', id: '0', amount: 5 } });
  const ref = { saga: 's1', order: 'o', from: 0 };
  world.deliver({ kind: 'stock', partition: p, cmd: { k: 'release', ...ref } });
  const [answer] = world.deliver({ kind: 'stock', partition: p, cmd: { k: 'reserve', ...ref, lines: [['0', 2]] } });
  t.match(answer!.cmd, { k: 'answer', ok: false, code: 'checkout_aborted' });
  t.equal(world.state('stock', p).get<{ stock: number }>('items', '0')!.stock, 5);
});

t.test('a repeated hold gets the recorded answer and takes nothing more', async (t) => {
  const world = new World();
  const p = partitionOf('1', PARTITIONS);
  world.deliver({ kind: 'payment', partition: p, cmd: { k: 'create', id: '1' } });
  world.deliver({ kind: 'payment', partition: p, cmd: { k: 'addFunds', id: '1', amount: 10 } });
  const debit = { k: 'debit', saga: 's', order: 'o', from: 0, user: '1', amount: 4 };
  const [first] = world.deliver({ kind: 'payment', partition: p, cmd: debit });
  const [second] = world.deliver({ kind: 'payment', partition: p, cmd: debit });
  t.match(first!.cmd, { ok: true });
  t.same(second!.cmd, first!.cmd, 'the recorded answer');
  t.equal(world.state('payment', p).get<number>('users', '1')!, 6);
});

t.test('checkouts waiting on one running saga are bounded', async (t) => {
  const world = new World();
  const p = partitionOf('o', PARTITIONS);
  world.deliver({ kind: 'payment', partition: partitionOf('u', PARTITIONS), cmd: { k: 'create', id: 'u' } });
  world.deliver({ kind: 'order', partition: p, cmd: { k: 'create', id: 'o', user: 'u' } });
  for (let q = 0; q < SAGA_WAITERS_MAX; q++) world.deliver({ kind: 'order', partition: p, cmd: { k: 'checkout', id: 'o' }, replyTo: `client.${q}` });
  t.equal(world.replies.size, 0, 'all of them wait for the saga');
  world.deliver({ kind: 'order', partition: p, cmd: { k: 'checkout', id: 'o' }, replyTo: `client.${SAGA_WAITERS_MAX}` });
  t.match(world.replies.get(SAGA_WAITERS_MAX), [{ ok: false, code: 'unavailable' }], 'one more is told to retry');
});

t.test('a top-up that could overflow what a running saga gives back is refused; the release then always applies', async (t) => {
  const world = new World();
  const MAX = Number.MAX_SAFE_INTEGER;
  const stockP = partitionOf('i', PARTITIONS);
  const userP = partitionOf('u', PARTITIONS);
  const orderP = partitionOf('o', PARTITIONS);
  world.deliver({ kind: 'stock', partition: stockP, cmd: { k: 'create', id: 'i', price: 10 } });
  world.deliver({ kind: 'payment', partition: userP, cmd: { k: 'create', id: 'u' } });
  world.deliver({ kind: 'payment', partition: userP, cmd: { k: 'addFunds', id: 'u', amount: 30 } });
  world.deliver({ kind: 'order', partition: orderP, cmd: { k: 'create', id: 'o', user: 'u' } });
  world.deliver({ kind: 'order', partition: orderP, cmd: { k: 'addItem', id: 'o', item: 'i', quantity: 2, price: 10 } });
  // The checkout asks for a reserve (no stock: refused) and a debit of 20; the debit is applied first.
  const [reserve, debit] = world.deliver({ kind: 'order', partition: orderP, cmd: { k: 'checkout', id: 'o' }, replyTo: 'client.0' });
  const [held] = world.deliver(debit!);
  t.same(world.state('payment', userP).get('users', 'u'), 10, 'credit 10, and 20 held by the saga');

  // While the saga holds 20, the user's credit may rise only to 2^53-1 minus what the saga may give back.
  world.deliver({ kind: 'payment', partition: userP, cmd: { k: 'addFunds', id: 'u', amount: MAX - 10 }, replyTo: 'client.1' });
  t.match(world.replies.get(1), [{ ok: false, code: 'overflow' }], 'refused: credit plus the held 20 would pass 2^53-1');
  t.same(world.state('payment', userP).get('users', 'u'), 10, 'and nothing changed');
  const fits = MAX - 30;
  world.deliver({ kind: 'payment', partition: userP, cmd: { k: 'addFunds', id: 'u', amount: fits } });
  t.same(world.state('payment', userP).get('users', 'u'), MAX - 20, 'the largest top-up that leaves room for the refund');

  // The stock refuses; the coordinator releases the debit, which must apply.
  const [refusal] = world.deliver(reserve!);
  const releases = [...world.deliver(held!), ...world.deliver(refusal!)];
  const release = releases.find((m) => (m.cmd as { k: string }).k === 'release')!;
  const [released] = world.deliver(release);
  for (const m of world.deliver(released!)) world.deliver(m); // the saga settles and forgets
  t.same(world.state('payment', userP).get('users', 'u'), MAX, 'refunded to exactly 2^53-1');
  t.match(world.replies.get(0), [{ ok: false, code: 'insufficient_stock' }], 'the client hears the refusal');
  t.same(readOrder(world.state('order', orderP), 'o')?.saga, undefined, 'the saga has ended');
});

/** Delivers everything in flight, and what the partitions' reminders send, until nothing is in flight or owed. */
function settle(world: World, msgs: Msg[]): void {
  const network = [...msgs];
  for (let n = 0; n < 10_000; n++) {
    if (network.length === 0) network.push(...world.owed());
    const msg = network.shift();
    if (!msg) return;
    network.push(...world.deliver(msg));
  }
  throw new Error('did not settle');
}

t.test('a release of one hold, arriving when a later hold of the same saga is in the ledger, names the hold it was for: the later one is given back, not forgotten', async (t) => {
  const world = new World();
  const item = '0';
  const stockP = partitionOf(item, PARTITIONS);
  const orderP = partitionOf('o', PARTITIONS);
  world.deliver({ kind: 'stock', partition: stockP, cmd: { k: 'create', id: item, price: 1 } });
  world.deliver({ kind: 'stock', partition: stockP, cmd: { k: 'add', id: item, amount: 5 } });
  world.deliver({ kind: 'payment', partition: partitionOf('u', PARTITIONS), cmd: { k: 'create', id: 'u' } });
  world.deliver({ kind: 'payment', partition: partitionOf('u', PARTITIONS), cmd: { k: 'addFunds', id: 'u', amount: 10 } });
  world.deliver({ kind: 'order', partition: orderP, cmd: { k: 'create', id: 'o', user: 'u' } });
  world.deliver({ kind: 'order', partition: orderP, cmd: { k: 'addItem', id: 'o', item, quantity: 1, price: 1 } });
  const holds = world.deliver({ kind: 'order', partition: orderP, cmd: { k: 'checkout', id: 'o' }, replyTo: 'client.0' });
  const reserve = holds.find((m) => m.kind === 'stock')!;
  settle(world, holds);
  t.match(world.replies.get(0), [{ ok: true }], 'paid');
  const units = () => world.state('stock', stockP).get<{ stock: number }>('items', item)!.stock;
  t.equal(units(), 4);

  // A copy of the reserve, late: applied anew, given back (the release kept for later, as if duplicated), forgotten.
  const [answer1] = world.deliver(reserve);
  const [release1] = world.deliver(answer1!);
  t.match(release1!.cmd, { k: 'release', at: (answer1!.cmd as { at: number }).at });
  settle(world, world.deliver(release1!));
  t.equal(units(), 4, 'the late copy took nothing for good');
  // Another late copy: applied anew, holds a unit; then the duplicate of the first release arrives.
  world.deliver(reserve);
  t.equal(units(), 3, 'the second late copy holds a unit');
  const [released] = world.deliver(release1!);
  t.match(released!.cmd, { k: 'answer', phase: 'release', at: (release1!.cmd as { at: number }).at }, 'the answer names the hold the release was for');
  settle(world, [released!]);
  t.equal(units(), 4, 'the unit the second copy held is back: nothing lost, nothing sold twice');
  t.same([...world.state('stock', stockP).tables.get('ledger')!], [], 'and the ledger is empty');
});
