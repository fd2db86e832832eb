/**
 * The one place that opens connections to NATS and Redis from settings: every role (main.ts), shopctl and the
 * bench use it, so credentials, TLS and reconnect behave the same everywhere.
 */
import type { Redis, RedisOptions } from 'ioredis';
import { connect, type ConnectionOptions, type NatsConnection } from 'nats';
import { lookup } from 'node:dns/promises';
import { readFileSync } from 'node:fs';
import { isIP, type Socket } from 'node:net';
import { ConfigError, envName, type Config } from '../config.js';
import type { Log } from '../log.js';

/** The servers of `natsUrl`, a comma-separated list. */
export function natsServers(config: Pick<Config, 'natsUrl'>): string[] {
  return config.natsUrl.split(',').map((u) => u.trim()).filter(Boolean);
}

type NatsSettings = Pick<Config, 'natsUrl' | 'natsUser' | 'natsPassword' | 'natsTlsCa' | 'natsTlsCert' | 'natsTlsKey'> & Partial<Pick<Config, 'natsPingIntervalMs'>>;

/** Unanswered pings after which a NATS client takes its server for dead (nats.js's default, stated). */
export const NATS_MAX_PINGS_OUT = 2;
/**
 * How long one attempt to connect to a NATS server may take before the next server of the list is tried. A paused
 * (or cut-off) server accepts the TCP connection and then says nothing: with nats.js's default (20 s) a worker that
 * happened to try it again lost its lease before it tried another.
 */
export const NATS_CONNECT_ATTEMPT_TIMEOUT_MS = 3000;
/** The least a connection attempt may take with a short ping interval: a TLS handshake with a busy server. */
const NATS_CONNECT_ATTEMPT_MIN_MS = 500;

export interface NatsConnectOptions {
  /**
   * Reconnect attempts per server, -1 (the default): forever. Not 0 or 1 with several servers: nats.js 2.29 then
   * drops a second, working server from the list when the first one it tries is down.
   */
  maxReconnectAttempts?: number;
  /** How long one connection attempt may take (default NATS_CONNECT_ATTEMPT_TIMEOUT_MS). */
  timeoutMs?: number;
}

/** nats.js options for these settings (exported for tests). Reconnects forever unless told otherwise. */
export function natsOptions(config: NatsSettings, name: string, { maxReconnectAttempts = -1, timeoutMs }: NatsConnectOptions = {}): ConnectionOptions {
  const servers = natsServers(config);
  const options: ConnectionOptions = { servers, name, maxReconnectAttempts, timeout: timeoutMs ?? NATS_CONNECT_ATTEMPT_TIMEOUT_MS };
  if (config.natsPingIntervalMs) {
    // A paused or cut-off server keeps its TCP connection open: only unanswered pings reveal it (nats.js's default
    // interval, 2 minutes, is far longer than a worker's lease).
    options.pingInterval = config.natsPingIntervalMs;
    options.maxPingOut = NATS_MAX_PINGS_OUT;
    // And then on to the next server within about as long again: nats.js waits reconnectTimeWait (2 s) before it
    // dials a server it dialed last, and a connection attempt to a paused or cut-off server ends only at its timeout
    // (nats.js 2.29 tries the server it lost first when that is the one it connected to at start). A worker's pulses
    // stop meanwhile (placement/membership.ts), and the cluster's lease is 2 s.
    options.reconnectTimeWait = config.natsPingIntervalMs;
    options.timeout = timeoutMs ?? Math.min(NATS_CONNECT_ATTEMPT_TIMEOUT_MS, Math.max(NATS_CONNECT_ATTEMPT_MIN_MS, NATS_MAX_PINGS_OUT * config.natsPingIntervalMs));
  }
  if (maxReconnectAttempts === -1) {
    // Never give up means also after a refused login (nats.js would close for good after two): a server reloading its
    // users, or a node of a cluster not yet reloaded, refuses for a while. A process whose password was rotated away
    // keeps trying until it is restarted with the new one.
    options.ignoreAuthErrorAbort = true;
    // And from the first connection on: a process started while its servers (or some of them) are down waits for
    // them, going round the list, instead of exiting; without it nats.js also drops every server that refused the
    // first attempt from its list for good.
    options.waitOnFirstConnect = true;
  }
  if (config.natsUser) {
    options.user = config.natsUser;
    options.pass = config.natsPassword;
    // nats.js's own inboxes (requests, JetStream API answers, KV watches) inside the user's `_INBOX.<user>.>`,
    // the only inboxes its permissions let it subscribe to.
    options.inboxPrefix = `_INBOX.${config.natsUser}`;
  }
  if (config.natsTlsCert || config.natsTlsKey || config.natsTlsCa) {
    options.tls = {
      ...(config.natsTlsCa ? { caFile: config.natsTlsCa } : {}),
      ...(config.natsTlsCert ? { certFile: config.natsTlsCert } : {}),
      ...(config.natsTlsKey ? { keyFile: config.natsTlsKey } : {}),
    };
  } else if (servers.some((u) => u.startsWith('tls://'))) {
    options.tls = {}; // TLS with the system's CAs; refused by a server that offers none
  }
  return options;
}

