import fc from 'fast-check';
import t from 'tap';
import { order, readOrder } from '../../src/actors/order.js';
import { payment, type PaymentCmd } from '../../src/actors/payment.js';
import { stock, type StockCmd } from '../../src/actors/stock.js';
import type { ApplyContext } from '../../src/actors/types.js';
import { fnv1a, partitionOf } from '../../src/partitioning.js';
import { memoryState } from '../helpers/memory-state.js';

const ctx = (seq: number, partition = 0, partitions = 1): ApplyContext => ({ partition, partitions, seq });
const MAX = Number.MAX_SAFE_INTEGER;

t.test('fnv1a is the standard 32-bit FNV-1a and partitions are stable', async (t) => {
  t.equal(fnv1a(''), 0x811c9dc5);
  t.equal(fnv1a('a'), 0xe40c292c);
  t.equal(fnv1a('foobar'), 0xbf9cf968);
  t.equal(partitionOf('foobar', 32), 0xbf9cf968 % 32);
});

const ids = fc.constantFrom('a', 'b', 'c');
const amount = fc.oneof(fc.integer({ min: 0, max: 20 }), fc.constant(MAX), fc.integer({ min: 0, max: MAX }));
type StockKeyed = Extract<StockCmd, { k: 'create' | 'add' | 'subtract' }>;
const stockCmd: fc.Arbitrary<StockKeyed> = fc.oneof(
  fc.record({ k: fc.constant('create' as const), id: ids, price: fc.integer({ min: 0, max: 100 }) }),
  fc.record({ k: fc.constant('add' as const), id: ids, amount }),
  fc.record({ k: fc.constant('subtract' as const), id: ids, amount }),
);
/** Command sequences in which some commands are delivered again, anywhere later or earlier (a duplicated command id). */
const withDuplicates = <C>(cmd: fc.Arbitrary<C>) =>
  fc.tuple(fc.array(cmd, { minLength: 1, maxLength: 150 }), fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 50 })).map(([cmds, dups]) => {
    const out = [...cmds];
    for (const [from, to] of dups) out.splice(to % (out.length + 1), 0, cmds[from % cmds.length]!);
    return out;
  });

t.test('stock: never negative, and stock equals the sum of the applied changes', async (t) => {
  fc.assert(
    fc.property(withDuplicates(stockCmd), (cmds) => {
      const state = memoryState(stock.tables);
      const model = new Map<string, number>();
      cmds.forEach((cmd, seq) => {
        const { reply } = stock.apply(state, cmd, ctx(seq + 1));
        if (!reply) throw new Error('every stock command replies');
        const before = model.get(cmd.id);
        if (cmd.k === 'create') {
          if (!reply.ok) throw new Error('create never fails');
          model.set(cmd.id, 0);
        } else if (before === undefined) {
          if (reply.ok || reply.code !== 'not_found') throw new Error(`unknown item must be not_found, got ${JSON.stringify(reply)}`);
        } else if (reply.ok) {
          const next = cmd.k === 'add' ? before + cmd.amount : before - cmd.amount;
          if (next < 0 || next > MAX) throw new Error(`accepted ${cmd.k} left stock at ${next}`);
          if ((reply.v as { stock: number }).stock !== next) throw new Error('reply disagrees with the applied change');
          model.set(cmd.id, next);
        } else {
          const wouldBe = cmd.k === 'add' ? before + cmd.amount : before - cmd.amount;
          const expected = cmd.k === 'add' ? 'overflow' : 'insufficient_stock';
          if (reply.code !== expected || (wouldBe >= 0 && wouldBe <= MAX)) throw new Error(`wrong refusal ${reply.code} for ${cmd.k}`);
        }
        const item = state.get<{ stock: number }>('items', cmd.id);
        if (item && (item.stock < 0 || !Number.isSafeInteger(item.stock))) throw new Error('stock out of range');
      });
      for (const [id, expected] of model) {
        if (state.get<{ stock: number }>('items', id)?.stock !== expected) throw new Error(`item ${id} drifted from its applied changes`);
      }
    }),
    { numRuns: 300 },
  );
  t.pass('300 random command sequences with duplicates conserved stock');
});

