/**
 * A partition in trouble says so: one whose stream is behind its committed cursor refuses to serve, loudly; one whose
 * batches keep failing restarts with a growing pause; both show in /readyz (worker.ready()) and in the metrics, and
 * serve again once mended. Trimming never purges what Redis may not have made durable.
 */
import { Redis } from 'ioredis';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'nats';
import t, { type Test } from 'tap';
import { encode } from '../../src/codec.js';
import type { Config } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { names } from '../../src/protocol.js';
import { createShopClient } from '../../src/transport/shop-client.js';
import type { RunnerMetrics } from '../../src/datapath/runner-metrics.js';
import { durableCursor, durableAfterMs } from '../../src/datapath/trimming.js';
import { createPartitionStore } from '../../src/datapath/store.js';
import { startWorker, type Worker } from '../../src/placement/worker.js';
import { startRedis, startServers, testConfig, waitFor, type TestServer } from '../helpers/servers.js';

const log = createLog('test', 'error');

async function setup(t: Test, overrides: Partial<Record<keyof Config, unknown>> = {}, natsServer?: TestServer) {
  const { nats, redis } = natsServer ? { nats: natsServer, redis: await startRedis(t) } : await startServers(t);
  const config = testConfig(nats, redis, { partitions: 1, workerProcesses: 1, kinds: 'stock', ...overrides });
  const nc = await connect({ servers: config.natsUrl, maxReconnectAttempts: -1, reconnectTimeWait: 50 });
  const r = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
  const client = createShopClient({ nc, config, log });
  const workers: Worker[] = [];
  let restarts = 0;
  const metrics: RunnerMetrics = { batch: () => {}, sagaOutcome: () => {}, partitionRestart: () => void restarts++ };
  const start = async () => {
    const worker = await startWorker({ nc, redis: r, config, log, metrics });
    workers.push(worker);
    return worker;
  };
  t.teardown(async () => {
    await client.close();
    for (const w of workers) await w.close();
    await nc.close();
    r.disconnect();
  });
  const store = createPartitionStore(r, config.redisPrefix, 'stock', 0, ['items', 'ledger']);
  const trouble = async (worker: Worker) =>
    (await worker.registry.getSingleMetric('shop_partition_trouble')!.get()).values.map((v) => [v.labels.state, v.value]);
  /** After a restart of nats-server: the connection is back and JetStream answers. */
  const natsBack = () => waitFor(async () => Boolean(await (await nc.jetstreamManager({ timeout: 1000 })).getAccountInfo()), { deadlineMs: 20_000, intervalMs: 50, what: 'JetStream to answer again' });
  return { config, nc, redis: r, redisServer: redis, client, start, store, trouble, natsBack, restarts: () => restarts };
}

/**
 * Kills `server` (a crash), copies its files aside and starts it again; the function returned kills it again and
 * starts it from the copy: the server comes back with what it held at the copy.
 */
async function filesAside(t: Test, server: TestServer): Promise<() => Promise<void>> {
  const backup = await mkdtemp(join(tmpdir(), 'shop-backup-'));
  t.teardown(() => rm(backup, { recursive: true, force: true }));
  server.kill9();
  await cp(server.storeDir, backup, { recursive: true });
  await server.restart();
  return async () => {
    server.kill9();
    await rm(server.storeDir, { recursive: true, force: true });
    await cp(backup, server.storeDir, { recursive: true });
    await server.restart();
  };
}

