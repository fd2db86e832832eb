import { Redis } from 'ioredis';
import { connect, type NatsConnection } from 'nats';
import t, { type Test } from 'tap';
import { encode } from '../../src/codec.js';
import type { Config } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { partitionOf } from '../../src/partitioning.js';
import { names, type Reply } from '../../src/protocol.js';
import { createShopClient, type ShopClient } from '../../src/transport/shop-client.js';
import { commitTogether } from '../../src/datapath/commit-group.js';
import { encodeEntry } from '../../src/datapath/outbox.js';
import { createPartitionStore, StaleEpochError } from '../../src/datapath/store.js';
import { startWorker } from '../../src/placement/worker.js';
import { startNats, startServers, testConfig, waitFor } from '../helpers/servers.js';
import { spawnRole } from '../helpers/stack.js';

const log = createLog('test', 'warn');

async function connections(t: Test, config: Config) {
  const nc = await connect({ servers: config.natsUrl });
  const redis = new Redis(config.redisUrl);
  t.teardown(async () => {
    await nc.close();
    redis.disconnect();
  });
  return { nc, redis };
}

function clientFor(t: Test, nc: NatsConnection, config: Config): ShopClient {
  const client = createShopClient({ nc, config, log });
  t.teardown(() => client.close());
  return client;
}

/** Real servers and one in-process worker owning the single partition of every kind, with a client. */
async function oneWorker(t: Test) {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1 });
  const { nc, redis: r } = await connections(t, config);
  const worker = await startWorker({ nc, redis: r, config, log });
  t.teardown(() => worker.close());
  return { nc, config, client: clientFor(t, nc, config) };
}

const stockOf = (reply: Reply) => (reply.ok ? (reply.v as { stock: number }).stock : reply.code);

t.test('fencing: a second owner of a partition makes the first one drop it, and nothing is applied twice', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1 });
  const a = await connections(t, config);
  const b = await connections(t, config);
  const c = await connections(t, config);
  const client = clientFor(t, c.nc, config);

  const first = await startWorker({ ...a, config, log });
  t.teardown(() => first.close());
  t.same(await client.command('stock', 0, { k: 'create', id: 'x', price: 3 }), { ok: true, v: {} });
  t.equal(stockOf(await client.command('stock', 0, { k: 'add', id: 'x', amount: 10 })), 10);

  const second = await startWorker({ ...b, config, log });
  t.teardown(() => second.close());
  const [old] = first.runners;
  const [fresh] = second.runners;
  t.equal(fresh!.epoch, old!.epoch + 1, 'the new owner raised the epoch');

  // Both owners read this command from the stream; only the one with the current epoch may commit it.
  t.equal(stockOf(await client.command('stock', 0, { k: 'add', id: 'x', amount: 5 })), 15);
  await waitFor(() => old!.state === 'fenced', { deadlineMs: 10_000, what: 'the stale owner to drop the partition' });

  const replies = await Promise.all(Array.from({ length: 20 }, () => client.command('stock', 0, { k: 'add', id: 'x', amount: 1 })));
  t.ok(replies.every((r) => r.ok), 'the new owner serves every command');
  t.same(await client.query('stock', 0, { k: 'find', id: 'x' }), { ok: true, v: { stock: 35, price: 3 } });

  const store = createPartitionStore(a.redis, config.redisPrefix, 'stock', 0, ['items']);
  const loaded = await store.load();
  t.same(loaded.tables.get('items')!.get('x'), { stock: 35, price: 3 }, 'Redis holds each change exactly once');
  t.equal(await store.epoch(), fresh!.epoch);
});

t.test('a command re-published with the same id within the duplicate window is applied once', async (t) => {
  const { nc, config, client } = await oneWorker(t);
  await client.command('stock', 0, { k: 'create', id: 'd', price: 1 });
  const js = nc.jetstream();
  const subject = names(config.streamPrefix).cmd('stock', 0);
  for (let i = 0; i < 3; i++) {
    const ack = await js.publish(subject, encode({ c: { k: 'add', id: 'd', amount: 4 } }), { msgID: 'same-command' });
    t.equal(ack.duplicate, i > 0, `publish ${i + 1} ${i > 0 ? 'is' : 'is not'} a duplicate`);
  }
  // A later command through the same partition is applied after the earlier ones, so its reply shows their sum.
  t.equal(stockOf(await client.command('stock', 0, { k: 'add', id: 'd', amount: 0 })), 4);
});

