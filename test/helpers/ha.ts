/**
 * The production topology's servers for tests, on free ports in temp dirs: a JetStream cluster of nats-servers
 * (startNatsCluster) and a Redis primary with replicas watched by Sentinels (startRedisHA). Built from the same
 * config texts and probes as the supervisor's cluster profile (src/stack/topology.ts). Readiness is waited for with a
 * deadline, never a sleep; everything is stopped in the test's teardown (and by the reaper if the test dies).
 *
 * For fault tests: every node is a TestServer (kill9, pause/resume, restart, stop); `natsCluster.leaderOf(stream)`
 * says which node leads a stream or bucket; `redisHA.primary()`, `failover()` and `waitPrimary()` follow the
 * Sentinels. A restarted Redis node replicates whichever primary the Sentinels name then, as under the supervisor.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, type NatsConnection } from 'nats';
import type { Test } from 'tap';
import { redisAcl, type RedisLogin } from '../../src/auth.js';
import type { Config } from '../../src/config.js';
import { NATS_STOP_SIGNAL, natsArgs } from '../../src/stack/processes.js';
import { natsAnswers, redisAnswers } from '../../src/stack/probes.js';
import {
  currentPrimary,
  jetstreamClusterReady,
  natsClusterBlock,
  redisNodeConf,
  replicasOnline,
  sentinelConf,
  sentinelPrimary,
  sentinelQuorum,
  sentinelReady,
} from '../../src/stack/topology.js';
import type { NetLab } from './netns.js';
import { DEFAULT_APPENDFSYNC, freePort, startServer, testNatsAuthorization, waitFor, type TestServer, type TestUsers } from './servers.js';

/** How long a cluster may take to elect its JetStream meta leader, or replicas and Sentinels to find each other. */
const CLUSTER_READY_DEADLINE_MS = 30_000;
/** How long a Sentinel failover may take to be seen by every Sentinel, with the new primary's replicas online. */
export const FAILOVER_DEADLINE_MS = 30_000;

const password = () => randomBytes(12).toString('base64url');

// ---- NATS --------------------------------------------------------------------------------------------

export interface NatsCluster {
  /** The nodes, in order: node i is named `n<i>` (a stream's leader is reported by that name). */
  nodes: TestServer[];
  /** `natsUrl` for the whole cluster: every node's URL, comma-separated. */
  url: string;
  /** The index of the node that leads `stream` (a KV bucket's stream is `KV_<bucket>`) now, or undefined. */
  leaderOf(stream: string): Promise<number | undefined>;
  /** Which node leads the JetStream meta group (which places every stream and consumer), as the first node that answers says. */
  metaLeader(): Promise<number | undefined>;
  /** Resolves once the cluster has a JetStream meta leader and every node is routed to the others. */
  ready(): Promise<void>;
  /**
   * Resolves once each of `streams` (or every stream, without) has a leader and all its replicas are current: after
   * a node came back, before the next fault (a second node down while the first still catches up is two down).
   */
  caughtUp(streams?: string[], deadlineMs?: number): Promise<void>;
}

/**
 * `nodes` nats-servers (default 3) with JetStream, clustered over loopback routes that require a password; with
 * `users`, the clients of src/auth.ts (any stream prefix, or `prefix`). Ready when JetStream has a meta leader.
 * With `lab` (test/helpers/netns.ts), node i runs in the lab's namespace i at its address there, so that a node can
 * be cut off from the others (`lab.cut(i)`).
 */