t.test('a stream behind the committed cursor (its store rolled back, or made anew) is refused loudly, and served again once mended', async (t) => {
  const { startNats } = await import('../helpers/servers.js');
  const nats = await startNats(t);
  const { config, nc, redis, client, start, store, trouble, natsBack } = await setup(t, {}, nats);
  const first = await start();
  await client.command('stock', 0, { k: 'create', id: 'x', price: 1 });
  await client.command('stock', 0, { k: 'add', id: 'x', amount: 1 });
  // A backup of the NATS store, taken now...
  const putBack = await filesAside(t, nats);
  await natsBack();
  for (let i = 0; i < 4; i++) await client.command('stock', 0, { k: 'add', id: 'x', amount: 1 });
  await first.close();
  const cursor = (await store.load()).cursor;

  // ...and put back: the stream is the same one, but it ends before what the partition has applied.
  await putBack();
  await natsBack();
  const second = await start();
  const lastSeq = (await (await nc.jetstreamManager()).streams.info(names(config.streamPrefix).stream('stock'))).state.last_seq;
  t.ok(lastSeq < cursor, `the stream ends at ${lastSeq}, the partition applied up to ${cursor}`);
  t.equal(second.runner('stock', 0)!.state, 'refused', 'the partition does not read on (it would skip every new command up to the cursor)');
  const ready = second.ready();
  t.equal(ready.ok, false, '/readyz is not ok');
  t.match(ready.detail, new RegExp(`last sequence is ${lastSeq}, below this partition's committed cursor ${cursor}`), 'and says both numbers');
  t.match(ready.detail, /reset the cursor/, 'and how to recover');
  t.same(await trouble(second), [['refused', 1]], 'shop_partition_trouble says so');
  await second.close();

  // The stream made anew (its store lost), and grown past the old cursor by the time a worker starts: still refused.
  const jsm = await nc.jetstreamManager();
  await jsm.streams.delete(names(config.streamPrefix).stream('stock'));
  const third = await start();
  await third.close();
  const js = nc.jetstream();
  for (let i = 0; i <= cursor + 2; i++) await js.publish(names(config.streamPrefix).cmd('stock', 0), encode({ c: { k: 'add', id: 'x', amount: 0 } }));
  const fourth = await start();
  t.equal(fourth.runner('stock', 0)!.state, 'refused', 'a stream made anew is refused even when it is long enough');
  t.match(fourth.ready().detail, /was made anew since this partition last ran \(its newest trim mark is gone, Redis recorded one at \d+/);
  await fourth.close();

  // The recovery of docs/operations.md: accept the loss, start the partition at the new stream's beginning.
  await redis.hset(store.keys.meta, 'cursor', '0');
  await redis.hdel(store.keys.meta, 'mark');
  const fifth = await start();
  t.equal(fifth.runner('stock', 0)!.state, 'running', 'mended: it serves again');
  t.same(await client.command('stock', 0, { k: 'add', id: 'x', amount: 1 }), { ok: true, v: { stock: 6 } }, 'with its state as it was');
});

t.test('a partition whose batches keep failing restarts with a growing pause, says so, and serves again once mended', async (t) => {
  const { redis, client, start, store, trouble, restarts } = await setup(t, { retryBackoffMs: 20 });
  const worker = await start();
  await client.command('stock', 0, { k: 'create', id: 'x', price: 1 });
  // Break the partition's table in Redis: every commit and every load fails (WRONGTYPE) until it is mended.
  const items = store.keys.table('items');
  const saved = await redis.hgetallBuffer(items);
  await redis.del(items);
  await redis.set(items, 'not a hash');
  const pending = client.command('stock', 0, { k: 'add', id: 'x', amount: 4 });
  // Seen between two attempts (in an attempt it is 'starting' for a moment, longer on a loaded machine).
  await waitFor(() => restarts() >= 4 && worker.runner('stock', 0)?.state === 'restarting', { deadlineMs: 20_000, what: 'four restart attempts, and the pause after one' });
  const runner = worker.runner('stock', 0)!;
  t.equal(runner.state, 'restarting');
  t.ok(runner.health()!.attempts >= 4, `attempts counted (${runner.health()!.attempts})`);
  t.match(worker.ready(), { ok: false, detail: /stock\.0 restarting \(\d+x: .*WRONGTYPE/ }, '/readyz says which partition and why');
  t.same(await trouble(worker), [['restarting', 1]]);

  await redis.del(items);
  await redis.hset(items, saved);
  await waitFor(() => runner.state === 'running', { deadlineMs: 40_000, what: 'the partition to run again' });
  t.same(await pending, { ok: true, v: { stock: 4 } }, 'the command that found it broken is applied once it is mended');
  t.same(worker.ready(), { ok: true });
  t.same(await trouble(worker), []);
});

t.test('trimming purges only what Redis has surely made durable', async (t) => {
  t.same(durableCursor([[100, 5], [200, 9], [300, 12]], 250, 3), { durable: 9, younger: [[300, 12]] }, 'the newest commit old enough');
  t.same(durableCursor([[100, 5]], 50, 3), { durable: 3, younger: [[100, 5]] }, 'none old enough: what was durable stays');
  t.same(durableCursor([], 50, 3), { durable: 3, younger: [] });
  t.same([durableAfterMs('always'), durableAfterMs('everysec'), durableAfterMs('no')], [0, 4000, 35_000], 'the wait follows the appendfsync policy');

  // With appendfsync always every commit is on disk when it returns: the applied commands go at the next trim.
  const { config, nc, client, start } = await setup(t, { redisAppendfsync: 'always', trimIntervalMs: 100 });
  await start();
  await client.command('stock', 0, { k: 'create', id: 'x', price: 1 });
  for (let i = 0; i < 3; i++) await client.command('stock', 0, { k: 'add', id: 'x', amount: 1 });
  const jsm = await nc.jetstreamManager();
  const n = names(config.streamPrefix);
  // The partition's newest trim mark stays (marks.ts): no command is left.
  await waitFor(async () => Object.keys((await jsm.streams.info(n.stream('stock'), { subjects_filter: n.cmd('stock', 0) })).state.subjects ?? {}).length === 0, { deadlineMs: 10_000, what: 'the applied commands to be trimmed' });
  t.pass('applied and durable: trimmed');
});

t.test('a Redis restarted from older files is noticed: the partition refuses to serve what it lost, running or starting', async (t) => {
  // Durable at once (appendfsync always), trimmed every 100 ms: the commands after the old files are soon only in Redis.
  const { config, nc, redis, redisServer, client, start, store } = await setup(t, { redisAppendfsync: 'always', trimIntervalMs: 100 });
  const worker = await start();
  await client.command('stock', 0, { k: 'create', id: 'x', price: 1 });
  await client.command('stock', 0, { k: 'add', id: 'x', amount: 1 });
  // Redis's files as they are now...
  const putBack = await filesAside(t, redisServer);
  for (let i = 0; i < 4; i++) t.same(await client.command('stock', 0, { k: 'add', id: 'x', amount: 1 }), { ok: true, v: { stock: 2 + i } }, 'acknowledged');
  const jsm = await nc.jetstreamManager();
  const n = names(config.streamPrefix);
  await waitFor(async () => Object.keys((await jsm.streams.info(n.stream('stock'), { subjects_filter: n.cmd('stock', 0) })).state.subjects ?? {}).length === 0, { deadlineMs: 10_000, what: 'the acknowledged commands to be trimmed from the stream' });
  const acknowledged = await store.load();

  // ...put back under the running worker: Redis comes back with less than it acknowledged.
  await putBack();
  const lost = await store.load();
  t.ok(lost.cursor < acknowledged.cursor && lost.commits < acknowledged.commits, `Redis came back at cursor ${lost.cursor} (${lost.commits} commits), having acknowledged ${acknowledged.cursor} (${acknowledged.commits})`);
  const pending = client.command('stock', 0, { k: 'add', id: 'x', amount: 1 }).then(
    (r) => r,
    (err: Error) => err,
  );
  const runner = worker.runner('stock', 0)!;
  await waitFor(() => runner.state === 'refused', { deadlineMs: 20_000, what: 'the running partition to refuse (its next commit finds fewer commits than it made)' });
  t.match(worker.ready(), { ok: false, detail: new RegExp(`Redis holds this partition at cursor ${lost.cursor}, but its commands up to \\d+ were committed and then trimmed`) }, '/readyz says Redis lost commits, with the numbers');
  t.match(await pending, Error, 'the command that found it is not applied on the state Redis gave back');
  await worker.close();

  // A worker starting afresh (it knows nothing of what was acknowledged) refuses it too: the stream's mark says.
  const fresh = await start();
  t.equal(fresh.runner('stock', 0)!.state, 'refused', 'a fresh owner refuses to serve it');
  t.match(fresh.ready().detail, /Redis lost commits/);
  t.equal(Number(await redis.hget(store.keys.meta, 'cursor')), lost.cursor, 'and nothing was written over what Redis gave back');
});
