import t from 'tap';
import { partitionOf } from '../../src/partitioning.js';
import { pool } from '../helpers/pool.js';
import { waitFor } from '../helpers/servers.js';
import { ledgerEntries, startSystem, type System } from '../helpers/system.js';

async function newItem(sys: System, price: number, stock: number): Promise<string> {
  const id = (await sys.call('POST', `/stock/item/create/${price}`)).body.item_id as string;
  if (stock > 0) await sys.call('POST', `/stock/add/${id}/${stock}`);
  return id;
}

async function newUser(sys: System, credit: number): Promise<string> {
  const id = (await sys.call('POST', '/payment/create_user')).body.user_id as string;
  if (credit > 0) await sys.call('POST', `/payment/add_funds/${id}/${credit}`);
  return id;
}

async function newOrder(sys: System, user: string, lines: [string, number][]): Promise<string> {
  const id = (await sys.call('POST', `/orders/create/${user}`)).body.order_id as string;
  for (const [item, quantity] of lines) {
    const r = await sys.call('POST', `/orders/addItem/${id}/${item}/${quantity}`);
    if (r.status !== 200) throw new Error(`addItem failed: ${JSON.stringify(r.body)}`);
  }
  return id;
}

const stockOf = async (sys: System, item: string) => (await sys.call('GET', `/stock/find/${item}`)).body.stock as number;
const creditOf = async (sys: System, user: string) => (await sys.call('GET', `/payment/find_user/${user}`)).body.credit as number;
const paidOf = async (sys: System, order: string) => (await sys.call('GET', `/orders/find/${order}`)).body.paid as boolean;