/** Connects to NATS with this process's credentials and TLS settings; reconnects forever once connected. */
export function connectNats(config: NatsSettings, name: string, opts: NatsConnectOptions = {}): Promise<NatsConnection> {
  return connect(natsOptions(config, name, opts));
}

/**
 * Logs what the server tells this connection asynchronously: refused operations (a permission violation names
 * the subject and whether it was a publish or a subscription), disconnects and reconnects. Without it a refused
 * publish would go unnoticed: NATS reports it on the connection, not to the publisher.
 */
export function logNatsStatus(nc: NatsConnection, log: Log): void {
  void (async () => {
    for await (const s of nc.status()) {
      const ctx = (s as { permissionContext?: { operation: string; subject: string } }).permissionContext;
      if (s.type === 'error') log.error('NATS refused an operation', { error: String(s.data), ...(ctx ? { operation: ctx.operation, subject: ctx.subject } : {}) });
      else if (s.type === 'disconnect') log.warn('NATS disconnected', { server: String(s.data) });
      else if (s.type === 'reconnect') log.info('NATS reconnected', { server: String(s.data) });
    }
  })().catch(() => {});
}

type RedisSettings = Pick<Config, 'redisUrl' | 'redisUser' | 'redisPassword' | 'redisTlsCa' | 'redisTlsCert' | 'redisTlsKey'> &
  Partial<Pick<Config, 'redisSentinels' | 'redisMasterName' | 'redisSentinelUser' | 'redisSentinelPassword'>>;

/**
 * Behind Sentinels: how long ending a connection to a primary that was failed over may wait for the server to close
 * it before it is dropped. ioredis waits 2 s by default (`disconnectTimeout`), and a paused primary never closes: on
 * +switch-master the client would reach the new primary 2 s after the Sentinels named it. A live server closes at
 * once, and what was sent unanswered goes out again over the new connection either way.
 */
export const SENTINEL_SWITCH_DISCONNECT_MS = 100;
/**
 * Behind Sentinels: the longest wait between two attempts to reach the primary after the connection was lost. Each
 * attempt asks the Sentinels who the primary is, so a connection whose primary died reaches the promoted replica at
 * most this long after the Sentinels name it (ioredis's default grows to 2 s, and +switch-master cannot cut a wait
 * that is already running short: the connection it would end is gone). Cheap: one Sentinel question and one refused
 * connection per attempt, logged once.
 */
export const SENTINEL_RETRY_MAX_MS = 200;

/** `host:port,...` as ioredis's sentinel list. */
export function sentinelList(sentinels: string): { host: string; port: number }[] {
  return sentinels
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((hp) => {
      const at = hp.lastIndexOf(':');
      return { host: hp.slice(0, at), port: Number(hp.slice(at + 1)) };
    });
}

function readPem(config: RedisSettings, key: 'redisTlsCa' | 'redisTlsCert' | 'redisTlsKey'): Buffer | undefined {
  const path = config[key];
  if (!path) return undefined;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new ConfigError(`setting ${key} (${envName(key)}): cannot read ${path} (${(err as Error).message})`);
  }
}

