import { Redis } from 'ioredis';
import { connect } from 'nats';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { loadConfig, type Config } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { natsEnv, type ChildSpec } from '../../src/stack/plan.js';
import { readLocalCredentials, secretPaths } from '../../src/stack/secrets.js';
import { createSupervisor } from '../../src/stack/supervisor.js';
import { FakeClock } from '../helpers/clock.js';
import { captureLog } from '../helpers/logs.js';
import { freePort, pidAlive, randomToken, waitFor } from '../helpers/servers.js';

const quiet = createLog('supervisor', 'warn');

/** A config for a supervisor of its own: temp data dir, free ports. */
async function localConfig(t: Test, overrides: Partial<Record<keyof Config, unknown>> = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), 'shop-supervisor-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const [natsPort, redisPort, httpPort] = await Promise.all([freePort(), freePort(), freePort()]);
  const config = loadConfig({ SHOP_PROFILE: 'test' }, { dataDir, natsPort, redisPort, httpPort, startServers: true, ...overrides });
  return { config, dataDir, natsPort, redisPort, httpPort };
}

t.test('the server part: nats and redis answer, data survives a stop and start, stop leaves no process', async (t) => {
  const { config, dataDir, natsPort, redisPort } = await localConfig(t);
  const key = `${randomToken()}:k`;
  const stream = randomToken();

  const first = createSupervisor(config, quiet, { children: [], output: () => {} });
  t.teardown(() => first.stop());
  await first.start();
  t.equal(first.state, 'ready');
  t.ok(existsSync(join(dataDir, 'nats')) && existsSync(join(dataDir, 'redis')), 'data dirs created');
  const pids = first.pids();
  t.same(Object.keys(pids).sort(), ['nats', 'redis']);
  const natsEnviron = readFileSync(`/proc/${pids.nats}/environ`, 'utf8').split('\0');
  t.ok(natsEnviron.includes(`GOMAXPROCS=${process.env.GOMAXPROCS ?? natsEnv().GOMAXPROCS}`), "nats-server runs Go's scheduler on half the cores (or the GOMAXPROCS it inherits)");

  // The credentials of the first start, private to this user.
  const paths = secretPaths(config);
  t.equal(statSync(paths.dir).mode & 0o777, 0o700, 'the secrets dir is 0700');
  for (const file of [paths.credentials, paths.natsConfig, paths.redisAcl]) t.equal(statSync(file).mode & 0o777, 0o600, `${file} is 0600`);
  t.equal(readFileSync(join(paths.dir, '.gitignore'), 'utf8'), '*\n', 'and ignored by git wherever it is');
  const credentials = readLocalCredentials(config)!;
  t.notMatch(readFileSync(paths.redisAcl, 'utf8'), credentials.redis.password, 'the ACL file holds a hash, not the password');
  await t.rejects(connect({ servers: `nats://127.0.0.1:${natsPort}`, maxReconnectAttempts: 0 }), /Authorization Violation/, 'nats wants credentials');
  const admin = { servers: `nats://127.0.0.1:${natsPort}`, user: 'admin', pass: credentials.nats.admin, inboxPrefix: '_INBOX.admin' };
  const login = { username: credentials.redis.user, password: credentials.redis.password, lazyConnect: true, maxRetriesPerRequest: 1 };

  const nc = await connect(admin);
  const kv = await nc.jetstream().views.kv(stream);
  await kv.put('x', new Uint8Array([1]));
  await nc.close();
  const redis = new Redis(`redis://127.0.0.1:${redisPort}`, login);
  await redis.connect();
  await redis.hset(key, 'f', 'kept');
  redis.disconnect();

  await first.stop();
  t.equal(first.state, 'closed');
  for (const [name, pid] of Object.entries(pids)) t.notOk(pidAlive(pid), `${name} (pid ${pid}) is gone`);
  t.same(first.pids(), {});

  const second = createSupervisor(config, quiet, { children: [], output: () => {} });
  t.teardown(() => second.stop());
  await second.start();
  t.same(readLocalCredentials(config), credentials, 'the second start reuses the credentials');
  const again = new Redis(`redis://127.0.0.1:${redisPort}`, login);
  await again.connect();
  t.equal(await again.hget(key, 'f'), 'kept', 'redis replayed its AOF');
  again.disconnect();
  const nc2 = await connect(admin);
  t.same([...((await (await nc2.jetstream().views.kv(stream)).get('x'))?.value ?? [])], [1], 'the bucket kept its value');
  await nc2.close();
  await second.stop();
});