export async function startNatsCluster(t: Test, { nodes = 3, users, prefix, lab }: { nodes?: number; users?: TestUsers; prefix?: string; lab?: NetLab } = {}): Promise<NatsCluster> {
  const clientPorts = await Promise.all(Array.from({ length: nodes }, () => freePort()));
  const routePorts = await Promise.all(Array.from({ length: nodes }, () => freePort()));
  const monitorPorts = await Promise.all(Array.from({ length: nodes }, () => freePort()));
  const routePassword = password();
  const hosts = Array.from({ length: nodes }, (_, i) => lab?.address(i) ?? '127.0.0.1');
  const servers = await Promise.all(
    clientPorts.map((port, i) =>
      startServer(
        {
          what: `nats-server n${i}`,
          stopSignal: NATS_STOP_SIGNAL,
          scheme: 'nats',
          binary: 'nats-server',
          host: hosts[i]!,
          ...(lab ? { wrap: (command: string, args: string[]) => lab.wrap(i, command, args) } : {}),
          setup: (dir) =>
            writeFile(
              join(dir, 'node.conf'),
              [natsClusterBlock({ routePort: routePorts[i]!, routePorts, routePassword, host: hosts[i]!, hosts }), users ? testNatsAuthorization(users, prefix) : ''].join('\n'),
              { mode: 0o600 },
            ),
          args: (p, dir) => [...natsArgs({ port: p, storeDir: join(dir, 'js'), configFile: join(dir, 'node.conf'), host: hosts[i]! }), '-n', `n${i}`, '-m', String(monitorPorts[i])],
          answers: (p) => natsAnswers(p, { host: hosts[i]! }),
        },
        t,
        port,
      ),
    ),
  );
  const url = servers.map((s) => s.url).join(',');
  const admin = users && { user: users.admin.user, pass: users.admin.password };
  const cluster: NatsCluster = {
    nodes: servers,
    url,
    async leaderOf(stream) {
      const nc = await adminConnection(url, users);
      try {
        const info = await (await nc.jetstreamManager({ timeout: 1000 })).streams.info(stream);
        const leader = info.cluster?.leader;
        return leader ? Number(leader.slice(1)) : undefined;
      } catch {
        return undefined;
      } finally {
        await nc.close();
      }
    },
    async metaLeader() {
      // Each node's own view, from its monitoring port; the first that names one counts.
      for (const [i, node] of servers.entries()) {
        if (node.pid === undefined) continue;
        try {
          const res = await fetch(`http://${hosts[i]}:${monitorPorts[i]}/jsz`, { signal: AbortSignal.timeout(500) });
          const leader = ((await res.json()) as { meta_cluster?: { leader?: string } }).meta_cluster?.leader;
          if (leader) return Number(leader.slice(1));
        } catch {
          // paused, cut off or down: ask the next
        }
      }
      return undefined;
    },
    ready: () =>
      waitFor(() => jetstreamClusterReady(servers.filter((s) => s.pid !== undefined).map((s) => s.url), admin, nodes), {
        deadlineMs: CLUSTER_READY_DEADLINE_MS,
        intervalMs: 100,
        what: `the ${nodes} nats-servers to form a JetStream cluster`,
      }),
    async caughtUp(streams, deadlineMs = CLUSTER_READY_DEADLINE_MS) {
      let lagging = '';
      await waitFor(
        async () => {
          const nc = await adminConnection(servers.filter((s) => s.pid !== undefined).map((s) => s.url).join(','), users);
          try {
            const jsm = await nc.jetstreamManager({ timeout: 1000 });
            const names = streams ?? (await jsm.streams.names().next());
            for (const name of names) {
              const info = await jsm.streams.info(name);
              const replicas = info.cluster?.replicas ?? [];
              if (!info.cluster?.leader || replicas.length < info.config.num_replicas - 1 || replicas.some((r) => !r.current || r.offline)) {
                lagging = name;
                return false;
              }
            }
            return true;
          } finally {
            await nc.close();
          }
        },
        { deadlineMs, intervalMs: 200, what: `every replica of the streams to be current (${lagging || 'asking'})` },
      );
    },
  };
  await cluster.ready();
  return cluster;
}

