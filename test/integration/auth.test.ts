/**
 * Least privilege: each NATS role may do what it needs and nothing else, Redis asks for the worker's password
 * and allows it only the app's commands, and a whole stack started by the supervisor with generated credentials
 * works end to end without a single permission violation.
 */
import { Redis } from 'ioredis';
import { connect, DiscardPolicy, RetentionPolicy, StorageType, type NatsConnection, type Status } from 'nats';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { deploymentAuthConf } from '../../src/auth.js';
import { envName, loadConfig, type Config } from '../../src/config.js';
import { natsOptions } from '../../src/transport/connect.js';
import { createLog } from '../../src/log.js';
import { names } from '../../src/protocol.js';
import { encodeEntry } from '../../src/datapath/outbox.js';
import { createPartitionStore } from '../../src/datapath/store.js';
import { createSupervisor } from '../../src/stack/supervisor.js';
import { httpCall } from '../helpers/http.js';
import { freePort, randomToken, startServers, testConfig, waitFor, type Login } from '../helpers/servers.js';

const here = dirname(fileURLToPath(import.meta.url));
const ROOT = join(here, '..', '..', '..');
/** How long the server may take to report a refused operation. */
const VIOLATION_DEADLINE_MS = 5000;

t.test('nats/auth.conf is what src/auth.ts generates (run `npm run auth-conf` after changing the permissions)', async (t) => {
  t.equal(readFileSync(join(ROOT, 'nats', 'auth.conf'), 'utf8'), deploymentAuthConf());
});

/** A connection as `login`, with the options every process uses (its nats.js inboxes inside `_INBOX.<user>`). */
async function as(t: Test, url: string, login: Login): Promise<NatsConnection> {
  const nc = await connect(natsOptions({ natsUrl: url, natsUser: login.user, natsPassword: login.password, natsTlsCa: '', natsTlsCert: '', natsTlsKey: '' }, login.user, { maxReconnectAttempts: 0 }));
  t.teardown(() => nc.close());
  return nc;
}

/**
 * Resolves when the server reports that it refused `operation` on `subject` to this connection (nats.js hands
 * the server's -ERR 'Permissions Violation ...' to status()); rejects after a deadline. Start it before the
 * operation.
 */
function refusal(nc: NatsConnection, operation: 'publish' | 'subscription', subject: string): Promise<void> {
  const iter = nc.status() as AsyncIterable<Status & { permissionContext?: { operation: string; subject: string } }> & { stop(): void };
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      iter.stop();
      reject(new Error(`the server did not refuse ${operation} to ${subject} within ${VIOLATION_DEADLINE_MS} ms`));
    }, VIOLATION_DEADLINE_MS);
    void (async () => {
      for await (const s of iter) {
        if (s.type === 'error' && s.data === 'PERMISSIONS_VIOLATION' && s.permissionContext?.operation === operation && s.permissionContext.subject === subject) {
          clearTimeout(timer);
          iter.stop();
          resolve();
        }
      }
    })();
  });
}

async function refusesPublish(t: Test, nc: NatsConnection, subject: string, what: string) {
  const refused = refusal(nc, 'publish', subject);
  nc.publish(subject, new Uint8Array([1]));
  await t.resolves(refused, what);
}

async function refusesSubscribe(t: Test, nc: NatsConnection, subject: string, what: string) {
  const refused = refusal(nc, 'subscription', subject);
  const failed = new Promise<Error | null>((resolve) => nc.subscribe(subject, { callback: (err) => resolve(err) }));
  await t.resolves(refused, what);
  t.match((await failed)?.message ?? '', /Permissions Violation for Subscription/, `${what}: the subscription itself fails`);
}

