/**
 * shop_event_loop_delay_max_seconds: the longest event-loop delay of the worker since it started, which a scrape
 * does not reset (what the fuzz test and an operator read to see whether any input starved the heartbeat).
 */
import t from 'tap';
import { setTimeout as delay } from 'node:timers/promises';
import { createWorkerMetrics } from '../src/monitoring/metrics.js';

const read = async (registry: ReturnType<typeof createWorkerMetrics>['registry']) => {
  const m = (await registry.getSingleMetric('shop_event_loop_delay_max_seconds')!.get()).values[0]!.value;
  return m;
};

t.test('a loop held for 200 ms shows as a delay of at least 150 ms, and stays shown after a scrape', async (t) => {
  const { registry } = createWorkerMetrics(() => []);
  await delay(50); // the monitor samples every 10 ms
  t.ok((await read(registry)) < 0.15, 'not before');
  const until = performance.now() + 200;
  while (performance.now() < until); // the work of a message that would starve the heartbeat
  await delay(50);
  t.ok((await read(registry)) >= 0.15, `seen: ${await read(registry)} s`);
  await registry.metrics();
  t.ok((await read(registry)) >= 0.15, 'a scrape does not reset it');
});