/** A connection that may use the JetStream API (the admin user when the cluster has users). */
export function adminConnection(url: string, users?: TestUsers): Promise<NatsConnection> {
  return connect({
    servers: url.split(','),
    ...(users ? { user: users.admin.user, pass: users.admin.password, inboxPrefix: `_INBOX.${users.admin.user}` } : {}),
    maxReconnectAttempts: 0,
    timeout: 2000,
  });
}

// ---- Redis with Sentinels ----------------------------------------------------------------------------

export interface RedisHA {
  /** The Redis servers: node 0 starts as the primary, the others as its replicas. */
  nodes: TestServer[];
  sentinels: TestServer[];
  masterName: string;
  /** The workers' login (ACL user with the worker's commands). */
  worker: RedisLogin;
  /** The Sentinels' password. */
  sentinelPassword: string;
  /** The settings that make a worker use these servers through the Sentinels. */
  settings(): Partial<Record<keyof Config, unknown>>;
  /** The node the Sentinels name as primary now (asked of the first that answers). */
  primary(): Promise<TestServer>;
  /** SENTINEL FAILOVER: the Sentinels promote a replica (the old primary becomes its replica). */
  failover(): Promise<void>;
  /**
   * Resolves with the primary once every running Sentinel names a node other than `from`, and that node has its
   * replicas online again (with `replicas`, default all: WAIT can be satisfied).
   */
  waitPrimary(from: TestServer, opts?: { deadlineMs?: number; replicas?: number }): Promise<TestServer>;
}

/**
 * A Redis primary with `replicas` replicas (default 1) and `sentinels` Sentinels (default 3, quorum a majority)
 * watching it under `masterName`; ACL users for the worker (users.redis if given), the replicas and the Sentinels,
 * the default user off; the Sentinels have a password. `downAfterMs` (default 1000): how long the primary must be
 * silent before the Sentinels fail over. Ready once the replicas are online and every Sentinel knows the others.
 */
