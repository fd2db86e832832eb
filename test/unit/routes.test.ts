import t from 'tap';
import { ShopError } from '../../src/errors.js';
import { apiRoutes, BATCH_INIT_INFLIGHT_MAX, createDispatcher, createRouter, parseCount, parseId, route, ID_MAX_CHARS, type HttpResult } from '../../src/http/routes.js';
import { BATCH_INIT_CHUNK, partitionOf } from '../../src/partitioning.js';
import { fail, ok, type Reply } from '../../src/protocol.js';
import { fakeShopClient, type Call } from '../helpers/fake-shop-client.js';
import { captureLog } from '../helpers/logs.js';

const PARTITIONS = 8;

function setup(answer: (call: Call) => Reply | Promise<Reply> = () => ok({}), { batchInitMax = 10_000_000 } = {}) {
  const { log, lines } = captureLog('test', 'debug');
  const client = fakeShopClient(answer);
  let ids = 0;
  const routes = apiRoutes({ client, config: { partitions: PARTITIONS, batchInitMax }, newId: () => `new-${++ids}` });
  const dispatch = createDispatcher(createRouter(routes), log);
  return { client, dispatch, lines };
}

/** Two ids on different partitions, so a test that picks the partition cannot pass by accident. */
const ID_A = 'a';
const ID_B = ['b', 'c', 'd', 'e', 'f', 'g'].find((id) => partitionOf(id, PARTITIONS) !== partitionOf(ID_A, PARTITIONS))!;

t.test('parseCount accepts base-10 integers in 0..2^53-1 only', async (t) => {
  const good: [string, number][] = [
    ['0', 0],
    ['7', 7],
    ['007', 7],
    ['100', 100],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
  ];
  for (const [raw, n] of good) t.equal(parseCount(raw), n, `${JSON.stringify(raw)} is ${n}`);
  const bad = ['', '-1', '-0', '+5', '1.5', '1.', '.5', '1e3', '0x10', '0b1', ' 5', '5 ', '5\n', '\t5', '1_000', '1,000', 'abc', 'NaN', 'Infinity', '%35', '٣', '9007199254740992', '9007199254740993', '99999999999999999999999'];
  for (const raw of bad) t.equal(parseCount(raw), undefined, `${JSON.stringify(raw)} is rejected`);
});

t.test('parseId decodes, and rejects empty, over-long and badly encoded ids', async (t) => {
  t.equal(parseId('abc'), 'abc');
  t.equal(parseId('a%20b'), 'a b');
  t.equal(parseId('x'.repeat(ID_MAX_CHARS)), 'x'.repeat(ID_MAX_CHARS));
  t.equal(parseId(''), undefined);
  t.equal(parseId('x'.repeat(ID_MAX_CHARS + 1)), undefined);
  t.equal(parseId('%E0%A4%A'), undefined);
  t.equal(parseId('%'), undefined);
});

