/**
 * Hostile input from the bus: garbage published on every command subject between valid commands, and on a worker's
 * saga subject. Every partition moves past it, the valid commands apply exactly once, the garbage becomes dead
 * letters (counted, copied to the dead-letter stream), and nothing restarts.
 */
import { Redis } from 'ioredis';
import { connect } from 'nats';
import t from 'tap';
import { ORDER_LINES_MAX } from '../../src/actors/commands.js';
import { decode, encode } from '../../src/codec.js';
import type { Kind } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { BUNDLE_MAX, names, STREAM_MESSAGE_BYTES_MAX } from '../../src/protocol.js';
import { createShopClient } from '../../src/transport/shop-client.js';
import type { DeadLetterReason, RunnerMetrics } from '../../src/datapath/runner-metrics.js';
import { startWorker } from '../../src/placement/worker.js';
import { partitionKeys } from '../../src/datapath/store-scripts.js';
import { formatDeadLetters, purgeDeadLetters, readDeadLetters } from '../../src/admin/dead-letters.js';
import { seededRandom } from '../../src/actors/random.js';
import { captureLog } from '../helpers/logs.js';
import { crafted } from '../helpers/msgpack-garbage.js';
import { startServers, testConfig, waitFor } from '../helpers/servers.js';

const log = createLog('test', 'error');

/** A recorder of what the worker reports. */
function recorder() {
  const dead = new Map<DeadLetterReason, number>();
  let restarts = 0;
  const metrics: RunnerMetrics = {
    batch: () => {},
    sagaOutcome: () => {},
    deadLetter: (_kind, _partition, reason) => void dead.set(reason, (dead.get(reason) ?? 0) + 1),
    partitionRestart: () => void restarts++,
  };
  return { metrics, dead, restarts: () => restarts, total: () => [...dead.values()].reduce((a, b) => a + b, 0) };
}

/** Garbage of every sort, each with the reason it must be refused for. */
function garbage(kind: Kind, inboxes: string): [Uint8Array, DeadLetterReason][] {
  const random = seededRandom(7);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(random() * 256));
  const valid = kind === 'stock' ? { k: 'add', id: 'x', amount: 1 } : kind === 'payment' ? { k: 'addFunds', id: 'x', amount: 1 } : { k: 'checkout', id: 'x' };
  const saga = kind === 'order' ? { k: 'answer', saga: 'o#1', order: 'o', part: 'stock:0', phase: 'hold', ok: true, at: 1 } : { k: 'release', saga: 'o#1', order: 'o', from: 0 };
  return [
    [Uint8Array.of(0xc0), 'invalid'], // msgpack nil: not an envelope
    [Uint8Array.of(0xc1), 'undecodable'], // a byte msgpack never uses
    [Uint8Array.of(0x92, 0x01), 'undecodable'], // an array cut short
    [encode(5), 'invalid'],
    [encode([]), 'invalid'], // an empty bundle
    [encode('stock'), 'invalid'],
    [encode({ a: 1 }), 'invalid'],
    [encode({ c: null }), 'unknown_kind'],
    [encode({ c: { k: 'nope' } }), 'unknown_kind'],
    [encode({ c: saga }), 'unknown_kind'], // a saga message through the clients' door
    [encode({ c: { ...valid, id: 7 } }), 'invalid'],
    [encode({ c: { ...valid, extra: true } }), 'invalid'],
    [encode({ c: { ...valid, id: 'y'.repeat(129) } }), 'invalid'],
    [encode({ c: kind === 'order' ? { k: 'addItem', id: 'x', item: 'i', quantity: 0, price: 1 } : { ...valid, amount: -1 } }), 'invalid'],
    [encode({ c: kind === 'order' ? { k: 'addItem', id: 'x', item: 'i', quantity: 1.5, price: 1 } : { ...valid, amount: 1.5 } }), 'invalid'],
    [encode({ c: kind === 'order' ? { k: 'batchInit', from: 0, to: 1e6, nItems: 1, nUsers: 1, price: 1, seed: 1 } : { ...valid, amount: 2 ** 53 } }), 'invalid'],
    [encode({ c: valid, r: '$KV.SHOP_PLACEMENT.order.0' }), 'invalid'], // a reply subject no worker may publish to
    [encode({ c: valid, r: `${inboxes}x.*` }), 'invalid'],
    // The partition a carried command is for (a gateway's bundle per owner): past the kind's partitions, or no number.
    ...[2 ** 20, -1, 0.5, '0', null].map((p): [Uint8Array, DeadLetterReason] => [encode({ c: valid, p }), 'invalid']),
    [encode(Array.from({ length: BUNDLE_MAX + 1 }, () => ({ c: valid }))), 'oversized'],
    [bytes(64), 'undecodable'],
    // Issue 19's crafted messages: each used to hold the event loop for seconds, or to throw out of the batch.
    ...crafted().map(([, bytes]): [Uint8Array, DeadLetterReason] => [bytes, 'undecodable']),
    [bytes(STREAM_MESSAGE_BYTES_MAX), 'undecodable'], // at the command streams' max_msg_size
  ];
}