type PaymentKeyed = Extract<PaymentCmd, { k: 'create' | 'addFunds' | 'pay' }>;
const paymentCmd: fc.Arbitrary<PaymentKeyed> = fc.oneof(
  fc.record({ k: fc.constant('create' as const), id: ids }),
  fc.record({ k: fc.constant('addFunds' as const), id: ids, amount }),
  fc.record({ k: fc.constant('pay' as const), id: ids, amount }),
);

t.test('payment: credit never negative, and credit equals the sum of the applied changes', async (t) => {
  fc.assert(
    fc.property(withDuplicates(paymentCmd), (cmds) => {
      const state = memoryState(payment.tables);
      const model = new Map<string, number>();
      cmds.forEach((cmd, seq) => {
        const { reply } = payment.apply(state, cmd, ctx(seq + 1));
        if (!reply) throw new Error('every payment command replies');
        if (cmd.k === 'create') return void model.set(cmd.id, 0);
        const before = model.get(cmd.id);
        if (!reply.ok) {
          if (before === undefined && reply.code !== 'not_found') throw new Error('unknown user must be not_found');
          return;
        }
        if (before === undefined) throw new Error('unknown user accepted');
        const next = cmd.k === 'addFunds' ? before + cmd.amount : before - cmd.amount;
        if (next < 0 || next > MAX) throw new Error(`accepted ${cmd.k} left credit at ${next}`);
        model.set(cmd.id, next);
      });
      for (const [id, expected] of model) {
        const credit = state.get<number>('users', id);
        if (credit !== expected) throw new Error(`user ${id}: credit ${credit}, applied changes say ${expected}`);
      }
    }),
    { numRuns: 300 },
  );
  t.pass('300 random command sequences with duplicates conserved credit');
});

t.test('refusals change nothing', async (t) => {
  const state = memoryState(stock.tables);
  stock.apply(state, { k: 'create', id: 'x', price: 3 }, ctx(1));
  stock.apply(state, { k: 'add', id: 'x', amount: 2 }, ctx(2));
  t.match(stock.apply(state, { k: 'subtract', id: 'x', amount: 3 }, ctx(3)).reply, { ok: false, code: 'insufficient_stock' });
  t.match(stock.apply(state, { k: 'add', id: 'x', amount: MAX }, ctx(4)).reply, { ok: false, code: 'overflow' });
  t.match(stock.apply(state, { k: 'add', id: 'nope', amount: 1 }, ctx(5)).reply, { ok: false, code: 'not_found' });
  t.same(stock.query(state, { k: 'find', id: 'x' }), { ok: true, v: { stock: 2, price: 3 } });
  t.same(stock.query(state, { k: 'find', id: 'nope' }), { ok: false, code: 'not_found', detail: 'item nope' });
});

t.test('batch_init: every id 0..n-1 is created by exactly one partition, with the given values', async (t) => {
  const partitions = 7;
  const n = 1000;
  const seen = new Map<string, number>();
  for (let p = 0; p < partitions; p++) {
    const state = memoryState(payment.tables);
    payment.apply(state, { k: 'batchInit', from: 0, to: n, credit: 42 }, ctx(1, p, partitions));
    for (const [id, user] of state.tables.get('users')!) {
      t.equal(partitionOf(id, partitions), p);
      t.equal(user, 42);
      seen.set(id, (seen.get(id) ?? 0) + 1);
    }
  }
  t.equal(seen.size, n);
  t.ok([...seen.values()].every((c) => c === 1), 'no id created twice');
});

t.test('orders batch_init: each order\'s user hashes to the order\'s partition number, drawn or listed; any user when none does', async (t) => {
  const partitions = 7;
  for (const nUsers of [1000, 20, 1]) {
    let placed = 0;
    let orders = 0;
    const users = new Set<string>();
    for (let p = 0; p < partitions; p++) {
      const state = memoryState(order.tables);
      order.apply(state, { k: 'batchInit', from: 0, to: 300, nItems: 5, nUsers, price: 1, seed: 7 }, ctx(1, p, partitions));
      for (const id of state.tables.get('orders')!.keys()) {
        const { user } = readOrder(state, id)!;
        t.ok(Number(user) >= 0 && Number(user) < nUsers, 'a user of 0..n_users-1');
        users.add(user);
        orders++;
        if (partitionOf(user, partitions) === p) placed++;
      }
    }
    t.equal(orders, 300);
    // With 1 user, only that user's partition can place its orders; the others take any (the only) user.
    const expected = nUsers === 1 ? [...Array(300).keys()].filter((i) => partitionOf(String(i), partitions) === partitionOf('0', partitions)).length : 300;
    t.equal(placed, expected, `n_users ${nUsers}: ${placed} of 300 orders on their user's partition`);
    if (nUsers >= 20) t.ok(users.size > Math.min(nUsers, 300) / 2, `n_users ${nUsers}: the users spread (${users.size} different)`);
  }
});

