#!/usr/bin/env node
/**
 * Least privilege: what each role may do on NATS and Redis. The single source of the permission lists; the local
 * stack's generated nats-server config (src/stack/secrets.ts), the test servers and the committed `nats/auth.conf` for
 * deployments all come from here.
 *
 * Subjects, with P = `<streamPrefix>.` and S = `<streamPrefix>_` (both empty without a prefix), as protocol.ts
 * names them:
 *   P<kind>.cmd.<n>          commands, captured by the streams S STOCK|PAYMENT|ORDER (JetStream)
 *   P<kind>.get.<n>          reads (core request/reply, answered by the partition's owner)
 *   P_reply.<user>.<process>.<token>   replies to one process of one NATS user (transport/mux.ts)
 *   P_saga.<worker>          saga messages between workers (core NATS)
 *   Pdeadletter.<kind>.<n>   dead letters, stream S DEADLETTER
 *   P_shop.admin             admin requests (shopctl -> the leading controller in a worker)
 *   P_shop.resend            a gateway that reconnected asks the workers for the answers it may have missed
 *   P_shop.pulse.<worker>    a worker's heartbeat on core NATS: liveness without a JetStream leader (membership.ts);
 *                            gateways hear which partitions it runs (transport/owners.ts)
 *   P_shop.pulse.<worker>.probe   answered by that worker while its process lives (the leader asks when pulses are late)
 *   $KV.<bucket>.>           the buckets S SHOP_WORKERS, S SHOP_PLACEMENT, S SHOP_CONTROL (streams KV_<bucket>)
 *   $JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.S <kind>   a command stream's new leader (transport/stream-leaders.ts)
 *
 * `node dist/src/auth.js` prints `nats/auth.conf` (`npm run auth-conf` rewrites it); a test fails when the
 * committed file differs from what this module generates.
 */
import { createHash } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { KINDS } from './config.js';

