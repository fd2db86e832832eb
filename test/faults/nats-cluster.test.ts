/**
 * Workers on a NATS JetStream cluster: a worker starts while some (or all) of its NATS servers are down, and rides
 * through the loss of a node (SIGKILL of the one leading the heartbeat bucket, SIGSTOP of another) without losing
 * its lease, with the cluster profile's lease and heartbeat settings. Prints the measured figures.
 */
import { createServer, type Server } from 'node:net';
import t, { type Test } from 'tap';
import { loadConfig } from '../../src/config.js';
import { connectNats } from '../../src/transport/connect.js';
import { createGateway } from '../../src/http/gateway.js';
import { createLog } from '../../src/log.js';
import { names } from '../../src/protocol.js';
import { readStatus } from '../../src/admin/status.js';
import { audit, seedShop, storm, type Shop } from '../helpers/cluster.js';
import { startNatsCluster } from '../helpers/ha.js';
import { httpCall } from '../helpers/http.js';
import { freePort, startRedis, startServer, startServers, testConfig, waitFor } from '../helpers/servers.js';
import { natsArgs } from '../../src/stack/processes.js';
import { natsAnswers } from '../../src/stack/probes.js';
import { spawnRole, type Child } from '../helpers/stack.js';
import { connect } from 'nats';
import { watchStreamLeaders } from '../../src/transport/stream-leaders.js';

/** An in-process gateway on `config`, closed in teardown; with the shop's workers and when their heartbeats were stored. */
async function gatewayOn(t: Test, config: ReturnType<typeof testConfig>) {
  const nc = await connectNats(config, 'gateway');
  const gateway = await createGateway({ nc, config, log: createLog('gateway', config.logLevel) });
  t.teardown(async () => {
    await gateway.close();
    await nc.close();
  });
  const base = `http://127.0.0.1:${gateway.port}`;
  // The test's own look at the buckets, over a connection of its own (the gateway's user may not read them).
  const look = await connectNats(config, 'test');
  t.teardown(() => look.close());
  return {
    call: (method: 'GET' | 'POST', path: string) => httpCall(base, method, path),
    status: async () => (await readStatus(look, config)).status.workers,
    /** When each worker's last heartbeat was stored (ms since the epoch), as the bucket says now. */
    heartbeatTimes: async (bucket: string, ids: string[]) => {
      const kv = await look.jetstream({ timeout: 1000 }).views.kv(bucket, { bindOnly: true });
      const times = new Map<string, number>();
      for (const id of ids) {
        const e = await kv.get(id).catch(() => null);
        if (e) times.set(id, e.created.getTime());
      }
      return times;
    },
  };
}

/** A worker process, SIGKILLed in teardown. */
function worker(t: Test, config: ReturnType<typeof testConfig>, index = 0): Child {
  const child = spawnRole('worker', { ...config, workerIndex: index });
  t.teardown(() => child.kill('SIGKILL'));
  return child;
}

const serving = (call: (m: 'GET' | 'POST', p: string) => Promise<{ status: number }>, w: Child, deadlineMs = 30_000) =>
  waitFor(async () => (await call('GET', '/stock/find/none')).status === 400, { deadlineMs, what: `the worker to serve reads (its output: ${w.output().slice(-2000)})` });

t.test('a worker starts while the first NATS server of its list is down, and comes up on the others', async (t) => {
  const { nats, redis } = await startServers(t);
  const down = `nats://127.0.0.1:${await freePort()}`;
  const config = testConfig(nats, redis, { natsUrl: `${down},${nats.url}`, workerProcesses: 1, partitions: 2 });
  const w = worker(t, config);
  const { call } = await gatewayOn(t, { ...config, natsUrl: nats.url });
  await serving(call, w);
  t.equal(w.process.exitCode, null, 'the worker runs');
  t.equal((await call('POST', '/stock/item/create/3')).status, 200, 'and applies commands');
});

