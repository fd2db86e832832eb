/**
 * Every server restarted from its own files, under load, with an exact audit after each restart: the stacks of
 * `npm start` and `SHOP_PROFILE=cluster npm start` run by the real supervisor on free ports and a temporary data dir
 * (servers with their generated credentials and ACLs, as a user runs them). Before each fault the command streams
 * are trimmed past everything the shop was seeded with, so what Redis does not load back is gone for good (the
 * partitions cannot read it again from their streams), and the workers are killed too so that they load from Redis.
 *
 * - npm start's stack: redis-server SIGKILLed (the supervisor restarts it at once from its AOF); nats-server
 *   SIGKILLed (restarted from its store); the whole stack stopped as by Ctrl-C and started again.
 * - the cluster profile: the Redis primary SIGKILLed; the whole stack stopped and started again.
 *
 * The audit (test/helpers/faults.ts) reads back every item, user and order: nothing lost or invented per item and
 * per user, every order answered 2xx is paid, none answered 4xx after its 2xx.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from 'nats';
import t, { type Test } from 'tap';
import { loadConfig, type Config } from '../../src/config.js';
import { createLog } from '../../src/log.js';
import { names } from '../../src/protocol.js';
import { freePort, freePortRange } from '../../src/stack/probes.js';
import { readLocalCredentials } from '../../src/stack/secrets.js';
import { createSupervisor, type Supervisor } from '../../src/stack/supervisor.js';
import { liveReplicas, portsFrom, redisInfo } from '../../src/stack/topology.js';
import { seedShop } from '../helpers/cluster.js';
import { auditSettled, FAULT_SHOP, startStorm, type Req, type Storm } from '../helpers/faults.js';
import { httpCall } from '../helpers/http.js';
import { waitFor } from '../helpers/servers.js';

/** How long a restarted stack may take to serve every partition again. */
const SERVING_DEADLINE_MS = 90_000;

interface Stack {
  config: Config;
  url: string;
  supervisor: Supervisor;
  /** The children's output, for a failing test's diagnosis. */
  output: string[];
}

/** Settings of a stack on free ports under `dataDir`: trimming every 100 ms, so the streams forget fast. */
async function stackConfig(dataDir: string, cluster: boolean): Promise<Config> {
  const settings: Partial<Record<keyof Config, unknown>> = {
    dataDir,
    natsPort: await freePortRange(cluster ? 3 : 1),
    redisPort: await freePortRange(cluster ? 3 : 1),
    httpPort: await freePort(),
    httpHost: '127.0.0.1',
    adminPort: 0,
    trimIntervalMs: 100,
    logLevel: 'warn',
    ...(cluster ? { natsClusterPort: await freePortRange(3), sentinelPort: await freePortRange(3) } : {}),
  };
  return loadConfig(cluster ? { SHOP_PROFILE: 'cluster' } : {}, settings);
}

/** The supervisor of `config`'s stack, started, its API answering. Stopped in `t`'s teardown. */
async function startStack(t: Test, config: Config): Promise<Stack> {
  const output: string[] = [];
  const supervisor = createSupervisor(config, createLog('supervisor', 'warn', (l) => output.push(`supervisor | ${l}`)), { output: (name, line) => output.push(`${name} | ${line}`) });
  t.teardown(() => supervisor.stop());
  await supervisor.start();
  const url = `http://127.0.0.1:${config.httpPort}`;
  await waitFor(async () => (await httpCall(url, 'GET', '/stock/find/nothing')).status === 400, { deadlineMs: 60_000, what: 'the API to answer a read' });
  return { config, url, supervisor, output };
}

function adminNats(config: Config): Promise<NatsConnection> {
  const credentials = readLocalCredentials(config)!;
  const servers = Array.from({ length: config.natsNodes }, (_, i) => `nats://127.0.0.1:${config.natsPort + i}`);
  return connect({ servers, user: 'admin', pass: credentials.nats.admin, inboxPrefix: '_INBOX.admin', maxReconnectAttempts: -1 });
}

/** The last sequence of every command stream now. */
async function lastSequences(config: Config): Promise<Map<string, number>> {
  const nc = await adminNats(config);
  try {
    const jsm = await nc.jetstreamManager();
    const n = names(config.streamPrefix);
    return new Map(await Promise.all(config.kinds.map(async (k) => [n.stream(k), (await jsm.streams.info(n.stream(k))).state.last_seq] as [string, number])));
  } finally {
    await nc.close();
  }
}

/** Waits until every command stream was trimmed past `sequences`: what was stored up to then is only in Redis now. */
async function trimmedPast(config: Config, sequences: Map<string, number>): Promise<void> {
  const nc = await adminNats(config);
  try {
    const jsm = await nc.jetstreamManager();
    await waitFor(
      async () => {
        for (const [stream, seq] of sequences) if ((await jsm.streams.info(stream)).state.first_seq <= seq) return false;
        return true;
      },
      { deadlineMs: 30_000, what: `every command stream to be trimmed past ${JSON.stringify(Object.fromEntries(sequences))}` },
    );
  } finally {
    await nc.close();
  }
}

/** SIGKILLs the child `name` and resolves once the supervisor runs a new one. */
async function killChild(stack: Stack, name: string): Promise<void> {
  const pid = stack.supervisor.pids()[name];
  if (pid === undefined) throw new Error(`no child ${name}: ${JSON.stringify(stack.supervisor.pids())}`);
  process.kill(pid, 'SIGKILL');
  await waitFor(() => (stack.supervisor.pids()[name] ?? pid) !== pid, { deadlineMs: 30_000, what: `the supervisor to start ${name} again` });
}