t.test('a port in use fails the start with a message naming the setting, and starts nothing', async (t) => {
  const blocker = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const port = (blocker.address() as { port: number }).port;
  const { config } = await localConfig(t, { redisPort: port });
  const supervisor = createSupervisor(config, quiet, { children: [], output: () => {} });
  await t.rejects(supervisor.start(), new RegExp(`port ${port} for redis-server \\(setting redisPort, SHOP_REDIS_PORT\\) is already in use`));
  t.same(supervisor.pids(), {}, 'nats was not started either');
  await supervisor.stop();
});

// ---- the whole supervisor process, with stand-in children --------------------------------------

const fixture = fileURLToPath(new URL('../fixtures/run-supervisor.js', import.meta.url));

/** Stand-ins: a gateway that listens on SHOP_HTTP_PORT, a worker that crashes, a worker that ignores SIGTERM. */
function standIns(): ChildSpec[] {
  const node = (role: ChildSpec['role'], name: string, code: string, env: Record<string, string> = {}): ChildSpec => ({ name, role, command: process.execPath, args: ['-e', code], env });
  return [
    node('worker', 'worker-0', `console.log('worker ' + process.env.SHOP_WORKER_INDEX + ' up'); setTimeout(() => process.exit(3), 150);`, { SHOP_WORKER_INDEX: '0' }),
    node('worker', 'worker-1', `process.on('SIGTERM', () => console.log('ignoring SIGTERM')); setInterval(() => {}, 1000); console.log('stubborn up');`),
    node(
      'gateway',
      'gateway-0',
      `const s = require('node:net').createServer((c) => c.end()).listen(Number(process.env.SHOP_HTTP_PORT), '127.0.0.1', () => console.log('listening'));
       process.on('SIGTERM', () => { console.error('gateway stopping'); s.close(); process.exit(0); });`,
    ),
  ];
}

async function runFixture(t: Test, graceMs: number) {
  const { natsPort, redisPort, httpPort, dataDir } = await localConfig(t);
  const env = {
    ...process.env,
    SHOP_PROFILE: 'test',
    SHOP_DATA_DIR: dataDir,
    SHOP_NATS_PORT: String(natsPort),
    SHOP_REDIS_PORT: String(redisPort),
    SHOP_HTTP_PORT: String(httpPort),
    SHOP_HTTP_HOST: '127.0.0.1',
    SHOP_RESTART_BACKOFF_MS: '100',
    SHOP_SHUTDOWN_GRACE_MS: String(graceMs),
    SHOP_LOG_LEVEL: 'info',
  };
  const proc = spawn(process.execPath, [fixture, JSON.stringify(standIns())], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  });
  const log = () => `--- stderr\n${stderr}\n--- stdout\n${stdout}`;
  const until = (what: string, re: RegExp, deadlineMs = 15_000) =>
    waitFor(() => re.test(stderr) || re.test(stdout), { deadlineMs, what }).catch((err: Error) => {
      err.message += `\n${log()}`;
      throw err;
    });
  const pids = () => [...stderr.matchAll(/started \S+ \(pid (\d+)\)/g)].map((m) => Number(m[1]));
  return { proc, exited, until, pids, log, natsPort, redisPort, httpPort, dataDir, out: () => ({ stdout, stderr }) };
}

