/**
 * The local stack's credentials (`npm start`, `bench --start`): random passwords generated on first start under
 * `<dataDir>/secrets/` (a directory only its owner may enter, files only its owner may read), reused by later
 * starts; and from them, on every start, the nats-server config with its authorization block and the Redis ACL
 * file. Children get their user and password in SHOP_* variables (never on the command line: argv is
 * world-readable in /proc); `shopctl` reads the admin password from here.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { natsAuthorization, redisAcl, type NatsUser, type RedisLogin } from '../auth.js';
import { ConfigError, type Config } from '../config.js';
import { natsClusterBlock, portsFrom } from './topology.js';

/** Bytes of randomness per password (base64url: 32 characters). */
const PASSWORD_BYTES = 24;
/** The Redis ACL user of the workers. */
export const REDIS_WORKER_USER = 'worker';
/** The Redis ACL user replicas log in to their primary with. */
export const REDIS_REPLICA_USER = 'replica';
/** The Redis ACL user the Sentinels log in to the Redis servers with. */
export const REDIS_SENTINEL_USER = 'sentinel';

/**
 * Passwords by NATS user (`worker`, `admin`, `gateway-0`, ...), and the Redis worker's. The content of
 * credentials.json. The rest serve a local cluster (natsNodes > 1, redisReplicas, sentinelNodes): generated on
 * every first start all the same, used only by the servers that need them.
 */
export interface Credentials {
  nats: Record<string, string>;
  redis: RedisLogin;
  /** The replicas' login into their primary (masteruser, masterauth). */
  redisReplica: RedisLogin;
  /** The Sentinels' login into the Redis servers (sentinel auth-user, auth-pass). */
  redisSentinel: RedisLogin;
  /** The Sentinels' own password (requirepass, sentinel-pass); the workers give it as redisSentinelPassword. */
  sentinel: string;
  /** The password of the NATS cluster's routes: what a nats-server must know to join the cluster. */
  natsRoute: string;
}

export interface SecretPaths {
  dir: string;
  credentials: string;
  /** The config of the one nats-server (natsNodes 1). */
  natsConfig: string;
  /** The config of nats-server node i of a cluster. */
  natsNodeConfig(i: number): string;
  redisAcl: string;
  /** The config of Redis server i of a replicated group (with masterauth). */
  redisNodeConfig(i: number): string;
  /** The config of Sentinel i (with its password and auth-pass); Sentinel rewrites it. */
  sentinelConfig(i: number): string;
}

export interface LocalSecrets {
  paths: SecretPaths;
  credentials: Credentials;
}

export function secretPaths(config: Pick<Config, 'dataDir'>): SecretPaths {
  const dir = join(resolve(config.dataDir), 'secrets');
  return {
    dir,
    credentials: join(dir, 'credentials.json'),
    natsConfig: join(dir, 'nats.conf'),
    natsNodeConfig: (i) => join(dir, `nats-${i}.conf`),
    redisAcl: join(dir, 'redis.acl'),
    redisNodeConfig: (i) => join(dir, `redis-${i}.conf`),
    sentinelConfig: (i) => join(dir, `sentinel-${i}.conf`),
  };
}

/** The NATS user of the local stack's gateway i: each gateway process its own, so it hears only its own replies. */
export const gatewayUser = (i: number) => `gateway-${i}`;

/** The local stack's NATS users: one for the workers, one per gateway process, one for the admin (shopctl). */
export function localNatsUsers(config: Pick<Config, 'gatewayProcesses'>, credentials: Credentials): NatsUser[] {
  const users: NatsUser[] = [{ user: 'worker', role: 'worker', password: { value: credentials.nats.worker! } }];
  for (let i = 0; i < config.gatewayProcesses; i++) users.push({ user: gatewayUser(i), role: 'gateway', password: { value: credentials.nats[gatewayUser(i)]! } });
  users.push({ user: 'admin', role: 'admin', password: { value: credentials.nats.admin! } });
  return users;
}

const newPassword = () => randomBytes(PASSWORD_BYTES).toString('base64url');

