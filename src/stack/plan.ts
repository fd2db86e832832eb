/**
 * The supervisor's plan, the pure part: which programs the local stack runs, with what arguments and environment,
 * where each server keeps its data, and which servers the app processes use. Nothing here starts or probes
 * anything; supervisor.ts performs the plan, and redis-primary.ts performs a child's `prepare` step.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, envName, type Config } from '../config.js';
import { resolveLogFormat } from '../log.js';
import { gatewayUser, type LocalSecrets } from './secrets.js';
import { portsFrom } from './topology.js';
import { natsArgs, redisArgs } from './processes.js';

/** A supervised program (not a NATS or Redis credential role: those are src/auth.ts's `Role`). */
export type Program = 'nats' | 'redis' | 'sentinel' | 'worker' | 'gateway';

/**
 * What runs before every start of a child (the first and each restart), when its arguments depend on the moment:
 * a Redis server replicates whichever primary the Sentinels name now, a Sentinel watches it. `index` is the node's.
 */
export interface Prepare {
  writes: 'redis-node' | 'sentinel';
  index: number;
}

/** One child process of the stack. */
export interface ChildSpec {
  /** Prefix of its output lines and name in the log: nats, redis, worker-0, gateway-1 (nats-0, redis-1, sentinel-2 in a cluster). */
  name: string;
  /** Decides the stop order (gateway, worker, sentinel, redis, nats) and whether it is a server to wait for. */
  role: Program;
  /** An absolute path, or a name looked up on PATH and in /usr/sbin. */
  command: string;
  args: string[];
  /** Set on top of the supervisor's own environment, which children inherit. */
  env: Record<string, string>;
  /** A server's port (for messages and the port check). */
  port?: number;
  /** Its pid file, named when its port is taken (a previous run's server still running?). */
  pidFile?: string;
  /** Writes what the child reads and gives its arguments, before every start (redis-primary.ts performs it). */
  prepare?: Prepare;
}

const here = dirname(fileURLToPath(import.meta.url));

/** main.js one folder up from this module: dist/src/main.js when compiled. */
const MAIN_JS = join(here, '..', 'main.js');

/** nats/local.conf at the package root, from both src/stack/ and dist/src/stack/. */
export function natsConfigFile(): string {
  for (const up of ['../..', '../../..']) {
    const file = resolve(here, up, 'nats', 'local.conf');
    if (existsSync(file)) return file;
  }
  throw new ConfigError(`nats/local.conf not found above ${here}; it ships with the package (restore it from git)`);
}

/**
 * The servers the app processes use: the ones the supervisor starts (every NATS node; the Redis primary, and the
 * Sentinels that name the current one), or the configured ones.
 */
export function serverUrls(config: Config): { natsUrl: string; redisUrl: string; redisSentinels: string } {
  if (!config.startServers) return { natsUrl: config.natsUrl, redisUrl: config.redisUrl, redisSentinels: config.redisSentinels };
  return {
    natsUrl: portsFrom(config.natsPort, config.natsNodes).map((p) => `nats://127.0.0.1:${p}`).join(','),
    redisUrl: `redis://127.0.0.1:${config.redisPort}`,
    redisSentinels: portsFrom(config.sentinelPort, config.sentinelNodes).map((p) => `127.0.0.1:${p}`).join(','),
  };
}

/**
 * The whole config as SHOP_* variables, so a child runs with exactly the supervisor's settings even when
 * they came from a profile or from overrides rather than from the environment.
 */
function configEnv(config: Config): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(config)) {
    if (key === 'workerIndex' || key === 'gatewayIndex') continue; // set per worker and per gateway
    env[envName(key)] = Array.isArray(value) ? value.join(',') : String(value);
  }
  return env;
}

/** One server node's place on disk and port. */
export interface ServerNode {
  name: string;
  port: number;
  dir: string;
  pidFile: string;
}

export interface DataPaths {
  dataDir: string;
  nats: ServerNode[];
  redis: ServerNode[];
  sentinels: ServerNode[];
  /** The port of the Redis primary as last seen (a whole stack restarting after a failover starts it as the primary again). */
  primaryFile: string;
}

