/**
 * Redis with replicas and Sentinels: a commit counts only once a replica has it (WAIT); with the cluster profile's
 * replicas, losing one of them does not stop commits; a connection through the Sentinels follows their +switch-master
 * at once, whether the old primary is paused or dead; and workers follow a failover (SENTINEL FAILOVER, and SIGKILL of
 * the primary) without losing anything they acknowledged.
 */
import { connect } from 'nats';
import t from 'tap';
import { decode } from '../../src/codec.js';
import { loadConfig } from '../../src/config.js';
import { SENTINEL_FAILOVER_TIMEOUT_MS } from '../../src/stack/topology.js';
import { connectRedis } from '../../src/transport/connect.js';
import { createGateway } from '../../src/http/gateway.js';
import { createLog } from '../../src/log.js';
import { partitionOf } from '../../src/partitioning.js';
import { ReplicationTimeoutError } from '../../src/datapath/script-runner.js';
import { createPartitionStore } from '../../src/datapath/store.js';
import type { BatchWrite } from '../../src/datapath/store-scripts.js';
import { startRedisHA, type RedisHA } from '../helpers/ha.js';
import { httpCall } from '../helpers/http.js';
import { randomToken, startNats, testConfig, waitFor } from '../helpers/servers.js';
import { spawnRole } from '../helpers/stack.js';

/** How long a commit waits for the replica in these tests. */
const WAIT_TIMEOUT_MS = 2000;

const write = (epoch: number, cursor: number, item: string, stock: number): BatchWrite => ({
  epoch,
  commits: cursor,
  cursor,
  local: 0,
  changes: new Map([['items', new Map([[item, { stock, price: 1 }]])]]),
  outboxField: '',
  outbox: null,
  cleared: [],
});

t.test('WAIT: an acknowledged commit is on the replica before the answer; with the replica paused, a commit (and an acquire) is not acknowledged', async (t) => {
  const ha = await startRedisHA(t, { replicas: 1, sentinels: 0 });
  const [primary, replica] = ha.nodes as [RedisHA['nodes'][0], RedisHA['nodes'][0]];
  const login = { redisUrl: primary.url, redisUser: ha.worker.user, redisPassword: ha.worker.password, redisTlsCa: '', redisTlsCert: '', redisTlsKey: '' };
  const redis = await connectRedis(login);
  const plain = await connectRedis(login); // a second connection: its own commit group, without WAIT
  const onReplica = await connectRedis({ ...login, redisUrl: replica.url });
  t.teardown(() => [redis, plain, onReplica].forEach((r) => r.disconnect()));
  const prefix = `${randomToken()}:`;
  const store = createPartitionStore(redis, prefix, 'stock', 0, ['items', 'ledger'], { waitReplicas: 1, waitTimeoutMs: WAIT_TIMEOUT_MS });
  const unwaited = createPartitionStore(plain, prefix, 'stock', 1, ['items', 'ledger'], { waitReplicas: 0, waitTimeoutMs: WAIT_TIMEOUT_MS });
  const replicaValue = async (key: string, field: string) => {
    const raw = await onReplica.hgetBuffer(key, field);
    return raw ? (decode(raw) as { stock: number; price: number }) : undefined;
  };

  // The replica is online but may still be taking its first copy (a busy machine: longer than WAIT_TIMEOUT_MS):
  // wait until it acknowledges writes at all, then every commit below must wait for it.
  await waitFor(async () => ((await redis.call('WAIT', 1, 1000)) as number) >= 1, { deadlineMs: 30_000, what: 'the replica to acknowledge writes' });
  // The first script call on a connection sends the script in full (EVAL), the later ones its SHA; WAIT covers both.
  const epoch = await store.acquire();
  for (let i = 1; i <= 20; i++) {
    t.ok(await store.commit(write(epoch, i, 'a', i)), `commit ${i} acknowledged`);
    // Read from the replica right after the answer: WAIT made the answer wait for it.
    t.same(await replicaValue(store.keys.table('items'), 'a'), { stock: i, price: 1 }, `commit ${i} is on the replica when it is acknowledged`);
  }

  replica.pause();
  t.teardown(() => replica.resume());
  const started = performance.now();
  await t.rejects(store.commit(write(epoch, 21, 'a', 21)), ReplicationTimeoutError, 'with the replica paused the commit is not acknowledged');
  t.ok(performance.now() - started >= WAIT_TIMEOUT_MS - 10, 'after waiting redisWaitTimeoutMs for the replica');
  await t.rejects(store.acquire(epoch + 1), ReplicationTimeoutError, 'nor is an acquire (it fences older owners)');
  const other = await unwaited.acquire();
  t.ok(await unwaited.commit(write(other, 1, 'b', 1)), 'while a commit without WAIT is acknowledged at once (what WAIT guards against)');

  replica.resume();
  await waitFor(async () => (await replicaValue(store.keys.table('items'), 'a'))?.stock === 21, { deadlineMs: 10_000, what: 'the replica to catch up' });
  t.ok(await store.commit(write(epoch + 1, 22, 'a', 22)), 'with the replica back, commits are acknowledged again');
  t.same(await replicaValue(store.keys.table('items'), 'a'), { stock: 22, price: 1 }, 'and are on the replica');
});