t.test('replay: the same commands on the same state give the same effects', async (t) => {
  fc.assert(
    fc.property(fc.array(stockCmd, { maxLength: 100 }), (cmds) => {
      const run = () => {
        const state = memoryState(stock.tables);
        const replies = cmds.map((c, i) => stock.apply(state, c, ctx(i + 1)));
        return JSON.stringify([replies, [...state.tables.get('items')!]]);
      };
      return run() === run();
    }),
    { numRuns: 100 },
  );
  t.pass('replays are identical');
});

t.test('bundles stay within BUNDLE_MAX commands and BUNDLE_BYTES_MAX bytes, in order', async (t) => {
  const { bundles, unbundle, BUNDLE_MAX, BUNDLE_BYTES_MAX } = await import('../../src/protocol.js');
  const { decode } = await import('../../src/codec.js');
  const small = Array.from({ length: 2 * BUNDLE_MAX + 3 }, (_, i) => ({ c: { k: 'add', id: String(i), amount: 1 } }));
  const big = Array.from({ length: 40 }, (_, i) => ({ c: { k: 'pad', i, pad: 'x'.repeat(20_000) } }));
  for (const envelopes of [small, big]) {
    const out = bundles(envelopes);
    t.ok(out.length > 1, `${envelopes.length} envelopes split into ${out.length} messages`);
    t.ok(out.every((d) => d.length <= BUNDLE_BYTES_MAX), 'none over the byte bound');
    const back = out.flatMap((d) => unbundle(decode(d)));
    t.same(back, envelopes, 'in order');
    t.ok(out.every((d) => unbundle(decode(d)).length <= BUNDLE_MAX));
  }
});

t.test('joined bundles decode to the commands of their parts, in order, whatever the array header sizes', async (t) => {
  const { bundles, bundleCount, joinBundles, unbundle } = await import('../../src/protocol.js');
  const { decode } = await import('../../src/codec.js');
  const envelope = (i: number) => ({ c: { k: 'forget', sagas: [[`o${i}#1`, i]] }, ...(i % 3 === 0 ? { r: `_reply.g.${i}` } : {}) });
  await fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: 1024 }), { minLength: 1, maxLength: 6 }), (sizes) => {
      let next = 0;
      const parts = sizes.map((n) => Array.from({ length: n }, () => envelope(next++)));
      // A part of one envelope is encoded bare (not in an array).
      const encoded = parts.flatMap((p) => bundles(p));
      const joined = joinBundles(encoded);
      const back = unbundleAll(decode(joined));
      return bundleCount(joined) === next && back.length === next && back.every((e, i) => JSON.stringify(e) === JSON.stringify(envelope(i)));
    }),
    { numRuns: 60 },
  );
  // Headers of every size: 15 and 16 (fixarray / array16), 65,535 and 65,536 (array16 / array32).
  for (const total of [15, 16, 65_535, 65_536]) {
    const parts = [];
    for (let made = 0; made < total; made += 1024) parts.push(bundles(Array.from({ length: Math.min(1024, total - made) }, (_, i) => envelope(made + i)))[0]!);
    const joined = joinBundles(parts);
    t.equal(bundleCount(joined), total, `${total} commands counted from the header`);
    t.equal(unbundleAll(decode(joined)).length, total, `${total} commands decoded`);
  }
  function unbundleAll(msg: unknown): unknown[] {
    return Array.isArray(msg) && msg.length > 1024 ? msg : unbundle(msg as never);
  }
});