export const ROLES = ['worker', 'gateway', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export interface Permissions {
  publish: string[];
  subscribe: string[];
}

/** A NATS user of the authorization block: its role decides its permissions. */
export interface NatsUser {
  user: string;
  role: Role;
  /** The password itself, or the name of an environment variable nats-server reads it from (`$NAME` in its config). */
  password: { value: string } | { env: string };
}

/** Stream prefix meaning "any prefix" (one subject token): test servers shared by many random prefixes. */
export const ANY_PREFIX = '*';

/** KV buckets of dynamic placement (placement/membership.ts). */
const BUCKETS = ['SHOP_WORKERS', 'SHOP_PLACEMENT', 'SHOP_CONTROL'] as const;
/** Streams of the commands, one per kind. */
const COMMAND_STREAMS = KINDS.map((k) => k.toUpperCase());
/** The stream of dead letters. */
const DEADLETTER_STREAM = 'DEADLETTER';

/**
 * Subject and stream-name builders for a prefix. With ANY_PREFIX a stream or bucket name (one subject token)
 * becomes `*`: a wildcard matches whole tokens only.
 */
function naming(prefix: string) {
  const any = prefix === ANY_PREFIX;
  const p = prefix ? `${prefix}.` : '';
  const stream = (base: string) => (any ? '*' : prefix ? `${prefix}_${base}` : base);
  return {
    subject: (rest: string) => `${p}${rest}`,
    stream,
    /** The stream of a KV bucket. */
    kvStream: (bucket: string) => (any ? '*' : `KV_${stream(bucket)}`),
  };
}

const unique = (list: string[]) => [...new Set(list)];

/** JetStream's advisories of a command stream's new leader (transport/stream-leaders.ts leaderElectedSubject; spelled here, as this module imports nothing of the app's layers). */
const leaderNews = (n: ReturnType<typeof naming>) => COMMAND_STREAMS.map((s) => `$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.${n.stream(s)}`);

/**
 * What one NATS user of `role` may publish and subscribe to. `user` is its own name: it may hear replies and
 * nats.js inboxes of its own namespace only (`P_reply.<user>.>`, `_INBOX.<user>.>`).
 */
export function permissions(role: Role, { prefix, user }: { prefix: string; user: string }): Permissions {
  const n = naming(prefix);
  const ownReplies = n.subject(`_reply.${user}.>`);
  const ownInbox = `_INBOX.${user}.>`;
  switch (role) {
    case 'gateway':
      return {
        // Commands (stored by JetStream, acknowledged to the reply subject), reads, and after a reconnect the request
        // to send its answers again; the layout record. Nothing else: no other JetStream API (streams are created by
        // workers), no other KV, no replies, no admin.
        publish: [
          ...KINDS.flatMap((k) => [n.subject(`${k}.cmd.*`), n.subject(`${k}.get.*`)]),
          n.subject('_shop.resend'),
          // The cluster's layout (transport/layout.ts), read at start with a direct get of its one subject.
          `$JS.API.DIRECT.GET.${n.kvStream('SHOP_CONTROL')}.$KV.${n.stream('SHOP_CONTROL')}.layout`,
        ],
        // Its own replies: command outcomes, stream acknowledgements, read answers (transport/mux.ts); the layout's
        // answer; news of a command stream's new leader (transport/stream-leaders.ts); the workers' pulses, which say
        // who runs which partition (transport/owners.ts: a bundle per owner).
        subscribe: [ownReplies, ownInbox, ...leaderNews(n), n.subject('_shop.pulse.*')],
      };
    case 'worker': {
      const streams = [...COMMAND_STREAMS, DEADLETTER_STREAM].map(n.stream);
      const commandStreams = COMMAND_STREAMS.map(n.stream);
      const kvStreams = BUCKETS.map(n.kvStream);
      const api = (what: string, names: string[]) => names.map((s) => `$JS.API.${what}.${s}`);
      return {
        publish: unique([
          // Answers to gateways (after each commit), saga messages and dead letters; the partitions' trim marks.
          n.subject('_reply.>'),
          ...KINDS.map((k) => n.subject(`${k}.mark.*`)),
          n.subject('_saga.>'),
          n.subject('deadletter.>'),
          // Its pulses (membership.ts: the heartbeat on core NATS), and the leader's probes of a worker whose pulses are late.
          n.subject('_shop.pulse.*'),
          n.subject('_shop.pulse.*.probe'),
          // Heartbeats, placement and control (membership.ts, controller.ts): KV puts, creates and updates.
          ...BUCKETS.map((b) => `$KV.${n.stream(b)}.>`),
          // Answers to shopctl's admin requests (its nats.js inbox), and flow control of KV watches.
          '_INBOX.>',
          '$JS.FC.>',
          // The JetStream API calls the worker makes (seen in nats-server -DV traces, and read from nats.js 2.29 for
          // its recovery paths), and no others: no stream delete, no purge of buckets, nothing of other streams.
          '$JS.API.INFO', // jetstreamManager() checks JetStream is there
          ...api('STREAM.CREATE', [...streams, ...kvStreams]), // ensureStreams, and the buckets on first use
          ...api('STREAM.UPDATE', streams), // ensureStreams when a setting changed (duplicate window, size)
          ...api('STREAM.INFO', [...streams, ...kvStreams]), // opening a bucket; consumers.get() checks the stream
          ...api('STREAM.PURGE', commandStreams), // trimming applied commands every trimIntervalMs
          ...api('CONSUMER.CREATE', [...commandStreams, ...kvStreams]).map((s) => `${s}.>`), // ordered consumers, KV watches (CREATE.<stream>.<name>.<filter>)
          ...api('CONSUMER.CREATE', kvStreams), // a KV watch's consumer re-made by nats.js after its server was lost: the old form, without a name
          ...api('CONSUMER.MSG.NEXT', commandStreams).map((s) => `${s}.*`), // pulls of the ordered consumers
          ...api('CONSUMER.INFO', commandStreams).map((s) => `${s}.*`), // an ordered consumer checking itself after missed heartbeats
          ...api('CONSUMER.DELETE', commandStreams).map((s) => `${s}.*`), // an ordered consumer deleting the one it replaces; a new owner those of earlier owners
          ...api('CONSUMER.LIST', commandStreams), // a new owner finding the consumers earlier owners left (command-reader.ts dropOldConsumers)
          ...api('DIRECT.GET', kvStreams).map((s) => `${s}.>`), // kv.create() of a deleted key (the leader key) reads it first
          ...api('STREAM.MSG.GET', [...commandStreams, ...kvStreams]), // the same for a bucket made without direct get; a runner checking its consumer missed nothing
        ]),
        subscribe: [
          // Reads of the partitions it owns, saga messages, admin requests (the controller in every worker).
          ...KINDS.map((k) => n.subject(`${k}.get.*`)),
          n.subject('_saga.>'),
          n.subject('_shop.admin'),
          n.subject('_shop.resend'),
          n.subject('_shop.pulse.*'), // every worker's pulses: who is alive (and its own, for its lease)
          n.subject('_shop.pulse.*.probe'), // the leader's probe, answered while this process lives
          ...leaderNews(n), // a command stream's new leader: its partitions' consumers go again at once
          // Its own replies (stream acknowledgements of the outbox) and nats.js inboxes (JetStream API, KV, consumers).
          ownReplies,
          ownInbox,
        ],
      };
    }
    case 'admin':
      return {
        // shopctl: admin requests, and the whole JetStream API and KV (status, repairs by an operator). The NATS CLI
        // (`nats stream ls --user admin ...`) takes its replies on `_INBOX.<random>`: the admin may hear any inbox,
        // as the one user that may already read and change everything through the JetStream API.
        publish: [n.subject('_shop.admin'), '$JS.API.>', '$KV.>'],
        subscribe: ['_INBOX.>', ownReplies],
      };
  }
}

const quote = (s: string) => JSON.stringify(s);
const list = (items: string[], indent: string) => `[\n${items.map((i) => `${indent}  ${quote(i)}`).join(',\n')}\n${indent}]`;

/** The `authorization { users = [...] }` block of a nats-server config: one entry per user, with its role's permissions. */
export function natsAuthorization({ prefix, users }: { prefix: string; users: NatsUser[] }): string {
  const entries = users.map(({ user, role, password }) => {
    const p = permissions(role, { prefix, user });
    const pw = 'env' in password ? `$${password.env}` : quote(password.value);
    return [
      '    {',
      `      # role: ${role}`,
      `      user: ${quote(user)}`,
      `      password: ${pw}`,
      '      permissions: {',
      `        publish: { allow: ${list(p.publish, '        ')} }`,
      `        subscribe: { allow: ${list(p.subscribe, '        ')} }`,
      '      }',
      '    }',
    ].join('\n');
  });
  return `authorization {\n  users = [\n${entries.join(',\n')}\n  ]\n}\n`;
}

/** The users of a deployment (nats/auth.conf): one per role, passwords from nats-server's environment. */
export const DEPLOYMENT_USERS: NatsUser[] = ROLES.map((role) => ({ user: role, role, password: { env: `NATS_${role.toUpperCase()}_PASSWORD` } }));

/** The content of the committed `nats/auth.conf`. */
export function deploymentAuthConf(): string {
  return [
    '# Generated by `npm run auth-conf` (node dist/src/auth.js) from src/auth.ts: do not edit; test/integration/auth.test.ts fails',
    '# when this file differs from what src/auth.ts generates.',
    '#',
    '# NATS users of a deployment without a stream prefix, one per role. Include it in every node\'s config',
    '# (`include ./auth.conf`) and give nats-server the passwords in its environment: NATS_WORKER_PASSWORD,',
    '# NATS_GATEWAY_PASSWORD, NATS_ADMIN_PASSWORD. After changing one, `nats-server --signal reload` (or SIGHUP).',
    natsAuthorization({ prefix: '', users: DEPLOYMENT_USERS }),
  ].join('\n');
}

/**
 * What the worker's Redis user may run: the commit and acquire scripts (EVALSHA, then EVAL when Redis does not
 * have them yet) and the hash commands they and the store call (HSCAN: a partition's tables are loaded in chunks),
 * WAIT (a commit counts once the replicas have it, with `redisWaitReplicas`), INFO for ioredis's ready check (and
 * its role check behind Sentinels), PING, and QUIT. Nothing that reads or changes the server (CONFIG, FLUSHALL,
 * KEYS, DEBUG, SHUTDOWN, ...).
 */
export const REDIS_WORKER_COMMANDS = ['evalsha', 'eval', 'hget', 'hmget', 'hgetall', 'hscan', 'hset', 'hsetnx', 'hdel', 'hincrby', 'wait', 'info', 'ping', 'quit'] as const;

/** What a replica's user may run on its primary: the replication handshake and stream, nothing else (Redis's ACL guide). */
export const REDIS_REPLICA_COMMANDS = ['psync', 'replconf', 'ping'] as const;

/**
 * What a Sentinel's user may run on the Redis servers it watches (Redis's ACL guide for Sentinel): INFO and ROLE
 * to watch, PUBLISH/SUBSCRIBE on `__sentinel__:hello` to find the other Sentinels, and for a failover REPLICAOF
 * (sent as SLAVEOF), CONFIG REWRITE, CLIENT KILL and SCRIPT KILL inside MULTI/EXEC. No keys.
 */
export const REDIS_SENTINEL_COMMANDS = ['multi', 'exec', 'slaveof', 'replicaof', 'ping', 'info', 'role', 'publish', 'subscribe', 'config|rewrite', 'client|setname', 'client|kill', 'script|kill'] as const;

export interface RedisLogin {
  user: string;
  password: string;
}

const sha256 = (password: string) => createHash('sha256').update(password).digest('hex');

/**
 * A Redis ACL file: `user` with `password` (stored as its SHA-256, so the file holds no password), keys under
 * `keyPrefix` only, REDIS_WORKER_COMMANDS only; the `default` user off (nobody can log in as it) but with every right
 * (DEFAULT_USER_ACL: the restart from the AOF needs them). With `replica` and
 * `sentinel` (a primary with replicas watched by Sentinels): the replicas' and the Sentinels' users too, each with
 * its own short list and no keys. Every server of such a group gets the same file: any of them may be the primary.
 */
/**
 * The `default` user: off, so no client can log in as it (AUTH and HELLO refuse a disabled user, and a connection
 * that has not logged in runs nothing), yet with every command, key and channel. Redis 7.0 replays the AOF as this
 * user and checks each EXEC of the AOF against its rights (redis/redis#14541, fixed in later Redis): a commit script
 * that writes more than one key is in the AOF as MULTI/EXEC, and with `-@all` here every one of them was dropped,
 * silently, at each restart of Redis from its own files. A disabled user cannot log in with any password, which is
 * stricter than `on` with a password nobody is given.
 */
export const DEFAULT_USER_ACL = 'user default off resetkeys ~* resetchannels &* +@all';

export function redisAcl({ user, password, keyPrefix, replica, sentinel }: { user: string; password: string; keyPrefix: string; replica?: RedisLogin; sentinel?: RedisLogin }): string {
  const plus = (commands: readonly string[]) => commands.map((c) => `+${c}`).join(' ');
  return [
    DEFAULT_USER_ACL,
    `user ${user} on #${sha256(password)} resetkeys ~${keyPrefix}* resetchannels -@all ${plus(REDIS_WORKER_COMMANDS)}`,
    ...(replica ? [`user ${replica.user} on #${sha256(replica.password)} resetkeys resetchannels -@all ${plus(REDIS_REPLICA_COMMANDS)}`] : []),
    ...(sentinel ? [`user ${sentinel.user} on #${sha256(sentinel.password)} resetkeys allchannels -@all ${plus(REDIS_SENTINEL_COMMANDS)}`] : []),
    '',
  ].join('\n');
}

// `node dist/src/auth.js`: print nats/auth.conf.
if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.stdout.write(deploymentAuthConf());
}
