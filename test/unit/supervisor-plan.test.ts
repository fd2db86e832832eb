/**
 * The supervisor's plan (src/stack/plan.ts), with no process started: what runs, with which commands,
 * settings and credentials, for the default stack and the cluster profile; nothing secret on a command line.
 */
import t from 'tap';
import { loadConfig, type Config } from '../../src/config.js';
import { completeCredentials, secretPaths } from '../../src/stack/secrets.js';
import { plan } from '../../src/stack/plan.js';

t.test('plan lists the servers, then the workers and gateways, with their commands and settings', async (t) => {
  const config = loadConfig({}, { natsPort: 5001, redisPort: 5002, dataDir: '/srv/shop', workerProcesses: 3, gatewayProcesses: 2, redisAppendfsync: 'always', partitions: 16 });
  t.throws(() => plan(config), /need the local secrets/, 'servers with auth need credentials');
  const credentials = completeCredentials(config);
  const children = plan(config, { paths: secretPaths(config), credentials });
  t.same(children.map((c) => [c.name, c.role]), [
    ['nats', 'nats'],
    ['redis', 'redis'],
    ['worker-0', 'worker'],
    ['worker-1', 'worker'],
    ['worker-2', 'worker'],
    ['gateway-0', 'gateway'],
    ['gateway-1', 'gateway'],
  ]);
  const [nats, redis, worker, , worker2, gateway] = children;
  t.equal(nats!.command, 'nats-server');
  t.match(nats!.args.join(' '), /-c \/srv\/shop\/secrets\/nats\.conf -js -a 127\.0\.0\.1 -p 5001 -sd \/srv\/shop\/nats/, 'nats runs the generated config with the users');
  t.equal(redis!.command, 'redis-server');
  t.match(redis!.args.join(' '), /--port 5002 --bind 127\.0\.0\.1 .*--dir \/srv\/shop\/redis --appendonly yes --appendfsync always/);
  t.match(redis!.args.join(' '), /--aclfile \/srv\/shop\/secrets\/redis\.acl/, 'redis takes its users from the ACL file');
  for (const child of children) t.notMatch(child.args.join(' '), new RegExp(Object.values(credentials.nats).concat(credentials.redis.password).join('|')), `no password in ${child.name}'s arguments`);
  t.equal(worker!.command, process.execPath);
  t.match(worker!.args, [/\/main\.js$/, 'worker']);
  t.equal(worker2!.env.SHOP_WORKER_INDEX, '2');
  t.match(gateway!.args, [/\/main\.js$/, 'gateway']);
  t.notOk('SHOP_WORKER_INDEX' in gateway!.env, 'gateways are not workers');
  t.same([worker!.env.SHOP_NATS_USER, worker!.env.SHOP_NATS_PASSWORD], ['worker', credentials.nats.worker], 'a worker connects as the worker user');
  t.same([worker!.env.SHOP_REDIS_USER, worker!.env.SHOP_REDIS_PASSWORD], [credentials.redis.user, credentials.redis.password]);
  t.same(children.filter((c) => c.role === 'gateway').map((c) => [c.env.SHOP_NATS_USER, c.env.SHOP_NATS_PASSWORD]), [
    ['gateway-0', credentials.nats['gateway-0']],
    ['gateway-1', credentials.nats['gateway-1']],
  ], 'each gateway its own user');
  t.equal(gateway!.env.SHOP_REDIS_PASSWORD, '', 'a gateway does not get the Redis password');
  for (const child of [worker!, gateway!]) {
    t.equal(child.env.SHOP_NATS_URL, 'nats://127.0.0.1:5001', `${child.name} talks to the nats it starts`);
    t.equal(child.env.SHOP_REDIS_URL, 'redis://127.0.0.1:5002');
    t.equal(child.env.SHOP_PARTITIONS, '16', `${child.name} gets the supervisor's settings`);
    t.equal(child.env.SHOP_KINDS, config.kinds.join(','));
  }
  // A child loading its config from that environment gets the supervisor's config (the log format made concrete).
  const childConfig = loadConfig({ ...worker2!.env });
  const apart = { natsUrl: '', redisUrl: '', natsUser: '', natsPassword: '', redisUser: '', redisPassword: '', logFormat: '' };
  t.same({ ...childConfig, workerIndex: 0, ...apart }, { ...config, ...apart });
});

t.test('plan hands the workers and gateways a log format of their own: their stderr is a pipe to the supervisor', async (t) => {
  const children = (format?: 'json' | 'pretty', logFormat = 'auto') =>
    plan(loadConfig({}, { serverAuth: false, logFormat }), undefined, format).filter((c) => c.role === 'worker' || c.role === 'gateway');
  for (const format of ['json', 'pretty'] as const) {
    for (const child of children(format)) {
      t.equal(child.env.SHOP_LOG_FORMAT, format, `${child.name} writes ${format} lines when the supervisor resolved 'auto' to it`);
      t.equal(loadConfig({ ...child.env }).logFormat, format, 'and loads it as its setting');
    }
  }
  for (const child of children(undefined, 'json')) t.equal(child.env.SHOP_LOG_FORMAT, 'json', `${child.name}: a format set explicitly is kept`);
  for (const child of children(undefined, 'pretty')) t.equal(child.env.SHOP_LOG_FORMAT, 'pretty', `${child.name}: likewise`);
  t.throws(() => loadConfig({ SHOP_LOG_FORMAT: 'text' }), /setting logFormat \(SHOP_LOG_FORMAT\) must be one of auto, json, pretty, got "text"/, 'any other format is refused at start');
});