t.test("a batch's forgets to one partition become one command, after its other commands, with the same effect", async (t) => {
  const { mergeForgets, LEDGER } = await import('../../src/actors/saga.js');
  const release = { k: 'release', saga: 'b', order: 'o', from: 0 };
  const merged = mergeForgets([{ k: 'forget', sagas: [['a', 1]] }, release, { k: 'forget', sagas: [['c', 3]] }, { k: 'forget', sagas: [['d', 9]] }]);
  t.same(merged, [release, { k: 'forget', sagas: [['a', 1], ['c', 3], ['d', 9]] }]);
  const alone = [release];
  t.equal(mergeForgets(alone), alone, 'nothing to merge: the list itself');
  const { FORGET_MERGED_MAX } = await import('../../src/actors/saga.js');
  const many = Array.from({ length: FORGET_MERGED_MAX + 2 }, (_, i) => ({ k: 'forget', sagas: [[`s${i}`, i]] }));
  const chunks = mergeForgets(many) as { sagas: unknown[] }[];
  t.same(chunks.map((c) => c.sagas.length), [FORGET_MERGED_MAX, 2], 'many forgets (a sweep\'s worth, kept back): as few commands as fit in a parcel');
  t.same(chunks.flatMap((c) => c.sagas), many.flatMap((c) => c.sagas), 'every saga, once, in order');

  // Entries of ended sagas go; one whose `at` differs (a hold of the same saga applied anew later) stays.
  const ctx: ApplyContext = { partition: 0, partitions: 1, seq: 1 };
  const state = memoryState(stock.tables);
  stock.apply(state, { k: 'create', id: 'i', price: 1 }, ctx);
  stock.apply(state, { k: 'add', id: 'i', amount: 10 }, ctx);
  for (const [saga, seq] of [['a', 1], ['c', 3], ['d', 5]] as const) stock.apply(state, { k: 'reserve', saga, order: 'o', from: 0, lines: [['i', 1]] }, { ...ctx, seq });
  stock.apply(state, merged.at(-1) as StockCmd, ctx);
  t.same([...state.tables.get(LEDGER)!.keys()], ['d'], 'a and c forgotten; d was held at 5, not 9');
  t.equal(state.get<{ stock: number }>('items', 'i')!.stock, 7, 'what they held stays sold');
});

t.test('an order holds at most ORDER_LINES_MAX lines', async (t) => {
  const { order, ORDER_LINES_MAX } = await import('../../src/actors/order.js');
  const state = memoryState(order.tables);
  order.apply(state, { k: 'create', id: 'o', user: 'u' }, ctx(1));
  for (let i = 0; i < ORDER_LINES_MAX; i++) order.apply(state, { k: 'addItem', id: 'o', item: 'i', quantity: 1, price: 1 }, ctx(2 + i));
  t.match(order.apply(state, { k: 'addItem', id: 'o', item: 'i', quantity: 1, price: 1 }, ctx(9999)).reply, { ok: false, code: 'order_full' });
});

t.test('orders without a saga are kept as flat strings and read back exactly; ids with separators stay objects', async (t) => {
  const { order } = await import('../../src/actors/order.js');
  const state = memoryState(order.tables);
  let seq = 1;
  const ids = fc.string({ minLength: 1, maxLength: 8, unit: fc.constantFrom('a', '7', '|', ':', ',', ' ', 'é') });
  await fc.assert(
    fc.property(ids, fc.array(fc.tuple(ids, fc.integer({ min: 1, max: 1000 }), fc.integer({ min: 0, max: 1e6 })), { maxLength: 5 }), (user, lines) => {
      const id = `o${seq}`;
      order.apply(state, { k: 'create', id, user }, ctx(seq++));
      let total = 0;
      for (const [item, quantity, price] of lines) {
        order.apply(state, { k: 'addItem', id, item, quantity, price }, ctx(seq++));
        total += quantity * price;
      }
      const found = order.query(state, { k: 'find', id });
      const expected = { paid: false, items: lines.map(([item, quantity]) => [item, quantity]), user, total };
      const stored = state.get('orders', id);
      const plain = ![user, ...lines.map(([item]) => item)].some((s) => /[|:,]/.test(s));
      return JSON.stringify(found) === JSON.stringify({ ok: true, v: expected }) && typeof stored === (plain ? 'string' : 'object');
    }),
    { numRuns: 300 },
  );
  t.pass('round trip');
});

