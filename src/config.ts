import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { bool, ConfigError, configDir, envName, int, oneOf, readJson, str, type Check } from './config-read.js';
import type { LogFormat } from './log.js';

export { ConfigError, envName } from './config-read.js';

/**
 * Every setting, with its unit in the name where it has one. Defaults live in config/default.json, profiles in
 * config/<profile>.json. Each member's doc comment is its entry in docs/settings.md (scripts/settings-doc.ts).
 */
export interface Config {
  /**
   * NATS for workers and gateways: one URL or a comma-separated list (`nats://a:4222,nats://b:4222`; `tls://` asks
   * for TLS). A process waits for its first connection going round the list, and reconnects forever. With
   * `startServers`, the supervisor gives its children every node it starts.
   */
  natsUrl: string;
  /**
   * This process's NATS user (empty: connect without credentials). Letters, digits, `-` and `_`: it is also a subject
   * token (its reply inboxes are `_reply.<user>.<process>`). Set per child by the supervisor with `serverAuth`.
   */
  natsUser: string;
  /** The NATS password of `natsUser` (empty: none; a password needs a user). */
  natsPassword: string;
  /** PEM file: the CA that signed the NATS servers' certificates (empty: none). Any of the three TLS files turns TLS on. */
  natsTlsCa: string;
  /** PEM file: a client certificate for NATS (empty: none); goes with `natsTlsKey`. */
  natsTlsCert: string;
  /** PEM file: the key of `natsTlsCert` (empty: none). */
  natsTlsKey: string;
  /**
   * How often a NATS client pings its server; after two unanswered pings it takes the server for dead and moves to
   * another of `natsUrl`. A server that is paused (or cut off) is noticed only this way: its TCP connection stays
   * open. It then dials the next server at once (a server it dialed last not before this long), and a connection
   * attempt gives up after 2 intervals (0.5 to 3 s).
   */
  natsPingIntervalMs: number;
  /**
   * Redis for workers, `redis://` or `rediss://` (TLS). With `startServers`, `redis://127.0.0.1:<redisPort>`. With
   * `redisSentinels`, only its credentials and TLS matter: the Sentinels name the primary.
   */
  redisUrl: string;
  /**
   * Redis Sentinels, `host:port,host:port,...`: workers ask them for the current primary of `redisMasterName` and
   * follow a failover. Empty: connect to `redisUrl` directly.
   */
  redisSentinels: string;
  /** The name the Sentinels monitor the primary under. */
  redisMasterName: string;
  /** User the workers log in to the Sentinels with (empty: none; the cluster profile's Sentinels require the generated password). */
  redisSentinelUser: string;
  /** Password of `redisSentinelUser` (empty: none). */
  redisSentinelPassword: string;
  /**
   * A commit (and the acquire that fences older owners) counts as done only once this many replicas have it
   * (Redis WAIT right after the script, in the same round trip); fewer within `redisWaitTimeoutMs` fail the batch
   * like a lost connection, and its partitions restart from Redis. 0: no WAIT (one Redis, or asynchronous
   * replication accepted).
   */
  redisWaitReplicas: number;
  /** How long a commit waits for `redisWaitReplicas` replicas before it counts as failed. */
  redisWaitTimeoutMs: number;
  /** The workers' Redis ACL user (empty: none). Gateways never connect to Redis. */
  redisUser: string;
  /** Password of `redisUser` (empty: none). */
  redisPassword: string;
  /** PEM file: the CA of the Redis servers' certificates (empty: none). */
  redisTlsCa: string;
  /** PEM file: a client certificate for Redis (empty: none); goes with `redisTlsKey`. */
  redisTlsCert: string;
  /** PEM file: the key of `redisTlsCert` (empty: none). */
  redisTlsKey: string;
  /** Address the gateways listen on for HTTP. */
  httpHost: string;
  /** HTTP port of the gateways, shared by all of them (SO_REUSEPORT); 0: the OS picks one. */
  httpPort: number;
  /**
   * Partitions per actor kind; fixed for a deployment's life (ids hash onto them; there is no re-partitioning). It
   * bounds the useful worker processes (3 × partitions runners in all); fewer partitions mean fewer, bigger
   * messages and batches per checkout (docs/perf/). For a deployment that will grow past a few workers pick 8 to 64
   * from the start.
   */
  partitions: number;
  /**
   * Worker processes the supervisor starts (static placement: partition p runs on worker p % workerProcesses). One
   * per 2 cores: on 2 cores, 1 worker is faster than 2; 2 give failover to a live worker instead of a restart.
   */
  workerProcesses: number;
  /** Gateway processes the supervisor starts; they share `httpPort`. */
  gatewayProcesses: number;
  /** Which worker this process is (static placement: partition p belongs to worker p % workerProcesses; dynamic: part of its name and admin port). Set per worker by the supervisor; below `workerProcesses`. */
  workerIndex: number;
  /** Which gateway this process is (its admin port). Set per gateway by the supervisor; below `gatewayProcesses`. */
  gatewayIndex: number;
  /**
   * 'dynamic': workers register in NATS KV, a leader-elected controller places partitions and moves them when a
   * worker dies, joins or drains (src/placement/controller.ts). 'static': partition p belongs to worker p % workerProcesses.
   */
  placement: 'dynamic' | 'static';
  /**
   * Dynamic placement: how often a worker sends its heartbeat (a pulse on core NATS, and a put in the `SHOP_WORKERS`
   * bucket), and the leading controller renews its leadership.
   */
  heartbeatIntervalMs: number;
  /**
   * Dynamic placement: a worker (or leader) not heard from for this long is dead and its partitions move (at least
   * 3 heartbeat intervals). A worker that has heard none of its own heartbeats back for this long less one heartbeat
   * interval stops serving by itself and exits. Liveness rides on core NATS, so no JetStream election need fit in it;
   * on a NATS cluster it must outlast a client's move to another server (natsPingIntervalMs × 3) and a heartbeat.
   */
  workerLeaseMs: number;
  /** Loopback address of every process's admin HTTP (/healthz, /readyz, /metrics). */
  adminHost: string;
  /** First admin HTTP port: worker i listens on adminPort + i, gateway j on adminPort + workerProcesses + j. 0: a free port each. */
  adminPort: number;
  /** When set, admin requests (shopctl move/drain/rebalance) must carry it; when empty they are answered only over a loopback NATS URL. */
  adminToken: string;
  /** Actor kinds this deployment runs (and this worker hosts): a comma-separated list of `stock`, `payment`, `order`. */
  kinds: readonly Kind[];
  /** Prepended to stream names and subjects, so tests and deployments can share one NATS server (`t1` → `t1_STOCK`, `t1.stock.cmd.7`). */
  streamPrefix: string;
  /** Prepended to every Redis key. */
  redisPrefix: string;
  /**
   * Most stream messages (a command, or a bundle of up to BUNDLE_MAX) applied in one batch, i.e. one Redis commit;
   * a batch also ends after 5,000 changed keys or 10 ms.
   */
  batchMax: number;
  /** Most stream messages buffered per partition before the reader stops pulling from the stream. */
  queueMax: number;
  /** Most commands and reads one gateway process waits on at once; past it a request is answered 503 at once (backpressure). */
  gatewayInflightMax: number;
  /**
   * How a gateway bundles the commands of one event-loop turn into stream messages. 'owner': one per kind and worker
   * that runs their partitions, as the workers' pulses tell (a worker applies each command on its own partition, in
   * one batch; one that no longer runs it answers so, and the gateway sends the command to its partition); so a
   * worker gets as few stream messages at 64 partitions as at 2. 'partition': one per partition.
   */
  gatewayBundles: 'owner' | 'partition';
  /**
   * Largest n a batch_init request (stock, payment or orders) may ask for; a larger one is answered 400 too_large.
   * It bounds what one request makes the workers create (and hold in memory), not the gateway's work: that is
   * bounded by a window of commands in flight whatever n is. The default is ten times the largest load measured
   * (1,000,000 of each kind: 13.8 s, worker 418 MiB): ten times that of one kind costs its worker about ten times
   * the time and memory (orders: 6.8 s → over a minute), about what one request should ask of one 2-core machine,
   * while n = 2^53 would ask for more than any has. Raise it (on every gateway) for bigger workers.
   */
  batchInitMax: number;
  /** How long the gateway waits for a command's outcome before answering 503 ("may still take effect"). */
  requestDeadlineMs: number;
  /** How long the gateway waits for a read before answering 503. */
  readDeadlineMs: number;
  /** Pause between retries of a publish or read that found no owner (or a refused publish). */
  retryBackoffMs: number;
  /** JetStream duplicate window: a re-published Nats-Msg-Id within it is dropped. */
  duplicateWindowMs: number;
  /** Stream size limit: bounds the backlog of unapplied commands (applied ones are trimmed); past it publishes are refused, never old commands dropped. JetStream reserves it from the server's storage. */
  streamMaxBytes: number;
  /** Copies of every stream and KV bucket: 1 on one machine, 3 on a 3-node NATS cluster. */
  streamReplicas: number;
  /**
   * How often an owner looks at purging the commands below its committed cursor from the stream; it purges once 256
   * messages were applied since the last purge or 12 intervals have passed, and never past a cursor Redis may still
   * lose (see `redisAppendfsync`).
   */
  trimIntervalMs: number;
  /** Local stack (npm start) only: where nats-server and redis-server keep their data, and the generated credentials (`secrets/`). */
  dataDir: string;
  /** Local stack only: the port of nats-server node 0; node i listens on natsPort + i. */
  natsPort: number;
  /** Local stack only: nats-servers the supervisor starts: 1, or a JetStream cluster of natsNodes (3 for R3 streams). */
  natsNodes: number;
  /** Local stack only, with natsNodes > 1: the cluster (route) port of node 0; node i on natsClusterPort + i. */
  natsClusterPort: number;
  /** Local stack only: the port of the Redis primary the supervisor starts; its replica i listens on redisPort + 1 + i. */
  redisPort: number;
  /**
   * Local stack only: Redis replicas the supervisor starts (0: none). With `redisWaitReplicas` 1, two keep commits
   * going through the loss of the primary or of one replica: WAIT always has a replica to count.
   */
  redisReplicas: number;
  /** Local stack only: Redis Sentinels the supervisor starts (0: none; a failover needs a majority of them); Sentinel i on sentinelPort + i. */
  sentinelNodes: number;
  /** Local stack only: the port of Sentinel 0. */
  sentinelPort: number;
  /**
   * Local stack only: how long the Sentinels must not hear from the primary before they fail over. The cluster
   * profile's 500 ms is measured on this 2-core machine beside two busy loops and a fault test's storm: no false
   * alarm at 500 ms (load up to 35), two at 250 ms (a Sentinel took the healthy primary for down; docs/architecture.md,
   * "Redis with Sentinels").
   */
  sentinelDownAfterMs: number;
  /** Local stack only: the port `npm run monitor` serves Prometheus on (on 127.0.0.1), scraping the stack's admin ports. */
  monitorPort: number;
  /** Whether the supervisor starts nats-server and redis-server (off: it runs only workers and gateways against `natsUrl` and `redisUrl`). */
  startServers: boolean;
  /**
   * Whether the servers the supervisor starts require credentials (generated on first start under
   * `<dataDir>/secrets/`, docs/security.md). On by default; off exists only to measure what authorization costs:
   * never turn it off otherwise.
   */
  serverAuth: boolean;
  /**
   * The AOF fsync policy of the redis-server the supervisor starts. `always` (the default): Redis writes and fsyncs
   * each event-loop turn's commits before it answers them, so neither a crash of redis-server nor a power loss loses
   * an acknowledged commit. `everysec`: while its background fsync runs (a slow or busy disk), Redis 7.0 answers
   * writes without writing them at all for up to 2–3 s, so a crash of redis-server then loses acknowledged commits,
   * and a power loss the last second or more. `no`: written before the answer (a crash of redis-server loses
   * nothing), flushed by the kernel (a power loss can lose the last 30 s).
   */
  redisAppendfsync: 'always' | 'everysec' | 'no';
  /** First pause before the supervisor restarts a crashed child; it doubles up to 10 s (reset after 10 s of uptime). */
  restartBackoffMs: number;
  /** How long a child may take to stop before the supervisor sends SIGKILL; gateways drain in-flight requests within it. */
  shutdownGraceMs: number;
  /** The lowest level logged. */
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  /**
   * 'json': one JSON object per line, for log collectors; 'pretty': readable lines; 'auto': 'pretty' when stderr is
   * a terminal, else 'json'. The supervisor hands its children the format it resolved for itself (src/log.ts).
   */
  logFormat: LogFormat;
  /**
   * Fault injection, for crash tests only. 'commit': the worker kills itself (SIGKILL) right after committing the
   * first batch that owes messages, before sending any. 'send': right after the first outbox entry is delivered
   * (every saga message acknowledged by its receiver, every dead letter stored). 'poison': when it is about to
   * apply a client command about the id `fault-poison` (a message that kills its worker, for the poison tests).
   * 'none' in every real deployment.
   */
  faultKillAfter: 'none' | 'commit' | 'send' | 'poison';
}