t.test('matcher', async (t) => {
  const handler = async () => ({ status: 200, body: {} });
  const router = createRouter([
    route('GET', '/x/find/:id', handler),
    route('POST', '/x/add/:id/:amount(int)', handler),
    route('POST', '/x/make', handler),
  ]);

  t.test('captures typed params', async (t) => {
    const m = router.match('POST', '/x/add/it%2F1/42');
    t.ok('params' in m);
    if ('params' in m) t.same(m.params, { id: 'it/1', amount: 42 });
  });

  const cases: [method: string, path: string, status: number, code: string][] = [
    ['GET', '/nope', 404, 'route_not_found'],
    ['GET', '/', 404, 'route_not_found'],
    ['GET', '', 404, 'route_not_found'],
    ['GET', 'x/find/1', 404, 'route_not_found'],
    ['GET', '/x/find/1/', 404, 'route_not_found'],
    ['GET', '/x/find', 404, 'route_not_found'],
    ['POST', '/x/make/', 404, 'route_not_found'],
    ['POST', '/x/add/1', 404, 'route_not_found'],
    ['POST', '/x/find/1', 405, 'method_not_allowed'],
    ['GET', '/x/add/1/2', 405, 'method_not_allowed'],
    ['DELETE', '/x/make', 405, 'method_not_allowed'],
    ['GET', '/x/add/1/-1', 405, 'method_not_allowed'],
    ['POST', '/x/add/1/-1', 400, 'bad_number'],
    ['POST', '/x/add/1/', 400, 'bad_number'],
    ['POST', '/x/add//1.5', 400, 'bad_number'],
    ['POST', '/x/add//1', 400, 'not_found'],
    ['GET', '/x/find/', 400, 'not_found'],
    ['GET', '/x/find/%zz', 400, 'not_found'],
  ];
  for (const [method, path, status, code] of cases) {
    const m = router.match(method, path);
    t.ok('error' in m, `${method} ${path} is refused`);
    if ('error' in m) {
      t.equal(m.error.status, status, `${method} ${path} → ${status}`);
      t.match(m.error.body, { error: code, message: String }, `${method} ${path} → ${code}`);
    }
  }

  const m = router.match('GET', '/x/add/1/2');
  t.same('error' in m && m.error.headers, { Allow: 'POST' }, '405 names the allowed method');

  t.throws(() => createRouter([route('GET', '/x/:a', handler), route('GET', '/x/find', handler)]), /overlap/, 'ambiguous routes are refused at start');
  t.throws(() => createRouter([route('GET', 'x/find', handler)]), /start with/);
});

t.test('pattern params are typed: the handler gets an :id as a string and an :n(int) as a number', async (t) => {
  // The types are checked when the tests are built (npx tsc, npm run build): each @ts-expect-error line fails the
  // build if its line type-checks, that is if the handler's params let an id pass as a number or name a param the
  // pattern lacks. At run time the handler gets what its types say.
  const typed = route('POST', '/t/:id/:n(int)', async (p) => {
    const id: string = p.id;
    const n: number = p.n;
    // @ts-expect-error an id is a string, not a number
    const wrong: number = p.id;
    // @ts-expect-error no such param
    const other: unknown = p.other;
    return { status: 200, body: { id, n, wrong, other, types: [typeof id, typeof n] } };
  });
  const dispatch = createDispatcher(createRouter([typed]), captureLog('test', 'debug').log);
  t.same(await dispatch('POST', '/t/it%2F1/7'), { status: 200, body: { id: 'it/1', n: 7, wrong: 'it/1', other: undefined, types: ['string', 'number'] } });
});

t.test('orders/create makes an order id that hashes to its user\'s partition number (the debit stays on the order\'s worker)', async (t) => {
  for (const user of [ID_A, ID_B]) {
    const { client, dispatch } = setup();
    const res = await dispatch('POST', `/orders/create/${user}`);
    const id = (res.body as { order_id: string }).order_id;
    t.equal(res.status, 200);
    t.equal(partitionOf(id, PARTITIONS), partitionOf(user, PARTITIONS), `order ${id} of user ${user}`);
    t.same(client.calls.at(-1), { op: 'command', kind: 'order', partition: partitionOf(user, PARTITIONS), msg: { k: 'create', id, user } });
  }
});