t.test('a paid order is kept as a flat string with the saga that paid it, and its paidBy still tells late answers apart', async (t) => {
  const { order } = await import('../../src/actors/order.js');
  const state = memoryState(order.tables);
  order.apply(state, { k: 'create', id: 'o', user: 'u' }, ctx(1));
  order.apply(state, { k: 'addItem', id: 'o', item: 'i', quantity: 2, price: 3 }, ctx(2));
  const begun = order.apply(state, { k: 'checkout', id: 'o' }, { ...ctx(3), replyTo: 'r' });
  const saga = (begun.send![0]!.cmd as { saga: string }).saga;
  const held = (part: 'stock:0' | 'payment:0', at: number) => ({ k: 'answer', saga, order: 'o', part, phase: 'hold', ok: true, at }) as const;
  t.same(order.apply(state, held('stock:0', 40), ctx(4)), { send: [] }, 'one part held: the saga waits');
  t.same(order.apply(state, held('payment:0', -7), ctx(5)).replies, [{ to: 'r', reply: { ok: true, v: { paid: true } } }]);
  t.equal(state.get('orders', 'o'), `1|6|u|i:2|${saga}|stock:0=40,payment:0=-7`, 'paid, with the ledger entry of each part');
  t.same(order.query(state, { k: 'find', id: 'o' }), { ok: true, v: { paid: true, items: [['i', 2]], user: 'u', total: 6 } });
  t.same(order.apply(state, held('stock:0', 40), ctx(6)).send, [{ kind: 'stock', partition: 0, cmd: { k: 'forget', sagas: [[saga, 40]] } }], 'a late copy of a counted answer: its entry (the sale) may be forgotten');
  t.same(order.apply(state, held('stock:0', 41), ctx(7)).send, [{ kind: 'stock', partition: 0, cmd: { k: 'release', saga, order: 'o', from: 0, at: 41 } }], 'a hold applied anew after the saga ended is given back');
  t.equal(state.get('orders', 'o'), `1|6|u|i:2|${saga}|stock:0=40,payment:0=-7`, 'neither changes the order');
});

t.test('an ended saga: every answer that is not a hold to give back is answered with a forget of exactly that entry', async (t) => {
  const { order } = await import('../../src/actors/order.js');
  const state = memoryState(order.tables);
  order.apply(state, { k: 'create', id: 'o', user: 'u' }, ctx(1));
  order.apply(state, { k: 'addItem', id: 'o', item: 'i', quantity: 1, price: 3 }, ctx(2));
  const saga = 'o#99'; // not the order's saga: none runs
  const answer = (over: object) => ({ k: 'answer', saga, order: 'o', part: 'payment:0', phase: 'hold', ok: true, at: 5, ...over }) as const;
  const forget = [{ kind: 'payment', partition: 0, cmd: { k: 'forget', sagas: [[saga, 5]] } }];
  t.same(order.apply(state, answer({ ok: false, code: 'insufficient_credit' }), ctx(3)).send, forget, 'a refusal');
  t.same(order.apply(state, answer({ phase: 'release' }), ctx(4)).send, forget, 'a hold given back (its tombstone)');
  t.same(order.apply(state, { k: 'answer', saga: 'x#1', order: 'nobody', part: 'stock:1', phase: 'release', ok: true, at: -2 }, ctx(5)).send, [{ kind: 'stock', partition: 1, cmd: { k: 'forget', sagas: [['x#1', -2]] } }], 'an order that does not exist');
  t.same(order.apply(state, answer({}), ctx(6)).send, [{ kind: 'payment', partition: 0, cmd: { k: 'release', saga, order: 'o', from: 0, at: 5 } }], 'a hold nobody counted is given back first');
});