t.test('kill -9 after the commit and before the replies: after restart the effect exists exactly once and the waiting client gets it', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 2, workerProcesses: 1 });
  const { nc, redis: r } = await connections(t, config);
  const client = clientFor(t, nc, config);

  const healthy = spawnRole('worker', config);
  t.teardown(() => healthy.kill('SIGKILL'));
  t.same(await client.command('stock', 1, { k: 'create', id: 'k', price: 2 }), { ok: true, v: {} });
  t.equal(stockOf(await client.command('stock', 1, { k: 'add', id: 'k', amount: 100 })), 100);
  t.equal(await healthy.kill('SIGTERM'), '0', 'the healthy worker stops cleanly');

  const store = createPartitionStore(r, config.redisPrefix, 'stock', 1, ['items']);
  const before = (await store.load()).cursor;
  const faulty = spawnRole('worker', config, { SHOP_FAULT_KILL_AFTER: 'commit' });
  t.teardown(() => faulty.kill('SIGKILL'));
  const pending = client.command('stock', 1, { k: 'subtract', id: 'k', amount: 7 });
  t.equal(await faulty.exited, 'SIGKILL', 'the worker died right after its commit');
  const committed = await store.load();
  t.equal(committed.cursor, before + 1, 'the command was committed');
  t.same(committed.tables.get('items')!.get('k'), { stock: 93, price: 2 });
  t.equal(committed.outbox.length, 1, 'its reply waits in the outbox');

  const restarted = spawnRole('worker', config);
  t.teardown(() => restarted.kill('SIGKILL'));
  t.equal(stockOf(await pending), 93, 'the waiting client got the committed outcome from the new owner');
  t.same(await client.query('stock', 1, { k: 'find', id: 'k' }), { ok: true, v: { stock: 93, price: 2 } }, 'applied exactly once');
  // Sent outbox entries are deleted by the partition's next commit, or on their own when it stays idle.
  await waitFor(async () => (await store.load()).outbox.length === 0, { deadlineMs: 5_000, what: 'the re-sent outbox entry to be cleared' });
  t.equal(stockOf(await client.command('stock', 1, { k: 'add', id: 'k', amount: 0 })), 93);
  t.equal(await restarted.kill('SIGTERM'), '0');
});

t.test('a restart of the whole stack (every process killed with SIGKILL) keeps every acknowledged write', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 4, workerProcesses: 2 });
  const workers = [0, 1].map((i) => spawnRole('worker', { ...config, workerIndex: i }));
  t.teardown(() => Promise.all(workers.map((w) => w.kill('SIGKILL'))));
  const c1 = await connect({ servers: config.natsUrl, maxReconnectAttempts: -1, reconnectTimeWait: 50 });
  t.teardown(() => c1.close());
  const client = clientFor(t, c1, config);

  await Promise.all([0, 1, 2, 3].map((p) => client.command('payment', p, { k: 'batchInit', from: 0, to: 200, credit: 1000 })));
  const writes = Array.from({ length: 400 }, (_, i) => {
    const id = String(i % 200);
    const amount = 1 + (i % 5);
    const cmd = i % 2 ? { k: 'pay', id, amount } : { k: 'addFunds', id, amount };
    return client.command('payment', partitionOf(id, config.partitions), cmd);
  });
  const replies = await Promise.all(writes);
  t.ok(replies.every((r) => r.ok), 'all 400 writes acknowledged');

  // Expected final credit per user: 1000 + adds - pays, all of which were acknowledged.
  const expected = new Map<string, number>();
  for (let i = 0; i < 400; i++) {
    const id = String(i % 200);
    const amount = 1 + (i % 5);
    expected.set(id, (expected.get(id) ?? 1000) + (i % 2 ? -amount : amount));
  }

  await Promise.all(workers.map((w) => w.kill('SIGKILL')));
  redis.kill9();
  nats.kill9();
  await Promise.all([redis.restart(), nats.restart()]);
  const again = [0, 1].map((i) => spawnRole('worker', { ...config, workerIndex: i }));
  t.teardown(() => Promise.all(again.map((w) => w.kill('SIGKILL'))));

  // The new workers start, load and take their partitions (slower on a busy machine than a read's deadline).
  for (let p = 0; p < config.partitions; p++) {
    await waitFor(async () => (await client.query('payment', p, { k: 'find', id: 'none' }).catch(() => undefined)) !== undefined, { deadlineMs: 60_000, what: `payment.${p} to be served again` });
  }
  let mismatches = 0;
  for (const [id, credit] of expected) {
    const reply = await client.query<{ credit: number }>('payment', partitionOf(id, config.partitions), { k: 'find', id });
    if (!reply.ok || reply.v.credit !== credit) mismatches++;
  }
  t.equal(mismatches, 0, 'every user has exactly the credit its acknowledged writes give');
});

