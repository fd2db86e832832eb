/**
 * The cluster's layout (src/transport/layout.ts): the partition count comes from the cluster, not from whoever asks.
 * The case on real servers: a stack of 3 workers with 8 partitions per kind under the supervisor, then
 * `shopctl status` with the default settings (2 partitions) shows the cluster's 8 and says that its own setting
 * differs; a gateway and a worker set to another count refuse to start, saying what to set; a gateway that started
 * before any worker and learns a different count later stops.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { connect } from 'nats';
import t from 'tap';
import { envName, loadConfig, type Config } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { openControlBucket } from '../../src/placement/membership.js';
import { freePort, freePortRange } from '../../src/stack/probes.js';
import { readLocalCredentials } from '../../src/stack/secrets.js';
import { createSupervisor } from '../../src/stack/supervisor.js';
import { claimLayout, LAYOUT_KEY, layoutMismatch, LayoutMismatchError, parseLayout } from '../../src/transport/layout.js';
import { startNats, testConfig, waitFor } from '../helpers/servers.js';
import { spawnRole } from '../helpers/stack.js';

const SHOPCTL = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'admin', 'shopctl.js');
const quiet = createLog('test', 'error');
const encode = (v: unknown) => new TextEncoder().encode(typeof v === 'string' ? v : JSON.stringify(v));

t.test('a stored layout is read only when it is one; a mismatch says what to set', async (t) => {
  t.same(parseLayout(encode({ partitions: 8, hash: 'fnv1a' })), { partitions: 8, hash: 'fnv1a' });
  for (const junk of ['{}', 'null', '[]', '"8"', '{"partitions":0,"hash":"fnv1a"}', '{"partitions":1.5,"hash":"fnv1a"}', '{"partitions":8}', 'not json']) {
    t.equal(parseLayout(encode(junk)), undefined, `${junk} is no layout`);
  }
  const config = loadConfig({}, { partitions: 2, streamPrefix: 'p1' });
  t.equal(layoutMismatch({ partitions: 2, hash: 'fnv1a' }, { partitions: 2, hash: 'fnv1a' }, 'gateway 0', config), undefined);
  t.match(layoutMismatch({ partitions: 2, hash: 'fnv1a' }, { partitions: 8, hash: 'fnv1a' }, 'gateway 0', config), /^gateway 0 is set to 2 partitions per kind, but the cluster on nats:\/\/127\.0\.0\.1:4222 \(stream prefix p1\) has 8: .*SHOP_PARTITIONS=8/);
  t.match(layoutMismatch({ partitions: 8, hash: 'fnv1a' }, { partitions: 8, hash: 'xxh3' }, 'worker w', config), /worker w hashes ids with fnv1a, but .* was made with xxh3/);
});

t.test('claimLayout: the first writes, the rest agree or refuse; workers racing agree on one; garbage is replaced', async (t) => {
  const nats = await startNats(t);
  const config = testConfig(nats, { url: 'redis://127.0.0.1:1', port: 1 }, { partitions: 4 });
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  const control = await openControlBucket(nc.jetstream(), config);
  const claims = await Promise.allSettled([4, 4, 6, 4, 6].map((partitions) => claimLayout(control, { ...config, partitions }, `worker p${partitions}`, quiet)));
  const won = claims.find((c) => c.status === 'fulfilled') as PromiseFulfilledResult<{ partitions: number }>;
  const refused = claims.filter((c) => c.status === 'rejected').map((c) => (c as PromiseRejectedResult).reason);
  t.ok(refused.every((r) => r instanceof LayoutMismatchError), 'the losers are refused with a LayoutMismatchError');
  t.equal(refused.length, won.value.partitions === 4 ? 2 : 3, `the claims with another count than the winner's (${won.value.partitions}) are refused`);
  t.same(parseLayout((await control.get(LAYOUT_KEY))!.value), { partitions: won.value.partitions, hash: 'fnv1a' }, 'the bucket holds the winner\'s');

  await control.put(LAYOUT_KEY, encode('garbage'));
  t.same(await claimLayout(control, { ...config, partitions: 3 }, 'worker', quiet), { partitions: 3, hash: 'fnv1a' }, 'an invalid record is replaced');
  await t.rejects(claimLayout(control, { ...config, partitions: 4 }, 'worker w', quiet), /worker w is set to 4 partitions per kind, but the cluster .* has 3/);
});

t.test('the issue\'s case: a stack with 8 partitions; shopctl with default settings shows 8; a gateway and a worker set to 6 refuse', async (t) => {
  const dataDir = await mkdtemp(join(tmpdir(), 'shop-layout-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  // What the operator's two shells share: where the stack is (ports, data dir). Not its partitions or workers.
  const where: Partial<Record<keyof Config, unknown>> = { dataDir, natsPort: await freePort(), redisPort: await freePort(), httpPort: await freePort(), adminPort: await freePortRange(4) };
  const config = loadConfig({}, { ...where, httpHost: '127.0.0.1', workerProcesses: 3, partitions: 8, logLevel: 'warn', streamMaxBytes: 64 * 1024 * 1024 });
  const supervisor = createSupervisor(config, createLog('supervisor', 'warn'), { output: () => {} });
  t.teardown(() => supervisor.stop());
  await supervisor.start();

  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, ...Object.fromEntries(Object.entries(where).map(([k, v]) => [envName(k), String(v)])) };
  const shopctl = async (...args: string[]) => promisify(execFile)(process.execPath, [SHOPCTL, ...args], { env });
  let status: { workers: { partitions: number }[]; partitions: { kind: string; state: string }[] } = { workers: [], partitions: [] };
  let stderr = '';
  await waitFor(
    async () => {
      const out = await shopctl('status', '--json');
      status = JSON.parse(out.stdout);
      stderr = out.stderr;
      return status.workers.length === 3 && status.partitions.every((p) => p.state === 'running');
    },
    { deadlineMs: 60_000, what: 'shopctl status to show three workers running every partition' },
  );
  t.equal(status.partitions.length, 24, 'shopctl with the default settings (2 partitions) lists the cluster\'s 3 × 8 partitions');
  t.same(status.workers.map((w) => w.partitions).reduce((a, b) => a + b), 24, 'and the workers\' shares add up to them');
  t.match(stderr, /this shopctl is set to 2 partitions per kind, but the cluster .* has 8: .* Shown: the cluster's 8/, 'and says that its own setting differs');
  const table = await shopctl('status');
  t.match(table.stdout, /24\/24 partitions running at their placement epoch \(8 per kind\)/);

  const credentials = readLocalCredentials(config)!;
  const servers = { natsUrl: `nats://127.0.0.1:${config.natsPort}`, redisUrl: `redis://127.0.0.1:${config.redisPort}`, startServers: false, adminPort: 0, httpPort: 0 };
  const gateway = spawnRole('gateway', loadConfig({}, { ...servers, partitions: 6, natsUser: 'gateway-0', natsPassword: credentials.nats['gateway-0'] }));
  t.teardown(() => gateway.kill('SIGKILL'));
  t.equal(await gateway.exited, '2', 'a gateway set to 6 partitions exits at start');
  t.match(gateway.output(), /gateway 0 is set to 6 partitions per kind, but the cluster on nats:\/\/127\.0\.0\.1:\d+ has 8: ids would go to other partitions\. Set partitions \(SHOP_PARTITIONS=8\)/, 'saying what to set');

  const worker = spawnRole('worker', loadConfig({}, { ...servers, partitions: 6, workerProcesses: 4, workerIndex: 3, natsUser: 'worker', natsPassword: credentials.nats.worker!, redisUser: credentials.redis.user, redisPassword: credentials.redis.password }));
  t.teardown(() => worker.kill('SIGKILL'));
  t.equal(await worker.exited, '2', 'a worker set to 6 partitions exits at start');
  t.match(worker.output(), /worker worker-3-[0-9a-f]+ is set to 6 partitions per kind, but the cluster .* has 8/);

  const agreeing = spawnRole('gateway', loadConfig({}, { ...servers, partitions: 8, natsUser: 'gateway-0', natsPassword: credentials.nats['gateway-0'] }));
  t.teardown(() => agreeing.kill('SIGKILL'));
  await waitFor(() => /listening/.test(agreeing.output()), { deadlineMs: 30_000, what: 'a gateway set like the cluster to listen' });
  t.equal(agreeing.process.exitCode, null, 'a gateway set like the cluster runs');
});

t.test('a gateway that started before any worker stops once a worker writes a different layout', async (t) => {
  const nats = await startNats(t);
  const config = testConfig(nats, { url: 'redis://127.0.0.1:1', port: 1 }, { partitions: 4, logLevel: 'info' });
  const gateway = spawnRole('gateway', config);
  t.teardown(() => gateway.kill('SIGKILL'));
  await waitFor(() => /the cluster has no layout yet/.test(gateway.output()), { deadlineMs: 30_000, what: 'the gateway to start without a layout' });
  const nc = await connect({ servers: nats.url });
  t.teardown(() => nc.close());
  await claimLayout(await openControlBucket(nc.jetstream(), config), { ...config, partitions: 8 }, 'worker', quiet);
  t.equal(await gateway.exited, '1', 'the gateway ends by itself, non-zero');
  t.match(gateway.output(), /gateway 0 is set to 4 partitions per kind, but the cluster .* has 8/);
});