/**
 * Where each server keeps its data: `nats/` and `redis/` for the one-node stack (as always), `nats-<i>/`,
 * `redis-<i>/` and `sentinel-<i>/` for a cluster's nodes; a pid file beside each.
 */
export function dataPaths(config: Config): DataPaths {
  const dataDir = resolve(config.dataDir);
  const nodes = (what: string, base: number, count: number, single: boolean): ServerNode[] =>
    portsFrom(base, count).map((port, i) => {
      const name = single ? what : `${what}-${i}`;
      return { name, port, dir: join(dataDir, name), pidFile: join(dataDir, `${name}.pid`) };
    });
  return {
    dataDir,
    nats: nodes('nats', config.natsPort, config.natsNodes, config.natsNodes === 1),
    redis: nodes('redis', config.redisPort, 1 + config.redisReplicas, config.redisReplicas === 0),
    sentinels: nodes('sentinel', config.sentinelPort, config.sentinelNodes, false),
    primaryFile: join(dataDir, 'redis-primary'),
  };
}

/** How a server is named in messages: `redis-server` alone, `redis-server (redis-1)` in a cluster. */
export const serverName = (spec: ChildSpec) => (spec.name === spec.role ? spec.command : `${spec.command} (${spec.name})`);

/** Whether the supervisor starts servers that require credentials (generated under `<dataDir>/secrets/`). */
export const withServerAuth = (config: Config) => config.startServers && config.serverAuth;

/**
 * The environment of a nats-server the stack starts: Go's scheduler on half the machine's cores (at least one),
 * unless the supervisor's own environment sets GOMAXPROCS (children inherit it). The local stack shares its machine
 * with Redis, the workers and the gateways; on all the cores nats-server's threads wake each other for every burst of
 * messages, and on two cores one thread costs it a tenth to a third less CPU per checkout for the same work
 * (docs/perf/scale-out.md).
 */
export function natsEnv(inherited: NodeJS.ProcessEnv = process.env, cores = availableParallelism()): Record<string, string> {
  return inherited.GOMAXPROCS ? {} : { GOMAXPROCS: String(Math.max(1, Math.floor(cores / 2))) };
}

/** The nats-servers' part of plan(): one node, or a JetStream cluster whose routes log in with a generated password. */
function natsNodes(config: Config, p: DataPaths, auth: LocalSecrets | undefined): ChildSpec[] {
  const cluster = config.natsNodes > 1;
  if (cluster && !auth) throw new ConfigError(`setting natsNodes (${envName('natsNodes')}) > 1 needs serverAuth: the cluster's routes log in with a generated password`);
  return p.nats.map((n, i) => {
    const configFile = cluster ? auth!.paths.natsNodeConfig(i) : (auth?.paths.natsConfig ?? natsConfigFile());
    return {
      name: n.name,
      role: 'nats',
      command: 'nats-server',
      // -n: every node of a JetStream cluster needs a name of its own (the flag overrides the config's).
      args: [...natsArgs({ port: n.port, storeDir: n.dir, configFile, pidFile: n.pidFile }), ...(cluster ? ['-n', `shop-${i}`] : [])],
      env: natsEnv(),
      port: n.port,
      pidFile: n.pidFile,
    };
  });
}

/**
 * The Redis servers' and Sentinels' part of plan(): one server, or a replicated group whose start depends on who is
 * primary now (each child's `prepare`, performed by redis-primary.ts).
 */