t.test('garbage on every command subject between valid commands: every partition moves past it, the valid ones apply once', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 2, workerProcesses: 1 });
  const nc = await connect({ servers: config.natsUrl });
  const r = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const seen = recorder();
  const worker = await startWorker({ nc, redis: r, config, log, metrics: seen.metrics });
  const client = createShopClient({ nc, config, log });
  t.teardown(async () => {
    await client.close();
    await worker.close();
    await nc.close();
    r.disconnect();
  });
  const n = names(config.streamPrefix);
  const js = nc.jetstream();

  // Per partition of stock and payment: an entity "x" to which only the valid commands add.
  for (let p = 0; p < config.partitions; p++) {
    t.ok((await client.command('stock', p, { k: 'create', id: 'x', price: 1 })).ok);
    t.ok((await client.command('payment', p, { k: 'create', id: 'x' })).ok);
  }
  let sent = 0;
  const expected = new Map<string, number>();
  const valid: Promise<unknown>[] = [];
  for (const kind of config.kinds) {
    for (let p = 0; p < config.partitions; p++) {
      const subject = n.cmd(kind, p);
      for (const [bytes] of garbage(kind, n.replies)) {
        await js.publish(subject, bytes);
        sent++;
        if (kind === 'order') continue;
        const amount = 1 + (sent % 7);
        expected.set(`${kind}.${p}`, (expected.get(`${kind}.${p}`) ?? 0) + amount);
        valid.push(client.command(kind, p, kind === 'stock' ? { k: 'add', id: 'x', amount } : { k: 'addFunds', id: 'x', amount }));
      }
    }
  }
  const replies = (await Promise.all(valid)) as { ok: boolean }[];
  t.ok(replies.every((reply) => reply.ok), `all ${replies.length} valid commands between the garbage were answered ok`);
  for (let p = 0; p < config.partitions; p++) {
    t.same(await client.query('stock', p, { k: 'find', id: 'x' }), { ok: true, v: { stock: expected.get(`stock.${p}`), price: 1 } }, `stock.${p}: each valid add applied exactly once`);
    t.same(await client.query('payment', p, { k: 'find', id: 'x' }), { ok: true, v: { credit: expected.get(`payment.${p}`) } }, `payment.${p}: likewise`);
  }

  await waitFor(() => seen.total() === sent, { deadlineMs: 10_000, what: `${sent} dead letters to be counted` });
  const wanted = new Map<DeadLetterReason, number>();
  for (const kind of config.kinds) for (let p = 0; p < config.partitions; p++) for (const [, reason] of garbage(kind, n.replies)) wanted.set(reason, (wanted.get(reason) ?? 0) + 1);
  t.same(Object.fromEntries(seen.dead), Object.fromEntries(wanted), 'each piece of garbage counted once, under its reason');
  t.equal(seen.restarts(), 0, 'no partition restarted');
  t.ok(worker.runners.every((runner) => runner.state === 'running'), 'every partition still runs');
  t.same(worker.ready(), { ok: true }, 'and the worker is ready');

  const jsm = await nc.jetstreamManager();
  await waitFor(async () => (await jsm.streams.info(n.deadLetterStream)).state.messages === sent, { deadlineMs: 10_000, what: 'every dead letter to be copied to the dead-letter stream' });
  // What shopctl dead-letters shows: JSON when the payload decodes, hex when it does not.
  const listed = await readDeadLetters(nc, config, { kind: 'stock', partition: 0, limit: 1000 });
  t.equal(listed.length, garbage('stock', n.replies).length, 'shopctl dead-letters lists those of one partition');
  t.match(listed.find((d) => d.detail.includes('k: "nope"')), { partition: 'stock.0', reason: 'unknown_kind', json: '{"c":{"k":"nope"}}' }, 'a payload that decodes, as JSON');
  t.match(listed.find((d) => d.bytes === 2000), { reason: 'undecodable', hex: /^(dc){256}…$/ }, 'one that does not, as hex');
  t.match(formatDeadLetters(listed), /^#\d+ \S+ stock\.0 command \d+: undecodable: .*\n  \d+ bytes: hex [0-9a-f]+/m, 'as text: one entry per dead letter, its payload below');
  t.equal(formatDeadLetters([]), 'no dead letters');
  t.equal(await purgeDeadLetters(nc, config, { kind: 'stock', partition: 0 }), listed.length, 'and purges them');
  t.same(await readDeadLetters(nc, config, { kind: 'stock', partition: 0 }), [], 'gone');
  sent -= listed.length;
  const copy = await jsm.streams.getMessage(n.deadLetterStream, { last_by_subj: n.deadLetter('order', 1) });
  t.same([copy.header.get('Shop-Partition'), copy.header.get('Shop-Reason')], ['order.1', 'undecodable'], 'a copy names its partition and reason');
  t.ok(Number(copy.header.get('Shop-Seq')) > 0, 'and its command number');
  t.equal(copy.data.length, STREAM_MESSAGE_BYTES_MAX, 'and carries the message as it arrived');
  await t.rejects(js.publish(n.cmd('stock', 0), new Uint8Array(STREAM_MESSAGE_BYTES_MAX + 1)), /maximum/, 'a message over the streams\' max_msg_size is refused at publish');
  await t.rejects(js.publish(n.cmd('stock', config.partitions), encode({ c: { k: 'add', id: 'x', amount: 1 } })), /503|no responders/i, 'a command for a partition the shop does not have is refused at publish');
  t.equal((await jsm.streams.info(n.stream('stock'))).state.consumer_count, config.partitions, 'one consumer per partition');
});

