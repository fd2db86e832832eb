/**
 * Bad data from outside: garbage on a gateway's reply subjects (outcomes, batches, read answers, stream
 * acknowledgements) and garbage values in every KV bucket of a running cluster. Nothing may end a process, and a
 * request hit by garbage still gets its real answer.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { connect, type Msg, type NatsConnection } from 'nats';
import t from 'tap';
import { decode, encode } from '../../src/codec.js';
import { faultLog } from '../../src/faults.js';
import type { Config } from '../../src/config.js';
import { createGateway } from '../../src/http/gateway.js';
import { createLog } from '../../src/log.js';
import { names, ok, type CommandEnvelope, type Reply } from '../../src/protocol.js';
import { createShopClient } from '../../src/transport/shop-client.js';
import { openBuckets } from '../../src/placement/membership.js';
import { placementKey } from '../../src/placement/placement.js';
import { SPLIT } from '../../src/transport/reads.js';
import { startWorker } from '../../src/placement/worker.js';
import { seedShop, startCluster } from '../helpers/cluster.js';
import { httpCall } from '../helpers/http.js';
import { captureLog, logLines } from '../helpers/logs.js';
import { startNats, startServers, testConfig, waitFor } from '../helpers/servers.js';

const json = (value: unknown) => Buffer.from(JSON.stringify(value));
/** msgpack that decodes, in shapes no answer has. */
const wrongShapes = [encode(null), encode(7), encode('text'), encode([1, 2, 3]), encode({ ok: 'yes' }), encode({ ok: true }), encode({ ok: false, code: 'no_such_code' }), encode({ split: 'maybe' })];
/** Not msgpack at all: 0xc1 is a byte msgpack never uses. */
const undecodable = () => Buffer.concat([Uint8Array.of(0xc1), randomBytes(24)]);
/** Answers to a publish that are not JetStream acknowledgements. */
const notAcks = () => [randomBytes(32), json({}), json(null), json(5), json({ stream: 5 }), json({ seq: 1 }), json({ error: 'full' }), json({ stream: 'S', seq: 'one' }), Buffer.from('{"stream":')];
/** Messages to a mux's batch subject (`<inbox>.B`) of the wrong shape, or with answers that are not replies. */
const badBatches = (token: string) => [undecodable(), encode('B'), encode([token]), encode([token, 'not bytes']), encode([7, encode(ok({}))]), encode([token, undecodable()]), ...wrongShapes.map((w) => encode([token, w]))];

function envelopes(data: Uint8Array): CommandEnvelope[] {
  const m = decode<CommandEnvelope | CommandEnvelope[]>(data);
  return Array.isArray(m) ? m : [m];
}

/** `<inbox>.<token>` -> inbox and token. */
function splitSubject(subject: string): { inbox: string; token: string } {
  const dot = subject.lastIndexOf('.');
  return { inbox: subject.slice(0, dot), token: subject.slice(dot + 1) };
}

t.test('faultLog: the first fault of a kind is logged, then at most one line per interval, saying how many were not', async (t) => {
  const { log, lines } = captureLog('x', 'warn');
  let now = 0;
  const fault = faultLog(log, 1000, () => now);
  for (let i = 0; i < 100; i++) fault('kind a', { i });
  fault('kind b');
  t.equal(lines.length, 2, 'one line per kind');
  now = 999;
  fault('kind a');
  t.equal(lines.length, 2, 'nothing more within the interval');
  now = 1000;
  fault('kind a', { i: 'last' });
  t.equal(lines.length, 3);
  t.match(lines[2], { level: 'warn', name: 'x', msg: 'ignored: kind a', i: 'last', alsoIgnoredSinceLastLine: 100, nextLineAfterMs: 1000 });
});