t.test('stock routes', async (t) => {
  t.test('create makes the id, sends it to its partition, answers item_id', async (t) => {
    const { client, dispatch } = setup();
    const res = await dispatch('POST', '/stock/item/create/25');
    t.same(res, { status: 200, body: { item_id: 'new-1' } });
    t.same(client.calls, [{ op: 'command', kind: 'stock', partition: partitionOf('new-1', PARTITIONS), msg: { k: 'create', id: 'new-1', price: 25 } }]);
  });

  t.test('batch_init goes to every partition once, in parallel', async (t) => {
    let waiting = 0;
    let release!: () => void;
    const allArrived = new Promise<void>((r) => (release = r));
    const { client, dispatch } = setup(async () => {
      // Every partition must be asked before any answers: a sequential fan-out would deadlock here.
      if (++waiting === PARTITIONS) release();
      await allArrived;
      return ok({});
    });
    const res = await dispatch('POST', '/stock/batch_init/100/5/7');
    t.same(res, { status: 200, body: { msg: 'Batch init for stock successful' } });
    t.same(client.calls.map((c) => c.partition).sort((a, b) => a - b), [...Array(PARTITIONS).keys()]);
    for (const c of client.calls) t.same(c, { op: 'command', kind: 'stock', partition: c.partition, msg: { k: 'batchInit', from: 0, to: 100, stock: 5, price: 7 } });
  });

  t.test('batch_init fails if any partition fails', async (t) => {
    const { dispatch } = setup((c) => (c.partition === 3 ? fail('overflow', 'p3') : ok({})));
    const res = await dispatch('POST', '/payment/batch_init/10/5');
    t.equal(res.status, 400);
    t.match(res.body, { error: 'overflow', message: /p3/ });
  });

  t.test('find queries the owner of the id', async (t) => {
    for (const id of [ID_A, ID_B]) {
      const { client, dispatch } = setup(() => ok({ stock: 3, price: 9 }));
      t.same(await dispatch('GET', `/stock/find/${id}`), { status: 200, body: { stock: 3, price: 9 } });
      t.same(client.calls, [{ op: 'query', kind: 'stock', partition: partitionOf(id, PARTITIONS), msg: { k: 'find', id } }]);
    }
  });

  t.test('add and subtract', async (t) => {
    for (const k of ['add', 'subtract'] as const) {
      const { client, dispatch } = setup(() => ok({ stock: 11 }));
      t.same(await dispatch('POST', `/stock/${k}/${ID_B}/4`), { status: 200, body: { item_id: ID_B, stock: 11 } });
      t.same(client.calls, [{ op: 'command', kind: 'stock', partition: partitionOf(ID_B, PARTITIONS), msg: { k, id: ID_B, amount: 4 } }]);
    }
  });

  t.test('ids are URL-decoded before hashing', async (t) => {
    const { client, dispatch } = setup(() => ok({ stock: 1, price: 1 }));
    await dispatch('GET', '/stock/find/a%20b');
    t.same(client.calls[0], { op: 'query', kind: 'stock', partition: partitionOf('a b', PARTITIONS), msg: { k: 'find', id: 'a b' } });
  });
});

t.test('payment routes', async (t) => {
  const cases: [method: string, path: string, reply: Reply, call: Omit<Call, 'partition'> & { partitionOf?: string }, body: unknown][] = [
    ['POST', '/payment/create_user', ok({}), { op: 'command', kind: 'payment', msg: { k: 'create', id: 'new-1' }, partitionOf: 'new-1' }, { user_id: 'new-1' }],
    ['GET', `/payment/find_user/${ID_A}`, ok({ credit: 8 }), { op: 'query', kind: 'payment', msg: { k: 'find', id: ID_A } }, { user_id: ID_A, credit: 8 }],
    ['GET', `/payment/find_user/${ID_B}`, ok({ credit: 8 }), { op: 'query', kind: 'payment', msg: { k: 'find', id: ID_B } }, { user_id: ID_B, credit: 8 }],
    ['POST', `/payment/add_funds/${ID_A}/30`, ok({ credit: 38 }), { op: 'command', kind: 'payment', msg: { k: 'addFunds', id: ID_A, amount: 30 } }, { user_id: ID_A, credit: 38, done: true }],
    ['POST', `/payment/pay/${ID_B}/30`, ok({ credit: 8 }), { op: 'command', kind: 'payment', msg: { k: 'pay', id: ID_B, amount: 30 } }, { user_id: ID_B, credit: 8 }],
  ];
  for (const [method, path, reply, call, body] of cases) {
    const { client, dispatch } = setup(() => reply);
    t.same(await dispatch(method, path), { status: 200, body }, `${method} ${path}`);
    const { partitionOf: idForPartition, ...rest } = call;
    const id = idForPartition ?? call.msg.id!;
    t.same(client.calls, [{ ...rest, partition: partitionOf(id, PARTITIONS) }], `${method} ${path} asks partition of ${id}`);
  }

  const { client, dispatch } = setup();
  t.same(await dispatch('POST', '/payment/batch_init/10/100'), { status: 200, body: { msg: 'Batch init for users successful' } });
  t.equal(client.calls.length, PARTITIONS);
  t.same(new Set(client.calls.map((c) => c.partition)).size, PARTITIONS);
  t.ok(client.calls.every((c) => c.kind === 'payment' && c.op === 'command'));
  t.same(client.calls[0]!.msg, { k: 'batchInit', from: 0, to: 10, credit: 100 });
});

