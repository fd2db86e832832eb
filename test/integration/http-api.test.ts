import t from 'tap';
import { startSystem } from '../helpers/system.js';

/** Every endpoint of docs/api.md through real HTTP, real workers, real NATS and Redis. */
t.test('the HTTP API end to end', async (t) => {
  const sys = await startSystem(t);
  const { call } = sys;

  t.test('stock', async (t) => {
    const created = await call('POST', '/stock/item/create/7');
    t.equal(created.status, 200);
    t.equal(created.contentType, 'application/json');
    const id = created.body.item_id as string;
    t.type(id, 'string');
    t.same((await call('GET', `/stock/find/${id}`)).body, { stock: 0, price: 7 });
    t.same((await call('POST', `/stock/add/${id}/5`)).body, { item_id: id, stock: 5 });
    t.same((await call('POST', `/stock/subtract/${id}/2`)).body, { item_id: id, stock: 3 });

    const short = await call('POST', `/stock/subtract/${id}/4`);
    t.equal(short.status, 400);
    t.equal(short.body.error, 'insufficient_stock');
    t.same((await call('GET', `/stock/find/${id}`)).body, { stock: 3, price: 7 }, 'a refused subtract changes nothing');

    const over = await call('POST', `/stock/add/${id}/9007199254740991`);
    t.equal(over.status, 400);
    t.equal(over.body.error, 'overflow');
    t.same((await call('GET', `/stock/find/${id}`)).body, { stock: 3, price: 7 }, 'a refused add changes nothing');

    for (const path of [`/stock/find/nope`, `/stock/add/nope/1`, `/stock/subtract/nope/1`]) {
      const r = await call(path.startsWith('/stock/find') ? 'GET' : 'POST', path);
      t.equal(r.status, 400, path);
      t.equal(r.body.error, 'not_found', path);
    }

    const init = await call('POST', '/stock/batch_init/100/20/3');
    t.match(init, { status: 200, body: { msg: 'Batch init for stock successful' }, contentType: 'application/json' });
    t.same((await call('GET', '/stock/find/0')).body, { stock: 20, price: 3 });
    t.same((await call('GET', '/stock/find/99')).body, { stock: 20, price: 3 });
    t.equal((await call('GET', '/stock/find/100')).status, 400);

    // Reads sent together travel as one request per partition (an array of queries): each gets its own answer.
    await call('POST', '/stock/batch_init/300/0/1');
    await Promise.all(Array.from({ length: 300 }, (_, i) => (i % 3 === 0 ? call('POST', `/stock/add/${i}/${i}`) : null)));
    const found = await Promise.all(Array.from({ length: 301 }, (_, i) => call('GET', `/stock/find/${i}`)));
    t.same(
      found.map((r) => (r.status === 200 ? r.body.stock : r.body.error)),
      [...Array.from({ length: 300 }, (_, i) => (i % 3 === 0 ? i : 0)), 'not_found'],
      '301 concurrent reads, each answered with its own item',
    );
  });

  t.test('payment', async (t) => {
    const created = await call('POST', '/payment/create_user');
    t.equal(created.status, 200);
    const id = created.body.user_id as string;
    t.same((await call('GET', `/payment/find_user/${id}`)).body, { user_id: id, credit: 0 });
    t.same((await call('POST', `/payment/add_funds/${id}/10`)).body, { user_id: id, credit: 10, done: true });
    t.same((await call('POST', `/payment/pay/${id}/4`)).body, { user_id: id, credit: 6 });
    const poor = await call('POST', `/payment/pay/${id}/7`);
    t.equal(poor.status, 400);
    t.equal(poor.body.error, 'insufficient_credit');
    t.same((await call('GET', `/payment/find_user/${id}`)).body, { user_id: id, credit: 6 });
    t.equal((await call('POST', `/payment/add_funds/${id}/9007199254740990`)).body.error, 'overflow');
    t.equal((await call('GET', '/payment/find_user/nope')).body.error, 'not_found');
    t.equal((await call('POST', '/payment/pay/nope/1')).body.error, 'not_found');
    t.same((await call('POST', '/payment/batch_init/50/100')).body, { msg: 'Batch init for users successful' });
    t.same((await call('GET', '/payment/find_user/49')).body, { user_id: '49', credit: 100 });
  });

  t.test('orders', async (t) => {
    const user = (await call('POST', '/payment/create_user')).body.user_id as string;
    await call('POST', `/payment/add_funds/${user}/100`);
    const item = (await call('POST', '/stock/item/create/10')).body.item_id as string;
    await call('POST', `/stock/add/${item}/5`);

    t.equal((await call('POST', '/orders/create/nope')).body.error, 'not_found', 'an order needs an existing user');
    const order = (await call('POST', `/orders/create/${user}`)).body.order_id as string;
    t.same((await call('GET', `/orders/find/${order}`)).body, { order_id: order, paid: false, items: [], user_id: user, total_cost: 0 });
    t.same((await call('POST', `/orders/addItem/${order}/${item}/2`)).body, { order_id: order, total_cost: 20 });
    t.same((await call('POST', `/orders/addItem/${order}/${item}/1`)).body, { order_id: order, total_cost: 30 });
    t.equal((await call('POST', `/orders/addItem/${order}/nope/1`)).body.error, 'not_found');
    t.equal((await call('POST', `/orders/addItem/nope/${item}/1`)).body.error, 'not_found');
    t.equal((await call('POST', `/orders/addItem/${order}/${item}/0`)).body.error, 'bad_quantity');

    t.same((await call('POST', `/orders/checkout/${order}`)).body, { order_id: order, paid: true });
    t.same((await call('GET', `/orders/find/${order}`)).body, { order_id: order, paid: true, items: [[item, 2], [item, 1]], user_id: user, total_cost: 30 });
    t.same((await call('GET', `/stock/find/${item}`)).body, { stock: 2, price: 10 });
    t.same((await call('GET', `/payment/find_user/${user}`)).body, { user_id: user, credit: 70 });

    t.same((await call('POST', `/orders/checkout/${order}`)).body, { order_id: order, paid: true }, 'checking out a paid order again succeeds');
    t.same((await call('GET', `/payment/find_user/${user}`)).body, { user_id: user, credit: 70 }, '... and charges nothing');
    const changed = await call('POST', `/orders/addItem/${order}/${item}/1`);
    t.equal(changed.status, 400);
    t.equal(changed.body.error, 'order_paid');

    const empty = (await call('POST', `/orders/create/${user}`)).body.order_id as string;
    t.same((await call('POST', `/orders/checkout/${empty}`)).body, { order_id: empty, paid: true }, 'an empty order checks out for 0');
    t.equal((await call('POST', '/orders/checkout/nope')).body.error, 'not_found');

    t.same((await call('POST', '/orders/batch_init/40/10/5/3')).body, { msg: 'Batch init for orders successful' });
    const o = (await call('GET', '/orders/find/39')).body;
    t.equal(o.items.length, 2);
    t.ok(o.items.every(([i, q]: [string, number]) => Number(i) >= 0 && Number(i) < 10 && q === 1));
    t.ok(Number(o.user_id) >= 0 && Number(o.user_id) < 5);
    t.equal(o.total_cost, 6);
    t.equal(o.paid, false);
  });

  t.test('bad input: a clear 400 (404 for routes), nothing changed, the gateway still serving', async (t) => {
    const item = (await call('POST', '/stock/item/create/1')).body.item_id as string;
    for (const bad of ['-1', '1.5', '1e3', '0x10', '9007199254740992', '99999999999999999999', 'abc', '+5', '%20']) {
      const r = await call('POST', `/stock/add/${item}/${bad}`);
      t.equal(r.status, 400, `amount ${bad}`);
      t.equal(r.body.error, 'bad_number', `amount ${bad}`);
      t.equal(r.contentType, 'application/json');
    }
    t.equal((await call('POST', '/stock/item/create/-3')).body.error, 'bad_number');
    t.equal((await call('POST', '/stock/batch_init/1.5/1/1')).body.error, 'bad_number');
    t.same((await call('GET', `/stock/find/${item}`)).body, { stock: 0, price: 1 }, 'nothing changed');
    const unknown = await call('GET', '/nope/route');
    t.equal(unknown.status, 404);
    t.equal(unknown.body.error, 'route_not_found');
    t.equal((await call('GET', `/stock/add/${item}/1`)).status, 405);
    t.equal((await call('GET', '/stock/find/0')).status, 200, 'still serving');
  });
});