t.test('checkout through HTTP', async (t) => {
  const sys = await startSystem(t);

  t.test("the course's consistency scenario: 1 item with stock 100, 1000 users with credit 1, 1000 checkouts at once", async (t) => {
    const item = await newItem(sys, 1, 100);
    await sys.call('POST', '/payment/batch_init/1000/1');
    const users = Array.from({ length: 1000 }, (_, i) => String(i));
    const orders = await pool(users, 50, (u) => newOrder(sys, u, [[item, 1]]));
    const answers = await Promise.all(orders.map((o) => sys.call('POST', `/orders/checkout/${o}`)));
    const ok = answers.filter((a) => a.status === 200).length;
    t.equal(ok, 100, 'exactly 100 checkouts succeed');
    t.equal(answers.filter((a) => a.status === 400).length, 900, 'the other 900 are refused with 400');
    t.ok(answers.filter((a) => a.status === 400).every((a) => a.body.error === 'insufficient_stock'));
    t.equal(await stockOf(sys, item), 0, 'stock ends at 0');
    const credits = await pool(users, 50, (u) => creditOf(sys, u));
    t.equal(credits.reduce((a, b) => a + b, 0), 900, 'total credit is 900');
    const paid = await pool(orders, 50, (o) => paidOf(sys, o));
    const disagree = answers.filter((a, i) => (a.status === 200) !== paid[i]).length;
    t.equal(disagree, 0, 'every 2xx order is paid and every 4xx order is not');
  });

  t.test('an order spanning several stock partitions: all or nothing', async (t) => {
    const items: string[] = [];
    while (new Set(items.map((i) => partitionOf(i, sys.config.partitions))).size < 3) items.push(await newItem(sys, 2, 5));
    const user = await newUser(sys, 1000);
    const short = items.at(-1)!;
    const lines: [string, number][] = items.map((i) => [i, i === short ? 6 : 2]);
    const failing = await newOrder(sys, user, lines);
    const refused = await sys.call('POST', `/orders/checkout/${failing}`);
    t.equal(refused.status, 400);
    t.equal(refused.body.error, 'insufficient_stock');
    t.match(refused.body.message, short, 'the answer names the item that is short');
    for (const i of items) t.equal(await stockOf(sys, i), 5, 'nothing taken anywhere');
    t.equal(await creditOf(sys, user), 1000, 'nothing charged');
    t.equal(await paidOf(sys, failing), false);

    const fine = await newOrder(sys, user, items.map((i) => [i, 2]));
    t.equal((await sys.call('POST', `/orders/checkout/${fine}`)).status, 200);
    for (const i of items) t.equal(await stockOf(sys, i), 3, 'everything taken once');
    t.equal(await creditOf(sys, user), 1000 - 4 * items.length);
  });

  t.test('five orders racing for the last unit: exactly one wins', async (t) => {
    const item = await newItem(sys, 1, 1);
    const users = await Promise.all(Array.from({ length: 5 }, () => newUser(sys, 10)));
    const orders = await Promise.all(users.map((u) => newOrder(sys, u, [[item, 1]])));
    const answers = await Promise.all(orders.map((o) => sys.call('POST', `/orders/checkout/${o}`)));
    t.equal(answers.filter((a) => a.status === 200).length, 1);
    t.equal(await stockOf(sys, item), 0);
    const credits = await Promise.all(users.map((u) => creditOf(sys, u)));
    t.equal(credits.reduce((a, b) => a + b, 0), 49);
  });

  t.test('one order checked out twice in a row, and twenty times at once: charged once', async (t) => {
    const item = await newItem(sys, 3, 10);
    const user = await newUser(sys, 100);
    const once = await newOrder(sys, user, [[item, 1]]);
    t.equal((await sys.call('POST', `/orders/checkout/${once}`)).status, 200);
    t.equal((await sys.call('POST', `/orders/checkout/${once}`)).status, 200);
    t.equal(await creditOf(sys, user), 97);
    const racing = await newOrder(sys, user, [[item, 2]]);
    const answers = await Promise.all(Array.from({ length: 20 }, () => sys.call('POST', `/orders/checkout/${racing}`)));
    t.ok(answers.every((a) => a.status === 200), 'all twenty answered 200');
    t.equal(await creditOf(sys, user), 91, 'charged once');
    t.equal(await stockOf(sys, item), 7, 'stock taken once');

    const poor = await newUser(sys, 1);
    const failing = await newOrder(sys, poor, [[item, 1]]);
    const refusals = await Promise.all(Array.from({ length: 20 }, () => sys.call('POST', `/orders/checkout/${failing}`)));
    t.ok(refusals.every((a) => a.status === 400 && a.body.error === 'insufficient_credit'), 'twenty concurrent checkouts of a failing order all get its refusal');
    t.equal(await stockOf(sys, item), 7, 'its stock was given back');
  });

  t.test("the template's order scenario with both rollback paths", async (t) => {
    const user = await newUser(sys, 15);
    const a = await newItem(sys, 5, 1);
    const b = await newItem(sys, 5, 1);
    const tooMuchStock = await newOrder(sys, user, [[a, 1], [b, 2]]);
    const r1 = await sys.call('POST', `/orders/checkout/${tooMuchStock}`);
    t.equal(r1.status, 400);
    t.equal(r1.body.error, 'insufficient_stock');
    t.equal(await creditOf(sys, user), 15, 'not enough stock: credit unchanged');
    t.equal(await stockOf(sys, a), 1, 'not enough stock: the other item is given back');

    const poor = await newUser(sys, 4);
    const tooExpensive = await newOrder(sys, poor, [[a, 1]]);
    const r2 = await sys.call('POST', `/orders/checkout/${tooExpensive}`);
    t.equal(r2.status, 400);
    t.equal(r2.body.error, 'insufficient_credit');
    t.equal(await stockOf(sys, a), 1, 'not enough credit: stock unchanged');
    t.equal(await creditOf(sys, poor), 4);

    t.equal((await sys.call('POST', `/payment/add_funds/${poor}/1`)).status, 200);
    t.equal((await sys.call('POST', `/orders/checkout/${tooExpensive}`)).status, 200, 'the same order succeeds once it can');
    t.equal(await stockOf(sys, a), 0);
    t.equal(await creditOf(sys, poor), 0);
  });

  t.test('once every checkout has ended, no participant keeps a ledger entry (the forgets, merged per batch, all arrive)', async (t) => {
    const held = ledgerEntries(t, sys.config);
    // The subtests above ran ~1,100 sagas, many at once: their forgets left in batches of many.
    await waitFor(async () => (await held()) === 0, { deadlineMs: 10_000, what: 'empty saga ledgers' });
    t.equal(await held(), 0);

    // Forgets wait in their worker's courier and leave with its next sweep (datapath/later.ts). Each entry's answer
    // goes again only 10 s after it was made, and brings its forget again: a deadline of half that tells forgets sent
    // from ones lost and repaired.
    const items: string[] = [];
    while (new Set(items.map((i) => partitionOf(i, sys.config.partitions))).size < sys.config.partitions) items.push(await newItem(sys, 1, 100));
    const orders = await pool(items, 8, async (item) => newOrder(sys, await newUser(sys, 10), [[item, 1], [items[0]!, 1]]));
    const answers = await pool(orders, 8, (o) => sys.call('POST', `/orders/checkout/${o}`));
    t.ok(answers.every((a) => a.status === 200), `${orders.length} checkouts across the partitions of both workers`);
    await waitFor(async () => (await held()) === 0, { deadlineMs: 5_000, what: 'the checkouts\' ledger entries forgotten, each by a forget sent, not by one brought by its answer sent again' });
    t.equal(await held(), 0);
  });
});