t.test('a client drops answers that are not ones and waits for the real one; a PubAck that is not one is no acknowledgement', async (t) => {
  const nats = await startNats(t);
  // No stream exists under this prefix: the test's subscribers are the stream and the owner, and decide what the client hears, in order.
  const config: Config = testConfig(nats, { url: 'redis://127.0.0.1:1', port: 1 }, { requestDeadlineMs: 20_000, readDeadlineMs: 10_000 });
  const n = names(config.streamPrefix);
  const nc = await connect({ servers: nats.url });
  const owner = await connect({ servers: nats.url });
  t.teardown(async () => {
    await nc.close();
    await owner.close();
  });
  const { log, lines } = captureLog('client', 'warn');
  const client = createShopClient({ nc, config, log });
  t.teardown(() => client.close());
  const send = (subject: string, data: Uint8Array) => owner.publish(subject, data);

  // The "stream": the first publish of a message id hears only garbage; its second one is acknowledged (after more garbage).
  const publishes: string[] = [];
  owner.subscribe(n.cmd('stock', 0), {
    callback: (_err, msg: Msg) => {
      const id = msg.headers?.get('Nats-Msg-Id') ?? '';
      publishes.push(id);
      for (const bad of notAcks()) send(msg.reply!, bad);
      if (publishes.filter((p) => p === id).length < 2) return;
      send(msg.reply!, json({ stream: 'FAKE', seq: 1 }));
      for (const { r } of envelopes(msg.data)) {
        const { inbox, token } = splitSubject(r!);
        for (const bad of [undecodable(), ...wrongShapes]) send(r!, bad);
        for (const bad of badBatches(token)) send(`${inbox}.B`, bad);
        send(`${inbox}.B`, encode([token, encode(ok({ stock: 5 }))])); // the real outcome, in a batch
      }
    },
  });
  const outcome = await client.command('stock', 0, { k: 'add', id: 'x', amount: 5 });
  t.same(outcome, ok({ stock: 5 }), 'the command gets its real outcome, past every answer that was not one');
  t.equal(publishes.length, 2, 'published twice: the garbage acknowledgements counted as none');
  t.equal(publishes[0], publishes[1], 'with the same message id both times (JetStream stores it once)');

  // The "owner": every answer is preceded by garbage; batches of more than two are answered SPLIT.
  const sizes: number[] = [];
  owner.subscribe(n.get('stock', 0), {
    callback: (_err, msg: Msg) => {
      const q = decode<{ id: string } | { id: string }[]>(msg.data);
      const queries = Array.isArray(q) ? q : [q];
      sizes.push(queries.length);
      const reply = (query: { id: string }): Reply => ok({ stock: Number(query.id.slice(1)), price: 1 });
      for (const bad of [undecodable(), ...wrongShapes, encode(SPLIT), encode(Array.from({ length: queries.length + 1 }, () => ok({})))]) {
        // SPLIT for a single query, or one reply too many for a batch, is no answer either.
        if (Array.isArray(q) && bad.equals(encode(SPLIT))) continue;
        send(msg.reply!, bad);
      }
      send(msg.reply!, encode(Array.isArray(q) ? (queries.length > 2 ? SPLIT : queries.map(reply)) : reply(q)));
    },
  });
  const replies = await Promise.all(Array.from({ length: 5 }, (_, i) => client.query('stock', 0, { k: 'find', id: `q${i}` })));
  t.same(replies, Array.from({ length: 5 }, (_, i) => ok({ stock: i, price: 1 })), 'each read gets its own reply');
  t.same([...sizes].sort(), [1, 2, 2, 3, 5], 'a batch of 5 answered SPLIT was asked again as 3 + 2, and the 3 as 2 + 1');

  const logged = lines.map((l) => l.msg);
  for (const kind of ['a command outcome that is not msgpack', 'a command outcome of the wrong shape', 'an answer to a publish that is not a JetStream acknowledgement', 'a batch of answers of the wrong shape', 'an undecodable batch of answers', 'a read answer that is not msgpack', 'a read answer of the wrong shape']) {
    t.ok(logged.includes(`ignored: ${kind}`), `logged: ${kind}`);
  }
  const garbageSent = 2 * notAcks().length + 60;
  t.ok(lines.length < garbageSent / 2, `${lines.length} log lines for well over ${garbageSent} bad messages: once per kind of fault`);
});

t.test('a gateway whose reply subjects get garbage before every real answer stays up and answers every request correctly', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { workerProcesses: 1 });
  const prefix = config.streamPrefix;
  const { log, lines } = captureLog('gw', 'warn');
  const gnc = await connect({ servers: config.natsUrl });
  const gateway = await createGateway({ nc: gnc, config, log });
  t.teardown(async () => {
    await gateway.close();
    await gnc.close();
  });

  // Sees every command and read the gateway sends (as a second subscriber) and answers garbage first.
  const spoiler: NatsConnection = await connect({ servers: config.natsUrl });
  t.teardown(() => spoiler.close());
  let spoiled = 0;
  const spoil = (_err: unknown, msg: Msg) => {
    if (!msg.reply) return;
    spoiled++;
    const isCommand = msg.subject.includes('.cmd.');
    for (const bad of isCommand ? notAcks() : [undecodable(), ...wrongShapes]) spoiler.publish(msg.reply, bad);
    if (!isCommand) return;
    for (const { r } of envelopes(msg.data)) {
      if (!r) continue;
      const { inbox, token } = splitSubject(r);
      for (const bad of [undecodable(), ...wrongShapes]) spoiler.publish(r, bad);
      for (const bad of badBatches(token)) spoiler.publish(`${inbox}.B`, bad);
    }
  };
  spoiler.subscribe(`${prefix}.*.cmd.*`, { callback: spoil });
  spoiler.subscribe(`${prefix}.*.get.*`, { callback: spoil });
  await spoiler.flush();

  const wnc = await connect({ servers: config.natsUrl });
  const wredis = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const worker = await startWorker({ nc: wnc, redis: wredis, config, log: createLog('worker', 'warn') });
  t.teardown(async () => {
    await worker.close();
    await wnc.close();
    wredis.disconnect();
  });

  const call = (method: 'GET' | 'POST', path: string) => httpCall(`http://127.0.0.1:${gateway.port}`, method, path);
  const item = (await call('POST', '/stock/item/create/5')).body.item_id as string;
  t.same((await call('POST', `/stock/add/${item}/10`)).body, { item_id: item, stock: 10 });
  t.same((await call('GET', `/stock/find/${item}`)).body, { stock: 10, price: 5 });
  const user = (await call('POST', '/payment/create_user')).body.user_id as string;
  t.same((await call('POST', `/payment/add_funds/${user}/100`)).body, { user_id: user, credit: 100, done: true });
  const order = (await call('POST', `/orders/create/${user}`)).body.order_id as string;
  t.same((await call('POST', `/orders/addItem/${order}/${item}/3`)).body, { order_id: order, total_cost: 15 });
  t.same((await call('POST', `/orders/checkout/${order}`)).body, { order_id: order, paid: true });
  const reads = await Promise.all([call('GET', `/orders/find/${order}`), call('GET', `/stock/find/${item}`), call('GET', `/payment/find_user/${user}`)]);
  t.same(
    reads.map((r) => r.body),
    [
      { order_id: order, paid: true, items: [[item, 3]], user_id: user, total_cost: 15 },
      { stock: 7, price: 5 },
      { user_id: user, credit: 85 },
    ],
    'every read answers with the committed state',
  );
  t.ok(spoiled >= 10, `${spoiled} requests got garbage`);
  t.ok(lines.some((l) => l.msg.startsWith('ignored: a command outcome')), 'garbage reached waiting commands before their real outcome, and was ignored');
  t.same(lines.filter((l) => l.level !== 'warn'), [], 'nothing logged as an error');
});

