import { connect } from 'nats';
import t, { type Test } from 'tap';
import type { Config, Kind } from '../../src/config.js';
import { createGateway } from '../../src/http/gateway.js';
import { createLog } from '../../src/log.js';
import { oneOrderShop } from '../helpers/http.js';
import { startServers, testConfig } from '../helpers/servers.js';
import { spawnRole, type Child } from '../helpers/stack.js';

/**
 * Workers as real processes, one per actor kind, so one kind's owner can be killed with SIGKILL at an exact
 * point of the saga (faultKillAfter) while the others keep running. The gateway runs in the test process.
 */
async function crashSystem(t: Test) {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { partitions: 4, workerProcesses: 1 });
  const workers = new Map<Kind, Child>();
  const startKind = (kind: Kind, fault: Config['faultKillAfter'] = 'none') => {
    const child = spawnRole('worker', { ...config, kinds: [kind] }, { SHOP_FAULT_KILL_AFTER: fault });
    workers.set(kind, child);
    t.teardown(() => child.kill('SIGKILL'));
    return child;
  };
  for (const kind of ['stock', 'payment', 'order'] as const) startKind(kind);
  const nc = await connect({ servers: config.natsUrl });
  const gateway = await createGateway({ nc, config, log: createLog('test', config.logLevel) });
  t.teardown(async () => {
    await gateway.close();
    await nc.close();
  });
  const base = `http://127.0.0.1:${gateway.port}`;
  const call = async (method: 'GET' | 'POST', path: string) => {
    const res = await fetch(base + path, { method });
    return { status: res.status, body: (await res.json()) as any };
  };
  /** Replaces a kind's worker: SIGTERM the running one, start another (with a fault, or healthy). */
  const replace = async (kind: Kind, fault: Config['faultKillAfter'] = 'none') => {
    const old = workers.get(kind)!;
    t.equal(await old.kill('SIGTERM'), '0', `the ${kind} worker stopped cleanly`);
    return startKind(kind, fault);
  };
  return { call, startKind, replace };
}

t.test('kill -9 of the order owner after it sent the reserve and debit, before their answers: the next owner finishes the saga', async (t) => {
  const { call, replace, startKind } = await crashSystem(t);
  const { order, state } = await oneOrderShop(call, { stock: 10, credit: 100, quantity: 2 });
  const faulty = await replace('order', 'send');
  const checkout = call('POST', `/orders/checkout/${order}`);
  t.equal(await faulty.exited, 'SIGKILL', 'the order worker died with the saga in flight');
  startKind('order');
  t.same(await checkout, { status: 200, body: { order_id: order, paid: true } }, 'the waiting client gets the committed outcome');
  t.same(await state(), { stock: 8, credit: 90, paid: true }, 'taken and charged exactly once');
});

t.test('kill -9 of the order owner in a checkout that must be compensated: everything is given back', async (t) => {
  const { call, replace, startKind } = await crashSystem(t);
  const { order, state } = await oneOrderShop(call, { stock: 10, credit: 9, quantity: 2 });
  const faulty = await replace('order', 'send');
  const checkout = call('POST', `/orders/checkout/${order}`);
  t.equal(await faulty.exited, 'SIGKILL');
  startKind('order');
  const answer = await checkout;
  t.equal(answer.status, 400, 'a refusal, never a 5xx, once the outcome is known');
  t.equal(answer.body.error, 'insufficient_credit');
  t.same(await state(), { stock: 10, credit: 9, paid: false }, 'the reservation was released');
});

t.test('kill -9 of a stock owner after it reserved and before it answered: its answer is re-sent after restart', async (t) => {
  const { call, replace, startKind } = await crashSystem(t);
  const { order, state } = await oneOrderShop(call, { stock: 3, credit: 100, quantity: 3 });
  const faulty = await replace('stock', 'commit');
  const checkout = call('POST', `/orders/checkout/${order}`);
  t.equal(await faulty.exited, 'SIGKILL', 'the stock worker died right after committing the reservation');
  startKind('stock');
  t.same(await checkout, { status: 200, body: { order_id: order, paid: true } });
  t.same(await state(), { stock: 0, credit: 85, paid: true });
  t.equal((await call('POST', `/orders/checkout/${order}`)).status, 200, 'checking out again changes nothing');
  t.same(await state(), { stock: 0, credit: 85, paid: true });
});

t.test('kill -9 of a payment owner after it debited, in a saga that must release the stock', async (t) => {
  const { call, replace, startKind } = await crashSystem(t);
  const { order, state } = await oneOrderShop(call, { stock: 1, credit: 100, quantity: 2 });
  const faulty = await replace('payment', 'commit');
  const checkout = call('POST', `/orders/checkout/${order}`);
  t.equal(await faulty.exited, 'SIGKILL');
  startKind('payment');
  const answer = await checkout;
  t.equal(answer.status, 400);
  t.equal(answer.body.error, 'insufficient_stock');
  t.same(await state(), { stock: 1, credit: 100, paid: false }, 'the debit was refunded after the restart');
});