/** ioredis options for these settings (exported for tests). */
export function redisOptions(config: RedisSettings, extra: RedisOptions = {}): RedisOptions {
  const options: RedisOptions = {
    // null: a command waits through a Redis restart instead of failing a batch commit.
    maxRetriesPerRequest: null,
    // CLIENT SETINFO does not exist before Redis 7.2, and the worker's ACL user is not allowed CLIENT at all.
    disableClientInfo: true,
    ...extra,
  };
  if (config.redisUser) options.username = config.redisUser;
  if (config.redisPassword) options.password = config.redisPassword;
  const [ca, cert, key] = (['redisTlsCa', 'redisTlsCert', 'redisTlsKey'] as const).map((k) => readPem(config, k));
  if (ca || cert || key) options.tls = { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) };
  if (config.redisSentinels) {
    // The Sentinels name the primary (`SENTINEL get-master-addr-by-name`), asked again on every reconnect; ioredis
    // checks the role of what it reached (INFO) and asks again if it is not a primary.
    options.sentinels = sentinelList(config.redisSentinels);
    options.name = config.redisMasterName ?? 'shop';
    if (config.redisSentinelUser) options.sentinelUsername = config.redisSentinelUser;
    if (config.redisSentinelPassword) options.sentinelPassword = config.redisSentinelPassword;
    // A failover the client would not notice by itself: a primary demoted to replica (SENTINEL FAILOVER) keeps its
    // connections, and would refuse every commit with READONLY; a paused (or cut-off) one keeps them open and answers
    // nothing. connectRedis follows the Sentinels' +switch-master (followSwitchMaster): the client drops its
    // connection (within SENTINEL_SWITCH_DISCONNECT_MS) and reconnects to the new primary as soon as they announce
    // one; READONLY does the same for what slipped through. The command that met READONLY fails (a batch then
    // restarts from Redis): it was not applied. A command left unanswered on the old connection goes out again on the
    // new one, and the commit path counts it for nothing (store.ts: a lost connection between a script and its WAIT
    // fails the batch, and the commit script refuses a batch already written by its count of commits). A connection
    // that was lost before the switch (a dead primary) retries within SENTINEL_RETRY_MAX_MS, asking the Sentinels
    // each time.
    options.disconnectTimeout = SENTINEL_SWITCH_DISCONNECT_MS;
    options.reconnectOnError = (err) => (err.message.startsWith('READONLY') ? 1 : false);
    options.retryStrategy ??= (attempts) => Math.min(attempts * 50, SENTINEL_RETRY_MAX_MS);
    if (options.tls) options.enableTLSForSentinelMode = true;
  }
  return options;
}

/**
 * Connects to Redis with the worker's credentials and TLS settings (`rediss://` turns TLS on by itself), through
 * the Sentinels when `redisSentinels` is set. Resolves once the connection is ready: with ioredis's default retry
 * strategy it waits through a Redis (or every Sentinel) being down at start, retrying, instead of failing; with a
 * `retryStrategy` in `extra` that gives up, it rejects with the last error. Errors are logged to `log`.
 */
export async function connectRedis(config: RedisSettings, extra: RedisOptions = {}, log?: Log): Promise<Redis> {
  // Loaded here, not with the module: shopctl and gateways never talk to Redis.
  const { Redis } = await import('ioredis');
  const options = redisOptions(config, { lazyConnect: true, ...extra });
  const redis = options.sentinels ? new Redis(options) : new Redis(config.redisUrl, options);
  let lastError: Error | undefined;
  let lastLogged = '';
  redis.on('error', (err: Error) => {
    lastError = err;
    // One line per distinct error, not one per retry.
    if (log && err.message !== lastLogged) log.warn('Redis connection failed; retrying', { error: err.message });
    lastLogged = err.message;
  });
  redis.on('ready', () => (lastLogged = ''));
  if (options.sentinels) followSwitchMaster(Redis, redis, config, options, log);
  await new Promise<void>((resolve, reject) => {
    redis.once('ready', resolve);
    redis.once('end', () => reject(lastError ?? new Error('the Redis connection ended before it was ready')));
    redis.connect().catch(() => {}); // a failed attempt is retried by ioredis (retryStrategy); `end` means it gave up
  });
  return redis;
}

