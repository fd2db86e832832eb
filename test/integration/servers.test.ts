import { Redis } from 'ioredis';
import { connect, StorageType } from 'nats';
import { existsSync } from 'node:fs';
import t from 'tap';
import { pidAlive, randomToken, startNats, startRedis, startServers, testConfig, waitFor } from '../helpers/servers.js';

t.test('nats-server answers, keeps a JetStream stream across a restart, and is gone after stop', async (t) => {
  const nats = await startNats();
  t.teardown(() => nats.stop());
  t.match(nats.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
  const name = randomToken();

  const nc = await connect({ servers: nats.url });
  const jsm = await nc.jetstreamManager();
  await jsm.streams.add({ name, subjects: [`${name}.>`], storage: StorageType.File });
  const ack = await nc.jetstream().publish(`${name}.a`, new TextEncoder().encode('hello'));
  t.equal(ack.seq, 1, 'first message is sequence 1');
  await nc.close();

  await nats.restart();
  const nc2 = await connect({ servers: nats.url });
  const info = await (await nc2.jetstreamManager()).streams.info(name);
  t.equal(info.state.messages, 1, 'the stream and its message survive a restart on the same store dir');
  await nc2.close();

  const pid = nats.pid!;
  await nats.stop();
  t.notOk(pidAlive(pid), 'the process is gone');
  t.notOk(existsSync(nats.storeDir), 'the store dir is removed');
});

t.test('redis-server keeps a value across a restart (AOF in the same dir)', async (t) => {
  const redis = await startRedis(t);
  t.match(redis.url, /^redis:\/\/127\.0\.0\.1:\d+$/);
  const key = `${randomToken()}:k`;

  const client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  await client.connect();
  t.equal(await client.set(key, 'v1'), 'OK');
  t.equal(await client.get(key), 'v1');
  client.disconnect();

  const before = redis.pid;
  await redis.restart();
  t.not(redis.pid, before, 'a new process');
  const again = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  await again.connect();
  t.equal(await again.get(key), 'v1', 'the value survives the restart');
  again.disconnect();
});

t.test('kill9 crashes the server and restart brings it back', async (t) => {
  const redis = await startRedis(t);
  const pid = redis.pid!;
  redis.kill9();
  await waitFor(() => !pidAlive(pid), { deadlineMs: 5000, what: 'the killed redis-server to exit' });
  await redis.restart();
  t.ok(redis.pid && pidAlive(redis.pid), 'running again');
});

t.test('startServers starts both, and testConfig points at them with random prefixes', async (t) => {
  const { nats, redis } = await startServers(t);
  const a = testConfig(nats, redis);
  const b = testConfig(nats, redis, { partitions: 4 });
  t.equal(a.natsUrl, nats.url);
  t.equal(a.redisUrl, redis.url);
  t.not(a.streamPrefix, b.streamPrefix, 'each config gets its own stream prefix');
  t.equal(a.redisPrefix, `${a.streamPrefix}:`);
  t.equal(b.partitions, 4, 'overrides apply');
  t.ok(Object.isFrozen(a), 'frozen like every config');
  t.ok(a.streamMaxBytes <= 64 * 1024 * 1024, 'small streams, so many configs fit on one test server');
});

t.test('waitFor names what it waited for when the deadline passes', async (t) => {
  let calls = 0;
  await t.rejects(
    waitFor(() => (calls++, false), { deadlineMs: 200, intervalMs: 20, what: 'the moon to turn blue' }),
    /timed out after 200 ms waiting for the moon to turn blue/,
  );
  t.ok(calls > 2, 'it polled more than once');
  await t.rejects(
    waitFor(() => Promise.reject(new Error('ECONNREFUSED')), { deadlineMs: 100, intervalMs: 20, what: 'x' }),
    /waiting for x \(last attempt: ECONNREFUSED\)/,
  );
  let n = 0;
  await waitFor(() => ++n === 3, { deadlineMs: 1000, intervalMs: 1, what: 'three calls' });
  t.equal(n, 3);
});