t.test("a process's answers to another process's waiters from one turn travel as one message, each to its waiter", async (t) => {
  const nats = await startNats(t);
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const { Mux } = await import('../../src/transport/mux.js');
  const n = names('');
  const gateway = new Mux(nc, n.inbox('gateway', 'g1'));
  const worker = new Mux(nc, n.inbox('worker', 'w1'));
  t.teardown(() => (gateway.close(new Error('done')), worker.close(new Error('done'))));
  let messages = 0;
  const counted = nc.subscribe(`${n.inbox('gateway', 'g1')}.>`, { callback: () => messages++ });
  const tokens = [gateway.token(), gateway.token(), gateway.token()];
  const waits = tokens.map((token) => gateway.wait(token, Date.now() + 5000));
  tokens.forEach((token, i) => worker.reply(gateway.subject(token), new Uint8Array([i, i])));
  const answers = await Promise.all(waits);
  t.same(answers.map((a) => [...a.data]), [[0, 0], [1, 1], [2, 2]], 'each waiter gets its own answer');
  await nc.flush();
  t.equal(messages, 1, 'three answers, one message');

  // Another user's process: its answers of the same turn travel to its own inbox, never joined with g1's.
  const gateway1 = new Mux(nc, n.inbox('gateway-1', 'g1'));
  t.teardown(() => gateway1.close(new Error('done')));
  const mine = gateway.token();
  const theirs = gateway1.token();
  const both = [gateway.wait(mine, Date.now() + 5000), gateway1.wait(theirs, Date.now() + 5000)];
  worker.reply(gateway.subject(mine), new Uint8Array([3]));
  worker.reply(gateway1.subject(theirs), new Uint8Array([4]));
  t.same((await Promise.all(both)).map((a) => [...a.data]), [[3], [4]], 'answers to processes of two users each reach their own');

  const alone = gateway.token();
  const wait = gateway.wait(alone, Date.now() + 5000);
  worker.reply(gateway.subject(alone), new Uint8Array([7]));
  t.same([...(await wait).data], [7], 'a single answer goes as it is');
  const other = nc.subscribe('elsewhere.x', { max: 1 });
  worker.reply('elsewhere.x', new Uint8Array([9]));
  for await (const m of other) t.same([...m.data], [9], 'a subject outside the inboxes is published as it is');
  const nested = nc.subscribe(`${n.inbox('gateway', 'g1')}.x.y`, { max: 1 });
  worker.reply(`${n.inbox('gateway', 'g1')}.x.y`, new Uint8Array([5]));
  for await (const m of nested) t.same([...m.data], [5], 'so is one deeper than <inbox>.<token>');
  const shallow = nc.subscribe(`${n.replies}g1.7`, { max: 1 });
  worker.reply(`${n.replies}g1.7`, new Uint8Array([6]));
  for await (const m of shallow) t.same([...m.data], [6], 'and one without a user token (the inbox shape before users)');
  counted.unsubscribe();
});

t.test('acquiring at a placement epoch: an older epoch is refused, a newer one fences the holder', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1 });
  const { redis: r } = await connections(t, config);
  const store = createPartitionStore(r, config.redisPrefix, 'stock', 0, ['items']);
  t.equal(await store.acquire(5), 5);
  t.equal(await store.acquire(5), 5, 'the same epoch again (a restart of the same assignment) is allowed');
  await t.rejects(store.acquire(4), StaleEpochError, 'an older epoch is refused');
  t.equal(await store.epoch(), 5, 'and changes nothing');
  t.equal(await store.acquire(), 6, 'without an epoch the stored one is raised');
  t.equal(await store.commit({ epoch: 5, commits: 1, cursor: 1, local: 0, changes: new Map(), outboxField: '', outbox: null, cleared: [] }), false, 'the holder of epoch 5 is fenced');
});

t.test('a group commit: batches of several partitions in one call, each fenced on its own', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 3, workerProcesses: 1 });
  const { redis: r } = await connections(t, config);
  const stores = [0, 1, 2].map((p) => createPartitionStore(r, config.redisPrefix, 'stock', p, ['items', 'ledger']));
  for (const s of stores) await s.acquire(1);
  await stores[1]!.acquire(2); // a newer owner took partition 1
  // Script calls run, by EVALSHA or (the first time, before Redis has the script) EVAL.
  const calls = () => r.info('commandstats').then((text) => [...text.matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0));
  const before = await calls();
  const changes = (p: number) => new Map([['items', new Map<string, unknown>([[`i${p}`, { stock: p, price: 1 }], [`gone${p}`, undefined]])]]);
  const results = await Promise.all(stores.map((s, p) => s.commit({ epoch: 1, commits: 1, cursor: 10 + p, local: 0, changes: changes(p), outboxField: String(10 + p), outbox: encodeEntry({ replies: [[`r${p}`, new Uint8Array([p])]], parcels: [], dead: [] }), cleared: [] })));
  t.same(results, [true, false, true], 'partition 1 is fenced, the others commit');
  t.equal((await calls()) - before, 1, 'one script call for the three batches');
  const loaded = await Promise.all(stores.map((s) => s.load()));
  t.same(loaded.map((l) => l.cursor), [10, 0, 12], 'the fenced batch wrote no cursor');
  t.same(loaded.map((l) => l.tables.get('items')?.get(`i${loaded.indexOf(l)}`)), [{ stock: 0, price: 1 }, undefined, { stock: 2, price: 1 }]);
  t.same(loaded.map((l) => l.outbox.length), [1, 0, 1], 'nor its outbox');
});