t.test("with the cluster profile's replicas, WAIT for one of them: a replica killed or paused does not stop commits", async (t) => {
  const profile = loadConfig({ SHOP_PROFILE: 'cluster' });
  const ha = await startRedisHA(t, { replicas: profile.redisReplicas, sentinels: 0 });
  const [primary, ...replicas] = ha.nodes;
  const redis = await connectRedis({ redisUrl: primary!.url, redisUser: ha.worker.user, redisPassword: ha.worker.password, redisTlsCa: '', redisTlsCert: '', redisTlsKey: '' });
  t.teardown(() => redis.disconnect());
  const store = createPartitionStore(redis, `${randomToken()}:`, 'stock', 0, ['items'], { waitReplicas: profile.redisWaitReplicas, waitTimeoutMs: WAIT_TIMEOUT_MS });
  await waitFor(async () => ((await redis.call('WAIT', replicas.length, 1000)) as number) >= replicas.length, { deadlineMs: 30_000, what: 'the replicas to acknowledge writes' });
  const epoch = await store.acquire();
  let n = 0;
  /** Commits `count` batches, each of which must be acknowledged (WAITed by a replica) within WAIT_TIMEOUT_MS. */
  const commitSome = async (count: number, what: string) => {
    let acknowledged = 0;
    for (let i = 0; i < count; i++) if (await store.commit(write(epoch, ++n, 'a', n)).catch(() => false)) acknowledged++;
    t.equal(acknowledged, count, `${count} commits acknowledged ${what}`);
  };
  await commitSome(20, 'with every replica up');
  replicas[0]!.kill9();
  await commitSome(20, `with replica ${replicas[0]!.url} killed (SIGKILL)`);
  await replicas[0]!.restart();
  await waitFor(() => ((redis.call('WAIT', replicas.length, 1000)) as Promise<number>).then((acked) => acked >= replicas.length), { deadlineMs: 30_000, what: 'the killed replica to be back' });
  replicas.at(-1)!.pause();
  t.teardown(() => replicas.at(-1)!.resume());
  await commitSome(20, `with replica ${replicas.at(-1)!.url} paused (SIGSTOP)`);
  replicas.at(-1)!.resume();
});

