import { Redis } from 'ioredis';
import { connect } from 'nats';
import t, { type Test } from 'tap';
import type { Config, Kind } from '../../src/config.js';
import { createGateway } from '../../src/http/gateway.js';
import { createLog } from '../../src/log.js';
import { names } from '../../src/protocol.js';
import { Draft } from '../../src/datapath/draft.js';
import { createPartitionStore } from '../../src/datapath/store.js';
import { startWorker } from '../../src/placement/worker.js';
import { httpCall, oneOrderShop } from '../helpers/http.js';
import { startServers, testConfig, waitFor } from '../helpers/servers.js';
import { spawnRole } from '../helpers/stack.js';

/**
 * A worker that runs the order, stock and payment partitions of a checkout applies the saga's messages between
 * them within one batch and commits it as one transaction (datapath/batch-loop.ts).
 */

const log = createLog('test', 'warn');

async function servers(t: Test, overrides: Partial<Record<keyof Config, unknown>> = {}) {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1, ...overrides });
  const nc = await connect({ servers: config.natsUrl });
  const r = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const gnc = await connect({ servers: config.natsUrl });
  const gateway = await createGateway({ nc: gnc, config, log });
  t.teardown(async () => {
    await gateway.close();
    await gnc.close();
    await nc.close();
    r.disconnect();
  });
  const base = `http://127.0.0.1:${gateway.port}`;
  const call = (method: 'GET' | 'POST', path: string) => httpCall(base, method, path);
  return { config, nc, redis: r, call };
}

t.test('a checkout whose partitions share a worker: no saga message enters a stream, no ledger entry is left, exactly once', async (t) => {
  const { config, nc, redis, call } = await servers(t);
  const worker = await startWorker({ nc, redis, config, log });
  t.teardown(() => worker.close());
  const paying = await oneOrderShop(call, { stock: 10, credit: 100, quantity: 2 });
  const refused = await oneOrderShop(call, { stock: 10, credit: 5, quantity: 2 });

  const jsm = await nc.jetstreamManager();
  const n = names(config.streamPrefix);
  const lastSeqs = () => Promise.all((['stock', 'payment', 'order'] as Kind[]).map(async (k) => (await jsm.streams.info(n.stream(k))).state.last_seq));
  const [stockSeq, paymentSeq, orderSeq] = await lastSeqs();

  t.same((await call('POST', `/orders/checkout/${paying.order}`)).status, 200);
  const no = await call('POST', `/orders/checkout/${refused.order}`);
  t.same([no.status, (no.body as { error: string }).error], [400, 'insufficient_credit']);
  t.same(await paying.state(), { stock: 8, credit: 90, paid: true }, 'taken and charged once');
  t.same(await refused.state(), { stock: 10, credit: 5, paid: false }, 'the reservation was given back');

  const [stockAfter, paymentAfter, orderAfter] = await lastSeqs();
  t.same([stockAfter, paymentAfter], [stockSeq, paymentSeq], 'no reserve, debit, release or forget went through a stream');
  t.equal(orderAfter! - orderSeq!, 2, 'only the two checkouts did, and no answer');
  for (const kind of ['stock', 'payment'] as const) {
    const loaded = await createPartitionStore(redis, config.redisPrefix, kind, 0, ['ledger']).load();
    t.equal(loaded.tables.get('ledger')!.size, 0, `no ${kind} ledger entry is left in Redis`);
    t.ok(loaded.local > 0, `the ${kind} partition counted the commands delivered within the worker (${loaded.local})`);
  }
});

