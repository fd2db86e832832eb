/**
 * The supervisor's start of the servers, in the order they need each other: the port checks, then nats-server and
 * redis-server together, each waited on until it answers; a JetStream cluster until it has a meta leader; a Redis
 * primary until its replicas are online, and only then the Sentinels (they must find the primary), until they agree.
 */
import { mkdirSync } from 'node:fs';
import type { Config } from '../config.js';
import type { Log } from '../log.js';
import type { Children, Slot } from './children.js';
import { dataPaths, serverName, serverUrls, type DataPaths } from './plan.js';
import { assertPortFree, checkServerPorts, serverPorts } from './port-checks.js';
import { abortOnExit } from './processes.js';
import { anySignal, natsAnswers, redisAnswers, waitFor } from './probes.js';
import type { LocalSecrets } from './secrets.js';
import { currentPrimary, jetstreamClusterReady, replicasOnline, sentinelQuorum, sentinelReady } from './topology.js';

/** How long nats-server and redis-server may take to answer (redis replays its whole AOF first). */
const SERVER_READY_DEADLINE_MS = 60_000;
/** How long a JetStream cluster may take to elect its meta leader, and replicas and Sentinels to find each other, at start. */
const CLUSTER_READY_DEADLINE_MS = 60_000;

export interface ServerStart {
  config: Config;
  log: Log;
  secrets: LocalSecrets | undefined;
  children: Children;
  /** Aborts every wait when the supervisor stops. */
  signal: AbortSignal;
}

const isServer = (slot: Slot) => slot.spec.role === 'nats' || slot.spec.role === 'redis' || slot.spec.role === 'sentinel';

/** Starts the servers of the plan and resolves once they all answer and have found each other. */
export async function startServers(s: ServerStart): Promise<void> {
  const { config, children } = s;
  const p = dataPaths(config);
  const servers = children.slots.filter(isServer);
  const ports = serverPorts(config, p);
  checkServerPorts(ports);
  for (const { port, key } of ports) {
    const spec = servers.find((slot) => slot.spec.port === port)?.spec;
    await assertPortFree(port, key, spec ? serverName(spec) : 'nats-server (cluster route)', '127.0.0.1', spec?.pidFile);
  }
  for (const dir of [...p.nats, ...p.redis, ...p.sentinels].map((n) => n.dir)) mkdirSync(dir, { recursive: true });

  // nats and redis together; the Sentinels once the Redis servers answer (they must find the primary).
  await Promise.all(servers.filter((slot) => slot.spec.role !== 'sentinel').map((slot) => startServer(s, slot)));
  if (config.natsNodes > 1) await jetstreamCluster(s);
  if (config.redisReplicas > 0) await replicatedRedis(s, p, servers.filter((slot) => slot.spec.role === 'sentinel'));
}

/** Launches one server and waits until it answers (or exits, or the supervisor stops). */
async function startServer({ secrets, children, log, signal }: ServerStart, slot: Slot): Promise<void> {
  const port = slot.spec.port!;
  const child = await children.launch(slot);
  const what = `${serverName(slot.spec)} on 127.0.0.1:${port}`;
  const auth = secrets && { user: secrets.credentials.redis.user, password: secrets.credentials.redis.password };
  const probe =
    slot.spec.role === 'nats'
      ? () => natsAnswers(port)
      : slot.spec.role === 'redis'
        ? () => redisAnswers(port, { auth })
        : () => redisAnswers(port, { auth: { user: 'default', password: secrets!.credentials.sentinel } });
  await waitFor(probe, {
    deadlineMs: SERVER_READY_DEADLINE_MS,
    what: `${what} to answer (see its output above)`,
    signal: anySignal(abortOnExit(child, what).signal, signal),
  });
  children.apply(slot, { kind: 'established' });
  log.info(`${slot.spec.name} ready on port ${port}`);
}

const waitForCluster = (signal: AbortSignal, fn: () => Promise<boolean>, what: string) =>
  waitFor(fn, { deadlineMs: CLUSTER_READY_DEADLINE_MS, intervalMs: 200, what, signal });

async function jetstreamCluster({ config, secrets, log, signal }: ServerStart): Promise<void> {
  const { natsUrl } = serverUrls(config);
  const admin = secrets && { user: 'admin', pass: secrets.credentials.nats.admin! };
  await waitForCluster(signal, () => jetstreamClusterReady(natsUrl.split(','), admin, config.natsNodes), `the ${config.natsNodes} nats-servers to form a JetStream cluster with a meta leader`);
  log.info(`JetStream cluster of ${config.natsNodes} nodes ready`);
}

/** Waits for the primary's replicas, then starts the Sentinels and waits until they watch it and know each other. */
async function replicatedRedis(s: ServerStart, p: DataPaths, sentinels: Slot[]): Promise<void> {
  const { config, log, signal } = s;
  const c = s.secrets!.credentials;
  const primaryPort = async () =>
    (await currentPrimary({ sentinels: [], masterName: config.redisMasterName, nodes: p.redis.map((r) => r.port), login: c.redisSentinel })) ?? p.redis[0]!.port;
  await waitForCluster(signal, async () => replicasOnline(await primaryPort(), config.redisReplicas, c.redisSentinel), `the Redis primary to have its ${config.redisReplicas} replica(s) online`);
  await Promise.all(sentinels.map((slot) => startServer(s, slot)));
  if (config.sentinelNodes === 0) return;
  const primary = await primaryPort();
  const ready = { masterName: config.redisMasterName, password: c.sentinel, primaryPort: primary, sentinels: config.sentinelNodes, replicas: config.redisReplicas };
  await waitForCluster(
    signal,
    async () => (await Promise.all(p.sentinels.map((sentinel) => sentinelReady(sentinel.port, ready)))).every(Boolean),
    `the ${config.sentinelNodes} Sentinels to watch the primary (port ${primary}) and know each other and its replicas`,
  );
  log.info(`Redis primary on port ${primary} with ${config.redisReplicas} replica(s), watched by ${config.sentinelNodes} Sentinels (quorum ${sentinelQuorum(config.sentinelNodes)})`);
}