t.test('NATS: no way in without a password, and each role only what it needs', async (t) => {
  // The permissions for this one prefix, exactly as a deployment gets them (not the any-prefix ones of shared test servers).
  const prefix = randomToken();
  const { nats, redis, users } = await startServers(t, { auth: true, prefix });
  const config = testConfig(nats, redis, { streamPrefix: prefix });
  const n = names(config.streamPrefix);
  const s = `${config.streamPrefix}_`;

  await t.rejects(connect({ servers: nats.url, maxReconnectAttempts: 0 }), /Authorization Violation/, 'a client without credentials is refused');
  await t.rejects(connect({ servers: nats.url, maxReconnectAttempts: 0, user: users.gateway.user, pass: 'guess' }), /Authorization Violation/, 'so is a wrong password');

  const gateway = await as(t, nats.url, users.gateway);
  const worker = await as(t, nats.url, users.worker);
  const admin = await as(t, nats.url, users.admin);

  // What a gateway may do works: a read to an owner (here a worker-role client answering) and its answer back.
  const reads = worker.subscribe(n.get('stock', 0), { callback: (_err, msg) => worker.publish(msg.reply!, msg.data) });
  await worker.flush();
  const inbox = n.inbox(users.gateway.user, 'p1');
  const answers = gateway.subscribe(`${inbox}.>`, { max: 1 });
  gateway.publish(n.get('stock', 0), new Uint8Array([42]), { reply: `${inbox}.1` });
  for await (const m of answers) t.same([...m.data], [42], "a gateway's read reaches the owner, and the owner's answer reaches the gateway");
  reads.unsubscribe();

  await refusesPublish(t, gateway, `${n.inbox(users.gateway2.user, 'p2')}.1`, 'a gateway cannot answer in the name of a worker (publish to a reply subject)');
  await refusesPublish(t, gateway, `$KV.${s}SHOP_PLACEMENT.stock.0`, 'a gateway cannot write the placement bucket');
  await refusesPublish(t, gateway, `$KV.${s}SHOP_CONTROL.leader`, 'nor the control bucket');
  await refusesPublish(t, gateway, n.admin, 'nor send admin requests');
  await refusesPublish(t, gateway, `$JS.API.STREAM.PURGE.${s}STOCK`, 'nor purge a stream');
  await refusesPublish(t, gateway, `${config.streamPrefix}._saga.worker-0`, 'nor send saga messages');
  await refusesSubscribe(t, gateway, `${n.replies}${users.gateway2.user}.>`, "a gateway cannot hear another gateway's replies");
  await refusesSubscribe(t, gateway, `${n.replies}>`, 'nor everyone\'s');
  await refusesSubscribe(t, gateway, n.cmd('stock', 0), 'nor the commands');
  await refusesPublish(t, gateway, n.pulse('worker-0'), 'nor pulse in the name of a worker (it hears the pulses: who runs which partition)');
  await refusesSubscribe(t, gateway, `${n.pulse('worker-0')}.probe`, "nor hear a worker's probes");

  // A worker creates its streams and purges them, but deletes nothing.
  const wjsm = await worker.jetstreamManager();
  const stream = `${s}STOCK`;
  await wjsm.streams.add({ name: stream, subjects: [`${config.streamPrefix}.stock.cmd.*`], storage: StorageType.File, retention: RetentionPolicy.Limits, discard: DiscardPolicy.New, max_bytes: 1024 * 1024 });
  await wjsm.streams.purge(stream, { filter: n.cmd('stock', 0), seq: 1 });
  const deleteRefused = refusal(worker, 'publish', `$JS.API.STREAM.DELETE.${stream}`);
  void wjsm.streams.delete(stream).catch(() => {}); // no answer comes: the server dropped the request
  await t.resolves(deleteRefused, 'a worker cannot delete a stream');
  t.equal((await (await admin.jetstreamManager()).streams.info(stream)).config.name, stream, 'the stream is still there');
  // The NATS CLI of docs/operations.md (`nats stream ls --user admin ...`) takes its replies on nats.js's and its own
  // default inbox, `_INBOX.<random>`: with the admin's credentials that works as written.
  const cli = await connect({ servers: nats.url, user: users.admin.user, pass: users.admin.password, maxReconnectAttempts: 0 });
  t.teardown(() => cli.close());
  const listed: string[] = [];
  for await (const info of (await cli.jetstreamManager()).streams.list()) listed.push(info.config.name);
  t.ok(listed.includes(stream), 'the admin lists the streams with the default _INBOX prefix');
  await refusesSubscribe(t, gateway, '_INBOX.>', 'a gateway cannot hear every inbox');
  await refusesPublish(t, worker, `$JS.API.STREAM.PURGE.KV_${s}SHOP_PLACEMENT`, 'a worker cannot purge a bucket');

  // The admin role (shopctl) writes the placement; the controller in a worker writes the control bucket the way it
  // elects itself: create, update on its revision, delete, and create again (which reads the deleted key first).
  const placement = await admin.jetstream().views.kv(`${s}SHOP_PLACEMENT`);
  await placement.put('stock.0', new TextEncoder().encode('admin was here'));
  t.equal((await placement.get('stock.0'))?.string(), 'admin was here', 'the admin role writes the placement bucket');
  const control = await worker.jetstream().views.kv(`${s}SHOP_CONTROL`);
  const rev = await control.create('leader', new Uint8Array([1]));
  await control.update('leader', new Uint8Array([2]), rev);
  await control.delete('leader');
  await control.create('leader', new Uint8Array([3]));
  t.same([...((await control.get('leader'))?.value ?? [])], [3], 'a worker elects a leader in the control bucket');
  const noApi = refusal(gateway, 'publish', '$JS.API.INFO');
  void gateway.jetstreamManager({ timeout: 1000 }).catch(() => {});
  await t.resolves(noApi, 'a gateway has no JetStream API at all (it cannot even open a bucket)');
});