t.test('a worker started while its only NATS server is down waits for it instead of exiting, then serves', async (t) => {
  const redis = await startRedis(t);
  // A listener that takes each connection attempt and closes it at once: a server that is down, but one that counts.
  const port = await freePort();
  let attempts = 0;
  const refuser: Server = createServer((socket) => {
    attempts++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => refuser.listen(port, '127.0.0.1', resolve));
  const config = testConfig({ url: `nats://127.0.0.1:${port}`, port }, redis, { workerProcesses: 1, partitions: 2 });
  const w = worker(t, config);
  await waitFor(() => attempts >= 2, { deadlineMs: 15_000, what: 'the worker to try its NATS server twice' });
  t.equal(w.process.exitCode, null, `still running after ${attempts} failed connection attempts`);
  await new Promise<void>((resolve) => refuser.close(() => resolve()));
  // Now a real server on that port: the worker connects on its next attempt.
  await startServer({ what: 'nats-server', stopSignal: 'SIGINT', scheme: 'nats', binary: 'nats-server', args: (p, dir) => natsArgs({ port: p, storeDir: dir }), answers: (p) => natsAnswers(p) }, t, port);
  const { call } = await gatewayOn(t, config);
  await serving(call, w);
  t.equal(w.process.exitCode, null, 'the worker serves once its server is up');
});

/** The checkout storm's shop: enough orders for the whole test, refusals included. */
const SHOP: Shop = { items: 40, stock: 10, users: 40, credit: 10, orders: 50_000, price: 1 };

t.test('a 3-node cluster with R3 streams: workers keep their leases through a SIGKILL of the node leading the heartbeat bucket and a SIGSTOP of another, and every checkout gets its committed outcome', async (t) => {
  const cluster = await startNatsCluster(t);
  const redis = await startRedis(t);
  // The cluster profile's heartbeat, lease and ping settings: what this test checks is that they ride through.
  const profile = loadConfig({ SHOP_PROFILE: 'cluster' });
  const config = testConfig({ url: cluster.url, port: cluster.nodes[0]!.port }, redis, {
    placement: 'dynamic',
    streamReplicas: 3,
    partitions: 4,
    workerProcesses: 2,
    requestDeadlineMs: 30_000,
    heartbeatIntervalMs: profile.heartbeatIntervalMs,
    workerLeaseMs: profile.workerLeaseMs,
    natsPingIntervalMs: profile.natsPingIntervalMs,
  });
  const workers = [worker(t, config, 0), worker(t, config, 1)];
  const c = await gatewayOn(t, config);
  await serving(c.call, workers[0]!, 60_000);
  await seedShop(c, SHOP);
  const load = storm(c, SHOP, 16);
  /** Waits for `n` more checkouts; on a timeout the error carries the end of every worker's output. */
  const answered = (n: number, what: string) =>
    load.answered(n).catch((err: Error) => {
      err.message += ` (${what})\n` + workers.map((w, i) => `--- worker ${i}\n${w.output().split('\n').filter((l) => !/placed|heartbeat failed|trim failed/.test(l)).slice(-30).join('\n')}`).join('\n');
      throw err;
    });
  await answered(200, 'before any fault');

  const bucket = names(config.streamPrefix).workersBucket;
  // Both workers registered (the second may still be starting: it checks the cluster's layout and takes its
  // partitions after the first serves).
  let ids: string[] = [];
  await waitFor(async () => (ids = (await c.status()).map((w) => w.id)).length === 2, {
    deadlineMs: 30_000,
    what: `both workers to register (worker 1's output: ${workers[1]!.output().slice(-3000)})`,
  });
  t.equal(ids.length, 2, 'two workers registered');
  /** Resolves with the ms from `since` until every worker's heartbeat was stored again after it. */
  const heartbeatsStoredAfter = async (since: number) => {
    await waitFor(
      async () => {
        const stored = await c.heartbeatTimes(bucket, ids);
        return ids.every((id) => (stored.get(id) ?? 0) > since);
      },
      { deadlineMs: 30_000, intervalMs: 100, what: 'every worker to store a heartbeat again' },
    );
    return Math.round(Date.now() - since);
  };

  // 1. SIGKILL of the node leading the heartbeat bucket: every heartbeat fails until the others elect a leader.
  const leader = await cluster.leaderOf(`KV_${bucket}`);
  t.ok(leader !== undefined, `node n${leader} leads KV_${bucket}`);
  const victim = cluster.nodes[leader!]!;
  const killedAt = Date.now();
  victim.kill9();
  const killGapMs = await heartbeatsStoredAfter(killedAt);
  // Down for longer than it takes the others to elect (what matters for the lease); then back, as the supervisor
  // would start it again.
  await victim.restart();
  await cluster.ready();
  await cluster.caughtUp();

  // 2. SIGSTOP of another node: its clients notice only by their pings (natsPingIntervalMs).
  const paused = cluster.nodes[(leader! + 1) % cluster.nodes.length]!;
  const pausedAt = Date.now();
  paused.pause();
  const pauseGapMs = await heartbeatsStoredAfter(pausedAt);
  paused.resume();
  await cluster.caughtUp();

  for (const [i, w] of workers.entries()) {
    t.equal(w.process.exitCode, null, `worker ${i} is still running`);
    t.notMatch(w.output(), /lease lost/, `worker ${i} never lost its lease`);
  }
  await answered(200, 'after the faults');
  const answers = await load.stop();
  const result = await audit(c, SHOP, answers);
  t.comment(
    `heartbeats of both workers stored again ${killGapMs} ms after the SIGKILL of n${leader} (leader of the bucket), ${pauseGapMs} ms after the SIGSTOP of n${cluster.nodes.indexOf(paused)} ` +
      `(lease ${config.workerLeaseMs} ms); ${JSON.stringify(result)}`,
  );
  t.equal(result.wrong, 0, 'every answer is the committed outcome of its order');
  t.ok(result.stockConserved, 'stock is conserved');
  t.ok(result.creditConserved, 'credit is conserved');
});

t.test('a stream that elects a new leader says so at once (nats-server 2.9 advisory), to the watchers of that stream only', async (t) => {
  const cluster = await startNatsCluster(t);
  await cluster.ready();
  const nc = await connect({ servers: cluster.url });
  t.teardown(() => nc.close());
  const jsm = await nc.jetstreamManager();
  await waitFor(async () => (await jsm.streams.add({ name: 'ONE', subjects: ['one.>'], num_replicas: 3 }).then(() => true, () => false)), { deadlineMs: 30_000, what: 'stream ONE' });
  await jsm.streams.add({ name: 'TWO', subjects: ['two.>'], num_replicas: 3 });
  await cluster.caughtUp(['ONE', 'TWO']);
  const leaders = watchStreamLeaders(nc, ['ONE', 'TWO']);
  t.teardown(() => leaders.close());
  const heard: string[] = [];
  leaders.onElected('ONE', () => heard.push('ONE'));
  leaders.onElected('TWO', () => heard.push('TWO'));
  await nc.flush();
  const before = await cluster.leaderOf('ONE');
  const steppedAt = Date.now();
  await nc.request('$JS.API.STREAM.LEADER.STEPDOWN.ONE', undefined, { timeout: 5000 });
  await waitFor(async () => heard.length > 0, { deadlineMs: 15_000, what: 'the advisory of ONE\'s new leader' });
  const after = await cluster.leaderOf('ONE');
  t.same(heard, ['ONE'], `heard ${Date.now() - steppedAt} ms after the step-down; TWO kept its leader`);
  t.not(after, before, `the leader moved (n${before} -> n${after})`);
});
