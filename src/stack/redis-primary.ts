/**
 * Which Redis server of the local stack's replicated group is the primary now, and what a Redis server or Sentinel
 * does before each start because of it: the I/O behind a ChildSpec's `prepare` (plan.ts's redisGroup), performed by
 * the supervisor.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { Config } from '../config.js';
import type { Log } from '../log.js';
import type { DataPaths, Prepare } from './plan.js';
import { waitFor } from './probes.js';
import { writePrivate, type LocalSecrets } from './secrets.js';
import { askFailover, currentPrimary, liveReplicas, redisNodeConf, SENTINEL_FAILOVER_TIMEOUT_MS, sentinelConf, sentinelQuorum } from './topology.js';

/** What the prepare steps of one replicated group share. */
export interface RedisGroup {
  config: Config;
  paths: DataPaths;
  auth: LocalSecrets;
}

/** The primary last recorded in `file`, if it is one of `ports`. */
function recordedPrimary(file: string, ports: number[]): number | undefined {
  try {
    const port = Number(readFileSync(file, 'utf8').trim());
    return ports.includes(port) ? port : undefined;
  } catch {
    return undefined;
  }
}

const remember = (g: RedisGroup, port: number) => writeFileSync(g.paths.primaryFile, `${port}\n`);

/** Who is primary now: the Sentinels' word (of those `asking`), else a server that says so, else the last one recorded, else node 0. */
async function primaryNow(g: RedisGroup, asking: number[]): Promise<number> {
  const c = g.auth.credentials;
  const nodePorts = g.paths.redis.map((r) => r.port);
  return (
    (await currentPrimary({ sentinels: asking, sentinelPassword: c.sentinel, masterName: g.config.redisMasterName, nodes: nodePorts, login: c.redisSentinel })) ??
    recordedPrimary(g.paths.primaryFile, nodePorts) ??
    nodePorts[0]!
  );
}

const sentinelPorts = (g: RedisGroup) => g.paths.sentinels.map((s) => s.port);

/**
 * The primary died and is about to start again before the Sentinels noticed. Started as the primary, it would be
 * whatever its files hold, and its replicas would copy that over what they had: every WAITed write is on a replica,
 * but a primary's files may miss some (Redis restarted from an older copy, a disk that lost its last writes). So
 * when a replica is up, the Sentinels promote it first (SENTINEL FAILOVER) and this node comes back as its replica,
 * taking a copy of it; a node never comes back as the primary over a replica that has its writes. Alone (no replica
 * up, or no failover within SENTINEL_FAILOVER_TIMEOUT_MS), it starts as the primary: the only copy there is.
 */
async function handOver(g: RedisGroup, port: number, name: string, log: Log): Promise<number> {
  const c = g.auth.credentials;
  const others = g.paths.redis.map((r) => r.port).filter((other) => other !== port);
  const replicas = await liveReplicas(others, c.redisSentinel);
  if (replicas.length === 0 || !(await askFailover(sentinelPorts(g), g.config.redisMasterName, c.sentinel))) return port;
  log.warn(`${name} was the Redis primary: the Sentinels promote a replica before it starts again, as a replica (its files may miss writes the replicas have)`);
  let promoted = port;
  await waitFor(async () => (promoted = await primaryNow(g, sentinelPorts(g))) !== port, { deadlineMs: SENTINEL_FAILOVER_TIMEOUT_MS, intervalMs: 100, what: `the Sentinels to promote a replica of ${name}` }).catch((err: Error) =>
    log.warn(`${err.message}; ${name} starts as the primary`),
  );
  return promoted;
}

/** A Redis server: its config written, then started as the primary or as a replica of the primary now. */
async function prepareNode(g: RedisGroup, i: number, log: Log): Promise<string[]> {
  const r = g.paths.redis[i]!;
  const { auth, config } = g;
  const conf = auth.paths.redisNodeConfig(i);
  writePrivate(conf, redisNodeConf({ port: r.port, dir: r.dir, appendfsync: config.redisAppendfsync, pidFile: r.pidFile, aclFile: auth.paths.redisAcl, replica: auth.credentials.redisReplica }));
  let primary = await primaryNow(g, sentinelPorts(g));
  if (primary === r.port) primary = await handOver(g, r.port, r.name, log);
  remember(g, primary);
  return primary === r.port ? [conf] : [conf, '--replicaof', '127.0.0.1', String(primary)];
}

/** A Sentinel: its config written to watch the primary the other Sentinels (or the servers) name now. */
async function prepareSentinel(g: RedisGroup, i: number): Promise<string[]> {
  const s = g.paths.sentinels[i]!;
  const { auth, config } = g;
  const primary = await primaryNow(g, sentinelPorts(g).filter((port) => port !== s.port));
  writePrivate(
    auth.paths.sentinelConfig(i),
    sentinelConf({
      port: s.port,
      dir: s.dir,
      pidFile: s.pidFile,
      masterName: config.redisMasterName,
      primaryPort: primary,
      quorum: sentinelQuorum(config.sentinelNodes),
      downAfterMs: config.sentinelDownAfterMs,
      redis: auth.credentials.redisSentinel,
      password: auth.credentials.sentinel,
    }),
  );
  return [auth.paths.sentinelConfig(i), '--sentinel'];
}

/** Performs a child's prepare step: writes what it reads, and returns its arguments for this start. */
export function prepareArgs(g: RedisGroup, prepare: Prepare, log: Log): Promise<string[]> {
  return prepare.writes === 'redis-node' ? prepareNode(g, prepare.index, log) : prepareSentinel(g, prepare.index);
}

/** At a stop: which Redis is primary now (it may not be node 0 after a failover), so that the next start begins with it. */
export async function recordPrimary(config: Config, paths: DataPaths, sentinelPassword: string): Promise<void> {
  const primary = await currentPrimary({
    sentinels: paths.sentinels.map((s) => s.port),
    sentinelPassword,
    masterName: config.redisMasterName,
    nodes: [],
  }).catch(() => undefined);
  if (primary !== undefined) writeFileSync(paths.primaryFile, `${primary}\n`);
}