t.test('kill -9 right after committing a batch that ran a whole checkout: the next worker answers the waiting client, charged once', async (t) => {
  const { config, redis, call } = await servers(t);
  const healthy = spawnRole('worker', config);
  t.teardown(() => healthy.kill('SIGKILL'));
  const { order, state } = await oneOrderShop(call, { stock: 3, credit: 100, quantity: 3 });
  t.equal(await healthy.kill('SIGTERM'), '0', 'the healthy worker stops cleanly');

  const faulty = spawnRole('worker', config, { SHOP_FAULT_KILL_AFTER: 'commit' });
  t.teardown(() => faulty.kill('SIGKILL'));
  const checkout = call('POST', `/orders/checkout/${order}`);
  t.equal(await faulty.exited, 'SIGKILL', 'the worker died right after its commit');
  const orders = await createPartitionStore(redis, config.redisPrefix, 'order', 0, ['orders']).load();
  t.equal(orders.outbox.length, 1, 'the reply waits in the order partition outbox');

  const restarted = spawnRole('worker', config);
  t.teardown(() => restarted.kill('SIGKILL'));
  const answer = await checkout;
  t.same([answer.status, answer.body], [200, { order_id: order, paid: true }], 'the waiting client gets the committed outcome');
  t.same(await state(), { stock: 0, credit: 85, paid: true });
  t.equal((await call('POST', `/orders/checkout/${order}`)).status, 200, 'checking out again changes nothing');
  t.same(await state(), { stock: 0, credit: 85, paid: true });
});

t.test('a partition fenced under a batch that delivered to it: nothing of the batch is written, the saga goes on through the stream', async (t) => {
  const { config, nc, redis, call } = await servers(t);
  const first = await startWorker({ nc, redis, config, log });
  t.teardown(() => first.close());
  const { order, state } = await oneOrderShop(call, { stock: 10, credit: 100, quantity: 4 });

  // A second worker takes the stock partition alone; the first one learns it only when it tries to commit.
  const nc2 = await connect({ servers: config.natsUrl });
  const r2 = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const second = await startWorker({ nc: nc2, redis: r2, config, log, partitions: [{ kind: 'stock', partition: 0 }] });
  t.teardown(async () => {
    await second.close();
    await nc2.close();
    r2.disconnect();
  });
  const stale = first.runner('stock', 0)!;
  t.equal(stale.state, 'running', 'the first worker does not know yet');

  t.same((await call('POST', `/orders/checkout/${order}`)).body, { order_id: order, paid: true });
  t.equal(stale.state, 'fenced', 'the stale stock partition was dropped when the batch was refused');
  const outcomes = (await first.registry.getSingleMetric('shop_saga_outcomes_total')!.get()).values;
  t.same(outcomes.map((v) => [v.labels.outcome, v.value]), [['paid', 1]], 'decided in the withheld batch and again after it, counted once');
  t.same(await state(), { stock: 6, credit: 80, paid: true }, 'taken and charged once');
  const stock = await createPartitionStore(redis, config.redisPrefix, 'stock', 0, ['items', 'ledger']).load();
  t.same([...stock.tables.get('items')!.values()], [{ stock: 6, price: 5 }], 'Redis holds the sale once');
  await waitFor(async () => (await createPartitionStore(redis, config.redisPrefix, 'stock', 0, ['ledger']).load()).tables.get('ledger')!.size === 0, {
    deadlineMs: 10_000,
    what: 'the forget to reach the new stock owner through its stream',
  });
});

t.test('the draft: deleting what the batch created leaves no change; a dropped command restores the batch', (t) => {
  const live = new Map([['ledger', new Map<string, unknown>([['old', 1]])]]);
  const draft = new Draft(live);
  draft.set('ledger', 'new', 2);
  draft.keepCommand();
  draft.delete('ledger', 'new');
  draft.delete('ledger', 'absent');
  draft.delete('ledger', 'old');
  draft.keepCommand();
  t.same([...draft.batch.get('ledger')!], [['old', undefined]], 'only the committed key is deleted');
  t.equal(draft.size, 1);

  draft.set('ledger', 'new', 3);
  draft.delete('ledger', 'new');
  draft.set('ledger', 'old', 4);
  draft.dropCommand();
  t.same([...draft.batch.get('ledger')!], [['old', undefined]], 'the throwing command is taken back whole');
  t.equal(draft.size, 1);
  t.equal(draft.get('ledger', 'new'), undefined);
  draft.publish();
  t.same([...live.get('ledger')!], [], 'published: the live table has neither');
  t.end();
});