t.test('garbage in every KV bucket of a running cluster: no process exits, the cluster settles and serves a checkout', async (t) => {
  const c = await startCluster(t);
  const workers = [0, 1].map((i) => c.spawnWorker(i));
  let before!: Awaited<ReturnType<typeof c.status>>;
  await waitFor(
    async () => {
      before = await c.status();
      return before.workers.size === 2 && before.moving.size === 0 && before.status.workers.every((w) => w.partitions > 0);
    },
    { deadlineMs: 20_000, intervalMs: 50, what: 'two workers to share the partitions' },
  );
  await seedShop(c, { items: 10, stock: 100, users: 10, credit: 100, orders: 10, price: 1 });
  const b = await openBuckets(c.nc.jetstream(), c.config);

  const junk = (i: number): Uint8Array =>
    [
      json({}),
      json(null),
      randomBytes(40),
      json([]),
      json('worker-0'),
      json(42),
      json({ id: 5, pid: 'x' }),
      json({ worker: 7, epoch: 1 }),
      json({ worker: 'nobody-here', epoch: -1 }),
      json({ worker: 'w', epoch: 1.5 }),
      json({ id: 'x', pid: 1, host: 'h', kinds: ['nope'], adminPort: 0, draining: false, held: [], stale: {} }),
      json({ id: 'x', pid: 1, host: 'h', kinds: ['stock'], adminPort: 0, draining: false, held: 'all', stale: {} }),
    ][i % 12]!;
  const workerIds = [...before.workers.keys()];
  let i = 0;
  const puts: Promise<unknown>[] = [];
  for (const key of [...workerIds, 'ghost', 'worker-9-abcdef']) for (let k = 0; k < 3; k++) puts.push(b.workers.put(key, junk(i++)));
  for (const kind of c.config.kinds) for (let p = 0; p < c.config.partitions; p += 2) puts.push(b.placement.put(placementKey(kind, p), junk(i++)));
  for (const key of ['junk', 'stock.99', 'nokind.1']) puts.push(b.placement.put(key, junk(i++)));
  for (const key of ['leader', 'pin.stock.1', 'pin.order.3', ...workerIds.map((w) => `drain.${w}`), 'junk']) for (let k = 0; k < 2; k++) puts.push(b.control.put(key, junk(i++)));
  await Promise.all(puts);

  // The controller repairs the broken placements (and someone takes the broken leadership over after a lease).
  const after = await c.waitSettled('the cluster to settle again after the garbage', 20_000);
  t.same([...after.workers.keys()].sort(), [...workerIds].sort(), 'the same two workers, both live');
  t.same((await c.call('POST', '/orders/checkout/0')).body, { order_id: '0', paid: true }, 'a checkout is served');
  t.equal((await c.call('GET', '/orders/find/0')).body.paid, true);
  for (const w of workers) {
    t.equal(w.process.exitCode, null, `worker pid ${w.process.pid} has not exited`);
    t.equal(w.process.signalCode, null, `worker pid ${w.process.pid} was not killed`);
  }
  const out = workers.map((w) => w.output()).join('');
  const faults = logLines(out).filter((l) => /^ignored: an invalid (heartbeat|placement|leader|pin|drain) in a KV bucket/.test(l.msg));
  t.ok(faults.length > 0, 'the invalid values were logged');
  t.ok(faults.every((l) => l.level === 'warn' && l.role === 'worker' && typeof l.workerId === 'string'), 'as warnings of the worker that read them, with its id');
  t.notMatch(out, /unhandled rejection|uncaught exception|fatal/, 'no process died of them');
  await waitFor(async () => (await c.status()).leader !== null, { deadlineMs: 10_000, what: 'a valid leader again' });
  await Promise.all(workers.map((w) => w.kill('SIGTERM')));
});