t.test('supervisor process: ready line, prefixed output, restarts with backoff, ordered stop on SIGINT, exit 0', async (t) => {
  const run = await runFixture(t, 1000);
  await run.until('the ready line', new RegExp(`ready: http://127\\.0\\.0\\.1:${run.httpPort} \\(nats nats://127\\.0\\.0\\.1:${run.natsPort}, redis redis://127\\.0\\.0\\.1:${run.redisPort}\\)`));
  t.ok(await import('../../src/stack/probes.js').then((p) => p.natsAnswers(run.natsPort)), 'nats answers');
  const { redis } = readLocalCredentials({ dataDir: run.dataDir })!;
  t.ok(await import('../../src/stack/probes.js').then((p) => p.redisAnswers(run.redisPort, { auth: { user: redis.user, password: redis.password } })), 'redis answers the generated user');
  await run.until('the second restart of the crashing worker', /worker-0 exited unexpectedly \(code 3\) after \d+ ms; restart #2 in 200 ms/);
  t.match(run.out().stderr, /worker-0 exited unexpectedly \(code 3\) after \d+ ms; restart #1 in 100 ms/, 'the first restart waited restartBackoffMs');
  const { stdout } = run.out();
  t.match(stdout, /^worker-0\s+\| worker 0 up$/m, "a child's stdout lines carry its name");
  t.match(stdout, /^gateway-0\s+\| listening$/m);
  t.match(stdout, /^redis\s+\| .*Ready to accept connections/m, 'server output is prefixed too');

  // One Ctrl-C in a terminal under npm arrives twice within a few ms: it must not count as the second one.
  run.proc.kill('SIGINT');
  setTimeout(() => run.proc.kill('SIGINT'), 20);
  t.equal(await run.exited, 0, `exits 0\n${run.log()}`);
  const { stderr } = run.out();
  const at = (re: RegExp) => stderr.search(re);
  t.ok(at(/stopped gateway-0/) > 0, 'gateway stopped');
  t.match(run.out().stderr, /worker-1 did not exit within 1000 ms of the stop signal; killed \(signal SIGKILL\)/);
  t.ok(at(/stopped gateway-0/) < at(/worker-1 did not exit/), 'gateways before workers');
  t.ok(at(/worker-1 did not exit/) < at(/stopped redis \(code 0\)/), 'workers before redis');
  t.ok(at(/stopped redis/) < at(/stopped nats \(code 0\)/), 'redis before nats');
  t.notMatch(stderr, /received again/, 'the doubled SIGINT was taken as one');
  const pids = run.pids();
  t.ok(pids.length >= 5, 'saw the children start');
  for (const pid of pids) t.notOk(pidAlive(pid), `pid ${pid} is gone`);
});

t.test('supervisor process: a second signal kills everything at once', async (t) => {
  const run = await runFixture(t, 60_000);
  await run.until('ready', /ready: http/);
  run.proc.kill('SIGTERM');
  await run.until('the stubborn worker ignoring SIGTERM', /worker-1\s+\| ignoring SIGTERM/);
  await new Promise((resolve) => setTimeout(resolve, 1100)); // past the window in which a repeat is the same Ctrl-C
  run.proc.kill('SIGTERM');
  t.equal(await run.exited, 130, 'exits 130 without waiting out the 60 s grace');
  t.match(run.out().stderr, /SIGTERM received again: killing every child now/);
  const pids = run.pids();
  await waitFor(() => pids.every((pid) => !pidAlive(pid)), { deadlineMs: 5000, what: 'every child to be gone' });
  t.pass('every child is gone');
});

t.test('restart pauses run on the injected clock: a crashing child waits 100, 200, 400 ms of fake time, and stop cancels the next', async (t) => {
  const clock = new FakeClock();
  const { log, lines } = captureLog('supervisor', 'warn');
  const config = loadConfig({ SHOP_PROFILE: 'test' }, { startServers: false, restartBackoffMs: 100 });
  const crasher: ChildSpec = { name: 'crasher', role: 'worker', command: process.execPath, args: ['-e', 'process.exit(3)'], env: {} };
  const supervisor = createSupervisor(config, log, { children: [crasher], output: () => {}, clock });
  t.teardown(() => supervisor.stop());
  await supervisor.start();
  const restarts = () => lines.filter((l) => l.msg.startsWith('crasher exited unexpectedly')).map((l) => l.msg);
  for (const [i, delayMs] of [100, 200, 400].entries()) {
    await waitFor(() => restarts().length === i + 1, { deadlineMs: 10_000, what: `crash #${i + 1} of the child` });
    t.match(restarts()[i], new RegExp(`\\(code 3\\) after \\d+ ms; restart #${i + 1} in ${delayMs} ms$`));
    t.same(clock.delays(), [delayMs], 'the restart waits on the fake clock');
    clock.advance(delayMs - 1);
    t.same(supervisor.pids(), {}, 'not relaunched before its time');
    clock.advance(1);
  }
  await waitFor(() => restarts().length === 4, { deadlineMs: 10_000, what: 'crash #4' });
  await supervisor.stop();
  t.same(clock.delays(), [], 'stopping cancels the pending restart');
  clock.advance(10_000);
  t.same(supervisor.pids(), {}, 'and nothing is launched after the stop');
});

t.test('a test process killed from outside (SIGKILL) leaves none of the workers its helpers spawned', async (t) => {
  // A fault test killed by `pkill` once left four workers running for an hour, trying to reach servers that were gone.
  const proc = spawn(process.execPath, [fileURLToPath(new URL('../fixtures/spawn-worker.js', import.meta.url))], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => proc.kill('SIGKILL'));
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await waitFor(() => /^\d+\n/.test(out), { deadlineMs: 10_000, what: 'the fixture to spawn its worker' });
  const pid = Number(out.trim());
  t.teardown(() => {
    if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
  });
  t.ok(pidAlive(pid), 'the worker runs');
  proc.kill('SIGKILL');
  await waitFor(() => !pidAlive(pid), { deadlineMs: 10_000, what: `the worker (pid ${pid}) to be gone` });
  t.notOk(pidAlive(pid), 'the worker is gone with the test process');
});