t.test('a connection through the Sentinels follows their +switch-master at once: the old primary paused (its connection stays open) or killed', async (t) => {
  const ha = await startRedisHA(t, { replicas: 2, sentinels: 3, downAfterMs: 1000 });
  const redis = await connectRedis({ ...ha.settings(), redisTlsCa: '', redisTlsCert: '', redisTlsKey: '' } as Parameters<typeof connectRedis>[0]);
  t.teardown(() => redis.disconnect());
  const { Redis } = await import('ioredis');
  const watcher = new Redis({ port: ha.sentinels[0]!.port, host: '127.0.0.1', password: ha.sentinelPassword, maxRetriesPerRequest: null });
  watcher.on('error', () => {});
  t.teardown(() => watcher.disconnect());
  await watcher.subscribe('+switch-master');
  let switchedAt = 0;
  /** Every +switch-master: when, and the primary it names (`<name> <old ip> <old port> <new ip> <new port>`). */
  const switches: [at: number, primary: string][] = [];
  watcher.on('message', (_channel: string, text: string) => {
    switchedAt ||= performance.now();
    switches.push([performance.now(), text.split(' ').slice(3).join(':')]);
    note(`+switch-master ${text}`);
  });
  /** performance.now() of every write answered ok; one write in flight at a time, as a partition commits. */
  const okAt: number[] = [];
  /** performance.now() of every (re)connection made ready. */
  const readyAt: number[] = [];
  /** What happened to the connection, said in the assertion below when it fails (it failed once in CI, 2 for 1). */
  const events: [at: number, what: string][] = [];
  const note = (what: string) => events.push([performance.now(), what]);
  redis.on('ready', () => {
    readyAt.push(performance.now());
    note(`ready to ${redis.stream?.remoteAddress}:${redis.stream?.remotePort}`);
  });
  redis.on('close', () => note('close'));
  redis.on('reconnecting', () => note('reconnecting'));
  let stop = false;
  const writer = (async () => {
    for (let i = 0; !stop; i++) {
      const ok = await redis.hincrby('follow', 'n', 1).then(
        () => true,
        () => false,
      );
      if (ok) okAt.push(performance.now());
    }
  })();
  let lastFailover = -Infinity;
  for (const how of ['SIGSTOP', 'SIGKILL'] as const) {
    // The Sentinels fail a primary of the same name over again only 2 × failover-timeout after the last failover.
    await waitFor(() => performance.now() - lastFailover > 2 * SENTINEL_FAILOVER_TIMEOUT_MS, { deadlineMs: 3 * SENTINEL_FAILOVER_TIMEOUT_MS, intervalMs: 100, what: 'the failover timeout' });
    const old = await ha.primary();
    switchedAt = 0;
    const faultAt = performance.now();
    if (how === 'SIGKILL') old.kill9();
    else old.pause();
    await ha.waitPrimary(old, { replicas: 0 });
    lastFailover = performance.now();
    await waitFor(() => switchedAt > 0 && okAt.some((at) => at > switchedAt), { deadlineMs: 10_000, intervalMs: 10, what: `a write answered after +switch-master (${how})` });
    const followedMs = Math.round(okAt.find((at) => at > switchedAt)! - switchedAt);
    // ioredis on its own waits 2 s (disconnectTimeout) for a paused server to close the connection it ends, and its
    // reconnect timer grows to 2 s while a dead primary refuses: either would take longer than this.
    t.ok(followedMs < 1000, `${how} of the primary: the first write answered ${followedMs} ms after +switch-master (under 1 s)`);
    // The leader announces the switch again at the failover's end (once the other replica follows the new primary,
    // up to a second or two later), and the other Sentinels announce it too: none of that drops the new connection.
    // One connection per primary announced: on a loaded machine the Sentinels once failed the new primary over too
    // (the second +switch-master named another address, 2.2 s after the first), which rightly takes a connection.
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const made = readyAt.filter((at) => at > faultAt).length;
    const primaries = new Set(switches.filter(([at]) => at > faultAt).map(([, primary]) => primary)).size;
    t.equal(made, primaries, `${how}: one connection per primary announced (${primaries}) from the fault until 3 s after +switch-master (repeated announcements do not drop it)`, made === primaries ? {} : { events: events.filter(([at]) => at >= faultAt - 100).map(([at, what]) => `${Math.round(at - faultAt)} ms: ${what}`) });
    if (how === 'SIGKILL') await old.restart();
    else old.resume();
    await ha.waitPrimary(old);
  }
  stop = true;
  await writer;
});