export async function startRedisHA(
  t: Test,
  { replicas = 1, sentinels = 3, users, masterName = 'shop', downAfterMs = 1000 }: { replicas?: number; sentinels?: number; users?: TestUsers; masterName?: string; downAfterMs?: number } = {},
): Promise<RedisHA> {
  const worker: RedisLogin = users?.redis ?? { user: 'worker', password: password() };
  const replica: RedisLogin = { user: 'replica', password: password() };
  const sentinelLogin: RedisLogin = { user: 'sentinel', password: password() };
  const sentinelPassword = password();
  const nodePorts = await Promise.all(Array.from({ length: 1 + replicas }, () => freePort()));
  const sentinelPorts = await Promise.all(Array.from({ length: sentinels }, () => freePort()));
  const primaryNow = async (asking: number[]) =>
    (await currentPrimary({ sentinels: asking, sentinelPassword, masterName, nodes: nodePorts, login: sentinelLogin })) ?? nodePorts[0]!;

  /** Set once the first start is over: from then on a (re)started node asks who is primary. */
  let started = false;
  const nodes = await Promise.all(
    nodePorts.map((port, i) =>
      startServer(
        {
          what: `redis-server r${i}`,
          stopSignal: 'SIGTERM',
          scheme: 'redis',
          binary: 'redis-server',
          setup: (dir) => writeFile(join(dir, 'users.acl'), redisAcl({ user: worker.user, password: worker.password, keyPrefix: '', replica, sentinel: sentinelLogin }), { mode: 0o600 }),
          async args(p, dir) {
            const conf = join(dir, 'redis.conf');
            await writeFile(conf, redisNodeConf({ port: p, dir, appendfsync: DEFAULT_APPENDFSYNC, pidFile: join(dir, 'redis.pid'), aclFile: join(dir, 'users.acl'), replica }), { mode: 0o600 });
            // The first start: node 0 is the primary. Later: whatever the Sentinels say now.
            const primary = i === 0 && !started ? p : await primaryNow(sentinelPorts);
            return primary === p ? [conf] : [conf, '--replicaof', '127.0.0.1', String(primary)];
          },
          answers: (p) => redisAnswers(p, { auth: worker }),
        },
        t,
        port,
      ),
    ),
  );
  const waitOptions = { deadlineMs: CLUSTER_READY_DEADLINE_MS, intervalMs: 100 };
  await waitFor(() => replicasOnline(nodePorts[0]!, replicas, sentinelLogin), { ...waitOptions, what: `the Redis primary to have ${replicas} replica(s) online` });
  started = true;

  const sentinelServers = await Promise.all(
    sentinelPorts.map((port, i) =>
      startServer(
        {
          what: `redis-sentinel s${i}`,
          stopSignal: 'SIGTERM',
          scheme: 'redis',
          binary: 'redis-server',
          async args(p, dir) {
            const conf = join(dir, 'sentinel.conf');
            const primary = await primaryNow(sentinelPorts.filter((s) => s !== p));
            const text = sentinelConf({
              port: p,
              dir,
              pidFile: join(dir, 'sentinel.pid'),
              masterName,
              primaryPort: primary,
              quorum: sentinelQuorum(sentinels),
              downAfterMs,
              redis: sentinelLogin,
              password: sentinelPassword,
            });
            await writeFile(conf, text, { mode: 0o600 });
            return [conf, '--sentinel'];
          },
          answers: (p) => redisAnswers(p, { auth: { user: 'default', password: sentinelPassword } }),
        },
        t,
        port,
      ),
    ),
  );
  await waitFor(async () => (await Promise.all(sentinelPorts.map((p) => sentinelReady(p, { masterName, password: sentinelPassword, primaryPort: nodePorts[0], sentinels, replicas })))).every(Boolean), {
    ...waitOptions,
    what: `the ${sentinels} Sentinels to know each other and the ${replicas} replica(s)`,
  });

  const byPort = (port: number) => nodes.find((n) => n.port === port);
  const ha: RedisHA = {
    nodes,
    sentinels: sentinelServers,
    masterName,
    worker,
    sentinelPassword,
    settings: () => ({
      redisUrl: nodes[0]!.url,
      redisUser: worker.user,
      redisPassword: worker.password,
      redisSentinels: sentinelPorts.map((p) => `127.0.0.1:${p}`).join(','),
      redisMasterName: masterName,
      redisSentinelPassword: sentinelPassword,
    }),
    async primary() {
      const port = await currentPrimary({ sentinels: sentinelPorts, sentinelPassword, masterName, nodes: [] });
      const node = port === undefined ? undefined : byPort(port);
      if (!node) throw new Error(`no Sentinel names a primary (answer: ${port})`);
      return node;
    },
    async failover() {
      const { Redis } = await import('ioredis');
      const s = new Redis({ port: sentinelPorts[0]!, host: '127.0.0.1', password: sentinelPassword, lazyConnect: true, maxRetriesPerRequest: 0 });
      try {
        await s.connect();
        await s.call('SENTINEL', 'FAILOVER', masterName);
      } finally {
        s.disconnect();
      }
    },
    async waitPrimary(from, { deadlineMs = FAILOVER_DEADLINE_MS, replicas: online = replicas } = {}) {
      let found: TestServer | undefined;
      await waitFor(
        async () => {
          const running = sentinelServers.filter((s) => s.pid !== undefined).map((s) => s.port);
          const named = await Promise.all(running.map((p) => sentinelPrimary(p, masterName, sentinelPassword).catch(() => undefined)));
          const port = named[0];
          if (port === undefined || port === from.port || named.some((n) => n !== port)) return false;
          found = byPort(port);
          return found !== undefined && (online === 0 || (await replicasOnline(port, online, sentinelLogin)));
        },
        { deadlineMs, intervalMs: 100, what: `the Sentinels to promote a replica of ${from.url} (with ${online} replica(s) online)` },
      );
      return found!;
    },
  };
  return ha;
}