/** `existing` with a fresh password for every user it lacks (pure but for the randomness). */
export function completeCredentials(config: Pick<Config, 'gatewayProcesses'>, existing?: Partial<Credentials>): Credentials {
  const nats = { ...(existing?.nats ?? {}) };
  for (const user of ['worker', 'admin', ...Array.from({ length: config.gatewayProcesses }, (_, i) => gatewayUser(i))]) nats[user] ??= newPassword();
  const login = (have: RedisLogin | undefined, user: string) => (have?.password ? have : { user, password: newPassword() });
  return {
    nats,
    redis: login(existing?.redis, REDIS_WORKER_USER),
    redisReplica: login(existing?.redisReplica, REDIS_REPLICA_USER),
    redisSentinel: login(existing?.redisSentinel, REDIS_SENTINEL_USER),
    sentinel: existing?.sentinel || newPassword(),
    natsRoute: existing?.natsRoute || newPassword(),
  };
}

/** Writes a file only its owner can read, atomically (a reader never sees half of it). */
export function writePrivate(path: string, content: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

function readCredentials(path: string): Credentials | undefined {
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Credentials;
  } catch (err) {
    throw new ConfigError(`cannot read ${path} (${(err as Error).message}); fix it, or delete it (while the stack is stopped) for new credentials`);
  }
}

type SecretsConfig = Pick<Config, 'dataDir' | 'gatewayProcesses' | 'streamPrefix' | 'redisPrefix'> & Partial<Pick<Config, 'natsNodes' | 'natsClusterPort' | 'redisReplicas'>>;

/**
 * Creates `<dataDir>/secrets/` (0700) and the credentials on first start; later starts reuse them (adding
 * passwords for users that did not exist yet, e.g. more gateways). Writes, every start, the nats-server config
 * (`natsBaseConfig`, i.e. nats/local.conf, plus the authorization block; with natsNodes > 1 one per node, with the
 * cluster's routes) and the Redis ACL file (with redisReplicas, also the replicas' and the Sentinels' users), all
 * 0600. The configs of a replicated group's Redis servers and Sentinels are written when each starts.
 */
export function ensureLocalSecrets(config: SecretsConfig, natsBaseConfig: string): LocalSecrets {
  const paths = secretPaths(config);
  mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
  if ((statSync(paths.dir).mode & 0o777) !== 0o700) chmodSync(paths.dir, 0o700);
  // Kept out of git wherever dataDir is, not only under the ignored ./data/.
  writeFileSync(join(paths.dir, '.gitignore'), '*\n');
  const stored = readCredentials(paths.credentials);
  const credentials = completeCredentials(config, stored);
  if (JSON.stringify(credentials) !== JSON.stringify(stored)) writePrivate(paths.credentials, JSON.stringify(credentials, null, 2) + '\n');
  const authorization = natsAuthorization({ prefix: config.streamPrefix, users: localNatsUsers(config, credentials) });
  const header = '# Generated by the supervisor on every start from nats/local.conf and credentials.json (src/stack/secrets.ts): do not edit.';
  const nodes = config.natsNodes ?? 1;
  if (nodes <= 1) writePrivate(paths.natsConfig, [header, natsBaseConfig, authorization].join('\n'));
  else {
    const routePorts = portsFrom(config.natsClusterPort!, nodes);
    routePorts.forEach((routePort, i) =>
      writePrivate(paths.natsNodeConfig(i), [header, natsBaseConfig, natsClusterBlock({ routePort, routePorts, routePassword: credentials.natsRoute }), authorization].join('\n')),
    );
  }
  const replicated = (config.redisReplicas ?? 0) > 0;
  writePrivate(
    paths.redisAcl,
    redisAcl({
      user: credentials.redis.user,
      password: credentials.redis.password,
      keyPrefix: config.redisPrefix,
      ...(replicated ? { replica: credentials.redisReplica, sentinel: credentials.redisSentinel } : {}),
    }),
  );
  return { paths, credentials };
}

/** The local stack's credentials, if it has generated some (shopctl). */
export function readLocalCredentials(config: Pick<Config, 'dataDir'>): Credentials | undefined {
  return readCredentials(secretPaths(config).credentials);
}