/**
 * How long after a Sentinel announced a new primary a connection that comes up elsewhere is still dropped (it asked a
 * Sentinel that had not heard yet). Far below the time the Sentinels leave between two failovers of one primary
 * (twice their failover timeout, 20 s in the cluster profile), so it never drops a connection to a later primary.
 */
const SWITCH_FRESH_MS = 5000;

/** The same host: `announced` (an address or a name, as the Sentinels announce it) is, or resolves to, `address`. */
async function sameHost(address: string | undefined, announced: string): Promise<boolean> {
  if (address === undefined) return false;
  const plain = (a: string) => a.replace(/^::ffff:/, '');
  if (isIP(announced)) return plain(address) === plain(announced);
  const found = await lookup(announced, { all: true }).catch(() => []);
  return found.some((f) => plain(f.address) === plain(address));
}

/**
 * Behind Sentinels: ends the client's connection as soon as a Sentinel announces a new primary of its master
 * (+switch-master, subscribed to on every Sentinel) that the connection is not to; ioredis then reconnects, asking the
 * Sentinels. This replaces ioredis's own `failoverDetector` (5.9), which the Redis fault test caught three ways: it
 * ends the connection on any +switch-master, of any master, and so again on the leader's second announcement at the
 * failover's end (a fresh connection to the new primary dropped a second later, failing the batches in flight); and
 * when it ends a reconnect that is still asking the Sentinels, ioredis gives up for good (status `end`, every command
 * "Connection is closed."): a worker's partitions failed every batch until the test's deadline. Here the connection
 * is ended only while it is up (`connect`, `ready`: nothing is asking the Sentinels then); a reconnect in progress
 * asks them anyway, and one that reaches the old primary within SWITCH_FRESH_MS of the announcement is ended then.
 */
function followSwitchMaster(RedisClient: new (o: RedisOptions) => Redis, redis: Redis, config: RedisSettings, options: RedisOptions, log?: Log): void {
  const masterName = options.name!;
  let announced: { host: string; port: number; at: number } | undefined;
  const check = async (why: string) => {
    if (!announced || performance.now() - announced.at > SWITCH_FRESH_MS) return;
    if (redis.status !== 'ready' && redis.status !== 'connect') return;
    const stream = redis.stream as Socket;
    const { host, port } = announced;
    if (stream.remotePort === port && (await sameHost(stream.remoteAddress, host))) return;
    if (redis.stream !== stream || (redis.status !== 'ready' && redis.status !== 'connect')) return; // moved meanwhile
    log?.info('the Sentinels announced a new Redis primary: reconnecting to it', { primary: `${host}:${port}`, why });
    redis.disconnect(true);
  };
  const watchers = (options.sentinels ?? []).map(({ host, port }) => {
    const watcher = new RedisClient({
      host: host ?? '127.0.0.1',
      port: port ?? 26379,
      ...(config.redisSentinelUser ? { username: config.redisSentinelUser } : {}),
      ...(config.redisSentinelPassword ? { password: config.redisSentinelPassword } : {}),
      enableReadyCheck: false,
      maxRetriesPerRequest: null,
      disableClientInfo: true,
      // A Sentinel that is down: the others announce the switch; this one is tried again, subscribed again on return.
      retryStrategy: (attempts) => Math.min(attempts * 100, 1000),
    });
    watcher.on('error', () => {});
    watcher.subscribe('+switch-master').catch(() => {});
    watcher.on('message', (_channel: string, text: string) => {
      // `<master name> <old host> <old port> <new host> <new port>`
      const [name, , , newHost, newPort] = text.split(' ');
      if (name !== masterName || !newHost || !newPort) return;
      announced = { host: newHost, port: Number(newPort), at: performance.now() };
      void check('+switch-master');
    });
    return watcher;
  });
  redis.on('connect', () => void check('connected to another server after +switch-master'));
  redis.once('end', () => watchers.forEach((w) => w.disconnect()));
}
