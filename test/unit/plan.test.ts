/**
 * The supervisor's plan (src/stack/plan.ts), the parts test/integration/supervisor.test.ts and test/integration/cluster-profile.test.ts do
 * not look at: where each server keeps its data, and what a replicated Redis group's children prepare before a start.
 */
import t from 'tap';
import { loadConfig } from '../../src/config.js';
import { dataPaths, natsEnv, plan, serverName } from '../../src/stack/plan.js';
import { completeCredentials, secretPaths } from '../../src/stack/secrets.js';

t.test('a one-node stack keeps its data in nats/ and redis/, a pid file beside each', async (t) => {
  const p = dataPaths(loadConfig({}, { dataDir: '/srv/shop', natsPort: 5001, redisPort: 5002 }));
  t.same(p.nats, [{ name: 'nats', port: 5001, dir: '/srv/shop/nats', pidFile: '/srv/shop/nats.pid' }]);
  t.same(p.redis, [{ name: 'redis', port: 5002, dir: '/srv/shop/redis', pidFile: '/srv/shop/redis.pid' }]);
  t.same(p.sentinels, []);
  t.equal(p.primaryFile, '/srv/shop/redis-primary');
});

t.test("a cluster's nodes are numbered, on consecutive ports", async (t) => {
  const p = dataPaths(loadConfig({}, { dataDir: '/srv/shop', natsPort: 5000, natsNodes: 3, redisPort: 6000, redisReplicas: 1, sentinelNodes: 2, sentinelPort: 7000 }));
  t.same(p.nats.map((n) => [n.name, n.port, n.dir]), [['nats-0', 5000, '/srv/shop/nats-0'], ['nats-1', 5001, '/srv/shop/nats-1'], ['nats-2', 5002, '/srv/shop/nats-2']]);
  t.same(p.redis.map((n) => [n.name, n.port, n.pidFile]), [['redis-0', 6000, '/srv/shop/redis-0.pid'], ['redis-1', 6001, '/srv/shop/redis-1.pid']]);
  t.same(p.sentinels.map((n) => [n.name, n.port]), [['sentinel-0', 7000], ['sentinel-1', 7001]]);
});

t.test('a replicated Redis group: each server and Sentinel prepares its start, and is named with its node in messages', async (t) => {
  const config = loadConfig({}, { dataDir: '/srv/shop', redisReplicas: 1, sentinelNodes: 1, natsNodes: 1 });
  const children = plan(config, { paths: secretPaths(config), credentials: completeCredentials(config) });
  const group = children.filter((c) => c.role === 'redis' || c.role === 'sentinel');
  t.same(group.map((c) => [c.name, c.prepare]), [
    ['redis-0', { writes: 'redis-node', index: 0 }],
    ['redis-1', { writes: 'redis-node', index: 1 }],
    ['sentinel-0', { writes: 'sentinel', index: 0 }],
  ]);
  t.same(group.map(serverName), ['redis-server (redis-0)', 'redis-server (redis-1)', 'redis-server (sentinel-0)']);
  t.equal(serverName(children.find((c) => c.role === 'nats')!), 'nats-server', 'a lone server is named by its command');
  t.throws(() => plan(loadConfig({}, { redisReplicas: 1, serverAuth: false })), /setting redisReplicas \(SHOP_REDIS_REPLICAS\) needs serverAuth/);
});

t.test("nats-server's Go scheduler gets half the cores, unless the environment already says", async (t) => {
  t.same(natsEnv({}, 2), { GOMAXPROCS: '1' }, 'two cores: one');
  t.same(natsEnv({}, 1), { GOMAXPROCS: '1' }, 'one core: still one');
  t.same(natsEnv({}, 8), { GOMAXPROCS: '4' });
  t.same(natsEnv({}, 7), { GOMAXPROCS: '3' }, 'rounded down');
  t.same(natsEnv({ GOMAXPROCS: '6' }, 2), {}, "the user's own (inherited by the child) wins");
  const config = loadConfig({}, { dataDir: '/srv/shop', natsNodes: 3 });
  const nats = plan(config, { paths: secretPaths(config), credentials: completeCredentials(config) }).filter((c) => c.role === 'nats');
  t.equal(nats.length, 3);
  for (const node of nats) t.same(node.env, natsEnv(), `${node.name}: every node of a cluster alike`);
});
