import t from 'tap';
import { createLog } from '../../src/log.js';
import { startAdminHttp } from '../../src/monitoring/admin-http.js';
import { startCluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/servers.js';

const text = async (url: string) => {
  const res = await fetch(url);
  return { status: res.status, body: await res.text(), type: res.headers.get('content-type') };
};

t.test('admin HTTP: a worker answers /healthz, /readyz and /metrics on its loopback port; the gateway counts requests by route and status', async (t) => {
  const c = await startCluster(t);
  const worker = c.spawnWorker(0);
  const settled = await c.waitSettled('one worker to take every partition');
  const adminPort = [...settled.workers.values()][0]!.heartbeat.adminPort;
  t.ok(adminPort > 0, `the worker announces its admin port (${adminPort})`);
  const base = `http://127.0.0.1:${adminPort}`;
  t.same(await text(`${base}/healthz`), { status: 200, body: 'ok\n', type: 'text/plain; charset=utf-8' });
  // Heartbeats can list every partition a moment before the worker's start-up returns and /readyz stops saying "starting".
  await waitFor(async () => (await text(`${base}/readyz`)).status === 200, { deadlineMs: 10_000, what: 'the worker to be ready' });
  t.match(await text(`${base}/readyz`), { status: 200, body: /^ok: 24 partitions/ });
  t.equal((await text(`${base}/nope`)).status, 404);

  t.equal((await c.call('POST', '/stock/item/create/5')).status, 200);
  t.equal((await c.call('GET', '/stock/find/missing')).status, 400);
  t.equal((await c.call('GET', '/stock/find/a%ZZ')).status, 400, 'an id that names nothing: the route is known, the id is not');
  t.equal((await c.call('GET', '/no/such/route/anywhere')).status, 404);
  t.equal((await c.call('GET', '/stock/find/1/2/3')).status, 404);
  await c.call('POST', '/payment/batch_init/10/100');
  await c.call('POST', '/stock/batch_init/10/10/1');
  await c.call('POST', '/orders/batch_init/1/10/10/1');
  t.equal((await c.call('POST', '/orders/checkout/0')).status, 200, 'a checkout, so a saga outcome is counted');
  const metrics = await text(`${base}/metrics`);
  t.match(metrics.type, /^text\/plain; version=0\.0\.4/);
  for (const name of ['shop_commands_total', 'shop_batch_commands_bucket', 'shop_commit_duration_seconds_bucket', 'shop_partition_lag', 'shop_partitions_owned', 'shop_saga_outcomes_total', 'process_cpu_seconds_total']) {
    t.match(metrics.body, new RegExp(`^${name}`, 'm'), `worker metrics have ${name}`);
  }
  t.match(metrics.body, /^shop_partitions_owned\{kind="stock"\} 8$/m);
  t.match(metrics.body, /^shop_saga_outcomes_total\{outcome="paid"\} 1$/m);

  const gw = await startAdminHttp({ host: '127.0.0.1', port: 0, registry: () => c.gatewayRegistry, health: () => ({ ok: true }), ready: () => ({ ok: true }), log: createLog('admin', 'error') });
  t.teardown(() => gw.close());
  const gateway = (await text(`http://127.0.0.1:${gw.port}/metrics`)).body;
  t.match(gateway, /^shop_http_requests_total\{route="\/stock\/item\/create\/:price\(int\)",method="POST",status="200"\} 1$/m);
  t.match(gateway, /^shop_http_requests_total\{route="\/stock\/find\/:item_id",method="GET",status="400"\} 2$/m);
  t.match(gateway, /^shop_http_requests_total\{route="unmatched",method="GET",status="404"\} 2$/m, 'paths no route has the shape of share one label');
  t.match(gateway, /^shop_http_request_duration_seconds_bucket/m);
  await worker.kill('SIGTERM');
});