function redisGroup(config: Config, p: DataPaths, auth: LocalSecrets | undefined): ChildSpec[] {
  if (config.redisReplicas === 0) {
    const [r] = p.redis;
    return [
      {
        name: r!.name,
        role: 'redis',
        command: 'redis-server',
        args: redisArgs({ port: r!.port, dir: r!.dir, appendfsync: config.redisAppendfsync, pidFile: r!.pidFile, aclFile: auth?.paths.redisAcl }),
        env: {},
        port: r!.port,
        pidFile: r!.pidFile,
      },
    ];
  }
  if (!auth) throw new ConfigError(`setting redisReplicas (${envName('redisReplicas')}) needs serverAuth: the replicas and Sentinels log in with generated passwords`);
  const nodes: ChildSpec[] = p.redis.map((r, i) => ({
    name: r.name,
    role: 'redis',
    command: 'redis-server',
    args: [auth.paths.redisNodeConfig(i)],
    env: {},
    port: r.port,
    pidFile: r.pidFile,
    prepare: { writes: 'redis-node', index: i },
  }));
  const sentinels: ChildSpec[] = p.sentinels.map((s, i) => ({
    name: s.name,
    role: 'sentinel',
    command: 'redis-server',
    args: [auth.paths.sentinelConfig(i), '--sentinel'],
    env: {},
    port: s.port,
    pidFile: s.pidFile,
    prepare: { writes: 'sentinel', index: i },
  }));
  return [...nodes, ...sentinels];
}

/** The workers' and gateways' part of plan(): each with the whole config, the servers to use, and its own login. */
function appProcesses(config: Config, auth: LocalSecrets | undefined, logFormat: 'json' | 'pretty'): ChildSpec[] {
  const { natsUrl, redisUrl, redisSentinels } = serverUrls(config);
  const env = { ...configEnv(config), SHOP_NATS_URL: natsUrl, SHOP_REDIS_URL: redisUrl, SHOP_REDIS_SENTINELS: redisSentinels, SHOP_LOG_FORMAT: logFormat };
  const c = auth?.credentials;
  const sentinelAuth: Record<string, string> = config.startServers && config.sentinelNodes > 0 && c ? { SHOP_REDIS_SENTINEL_USER: '', SHOP_REDIS_SENTINEL_PASSWORD: c.sentinel } : {};
  const workerAuth: Record<string, string> = c
    ? { SHOP_NATS_USER: 'worker', SHOP_NATS_PASSWORD: c.nats.worker!, SHOP_REDIS_USER: c.redis.user, SHOP_REDIS_PASSWORD: c.redis.password, ...sentinelAuth }
    : {};
  const gatewayAuth = (i: number): Record<string, string> =>
    c ? { SHOP_NATS_USER: gatewayUser(i), SHOP_NATS_PASSWORD: c.nats[gatewayUser(i)]!, SHOP_REDIS_USER: '', SHOP_REDIS_PASSWORD: '', SHOP_REDIS_SENTINEL_PASSWORD: '' } : {};
  const children: ChildSpec[] = [];
  for (let i = 0; i < config.workerProcesses; i++) {
    children.push({ name: `worker-${i}`, role: 'worker', command: process.execPath, args: [MAIN_JS, 'worker'], env: { ...env, ...workerAuth, SHOP_WORKER_INDEX: String(i) } });
  }
  for (let i = 0; i < config.gatewayProcesses; i++) {
    children.push({ name: `gateway-${i}`, role: 'gateway', command: process.execPath, args: [MAIN_JS, 'gateway'], env: { ...env, ...gatewayAuth(i), SHOP_GATEWAY_INDEX: String(i) } });
  }
  return children;
}

/**
 * Every child of the stack, in start order. Pure apart from resolving paths and nats-server's GOMAXPROCS (natsEnv).
 * With server auth, `secrets` are the local stack's (localSecrets): the servers run with the generated configs, and
 * each child gets its own user and password in SHOP_* variables (a gateway neither the workers' password nor
 * Redis's). `logFormat` is the workers' and gateways' (SHOP_LOG_FORMAT): a child's stderr is a pipe to the
 * supervisor, so 'auto' there would always mean JSON, even when the supervisor shows the lines on a terminal.
 */
export function plan(config: Config, secrets?: LocalSecrets, logFormat: 'json' | 'pretty' = resolveLogFormat(config.logFormat)): ChildSpec[] {
  if (withServerAuth(config) && !secrets) throw new Error('plan: servers with auth (serverAuth) need the local secrets (localSecrets(config))');
  const auth = withServerAuth(config) ? secrets : undefined;
  const p = config.startServers ? dataPaths(config) : undefined;
  const servers = p ? [...natsNodes(config, p, auth), ...redisGroup(config, p, auth)] : [];
  return [...servers, ...appProcesses(config, auth, logFormat)];
}