export const KINDS = ['stock', 'payment', 'order'] as const;
export type Kind = (typeof KINDS)[number];

/** A comma-separated list of actor kinds, at least one. */
const kinds: Check = (key, value) => {
  const list = Array.isArray(value) ? value : String(value).split(',').map((s) => s.trim()).filter(Boolean);
  for (const k of list) {
    if (!(KINDS as readonly string[]).includes(k)) {
      throw new ConfigError(`setting ${key} (${envName(key)}) lists unknown kind ${JSON.stringify(k)}; known: ${KINDS.join(', ')}`);
    }
  }
  if (list.length === 0) throw new ConfigError(`setting ${key} (${envName(key)}) must name at least one kind`);
  return Object.freeze([...new Set(list)]);
};

/** A plain name: letters, digits, `_` and `-` (or empty). */
const name = /^[A-Za-z0-9_-]*$/;
/** A comma-separated list of nats:// or tls:// URLs. */
const natsUrls: Check = (key, value) => {
  const urls = typeof value === 'string' ? value.split(',').map((u) => u.trim()) : [];
  if (urls.length === 0 || urls.some((u) => !/^(nats|tls):\/\/[^\s,]+$/.test(u))) {
    throw new ConfigError(`setting ${key} (${envName(key)}) must be a nats:// or tls:// URL, or a comma-separated list of them, got ${JSON.stringify(value)}`);
  }
  return urls.join(',');
};
/** A comma-separated list of host:port (empty: none). */
const hostPorts: Check = (key, value) => {
  const list = typeof value === 'string' ? value.split(',').map((u) => u.trim()).filter(Boolean) : undefined;
  if (!list || list.some((hp) => !/^[^\s,:]+:\d{1,5}$/.test(hp) || Number(hp.split(':')[1]) > 65535)) {
    throw new ConfigError(`setting ${key} (${envName(key)}) must be a comma-separated list of host:port, or empty, got ${JSON.stringify(value)}`);
  }
  return list.join(',');
};
const checks: Record<keyof Config, Check> = {
  natsUrl: natsUrls,
  natsPingIntervalMs: int(100, 600_000),
  // A user name is also a subject token (its processes' reply inboxes are `_reply.<user>.<process>`).
  natsUser: str(name),
  natsPassword: str(),
  natsTlsCa: str(),
  natsTlsCert: str(),
  natsTlsKey: str(),
  redisUrl: str(/^rediss?:\/\/.+/),
  redisSentinels: hostPorts,
  redisMasterName: str(/^[A-Za-z0-9._-]+$/),
  redisSentinelUser: str(/^[^\s]*$/),
  redisSentinelPassword: str(),
  redisWaitReplicas: int(0, 16),
  redisWaitTimeoutMs: int(1, 600_000),
  redisUser: str(/^[^\s]*$/),
  redisPassword: str(),
  redisTlsCa: str(),
  redisTlsCert: str(),
  redisTlsKey: str(),
  httpHost: str(/.+/),
  httpPort: int(0, 65535),
  partitions: int(1, 4096),
  workerProcesses: int(1, 256),
  gatewayProcesses: int(1, 256),
  workerIndex: int(0, 255),
  gatewayIndex: int(0, 255),
  placement: oneOf('dynamic', 'static'),
  heartbeatIntervalMs: int(20, 60_000),
  workerLeaseMs: int(100, 600_000),
  adminHost: str(/.+/),
  adminPort: int(0, 65535),
  adminToken: str(),
  kinds,
  streamPrefix: str(name),
  redisPrefix: str(/^[^{}\s]*$/),
  batchMax: int(1, 100_000),
  queueMax: int(1, 1_000_000),
  gatewayInflightMax: int(1, 10_000_000),
  gatewayBundles: oneOf('owner', 'partition'),
  batchInitMax: int(0),
  requestDeadlineMs: int(1, 3_600_000),
  readDeadlineMs: int(1, 3_600_000),
  retryBackoffMs: int(1, 60_000),
  duplicateWindowMs: int(1000, 86_400_000),
  streamMaxBytes: int(1024 * 1024),
  streamReplicas: int(1, 5),
  trimIntervalMs: int(100, 3_600_000),
  dataDir: str(/.+/),
  natsPort: int(0, 65535),
  natsNodes: int(1, 7),
  natsClusterPort: int(0, 65535),
  redisPort: int(0, 65535),
  redisReplicas: int(0, 4),
  sentinelNodes: int(0, 7),
  sentinelPort: int(0, 65535),
  sentinelDownAfterMs: int(100, 600_000),
  monitorPort: int(1, 65535),
  startServers: bool,
  serverAuth: bool,
  redisAppendfsync: oneOf('always', 'everysec', 'no'),
  restartBackoffMs: int(0, 600_000),
  shutdownGraceMs: int(0, 600_000),
  logLevel: oneOf('debug', 'info', 'warn', 'error'),
  logFormat: oneOf('auto', 'json', 'pretty'),
  faultKillAfter: oneOf('none', 'commit', 'send', 'poison'),
};