t.test('Redis: nothing without the password, and the worker user only the commands the app uses', async (t) => {
  const { redis, users } = await startServers(t, { auth: true });
  const options = { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, disableClientInfo: true };
  const anonymous = new Redis(redis.url, { ...options, enableReadyCheck: false });
  t.teardown(() => anonymous.disconnect());
  await anonymous.connect();
  await t.rejects(anonymous.hset('k', 'f', 'v'), /NOAUTH/, 'a client without a password is refused');
  await t.rejects(anonymous.call('auth', users.redis.user, 'guess'), /WRONGPASS/, 'so is a wrong password');
  await t.rejects(anonymous.call('auth', 'default', ''), /WRONGPASS/, 'and the default user is off');

  const r = new Redis(redis.url, { ...options, maxRetriesPerRequest: null, username: users.redis.user, password: users.redis.password });
  t.teardown(() => r.disconnect());
  await r.connect();
  const key = `${randomToken()}:h`;
  t.equal(await r.hset(key, 'f', 'v'), 1, 'the worker user writes hashes');
  for (const [command, args] of [['flushall', []], ['config', ['get', 'dir']], ['keys', ['*']], ['acl', ['list']], ['script', ['flush']], ['shutdown', []], ['set', [key, 'x']], ['del', [key]]] as const) {
    await t.rejects(r.call(command, ...args), /NOPERM/, `${command.toUpperCase()} is refused`);
  }
  t.equal(await r.hget(key, 'f'), 'v', 'and nothing was flushed');

  // The store's real path: the acquire and commit scripts (EVALSHA, EVAL on a fresh server) and the loads.
  const store = createPartitionStore(r, `${randomToken()}:`, 'stock', 0, ['items']);
  t.equal(await store.acquire(1), 1, 'acquire');
  const committed = await store.commit({ epoch: 1, commits: 1, cursor: 7, local: 0, changes: new Map([['items', new Map<string, unknown>([['i1', { stock: 3, price: 5 }]])]]), outboxField: '7', outbox: encodeEntry({ replies: [['r', new Uint8Array([1])]], parcels: [], dead: [] }), cleared: [] });
  t.equal(committed, true, 'commit');
  const loaded = await store.load();
  t.same([loaded.cursor, loaded.tables.get('items')?.get('i1'), loaded.outbox.length], [7, { stock: 3, price: 5 }, 1], 'load');
});