const workersOf = (stack: Stack) => Object.keys(stack.supervisor.pids()).filter((name) => name.startsWith('worker-'));

/**
 * One round: a storm against the stack, `fault` once the streams were trimmed past what was stored before the round,
 * the storm until healthy again, then the audit of every request so far (this round's and the earlier ones').
 */
async function round(t: Test, stack: () => Stack, all: Req[], what: string, fault: () => Promise<void>): Promise<void> {
  const before = await lastSequences(stack().config);
  const storm: Storm = startStorm([stack().url], FAULT_SHOP, { rate: 100 });
  try {
    await storm.healthy(performance.now(), `before ${what}`);
    await trimmedPast(stack().config, before);
    await fault();
    await storm.healthy(performance.now(), `after ${what}`, { deadlineMs: SERVING_DEADLINE_MS });
  } catch (err) {
    await storm.stop();
    if (err instanceof Error) err.message += `\nlast output of the stack:\n${stack().output.slice(-40).join('\n')}`;
    throw err;
  }
  all.push(...(await storm.stop()));
  const audit = await auditSettled(t, stack().url, FAULT_SHOP, all);
  t.comment(`${what}: ${audit.requests} requests so far (${audit.paid} checkouts answered paid, ${audit.refused} refused, ${audit.unknown} of unknown outcome)`);
  t.same(audit.violations, [], `after ${what}: nothing lost or invented per item and per user, every order answered 2xx is paid`);
}

/** A stack of `npm start` (or of the cluster profile) seeded with FAULT_SHOP; `current` follows its cold restarts. */
interface Seeded {
  config: Config;
  current: Stack;
  /** Every request of the rounds so far. */
  all: Req[];
}

async function seededStack(t: Test, cluster: boolean): Promise<Seeded> {
  const dataDir = await mkdtemp(join(tmpdir(), 'shop-restarts-'));
  t.teardown(() => rm(dataDir, { recursive: true, force: true }));
  const config = await stackConfig(dataDir, cluster);
  const current = await startStack(t, config);
  await seedShop({ call: (method, path) => httpCall(current.url, method, path) }, FAULT_SHOP);
  return { config, current, all: [] };
}

/** SIGKILLs the server `name`, then every worker once the server runs again: they load from what it gave back. */
const killWithWorkers = (s: Seeded, name: string) => async () => {
  await killChild(s.current, name);
  await Promise.all(workersOf(s.current).map((w) => killChild(s.current, w)));
};

/** Stops the whole stack as Ctrl-C does, and starts it again on the same data. */
const coldRestart = (t: Test, s: Seeded) => async () => {
  await s.current.supervisor.stop();
  s.current = await startStack(t, s.config);
};

t.test("npm start's stack: redis-server and nats-server SIGKILLed and restarted from their files, then the whole stack cold-restarted; nothing lost", async (t) => {
  const s = await seededStack(t, false);
  await round(t, () => s.current, s.all, 'redis-server SIGKILLed (restarted at once from its AOF) and the workers with it', killWithWorkers(s, 'redis'));
  await round(t, () => s.current, s.all, 'nats-server SIGKILLed (restarted at once from its store) and the workers with it', killWithWorkers(s, 'nats'));
  await round(t, () => s.current, s.all, 'the whole stack stopped (as by Ctrl-C) and started again', coldRestart(t, s));
});

t.test('the cluster profile: the Redis primary SIGKILLed and restarted from its files, then the whole stack cold-restarted; nothing lost', async (t) => {
  const s = await seededStack(t, true);
  await round(t, () => s.current, s.all, 'the Redis primary SIGKILLed (before the Sentinels act) and the workers with it', killWithWorkers(s, 'redis-0'));
  // Its replica had every WAITed write; its own files might not have had them all: it came back as a replica.
  // A node still loading its AOF answers ROLE with LOADING: it is asked until it answers (a .ci/run asked once, too soon).
  const login = readLocalCredentials(s.config)!.redisSentinel;
  const asReplica = await waitFor(async () => (await liveReplicas([s.config.redisPort], login)).length === 1, { deadlineMs: 20_000, intervalMs: 100, what: 'the old primary to answer as a replica' }).then(
    () => true,
    () => false,
  );
  if (!asReplica) {
    // What each node says, and what the stack said about Redis: a failing run's diagnosis.
    for (const port of portsFrom(s.config.redisPort, 1 + s.config.redisReplicas)) {
      const info = await redisInfo(port, 'replication', login).then((m) => [...m].map(([k, v]) => `${k}=${v}`).join(' '), (err: Error) => err.message);
      t.comment(`redis on ${port}: ${info}`);
    }
    t.comment(s.current.output.filter((l) => /redis|sentinel/i.test(l)).slice(-30).join('\n'));
  }
  t.ok(asReplica, 'the old primary came back as a replica of the promoted one');
  t.ok(s.current.output.some((l) => /the Sentinels promote a replica before it starts again/.test(l)), 'the supervisor had the Sentinels promote its replica first');
  await round(t, () => s.current, s.all, 'the whole cluster stack stopped and started again', coldRestart(t, s));
});