t.test('garbage on a worker\'s saga subject: nothing stops, a parcel of bad commands is acknowledged and its commands are dead letters', async (t) => {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1 });
  const nc = await connect({ servers: config.natsUrl });
  const r = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const seen = recorder();
  const logged = captureLog('worker', 'warn');
  const worker = await startWorker({ nc, redis: r, config, log: logged.log, metrics: seen.metrics });
  const client = createShopClient({ nc, config, log });
  t.teardown(async () => {
    await client.close();
    await worker.close();
    await nc.close();
    r.disconnect();
  });
  const n = names(config.streamPrefix);
  const subject = n.saga(worker.id);
  const ackTo = n.sagaAck('tester');
  const acks: string[] = [];
  nc.subscribe(ackTo, { callback: (_err, msg) => acks.push(...decode<string[]>(msg.data)) });
  const forbidden: number[] = [];
  nc.subscribe('$KV.>', { callback: () => forbidden.push(1) });

  for (const bytes of [Uint8Array.of(0xc1), encode(null), encode([ackTo, 'stock']), encode([ackTo, 'nope', 0, 'id', new Uint8Array(1)]), encode([5, 'stock', 0, 'id', new Uint8Array(1)])]) nc.publish(subject, bytes);
  const lines = Array.from({ length: ORDER_LINES_MAX + 1 }, (_, i) => [`i${i}`, 1]);
  const bad = [
    { k: 'reserve', saga: 's1', order: 'o', from: 0, lines }, // too many lines
    { k: 'debit', saga: 's2', order: 'o', from: 0, user: 'u', amount: 1 }, // not a stock command
    { k: 'forget', sagas: 'all' },
  ];
  nc.publish(subject, encode([ackTo, 'stock', 0, 'p1', encode(bad), 'stock', 0, 'p2', Uint8Array.of(0xc1)]));
  nc.publish(subject, encode(['$KV.SHOP_PLACEMENT.stock.0', 'stock', 0, 'p3', encode([{ k: 'forget', sagas: [] }])]));
  await waitFor(() => acks.includes('p1') && acks.includes('p2'), { deadlineMs: 10_000, what: 'the parcels of bad commands to be acknowledged' });
  await waitFor(() => seen.total() === 4, { deadlineMs: 10_000, what: 'four dead letters' });
  t.same(Object.fromEntries(seen.dead), { invalid: 2, unknown_kind: 1, undecodable: 1 }, 'too many lines, a wrong-shaped forget; a debit is no stock command; an unreadable parcel (0xc1, a byte msgpack never uses)');
  // Logged once per reason (a minute apart at most); the first of each is a saga message of order "o".
  const deadLines = logged.lines.filter((l) => l.msg.startsWith('dead letter: '));
  t.match(
    deadLines,
    [
      { level: 'warn', msg: /\(invalid\)/, kind: 'stock', partition: 0, workerId: worker.id, order: 'o' },
      { level: 'warn', msg: /\(unknown_kind\)/, kind: 'stock', partition: 0, workerId: worker.id, order: 'o' },
      { level: 'warn', msg: /\(undecodable\)/, kind: 'stock', partition: 0, workerId: worker.id },
    ],
    'the dead letters are logged with their partition, the worker and the order they were about',
  );
  t.equal(deadLines.length, 3, 'one line per reason');
  t.equal(forbidden.length, 0, 'no acknowledgement went to a subject outside the saga acknowledgements');
  t.ok((await client.command('stock', 0, { k: 'create', id: 'x', price: 1 })).ok, 'the partition still serves');
  t.equal(seen.restarts(), 0);
});

