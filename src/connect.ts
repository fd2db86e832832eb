/**
 * The one place that opens connections to NATS and Redis from settings: every role (main.ts), shopctl and the
 * bench use it, so credentials, TLS and reconnect behave the same everywhere.
 */
import type { Redis, RedisOptions } from 'ioredis';
import { connect, type ConnectionOptions, type NatsConnection } from 'nats';
import { readFileSync } from 'node:fs';
import { ConfigError, envName, type Config } from './config.js';
import type { Log } from './log.js';

/** The servers of `natsUrl`, a comma-separated list. */
export function natsServers(config: Pick<Config, 'natsUrl'>): string[] {
  return config.natsUrl.split(',').map((u) => u.trim()).filter(Boolean);
}

type NatsSettings = Pick<Config, 'natsUrl' | 'natsUser' | 'natsPassword' | 'natsTlsCa' | 'natsTlsCert' | 'natsTlsKey'>;

export interface NatsConnectOptions {
  /**
   * Reconnect attempts per server, -1 (the default): forever. Not 0 or 1 with several servers: nats.js 2.29 then
   * drops a second, working server from the list when the first one it tries is down.
   */
  maxReconnectAttempts?: number;
  /** How long one connection attempt may take (nats.js's default: 20 s). */
  timeoutMs?: number;
}

/** nats.js options for these settings (exported for tests). Reconnects forever unless told otherwise. */
export function natsOptions(config: NatsSettings, name: string, { maxReconnectAttempts = -1, timeoutMs }: NatsConnectOptions = {}): ConnectionOptions {
  const servers = natsServers(config);
  const options: ConnectionOptions = { servers, name, maxReconnectAttempts, ...(timeoutMs ? { timeout: timeoutMs } : {}) };
  // Never give up means also after a refused login (nats.js would close for good after two): a server reloading its
  // users, or a node of a cluster not yet reloaded, refuses for a while. A process whose password was rotated away
  // keeps trying until it is restarted with the new one.
  if (maxReconnectAttempts === -1) options.ignoreAuthErrorAbort = true;
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

type RedisSettings = Pick<Config, 'redisUrl' | 'redisUser' | 'redisPassword' | 'redisTlsCa' | 'redisTlsCert' | 'redisTlsKey'>;

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
  return options;
}

/** Connects to Redis with the worker's credentials and TLS settings (`rediss://` turns TLS on by itself). */
export async function connectRedis(config: RedisSettings, extra: RedisOptions = {}): Promise<Redis> {
  // Loaded here, not with the module: shopctl and gateways never talk to Redis.
  const { Redis } = await import('ioredis');
  const redis = new Redis(config.redisUrl, redisOptions(config, { lazyConnect: true, ...extra }));
  await redis.connect();
  return redis;
}