t.test('a transaction: batches of several partitions written together, or none when one is fenced; outboxes reload in batch order', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 3, workerProcesses: 1 });
  const { redis: r } = await connections(t, config);
  const stores = [0, 1, 2].map((p) => createPartitionStore(r, config.redisPrefix, 'stock', p, ['items']));
  for (const s of stores) await s.acquire(1);
  await stores[1]!.acquire(2); // a newer owner took partition 1
  const write = (p: number, epoch: number, field: string, commits = 1) => ({
    epoch,
    commits,
    cursor: 10,
    local: 3,
    changes: new Map([['items', new Map<string, unknown>([[`i${p}`, { stock: p, price: 1 }]])]]),
    outboxField: field,
    outbox: encodeEntry({ replies: [[`r${field}`, new Uint8Array([p])]], parcels: [], dead: [] }),
    cleared: [],
  });
  t.same(await commitTogether(stores.map((s, p) => s.prepare(write(p, 1, '10.3')))), ['withheld', 'fenced', 'withheld']);
  const loaded = await Promise.all(stores.map((s) => s.load()));
  t.same(loaded.map((l) => [l.cursor, l.local, l.tables.get('items')!.size, l.outbox.length]), [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], 'nothing of any batch was written');

  const fields = ['9.2', '10.1', '9.10'];
  t.same(await commitTogether(fields.map((f, i) => stores[0]!.prepare(write(0, 1, f, 1 + i)))), ['committed', 'committed', 'committed'], 'three batches of one partition in one transaction, each counted after the one before');
  t.same(await commitTogether([stores[0]!.prepare(write(0, 1, '11.3', 4)), stores[2]!.prepare(write(2, 1, '11.3'))]), ['committed', 'committed']);
  const [zero, , two] = await Promise.all(stores.map((s) => s.load()));
  t.same([zero!.cursor, zero!.local, two!.cursor, two!.local], [10, 3, 10, 3], 'cursor and local count written');
  t.same(zero!.outbox.map(([f]) => f), ['9.2', '9.10', '10.1', '11.3'], 'outbox entries in (cursor, local count) order');
});

t.test('a saga command through the clients\' door is a dead letter: it changes nothing, the rest of its bundle applies', async (t) => {
  const { nc, config, client } = await oneWorker(t);
  await client.command('stock', 0, { k: 'create', id: 'u', price: 1 });
  await client.command('stock', 0, { k: 'add', id: 'u', amount: 3 });
  // A client cannot forge a reservation: reserve is a saga command, taken only from other partitions.
  const subject = names(config.streamPrefix).cmd('stock', 0);
  const js = nc.jetstream();
  await js.publish(subject, encode([{ c: { k: 'reserve', saga: 's', order: 'o', from: 0, lines: [['u', 2]] } }, { c: { k: 'add', id: 'u', amount: 10 } }]));
  t.equal(stockOf(await client.command('stock', 0, { k: 'add', id: 'u', amount: 0 })), 13, 'the forged reserve took nothing, the next command in its bundle applied');
  const jsm = await nc.jetstreamManager();
  const dead = await jsm.streams.getMessage(names(config.streamPrefix).deadLetterStream, { last_by_subj: names(config.streamPrefix).deadLetter('stock', 0) });
  t.equal(dead.header.get('Shop-Reason'), 'unknown_kind', 'a copy went to the dead-letter stream, with why');
});

t.test('a gateway past gatewayInflightMax answers unavailable at once instead of queueing', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1, gatewayInflightMax: 2, requestDeadlineMs: 60_000 });
  const { nc } = await connections(t, config);
  const { ensureStreams } = await import('../../src/datapath/streams.js');
  await ensureStreams(await nc.jetstreamManager(), config);
  const client = createShopClient({ nc, config, log });
  // No worker runs: these two wait for an owner.
  const waiting = [0, 1].map(() => client.command('stock', 0, { k: 'create', id: 'w', price: 1 }));
  waiting.forEach((p) => p.catch(() => {}));
  await t.rejects(client.command('stock', 0, { k: 'create', id: 'x', price: 1 }), { code: 'unavailable' });
  await t.rejects(client.query('stock', 0, { k: 'find', id: 'x' }), { code: 'unavailable' });
  await client.close();
  await Promise.allSettled(waiting);
});
