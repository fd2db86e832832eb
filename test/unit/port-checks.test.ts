/**
 * The supervisor's pure port checks (src/stack/port-checks.ts): which ports the servers take, and the messages that
 * name the setting when one is 0, out of range, or taken twice.
 */
import t from 'tap';
import { loadConfig } from '../../src/config.js';
import { dataPaths } from '../../src/stack/plan.js';
import { checkServerPorts, serverPorts } from '../../src/stack/port-checks.js';

const config = (overrides: Record<string, unknown>) => loadConfig({}, { dataDir: '/srv/shop', ...overrides });

t.test('the one-node stack takes natsPort and redisPort', async (t) => {
  const c = config({ natsPort: 5001, redisPort: 5002 });
  t.same(serverPorts(c, dataPaths(c)), [
    { port: 5001, key: 'natsPort' },
    { port: 5002, key: 'redisPort' },
  ]);
});

t.test('a cluster takes consecutive ports from each base: clients, routes, Redis nodes, Sentinels', async (t) => {
  const c = config({ natsPort: 5000, natsNodes: 3, natsClusterPort: 6000, redisPort: 7000, redisReplicas: 2, sentinelNodes: 3, sentinelPort: 8000 });
  const ports = serverPorts(c, dataPaths(c));
  t.same(
    ports.map((u) => `${u.key}:${u.port}`),
    ['natsPort:5000', 'natsPort:5001', 'natsPort:5002', 'natsClusterPort:6000', 'natsClusterPort:6001', 'natsClusterPort:6002', 'redisPort:7000', 'redisPort:7001', 'redisPort:7002', 'sentinelPort:8000', 'sentinelPort:8001', 'sentinelPort:8002'],
  );
  t.doesNotThrow(() => checkServerPorts(ports));
});

t.test('a port 0 or past 65535 is refused, naming the setting and its variable', async (t) => {
  t.throws(() => checkServerPorts([{ port: 0, key: 'redisPort' }]), { name: 'ConfigError', message: /setting redisPort \(SHOP_REDIS_PORT\) must be a fixed port/ });
  t.throws(() => checkServerPorts([{ port: 65536, key: 'sentinelPort' }]), { name: 'ConfigError', message: /setting sentinelPort \(SHOP_SENTINEL_PORT\) leaves no port for all its nodes \(65536 > 65535\)/ });
});

t.test('a port taken twice is refused: by one setting, or by two that overlap', async (t) => {
  t.throws(() => checkServerPorts([{ port: 5000, key: 'natsPort' }, { port: 5000, key: 'natsPort' }]), /setting natsPort \(SHOP_NATS_PORT\) gives port 5000 twice/);
  const c = config({ natsPort: 5000, natsNodes: 3, natsClusterPort: 5002 });
  t.throws(() => checkServerPorts(serverPorts(c, dataPaths(c))), /settings natsPort and natsClusterPort \(SHOP_NATS_PORT, SHOP_NATS_CLUSTER_PORT\) overlap: both use port 5002/);
});
