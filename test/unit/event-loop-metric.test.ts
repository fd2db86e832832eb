/**
 * shop_event_loop_delay_max_seconds: the longest event-loop delay of the worker since the previous scrape (what the
 * fuzz test and an operator read to see whether any input starved the heartbeat).
 */
import t from 'tap';
import { setTimeout as delay } from 'node:timers/promises';
import { createWorkerMetrics } from '../../src/monitoring/metrics.js';

const read = async (registry: ReturnType<typeof createWorkerMetrics>['registry']) => {
  const m = (await registry.getSingleMetric('shop_event_loop_delay_max_seconds')!.get()).values[0]!.value;
  return m;
};

t.test('a loop held for 200 ms shows as a delay of at least 150 ms in the next scrape, not in the one after', async (t) => {
  const { registry } = createWorkerMetrics(() => []);
  await delay(50); // the monitor's timer runs
  const until = performance.now() + 200;
  while (performance.now() < until); // the work of a message that would starve the heartbeat
  await delay(50); // the monitor samples every 10 ms
  const seen = await read(registry);
  t.ok(seen >= 0.15, `seen: ${seen} s`);
  await delay(50);
  const after = await read(registry);
  t.ok(after < seen, `the scrape started a new window (${after} s)`);
});