t.test("a running saga owes, from the order alone, the holds not yet answered and the releases not yet confirmed; an ended one nothing", async (t) => {
  const { order } = await import('../../src/actors/order.js');
  const { partitionOf } = await import('../../src/partitioning.js');
  const state = memoryState(order.tables);
  const partitions = 4;
  const at = (seq: number) => ({ partition: 2, partitions, seq });
  order.apply(state, { k: 'create', id: 'o', user: 'u' }, at(1));
  for (const item of ['a', 'b', 'c']) order.apply(state, { k: 'addItem', id: 'o', item, quantity: 1, price: 2 }, at(2));
  const begun = order.apply(state, { k: 'checkout', id: 'o' }, { ...at(3), replyTo: 'r' });
  const owed = () => order.reminders!.owed('o', state.get('orders', 'o'), { partition: 2, partitions });
  t.ok(order.reminders!.owes(state.get('orders', 'o')), 'an order with a saga running may owe');
  t.same(owed(), begun.send, 'before any answer: every hold, the same as the checkout sent');
  const saga = (begun.send![0]!.cmd as { saga: string }).saga;
  const payment = `payment:${partitionOf('u', partitions)}` as const;
  order.apply(state, { k: 'answer', saga, order: 'o', part: payment, phase: 'hold', ok: true, at: 9 }, at(4));
  t.same(owed(), begun.send!.filter((o) => o.kind === 'stock'), 'the debit answered: the reserves only');
  const stockParts = begun.send!.filter((o) => o.kind === 'stock').map((o) => `stock:${o.partition}` as const);
  order.apply(state, { k: 'answer', saga, order: 'o', part: stockParts[0]!, phase: 'hold', ok: false, at: 3, code: 'insufficient_stock' }, at(5));
  const left = owed();
  t.same(left.map((o) => (o.cmd as { k: string }).k).sort(), [...stockParts.slice(1).map(() => 'reserve'), 'release'].sort(), 'refused: the unanswered reserves still go, and the debit is released');
  t.same(left.find((o) => (o.cmd as { k: string }).k === 'release'), { kind: 'payment', partition: partitionOf('u', partitions), cmd: { k: 'release', saga, order: 'o', from: 2 } });
  for (const part of stockParts.slice(1)) order.apply(state, { k: 'answer', saga, order: 'o', part, phase: 'hold', ok: false, at: 1, code: 'insufficient_stock' }, at(6));
  order.apply(state, { k: 'answer', saga, order: 'o', part: payment, phase: 'release', ok: true, at: 9 }, at(7));
  t.notOk(order.reminders!.owes(state.get('orders', 'o')), 'ended: nothing more');
  t.same(owed(), []);
});

t.test("a participant's ledger owes its coordinator the answer it holds, the same every time", async (t) => {
  const { stock } = await import('../../src/actors/stock.js');
  const { partitionOf } = await import('../../src/partitioning.js');
  const r = stock.reminders!;
  const ctx5 = { partition: 5, partitions: 8 };
  const ref = { saga: 'ord-1#12', order: 'ord-1', part: 'stock:5', from: partitionOf('ord-1', 8) };
  t.same(r.owed('ord-1#12', { s: 'held', at: 3, held: [['i', 1]] }, ctx5), [{ kind: 'order', partition: ref.from, cmd: { k: 'answer', saga: ref.saga, order: ref.order, part: ref.part, phase: 'hold', ok: true, at: 3 } }]);
  t.same(r.owed('ord-1#12', { s: 'rejected', at: 4, code: 'insufficient_stock', detail: 'd' }, ctx5), [{ kind: 'order', partition: ref.from, cmd: { k: 'answer', saga: ref.saga, order: ref.order, part: ref.part, phase: 'hold', ok: false, at: 4, code: 'insufficient_stock', detail: 'd' } }]);
  t.same(r.owed('ord-1#12', { s: 'released', at: 5 }, ctx5), [{ kind: 'order', partition: ref.from, cmd: { k: 'answer', saga: ref.saga, order: ref.order, part: ref.part, phase: 'release', ok: true, at: 5 } }]);
  t.same((r.owed('a#b#7', { s: 'released', at: 5 }, ctx5)[0]!.cmd as { order: string }).order, 'a#b', 'the order is the saga id up to its last #');
  t.same(r.owed('#7', { s: 'released', at: 5 }, ctx5), [], 'a saga id that names no order: nobody to answer');
});

t.test("a worker's warm-up runs whole sagas on scratch state: every checkout paid, or refused and compensated", async (t) => {
  const { warmActors } = await import('../../src/datapath/warm-up.js');
  const { commands, paid, refused } = warmActors(30);
  t.same([paid, refused], [20, 10], 'every third checkout lacks credit');
  // Per checkout: 6 to set up, the checkout, reserve, debit, 2 answers, 2 forgets; a refused one also releases the
  // reservation and hears its answer.
  t.equal(commands, 30 * 13 + 10 * 2);
});