t.test('a parcel that comes again is applied once and acknowledged again', async (t) => {
  const { nats, redis } = await startServers(t);
  // Stock alone: the reservation's answer leaves for an order partition nobody runs, so nothing gives it back.
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1, kinds: 'stock' });
  const nc = await connect({ servers: config.natsUrl });
  const r = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const worker = await startWorker({ nc, redis: r, config, log });
  const client = createShopClient({ nc, config, log });
  t.teardown(async () => {
    await client.close();
    await worker.close();
    await nc.close();
    r.disconnect();
  });
  const n = names(config.streamPrefix);
  await client.command('stock', 0, { k: 'create', id: 'x', price: 1 });
  await client.command('stock', 0, { k: 'add', id: 'x', amount: 10 });
  const ackTo = n.sagaAck('tester');
  const acks: string[] = [];
  nc.subscribe(ackTo, { callback: (_err, msg) => acks.push(...decode<string[]>(msg.data)) });
  const reserve = encode([{ k: 'reserve', saga: 'o#1', order: 'o', from: 0, lines: [['x', 3]] }]);
  for (let copy = 1; copy <= 3; copy++) {
    nc.publish(n.saga(worker.id), encode([ackTo, 'stock', 0, 'same-parcel', reserve]));
    await waitFor(() => acks.filter((id) => id === 'same-parcel').length === copy, { deadlineMs: 10_000, what: `acknowledgement ${copy}` });
  }
  t.same(await client.query('stock', 0, { k: 'find', id: 'x' }), { ok: true, v: { stock: 7, price: 1 } }, 'three copies, one reservation');
});

t.test('a reserve crafted on the bus for an order that does not exist: the stock is given back and the ledger entry forgotten, across workers', async (t) => {
  const { nats, redis } = await startServers(t);
  // Stock and order partitions in two workers (one id, static placement: each takes the parcels of its own kinds).
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1 });
  const nc = await connect({ servers: config.natsUrl });
  const r = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const stockWorker = await startWorker({ nc, redis: r, config: { ...config, kinds: ['stock'] }, log });
  const orderWorker = await startWorker({ nc, redis: r, config: { ...config, kinds: ['order'] }, log });
  const client = createShopClient({ nc, config, log });
  t.teardown(async () => {
    await client.close();
    await stockWorker.close();
    await orderWorker.close();
    await nc.close();
    r.disconnect();
  });
  const n = names(config.streamPrefix);
  await client.command('stock', 0, { k: 'create', id: 'x', price: 1 });
  await client.command('stock', 0, { k: 'add', id: 'x', amount: 10 });
  const keys = partitionKeys(config.redisPrefix, 'stock', 0);
  const ledger = keys.table('ledger');
  /** Saga commands the stock partition has applied and committed (its count of commands from within the workers). */
  const sagaCommands = async () => Number((await r.hget(keys.meta, 'local')) ?? 0);
  const units = async () => ((await client.query('stock', 0, { k: 'find', id: 'x' })) as { v: { stock: number } }).v.stock;
  nc.publish(n.saga(stockWorker.id), encode(['', 'stock', 0, '', encode([{ k: 'reserve', saga: 'ghost#1', order: 'ghost', from: 0, lines: [['x', 3]] }])]));
  // The hold's answer reaches a coordinator that runs no such saga: it gives the hold back (a release), and then
  // forgets the tombstone (a forget): three saga commands applied at the stock partition.
  await waitFor(async () => (await sagaCommands()) >= 3 && (await r.hlen(ledger)) === 0, { deadlineMs: 10_000, what: 'the reserve, its release and the forget of its tombstone' });
  t.equal(await units(), 10, 'nothing taken');
  t.equal(await r.hlen(ledger), 0, 'no entry left behind (the protocol before left a tombstone for ever)');
});