t.test('Sentinel failovers under a stream of writes: the worker follows SENTINEL FAILOVER and a SIGKILL of the primary; every write answered ok is in Redis afterwards', async (t) => {
  const [nats, ha] = await Promise.all([startNats(t), startRedisHA(t, { replicas: 1, sentinels: 3, downAfterMs: 1000 })]);
  const config = testConfig(nats, ha.nodes[0]!, {
    ...ha.settings(),
    redisWaitReplicas: 1,
    redisWaitTimeoutMs: 500,
    partitions: 2,
    workerProcesses: 1,
    requestDeadlineMs: 30_000,
  });
  const worker = spawnRole('worker', config);
  t.teardown(() => worker.kill('SIGKILL'));
  const nc = await connect({ servers: config.natsUrl });
  const gateway = await createGateway({ nc, config, log: createLog('gateway', config.logLevel) });
  t.teardown(async () => {
    await gateway.close();
    await nc.close();
  });
  const base = `http://127.0.0.1:${gateway.port}`;
  const call = (method: 'GET' | 'POST', path: string) => httpCall(base, method, path);
  await waitFor(async () => (await call('GET', '/stock/find/none')).status === 400, { deadlineMs: 30_000, what: `the worker to serve (its output: ${worker.output()})` });

  const items: string[] = [];
  for (let i = 0; i < 6; i++) items.push((await call('POST', '/stock/item/create/1')).body.item_id);
  const t0 = performance.now();
  const ok = new Map(items.map((id) => [id, 0]));
  const failed = new Map(items.map((id) => [id, 0]));
  const failures: string[] = [];
  /** performance.now() of every answer 200. */
  const okAt: number[] = [];
  /** performance.now() when each write answered 200 was sent. */
  const okSent: number[] = [];
  let stop = false;
  // One write in flight per item: each answered ok adds one unit that must still be there at the end.
  const writers = items.map(async (id) => {
    while (!stop) {
      const sent = performance.now();
      const r = await call('POST', `/stock/add/${id}/1`).catch(() => ({ status: 0 }));
      if (r.status === 200) {
        ok.set(id, ok.get(id)! + 1);
        okAt.push(performance.now());
        okSent.push(sent);
      } else {
        failed.set(id, failed.get(id)! + 1);
        failures.push(`${r.status} ${JSON.stringify((r as { body?: unknown }).body)} at ${Math.round(performance.now() - t0)} ms`);
      }
    }
  });
  /** Resolves once `n` writes sent after `since` were answered ok. */
  const okAfter = (since: number, n: number, what: string) =>
    waitFor(() => okSent.filter((at) => at > since).length >= n, { deadlineMs: 40_000, intervalMs: 20, what: `${n} writes answered ok ${what} (worker output: ${worker.output().slice(-3000)})` });
  /** The longest time between two answers ok (the write outage), from `since` to `until`. */
  const outageMs = (since: number, until: number) => {
    const times = [since, ...okAt.filter((at) => at > since && at < until)].sort((a, b) => a - b);
    return Math.round(Math.max(...times.slice(1).map((at, i) => at - times[i]!)));
  };

  await okAfter(0, 50, 'before any failover');

  // 1. SENTINEL FAILOVER: the old primary turns replica of the new one, with the worker still connected to it.
  const first = await ha.primary();
  const failoverAt = performance.now();
  await ha.failover();
  const second = await ha.waitPrimary(first);
  t.not(second.port, first.port, `the Sentinels promoted ${second.url}`);
  await okAfter(performance.now(), 50, 'after SENTINEL FAILOVER');
  t.pass('commits continue after SENTINEL FAILOVER');

  // 2. SIGKILL of the primary. It stays down until the Sentinels have promoted the replica, then comes back as a
  // replica of the new primary (as the supervisor's restart would make it), so that WAIT can be satisfied again.
  const killedAt = performance.now();
  const failoverDoneAt = killedAt;
  second.kill9();
  const third = await ha.waitPrimary(second, { replicas: 0 });
  t.equal(third.port, first.port, 'the Sentinels promoted the only replica');
  await second.restart();
  await ha.waitPrimary(second, { replicas: 1 });
  await okAfter(performance.now(), 50, 'after the SIGKILL failover');
  t.pass('commits continue after the SIGKILL failover');
  stop = true;
  await Promise.all(writers);

  // Nothing acknowledged is lost: read every item straight from the primary's hash, once the worker serves the
  // same (a write answered otherwise may still be applied: its command waits in the stream).
  const redis = await connectRedis(config);
  t.teardown(() => redis.disconnect());
  const inRedis = async (id: string) => {
    const raw = await redis.hgetBuffer(`${config.redisPrefix}{stock:${partitionOf(id, config.partitions)}}:t:items`, id);
    return raw ? (decode(raw) as { stock: number }).stock : 0;
  };
  const stocks = new Map<string, number>();
  await waitFor(
    async () => {
      for (const id of items) {
        const served = (await call('GET', `/stock/find/${id}`)).body.stock;
        stocks.set(id, await inRedis(id));
        if (served !== stocks.get(id)) return false;
      }
      return true;
    },
    { deadlineMs: 30_000, what: 'the worker to serve what Redis holds' },
  );
  let acknowledged = 0;
  for (const id of items) {
    const stock = stocks.get(id)!;
    acknowledged += ok.get(id)!;
    t.ok(stock >= ok.get(id)!, `item ${id}: stock ${stock} holds all ${ok.get(id)} writes answered ok`);
    t.ok(stock <= ok.get(id)! + failed.get(id)!, `and no write more than was sent (${failed.get(id)} answered otherwise, which may or may not have applied)`);
  }
  t.comment(
    `${acknowledged} writes answered ok, ${failures.length} otherwise (${failures.join('; ')}); ` +
      `no write answered ok for up to ${outageMs(failoverAt, failoverDoneAt)} ms after SENTINEL FAILOVER, ${outageMs(killedAt, performance.now())} ms after the SIGKILL`,
  );
  t.notMatch(worker.output(), /lease lost|fatal/, 'the worker never gave up');
});
