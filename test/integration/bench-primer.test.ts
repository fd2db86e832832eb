/**
 * The benchmark's saga primer against a real shop of two workers (bench/http.ts primeOrders, bench/scenarios.ts
 * sagaPrimer, run by the load engine as the bench runs it): every checkout is refused for want of credit, and when
 * it is over the primer's items hold all their stock, its user no credit, its orders are unpaid, and no saga
 * ledger entry is left. So the primer runs whole sagas across workers and changes nothing a run measures.
 */
import t from 'tap';
import { startLoad } from '../../bench/engine.js';
import { createConnections, primeOrders } from '../../bench/http.js';
import { parseOptions } from '../../bench/options.js';
import { PRIME_ORDERS, PRIME_STOCK, sagaPrimer } from '../../bench/scenarios.js';
import { Stats } from '../../bench/stats.js';
import { seededRandom } from '../../src/actors/random.js';
import { partitionOf } from '../../src/partitioning.js';
import { pool } from '../helpers/pool.js';
import { waitFor } from '../helpers/servers.js';
import { ledgerEntries, startSystem } from '../helpers/system.js';

t.test('the saga primer: refused checkouts of its own orders, across workers, that leave every amount as it was', async (t) => {
  const sys = await startSystem(t, { workers: 2 });
  const { pool: http, clients } = createConnections(sys.url, 16, 30_000);
  t.teardown(() => http.close());
  const orders = await primeOrders(http, 30_000, seededRandom(7));
  t.equal(orders.length, PRIME_ORDERS);

  const requests = 2 * PRIME_ORDERS;
  const scenario = sagaPrimer(parseOptions(['checkout-fresh']), orders);
  const stats = new Stats(scenario.kinds);
  const run = startLoad({ dispatcher: http, connections: clients, scenario, stats, model: { kind: 'closed', concurrency: 16, paceMs: 0 }, requests, timeoutMs: 30_000 });
  const { issued } = await run.done;
  const summary = stats.summary();
  t.equal(issued, requests);
  t.same([summary.expected, summary.errors, summary.byCode], [requests, 0, { insufficient_credit: requests }], 'every checkout refused for want of credit');

  const views = await pool(orders, 16, async (o) => (await sys.call('GET', `/orders/find/${o}`)).body as { paid: boolean; user_id: string; items: [string, number][] });
  t.ok(views.every((v) => !v.paid), 'no order paid');
  const items = [...new Set(views.flatMap((v) => v.items.map(([item]) => item)))];
  // Static placement: partition p runs on worker p mod 2, so orders whose items are on both had sagas across workers.
  const workersOfItems = new Set(items.map((i) => partitionOf(i, sys.config.partitions) % 2));
  t.equal(workersOfItems.size, 2, `the primer's ${items.length} items are on the partitions of both workers`);
  const stocks = await pool(items, 16, async (i) => ((await sys.call('GET', `/stock/find/${i}`)).body as { stock: number }).stock);
  t.ok(stocks.every((s) => s === PRIME_STOCK), 'every unit held by a refused checkout was given back');
  t.equal(((await sys.call('GET', `/payment/find_user/${views[0]!.user_id}`)).body as { credit: number }).credit, 0, 'the user still has no credit');

  const held = ledgerEntries(t, sys.config);
  await waitFor(async () => (await held()) === 0, { deadlineMs: 10_000, what: 'every ledger entry forgotten' });
});