t.test('Redis with the ACL: every commit survives a SIGKILL and a restart from its own files (the AOF replays each one)', async (t) => {
  // A commit script that writes more than one key is replicated to the AOF as MULTI/EXEC of its effects; Redis 7.0
  // checks EXEC against the default user's rights while it loads the AOF (redis/redis#14541), so with that user
  // without rights every such commit would be dropped at the restart, silently.
  const { redis, users } = await startServers(t, { auth: true });
  const login = { maxRetriesPerRequest: null, username: users.redis.user, password: users.redis.password, disableClientInfo: true };
  const before = new Redis(redis.url, login);
  const prefix = `${randomToken()}:`;
  const store = createPartitionStore(before, prefix, 'stock', 0, ['items']);
  const epoch = await store.acquire();
  const COMMITS = 20;
  for (let cursor = 1; cursor <= COMMITS; cursor++) {
    const items = new Map<string, unknown>([[`i${cursor}`, { stock: cursor, price: 1 }]]);
    t.equal(await store.commit({ epoch, commits: cursor, cursor, local: 0, changes: new Map([['items', items]]), outboxField: '', outbox: null, cleared: [] }), true);
  }
  before.disconnect();
  redis.kill9();
  await redis.restart();
  const after = new Redis(redis.url, login);
  t.teardown(() => after.disconnect());
  const loaded = await createPartitionStore(after, prefix, 'stock', 0, ['items']).load();
  t.equal(loaded.cursor, COMMITS, 'the cursor of the last commit is back');
  t.equal(loaded.tables.get('items')?.size, COMMITS, 'and every item written');
});

// ---- the whole stack, with the supervisor's generated credentials ----------------------------------------

const SHOPCTL = join(here, '..', '..', 'src', 'admin', 'shopctl.js');

