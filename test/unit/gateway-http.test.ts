import { connect, type Socket } from 'node:net';
import t, { type Test } from 'tap';
import { loadConfig } from '../../src/config.js';
import { ShopError } from '../../src/errors.js';
import { createGateway, type Gateway } from '../../src/http/gateway.js';
import { createLog } from '../../src/log.js';
import { fail, ok, type Reply } from '../../src/protocol.js';
import { fakeShopClient, type Call } from '../helpers/fake-shop-client.js';

/** Answers by id: "missing" is unknown, "down" is an outage, "hang" waits for the test to release it. */
function answer(hangs: Map<string, (r: Reply) => void>, arrived: (id: string) => void) {
  return (c: Call): Reply | Promise<Reply> => {
    const id = c.msg.id ?? '';
    if (id.startsWith('hang')) {
      arrived(id);
      return new Promise((resolve) => hangs.set(id, resolve));
    }
    if (id === 'missing') return fail('not_found', `item ${id}`);
    if (id === 'down') throw new ShopError('unavailable', 'no owner');
    if (c.msg.k === 'find') return ok({ stock: 4, price: 10 });
    return ok({ stock: 5 });
  };
}

async function start(t: Test, shutdownGraceMs = 10_000) {
  const config = loadConfig({}, { httpHost: '127.0.0.1', httpPort: 0, shutdownGraceMs, logLevel: 'warn' });
  const hangs = new Map<string, (r: Reply) => void>();
  const arrivals = new Map<string, () => void>();
  const arrivedPromise = (id: string) => new Promise<void>((r) => arrivals.set(id, r));
  const client = fakeShopClient(answer(hangs, (id) => arrivals.get(id)?.()));
  const lines: string[] = [];
  const gateway: Gateway = await createGateway({ config, log: createLog('gw', 'info', (l) => lines.push(l)), client });
  t.teardown(() => gateway.close());
  const base = `http://127.0.0.1:${gateway.port}`;
  return { gateway, client, hangs, arrivedPromise, base, lines, config };
}

async function json(res: Response): Promise<{ status: number; type: string | null; body: unknown }> {
  return { status: res.status, type: res.headers.get('content-type'), body: await res.json() };
}

/** Sends a raw request on its own socket, so the test can drop the connection mid-request. */
function rawRequest(port: number, method: string, path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(`${method} ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
      resolve(socket);
    });
    socket.on('error', reject);
  });
}

t.test('listens on the port the OS chose and answers JSON', async (t) => {
  const { gateway, base, client } = await start(t);
  t.ok(gateway.port > 0, `bound port ${gateway.port}`);

  t.same(await json(await fetch(`${base}/stock/find/abc`)), { status: 200, type: 'application/json', body: { stock: 4, price: 10 } });
  t.same(await json(await fetch(`${base}/stock/add/abc/2`, { method: 'POST' })), { status: 200, type: 'application/json', body: { item_id: 'abc', stock: 5 } });
  const created = await json(await fetch(`${base}/stock/item/create/3`, { method: 'POST' }));
  t.equal(created.status, 200);
  t.match(created.body, { item_id: /^[0-9a-f-]{36}$/ }, 'a UUID made by the gateway');
  t.equal(created.type, 'application/json');
  t.equal(client.calls.length, 3);
});

t.test('errors are JSON with the right status', async (t) => {
  const { base, client } = await start(t);

  const notFound = await json(await fetch(`${base}/nope`));
  t.equal(notFound.status, 404);
  t.equal(notFound.type, 'application/json');
  t.match(notFound.body, { error: 'route_not_found', message: String });

  const wrongMethod = await fetch(`${base}/stock/find/abc`, { method: 'POST' });
  t.equal(wrongMethod.headers.get('allow'), 'GET');
  const wm = await json(wrongMethod);
  t.equal(wm.status, 405);
  t.equal(wm.type, 'application/json');
  t.match(wm.body, { error: 'method_not_allowed' });

  const missing = await json(await fetch(`${base}/stock/find/missing`));
  t.same(missing.status, 400);
  t.match(missing.body, { error: 'not_found', message: /item missing/ });

  const down = await json(await fetch(`${base}/stock/find/down`));
  t.same(down.status, 503);
  t.match(down.body, { error: 'unavailable' });

  const before = client.calls.length;
  for (const n of ['-1', '1.5', '9007199254740992', '1e3', '0x10', '+5', '%201', '']) {
    const res = await json(await fetch(`${base}/stock/add/x/${n}`, { method: 'POST' }));
    t.equal(res.status, 400, `amount ${JSON.stringify(n)} → 400`);
    t.equal(res.type, 'application/json');
    t.match(res.body, { error: 'bad_number', message: String }, `amount ${JSON.stringify(n)} → bad_number`);
  }
  t.equal(client.calls.length, before, 'no bad request reached the client');
});

t.test('a client that drops its connection mid-request does not hurt the server', async (t) => {
  const { gateway, base, hangs, arrivedPromise } = await start(t);
  const arrived = arrivedPromise('hang1');
  const socket = await rawRequest(gateway.port, 'GET', '/stock/find/hang1');
  await arrived;
  const closed = new Promise((r) => socket.on('close', r));
  socket.destroy();
  await closed;
  // Give uWS a round trip to see the close before the outcome arrives.
  t.equal((await fetch(`${base}/stock/find/abc`)).status, 200);
  hangs.get('hang1')!(ok({ stock: 1, price: 1 }));
  t.equal((await fetch(`${base}/stock/find/abc`)).status, 200, 'still serving after writing to nobody was skipped');

  // And the other order: the outcome never arrives at all.
  const arrived2 = arrivedPromise('hang2');
  (await rawRequest(gateway.port, 'POST', '/stock/add/hang2/1')).destroy();
  await arrived2;
  t.same(await json(await fetch(`${base}/stock/find/abc`)), { status: 200, type: 'application/json', body: { stock: 4, price: 10 } });
});

t.test('close: stops accepting, finishes in-flight work, answers leftovers 503', async (t) => {
  // shutdownGraceMs 1400 leaves 400 ms of HTTP drain after the gateway's 1 s margin.
  const { gateway, base, hangs, arrivedPromise } = await start(t, 1400);

  const arrivedA = arrivedPromise('hangA');
  const arrivedB = arrivedPromise('hangB');
  const finished = fetch(`${base}/stock/find/hangA`);
  const abandoned = fetch(`${base}/stock/find/hangB`);
  await Promise.all([arrivedA, arrivedB]);

  const t0 = Date.now();
  const closing = gateway.close();
  // Listening stopped at once: a new connection is refused (a raw socket, so no pooled connection is reused).
  const refused = await new Promise<string>((resolve) => {
    const s = connect(gateway.port, '127.0.0.1', () => (s.destroy(), resolve('connected')));
    s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
  t.equal(refused, 'ECONNREFUSED', 'new connections are refused while draining');

  hangs.get('hangA')!(ok({ stock: 2, price: 3 }));
  const a = await finished;
  t.equal(a.headers.get('connection'), 'close', 'while draining, keep-alive clients are told to reconnect (to another gateway)');
  t.same(await json(a), { status: 200, type: 'application/json', body: { stock: 2, price: 3 } }, 'in-flight request finished');

  const b = await json(await abandoned);
  t.equal(b.status, 503, 'a request still waiting at the deadline gets 503');
  t.match(b.body, { error: 'unavailable', message: /shutting down/ });
  await closing;
  const took = Date.now() - t0;
  t.ok(took >= 300 && took < 3000, `drain bounded by the deadline (took ${took} ms)`);
});