t.test('a large batch_init is sent in ranges of BATCH_INIT_CHUNK ids to every partition', async (t) => {
  const { client, dispatch } = setup();
  const n = 2 * BATCH_INIT_CHUNK + 5;
  t.equal((await dispatch('POST', `/payment/batch_init/${n}/1`)).status, 200);
  t.equal(client.calls.length, 3 * PARTITIONS);
  const ranges = new Set(client.calls.map((c) => JSON.stringify([c.msg.from, c.msg.to])));
  t.same([...ranges].sort(), [JSON.stringify([0, BATCH_INIT_CHUNK]), JSON.stringify([BATCH_INIT_CHUNK, 2 * BATCH_INIT_CHUNK]), JSON.stringify([2 * BATCH_INIT_CHUNK, n])].sort());
});

t.test('batch_init: n up to batchInitMax is sent, a larger n is 400 too_large naming the setting, for every kind', async (t) => {
  const MAX = 3 * BATCH_INIT_CHUNK;
  const paths = (n: number) => [`/stock/batch_init/${n}/1/1`, `/payment/batch_init/${n}/1`, `/orders/batch_init/${n}/1/1/1`];
  for (const path of paths(MAX)) {
    const { client, dispatch } = setup(undefined, { batchInitMax: MAX });
    t.equal((await dispatch('POST', path)).status, 200, `${path}: at the maximum`);
    t.equal(client.calls.length, 3 * PARTITIONS, `${path}: every range to every partition`);
  }
  for (const path of [...paths(MAX + 1), ...paths(Number.MAX_SAFE_INTEGER)]) {
    const { client, dispatch } = setup(undefined, { batchInitMax: MAX });
    const res = await dispatch('POST', path);
    t.equal(res.status, 400, `${path}: over the maximum`);
    t.match(res.body, { error: 'too_large', message: /batchInitMax \(SHOP_BATCH_INIT_MAX\) is 49152/ }, `${path}: names the setting and its value`);
    t.same(client.calls, [], `${path}: nothing sent`);
  }
});

t.test('batch_init makes its commands as earlier ones are answered: at most BATCH_INIT_INFLIGHT_MAX in flight', async (t) => {
  const waiting: (() => void)[] = [];
  let most = 0;
  let inFlight = 0;
  const { client, dispatch } = setup(
    () =>
      new Promise<Reply>((resolve) => {
        most = Math.max(most, ++inFlight);
        waiting.push(() => {
          inFlight--;
          resolve(ok({}));
        });
      }),
  );
  const n = 10_000_000; // 611 ranges × 8 partitions = 4,888 commands
  const commands = Math.ceil(n / BATCH_INIT_CHUNK) * PARTITIONS;
  const done = dispatch('POST', `/payment/batch_init/${n}/1`);
  for (let turn = 0; turn < 10; turn++) await new Promise((r) => setImmediate(r));
  t.equal(client.calls.length, BATCH_INIT_INFLIGHT_MAX, 'only a window of commands is made while none is answered');
  // Answer whatever waits, turn by turn, until the request is done.
  let finished = false;
  void done.then(() => (finished = true));
  while (!finished) {
    for (const release of waiting.splice(0)) release();
    await new Promise((r) => setImmediate(r));
  }
  t.equal((await done).status, 200);
  t.equal(client.calls.length, commands, 'every range to every partition in the end');
  t.equal(most, BATCH_INIT_INFLIGHT_MAX, 'never more in flight than the window');
  t.same(client.calls.at(-1)!.msg, { k: 'batchInit', from: 610 * BATCH_INIT_CHUNK, to: n, credit: 1 }, 'the last range ends at n');
});