t.test('plan with serverAuth off: the servers ask for nothing, and the children get no credentials', async (t) => {
  const config = loadConfig({}, { natsPort: 5001, redisPort: 5002, dataDir: '/srv/shop', serverAuth: false });
  const [nats, redis, worker, gateway] = plan(config);
  t.match(nats!.args.join(' '), /-c \S+\/nats\/local\.conf -js/);
  t.notMatch(redis!.args.join(' '), /aclfile/);
  for (const child of [worker!, gateway!]) t.equal(child.env.SHOP_NATS_USER, '', `${child.name} has no NATS user`);
});

t.test('plan without startServers uses the configured servers', async (t) => {
  const config = loadConfig({}, { startServers: false, natsUrl: 'nats://nats-1:4222', redisUrl: 'redis://redis:6379', workerProcesses: 1, gatewayProcesses: 1 });
  const children = plan(config);
  t.same(children.map((c) => c.name), ['worker-0', 'gateway-0']);
  t.equal(children[0]!.env.SHOP_NATS_URL, 'nats://nats-1:4222');
  t.equal(children[0]!.env.SHOP_REDIS_URL, 'redis://redis:6379');
});

t.test('plan of the cluster profile: 3 clustered nats-servers, a Redis primary and two replicas, 3 Sentinels, 3 workers, 2 gateways; no password on a command line', async (t) => {
  const config = loadConfig({ SHOP_PROFILE: 'cluster' }, { dataDir: '/srv/shop' });
  const credentials = completeCredentials(config);
  const children = plan(config, { paths: secretPaths(config), credentials });
  t.same(
    children.map((c) => [c.name, c.role]),
    [
      ['nats-0', 'nats'],
      ['nats-1', 'nats'],
      ['nats-2', 'nats'],
      ['redis-0', 'redis'],
      ['redis-1', 'redis'],
      ['redis-2', 'redis'],
      ['sentinel-0', 'sentinel'],
      ['sentinel-1', 'sentinel'],
      ['sentinel-2', 'sentinel'],
      ['worker-0', 'worker'],
      ['worker-1', 'worker'],
      ['worker-2', 'worker'],
      ['gateway-0', 'gateway'],
      ['gateway-1', 'gateway'],
    ],
  );
  const byName = new Map(children.map((c) => [c.name, c]));
  t.match(byName.get('nats-1')!.args.join(' '), /-c \/srv\/shop\/secrets\/nats-1\.conf -js -a 127\.0\.0\.1 -p 4231 -sd \/srv\/shop\/nats-1 .*-n shop-1/, 'each node its config, port, store and name');
  t.same(byName.get('sentinel-2')!.args, ['/srv/shop/secrets/sentinel-2.conf', '--sentinel'], 'a Sentinel is redis-server --sentinel with its config');
  t.same([byName.get('redis-1')!.port, byName.get('redis-2')!.port], [6391, 6392], 'the replicas on redisPort + 1 and + 2');
  t.ok(byName.get('redis-0')!.prepare, 'a Redis server decides at each start whose replica it is');
  const secrets = [...Object.values(credentials.nats), credentials.redis.password, credentials.redisReplica.password, credentials.redisSentinel.password, credentials.sentinel, credentials.natsRoute];
  for (const child of children) t.notMatch(child.args.join(' '), new RegExp(secrets.join('|')), `no password in ${child.name}'s arguments`);
  const worker = byName.get('worker-0')!.env;
  t.equal(worker.SHOP_NATS_URL, 'nats://127.0.0.1:4230,nats://127.0.0.1:4231,nats://127.0.0.1:4232', 'workers know every NATS node');
  t.equal(worker.SHOP_REDIS_SENTINELS, '127.0.0.1:26390,127.0.0.1:26391,127.0.0.1:26392', 'and find Redis through the Sentinels');
  t.same([worker.SHOP_REDIS_SENTINEL_PASSWORD, worker.SHOP_REDIS_WAIT_REPLICAS, worker.SHOP_STREAM_REPLICAS], [credentials.sentinel, '1', '3']);
  const gateway = byName.get('gateway-1')!.env;
  t.same([gateway.SHOP_REDIS_PASSWORD, gateway.SHOP_REDIS_SENTINEL_PASSWORD], ['', ''], 'a gateway gets neither Redis nor Sentinel password');
  const one = loadConfig({}, { dataDir: '/srv/shop' });
  const ports = (c: Config) => [
    ...Array.from({ length: c.natsNodes }, (_, i) => c.natsPort + i),
    ...(c.natsNodes > 1 ? Array.from({ length: c.natsNodes }, (_, i) => c.natsClusterPort + i) : []),
    ...Array.from({ length: 1 + c.redisReplicas }, (_, i) => c.redisPort + i),
    ...Array.from({ length: c.sentinelNodes }, (_, i) => c.sentinelPort + i),
    ...Array.from({ length: c.workerProcesses + c.gatewayProcesses }, (_, i) => c.adminPort + i),
  ];
  t.same(ports(config).filter((p) => ports(one).includes(p)), [], 'the one-node and the cluster stacks share no port but 8000');
});
