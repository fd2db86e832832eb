/**
 * `SHOP_PROFILE=cluster npm start`: the production topology on one machine under the supervisor. The whole stack:
 * ready, a checkout, shopctl status, R3 streams, the replicas online and the Sentinels agreeing, and the ordered stop.
 * Its plan (what runs where, with which credentials, nothing secret on a command line) is test/unit/plan.test.ts.
 */
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { connect } from 'nats';
import t, { type Test } from 'tap';
import { envName, loadConfig, type Config } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { freePort, freePortRange } from '../../src/stack/probes.js';
import { pidAlive } from '../../src/stack/processes.js';
import { readLocalCredentials, secretPaths } from '../../src/stack/secrets.js';
import { createSupervisor } from '../../src/stack/supervisor.js';
import { replicasOnline, sentinelPrimary } from '../../src/stack/topology.js';
import { httpCall } from '../helpers/http.js';
import { waitFor } from '../helpers/servers.js';

const SHOPCTL = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', 'src', 'admin', 'shopctl.js');

t.test('SHOP_PROFILE=cluster under the supervisor: ready, a checkout, shopctl status; R3 streams, the replicas online, the Sentinels agree; stopped in order', async (t: Test) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'shop-cluster-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const settings: Partial<Record<keyof Config, unknown>> = {
    dataDir,
    natsPort: await freePortRange(3),
    natsClusterPort: await freePortRange(3),
    redisPort: await freePortRange(2),
    sentinelPort: await freePortRange(3),
    httpPort: await freePort(),
    httpHost: '127.0.0.1',
    adminPort: 0,
  };
  const config = loadConfig({ SHOP_PROFILE: 'cluster' }, settings);
  const logLines: string[] = [];
  const output: string[] = [];
  const supervisor = createSupervisor(config, createLog('supervisor', 'info', (l) => logLines.push(l)), { output: (name, line) => output.push(`${name} | ${line}`) });
  t.teardown(() => supervisor.stop());
  await supervisor.start();
  t.equal(supervisor.state, 'ready');
  const pids = supervisor.pids();
  t.equal(Object.keys(pids).length, 14, `14 children: ${Object.keys(pids).join(' ')}`);

  const url = `http://127.0.0.1:${config.httpPort}`;
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
  t.equal((await call('GET', `/stock/find/${item}`)).body.stock, 7, 'the stock reads back');

  // shopctl with the profile and the same ports finds the stack and its admin password by itself.
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, SHOP_PROFILE: 'cluster', ...Object.fromEntries(Object.entries(settings).map(([k, v]) => [envName(k), String(v)])) };
  let status: { workers: { id: string }[]; partitions: { owner: string | null; state: string }[] } = { workers: [], partitions: [] };
  await waitFor(
    async () => {
      status = JSON.parse((await promisify(execFile)(process.execPath, [SHOPCTL, 'status', '--json'], { env })).stdout);
      return status.workers.length === 3 && status.partitions.every((p) => p.owner !== null && p.state === 'running');
    },
    { deadlineMs: 30_000, what: 'shopctl status to show three workers running every partition' },
  );
  t.equal(status.partitions.length, 3 * config.partitions, 'shopctl status lists every partition, each running');

  const credentials = readLocalCredentials(config)!;
  // Sentinel rewrites its config as it learns (with mode 0644): it lives in the secrets dir, which only its owner may enter.
  t.equal(statSync(secretPaths(config).dir).mode & 0o777, 0o700, 'the secrets dir is 0700');
  for (const i of [0, 1, 2]) t.equal(dirname(secretPaths(config).sentinelConfig(i)), secretPaths(config).dir, `sentinel-${i}.conf (with the passwords) is in it`);
  for (const i of [0, 1, 2]) t.equal(statSync(secretPaths(config).redisNodeConfig(i)).mode & 0o777, 0o600, `redis-${i}.conf (masterauth) is 0600`);
  t.notMatch(readFileSync(secretPaths(config).redisAcl, 'utf8'), credentials.redisReplica.password, 'the ACL file holds hashes, not passwords');
  const nc = await connect({ servers: [`nats://127.0.0.1:${config.natsPort}`], user: 'admin', pass: credentials.nats.admin, inboxPrefix: '_INBOX.admin' });
  const info = await (await nc.jetstreamManager()).streams.info('ORDER');
  await nc.close();
  t.equal(info.config.num_replicas, 3, 'the streams are R3');
  t.equal(info.cluster?.replicas?.length, 2, 'with a leader and two replicas');
  t.ok(await replicasOnline(config.redisPort, 2, credentials.redisSentinel), 'the Redis primary has its two replicas online');
  const named = await Promise.all([0, 1, 2].map((i) => sentinelPrimary(config.sentinelPort + i, config.redisMasterName, credentials.sentinel)));
  t.same(named, [config.redisPort, config.redisPort, config.redisPort], 'every Sentinel names the primary');

  await supervisor.stop();
  t.equal(supervisor.state, 'closed');
  for (const [name, pid] of Object.entries(pids)) t.notOk(pidAlive(pid), `${name} (pid ${pid}) is gone`);
  const stoppedAt = (re: RegExp) => logLines.findIndex((l) => re.test(l));
  const last = (re: RegExp) => logLines.reduce((at, l, i) => (re.test(l) ? i : at), -1);
  t.ok(last(/stopped gateway-/) < stoppedAt(/stopped worker-/), 'gateways stop before workers');
  t.ok(last(/stopped worker-/) < stoppedAt(/stopped sentinel-/), 'workers before the Sentinels');
  t.ok(last(/stopped sentinel-/) < stoppedAt(/stopped redis-/), 'the Sentinels before Redis (a stop is not a failover)');
  t.ok(last(/stopped redis-/) < stoppedAt(/stopped nats-/), 'Redis before NATS');
  t.same(output.filter((l) => /violation|refused an operation|NOPERM|NOAUTH|WRONGPASS|lease lost/i.test(l)), [], 'no process was refused anything, and no worker lost its lease');
});