t.test('batch_init stops making commands at the first failure', async (t) => {
  const { client, dispatch } = setup((c) => (c.msg.from === 0 && c.partition === 2 ? fail('overflow', 'p2') : ok({})));
  const res = await dispatch('POST', `/payment/batch_init/10000000/1`);
  t.match(res, { status: 400, body: { error: 'overflow' } });
  t.ok(client.calls.length < 2 * BATCH_INIT_INFLIGHT_MAX, `${client.calls.length} commands made, not all 4,888`);
});

t.test('actor failures map to their status', async (t) => {
  const cases: [path: string, reply: Reply][] = [
    ['/stock/subtract/x/5', fail('insufficient_stock', 'item x has 2')],
    ['/stock/add/x/5', fail('overflow', 'item x')],
    ['/stock/add/x/5', fail('not_found', 'item x')],
    ['/payment/pay/u/5', fail('insufficient_credit', 'user u has 1')],
  ];
  for (const [path, reply] of cases) {
    const { dispatch } = setup(() => reply);
    const res: HttpResult = await dispatch('POST', path);
    if (reply.ok) throw new Error('unreachable');
    t.equal(res.status, 400, `${path} ${reply.code} → 400`);
    t.match(res.body, { error: reply.code, message: new RegExp(reply.detail!) });
  }
});

t.test('exceptions: unavailable → 503, anything else → 500 and logged', async (t) => {
  {
    const { dispatch, lines } = setup(() => {
      throw new ShopError('unavailable', 'no owner');
    });
    const res = await dispatch('GET', '/stock/find/x');
    t.equal(res.status, 503);
    t.match(res.body, { error: 'unavailable', message: /no owner/ });
    t.same(lines, [], 'an outage is not a bug: nothing logged per request');
  }
  {
    const { dispatch, lines } = setup(async () => {
      throw new TypeError('boom at the bottom');
    });
    const res = await dispatch('POST', '/stock/add/x/1');
    t.equal(res.status, 500);
    t.same(res.body, { error: 'internal', message: String((res.body as { message: string }).message) });
    t.notMatch(JSON.stringify(res.body), /boom/, 'internals are not leaked to the client');
    t.match(lines, [{ level: 'error', msg: 'request failed with an unexpected error', method: 'POST', path: '/stock/add/x/1', err: { type: 'TypeError', message: 'boom at the bottom', stack: /^TypeError: boom at the bottom\n\s+at / } }], 'the error is logged with its request, message and stack');
    t.equal(lines.length, 1, 'once');
  }
  {
    const { dispatch } = setup(() => ({ ok: true, v: undefined }) as unknown as Reply);
    const res = await dispatch('GET', '/payment/find_user/u');
    t.equal(res.status, 500, 'a malformed reply is a bug, answered 500');
  }
});

t.test('bad input never reaches the client', async (t) => {
  const { client, dispatch } = setup();
  for (const path of ['/stock/add/x/-1', '/stock/add/x/1.5', '/stock/add/x/9007199254740992', '/stock/add/x/1e3', '/stock/item/create/abc', '/payment/batch_init/1/-5', '/stock/find/', '/stock/nope']) {
    const res = await dispatch(path.includes('find') ? 'GET' : 'POST', path);
    t.ok(res.status >= 400 && res.status < 500, `${path} → ${res.status}`);
  }
  t.same(client.calls, []);
});