t.test('a stack started with serverAuth works end to end, shopctl included, and no role is ever refused', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'shop-auth-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const [natsPort, redisPort, httpPort] = await Promise.all([freePort(), freePort(), freePort()]);
  const settings: Partial<Record<keyof Config, unknown>> = {
    dataDir,
    natsPort,
    redisPort,
    httpPort,
    httpHost: '127.0.0.1',
    startServers: true,
    serverAuth: true,
    placement: 'dynamic',
    workerProcesses: 2,
    partitions: 4,
    trimIntervalMs: 200,
    logLevel: 'info',
  };
  const config = loadConfig({ SHOP_PROFILE: 'test' }, settings);
  const lines: string[] = [];
  const supervisor = createSupervisor(config, createLog('supervisor', 'warn'), { output: (name, line) => lines.push(`${name} | ${line}`) });
  t.teardown(() => supervisor.stop());
  await supervisor.start();
  const url = `http://127.0.0.1:${httpPort}`;
  const call = (method: 'GET' | 'POST', path: string) => httpCall(url, method, path);
  await waitFor(async () => (await call('GET', '/stock/find/nothing')).status === 400, { deadlineMs: 60_000, what: 'the API to answer a read' });

  const item = (await call('POST', '/stock/item/create/5')).body.item_id as string;
  t.equal((await call('POST', `/stock/add/${item}/10`)).status, 200);
  const user = (await call('POST', '/payment/create_user')).body.user_id as string;
  t.equal((await call('POST', `/payment/add_funds/${user}/100`)).status, 200);
  const order = (await call('POST', `/orders/create/${user}`)).body.order_id as string;
  t.equal((await call('POST', `/orders/addItem/${order}/${item}/3`)).status, 200);
  const checkout = await call('POST', `/orders/checkout/${order}`);
  t.same([checkout.status, checkout.body.paid], [200, true], 'checkout: 200, paid');
  t.match((await call('GET', `/orders/find/${order}`)).body, { paid: true, total_cost: 15 }, 'the order reads back paid');
  t.equal((await call('GET', `/stock/find/${item}`)).body.stock, 7, 'the stock reads back');
  t.equal((await call('GET', `/payment/find_user/${user}`)).body.credit, 85, 'the credit reads back');

  // shopctl finds the local stack's admin credentials by itself.
  const env: NodeJS.ProcessEnv = { ...process.env, SHOP_PROFILE: 'test', ...Object.fromEntries(Object.entries(settings).map(([k, v]) => [envName(k), String(v)])) };
  delete env.SHOP_NATS_USER;
  delete env.SHOP_NATS_PASSWORD;
  const shopctl = (...args: string[]) => promisify(execFile)(process.execPath, [SHOPCTL, ...args], { env });
  let status: { workers: { id: string }[]; partitions: { owner: string | null }[] } = { workers: [], partitions: [] };
  await waitFor(
    async () => {
      status = JSON.parse((await shopctl('status', '--json')).stdout);
      return status.workers.length === 2 && status.partitions.every((p) => p.owner !== null);
    },
    { deadlineMs: 15_000, what: 'shopctl status to show both workers and every partition placed' },
  );
  t.equal(status.partitions.length, 12, 'shopctl status lists every partition');
  t.same(JSON.parse((await shopctl('dead-letters', '--json')).stdout), [], 'shopctl dead-letters reads the dead-letter stream with the admin\'s rights (none here)');
  t.match((await shopctl('dead-letters', '--purge')).stdout, /purged 0 dead letters/, 'and purges it');
  const moved = await shopctl('move', 'stock', '0', status.workers[0]!.id);
  t.match(moved.stdout, /stock 0/, 'shopctl move is answered by the leader');
  await t.rejects(
    promisify(execFile)(process.execPath, [SHOPCTL, 'status'], { env: { ...env, SHOP_NATS_USER: 'admin', SHOP_NATS_PASSWORD: 'guess' } }),
    /refused user admin/,
    'explicit credentials win, and a wrong password is refused with a hint',
  );

  // The owners trim the streams every trimIntervalMs: a purge must have gone through (its first sequence moves on).
  const credentials = JSON.parse(readFileSync(join(dataDir, 'secrets', 'credentials.json'), 'utf8')) as { nats: Record<string, string> };
  const nc = await connect({ servers: `nats://127.0.0.1:${natsPort}`, user: 'admin', pass: credentials.nats.admin, inboxPrefix: '_INBOX.admin' });
  t.teardown(() => nc.close());
  const jsm = await nc.jetstreamManager();
  // Commands left in the stream, per subject (a partition's newest trim mark stays: marks.ts).
  const commandsLeft = async () => Object.entries((await jsm.streams.info('ORDER', { subjects_filter: 'order.cmd.*' })).state.subjects ?? {}).reduce((n, [, count]) => n + count, 0);
  const purged = await waitFor(async () => (await commandsLeft()) === 0, { deadlineMs: 30_000, what: 'a trim purge of the ORDER stream (after 12 idle trim intervals, and 2 s for Redis to make the commit durable)' }).then(
    () => true,
    () => false,
  );
  t.ok(purged, 'the workers purged applied commands from their stream');

  // Stopping hands partitions over and lets the leader go: more of the workers' rights in use.
  await supervisor.stop();
  const refused = lines.filter((l) => /violation|refused an operation|NOPERM|NOAUTH|WRONGPASS/i.test(l));
  t.same(refused, [], 'no process was refused anything (nats-server logs every violation, processes log what NATS refused them)');
  t.ok(lines.some((l) => /^worker-\d \| .*leading/.test(l)), 'a worker led (the control bucket was written)');
});