/**
 * The only reader of the environment. Layers: config/default.json, then config/<SHOP_PROFILE>.json,
 * then `overrides`, then SHOP_* variables. Validated and frozen; a bad setting throws a ConfigError naming it.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Record<keyof Config, unknown>> = {}): Readonly<Config> {
  const dir = configDir();
  const raw: Record<string, unknown> = { ...readJson(join(dir, 'default.json')) };
  const profile = env.SHOP_PROFILE;
  if (profile) {
    if (!name.test(profile)) throw new ConfigError(`SHOP_PROFILE must be a plain name, got ${JSON.stringify(profile)}`);
    const path = join(dir, `${profile}.json`);
    if (!existsSync(path)) throw new ConfigError(`SHOP_PROFILE=${profile} but ${path} does not exist`);
    Object.assign(raw, readJson(path));
  }
  Object.assign(raw, overrides);
  for (const key of Object.keys(checks)) {
    const fromEnv = env[envName(key)];
    if (fromEnv !== undefined) raw[key] = fromEnv;
  }
  for (const key of Object.keys(raw)) {
    if (!(key in checks)) throw new ConfigError(`unknown setting ${key}; known settings: ${Object.keys(checks).join(', ')}`);
  }
  const config = {} as Record<string, unknown>;
  for (const [key, check] of Object.entries(checks)) {
    if (raw[key] === undefined) throw new ConfigError(`setting ${key} (${envName(key)}) is missing`);
    config[key] = check(key, raw[key]);
  }
  const c = config as unknown as Config;
  if (c.workerIndex >= c.workerProcesses) {
    throw new ConfigError(`setting workerIndex (${envName('workerIndex')}) must be below workerProcesses (${c.workerProcesses}), got ${c.workerIndex}`);
  }
  if (c.gatewayIndex >= c.gatewayProcesses) {
    throw new ConfigError(`setting gatewayIndex (${envName('gatewayIndex')}) must be below gatewayProcesses (${c.gatewayProcesses}), got ${c.gatewayIndex}`);
  }
  for (const [cert, key] of [['natsTlsCert', 'natsTlsKey'], ['redisTlsCert', 'redisTlsKey']] as const) {
    if (!c[cert] !== !c[key]) {
      throw new ConfigError(`settings ${cert} and ${key} (${envName(cert)}, ${envName(key)}) go together: a client certificate needs its key; got only ${c[cert] ? cert : key}`);
    }
  }
  if (c.natsPassword && !c.natsUser) {
    throw new ConfigError(`setting natsPassword (${envName('natsPassword')}) is set but natsUser (${envName('natsUser')}) is empty; set both`);
  }
  if (c.startServers && c.sentinelNodes > 0 && c.redisReplicas === 0) {
    throw new ConfigError(`setting sentinelNodes (${envName('sentinelNodes')}) is ${c.sentinelNodes} but redisReplicas (${envName('redisReplicas')}) is 0: Sentinels need a replica to promote; set both, or neither`);
  }
  if (c.startServers && c.redisWaitReplicas > c.redisReplicas) {
    throw new ConfigError(
      `setting redisWaitReplicas (${envName('redisWaitReplicas')}) is ${c.redisWaitReplicas} but the supervisor starts ${c.redisReplicas} replicas (redisReplicas, ${envName('redisReplicas')}): no commit could ever be acknowledged`,
    );
  }
  if (c.startServers && c.streamReplicas > c.natsNodes) {
    throw new ConfigError(`setting streamReplicas (${envName('streamReplicas')}) is ${c.streamReplicas} but the supervisor starts ${c.natsNodes} nats-servers (natsNodes, ${envName('natsNodes')}): a stream cannot have more replicas than servers`);
  }
  if (c.workerLeaseMs < 3 * c.heartbeatIntervalMs) {
    throw new ConfigError(
      `setting workerLeaseMs (${envName('workerLeaseMs')}) must be at least 3 heartbeat intervals (heartbeatIntervalMs ${c.heartbeatIntervalMs}), got ${c.workerLeaseMs}`,
    );
  }
  return Object.freeze(c);
}

/** The admin HTTP port of this process: `adminPort` + its slot (workers first, then gateways), or 0 (any free port). */
export function adminPortOf(config: Config, role: 'worker' | 'gateway'): number {
  if (config.adminPort === 0) return 0;
  const port = config.adminPort + (role === 'worker' ? config.workerIndex : config.workerProcesses + config.gatewayIndex);
  if (port > 65535) throw new ConfigError(`setting adminPort (${envName('adminPort')}) ${config.adminPort} leaves no port for ${role} ${role === 'worker' ? config.workerIndex : config.gatewayIndex}; choose a lower one`);
  return port;
}
