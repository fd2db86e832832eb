/**
 * Real nats-server and redis-server processes for integration tests: free ports, fresh temp dirs,
 * readiness by polling with a deadline, stopped in teardown (and by the reaper if the test process dies).
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { ANY_PREFIX, natsAuthorization, redisAcl, type Role } from '../../src/auth.js';
import { loadConfig, type Config } from '../../src/config.js';
import {
  abortOnExit,
  findBinary,
  NATS_STOP_SIGNAL,
  natsArgs,
  reapDirOnExit,
  redisArgs,
  spawnChild,
  stopChild,
  type Child,
} from '../../src/stack/processes.js';
import { freePort, natsAnswers, redisAnswers, waitFor } from '../../src/stack/probes.js';

export { pidAlive } from '../../src/stack/processes.js';
export { freePort, waitFor } from '../../src/stack/probes.js';

/** How long a test server may take to answer after it was spawned. */
const READY_DEADLINE_MS = 10_000;
/** How long a test server may take to exit after SIGTERM before it is killed. */
const STOP_GRACE_MS = 5_000;
/**
 * Stream size limit in tests. JetStream reserves each stream's max_bytes against the server's store
 * limit (75% of the free disk by default), so with the 4 GiB default a test server holds only a few
 * configs' streams before it refuses new ones with "insufficient storage resources available".
 */
const TEST_STREAM_MAX_BYTES = 64 * 1024 * 1024;

export interface TestServer {
  /** nats://127.0.0.1:PORT or redis://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** The temp dir holding the server's data; kept across restart(), removed by stop(). */
  readonly storeDir: string;
  /** The running process's pid, undefined while it is down. */
  readonly pid: number | undefined;
  /** SIGTERM (SIGKILL after a grace period), then removes the store dir. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL now, without waiting: a crash. Follow with restart() to bring it back. */
  kill9(): void;
  /** SIGSTOP: the process freezes, its connections stay open (a hung server). resume() (SIGCONT) lets it go on. */
  pause(): void;
  resume(): void;
  /** Stops the server (if it is running) and starts it again on the same port and store dir; resolves once it answers. */
  restart(): Promise<void>;
}

export interface ServerKind {
  what: string;
  stopSignal: NodeJS.Signals;
  scheme: string;
  binary: string;
  /** The address it listens on and is reached at (default 127.0.0.1). */
  host?: string;
  /** How the command is run: e.g. inside a network namespace (`ip netns exec <ns> <command> <args>`, which execs it: same pid). */
  wrap?(command: string, args: string[]): { command: string; args: string[] };
  /** Writes what the server reads at start (its config with users and passwords) into its fresh dir. */
  setup?(storeDir: string): Promise<void>;
  /** Its arguments, asked again at every (re)start: they may depend on the moment (which Redis is primary now). */
  args(port: number, storeDir: string): string[] | Promise<string[]>;
  answers(port: number): Promise<boolean>;
}

/** A server of `kind` on `port` (default: a free one) with a fresh store dir; stopped in `t`'s teardown. */
export async function startServer(kind: ServerKind, t?: Test, fixedPort?: number): Promise<TestServer> {
  const command = findBinary(kind.binary);
  const port = fixedPort ?? (await freePort());
  const storeDir = await mkdtemp(join(tmpdir(), `shop-${kind.scheme}-`));
  reapDirOnExit(storeDir);
  await kind.setup?.(storeDir);
  let child: Child | undefined;
  let stopped = false;

  const launch = async () => {
    const what = `${kind.what} on port ${port}`;
    const args = await kind.args(port, storeDir);
    const run = kind.wrap ? kind.wrap(command, args) : { command, args };
    const c = spawnChild(kind.binary, run.command, { args: run.args });
    child = c;
    const exited = abortOnExit(c, what);
    try {
      await waitFor(() => kind.answers(port), { deadlineMs: READY_DEADLINE_MS, what: `${what} to answer`, signal: exited.signal });
    } catch (err) {
      await stopChild(c, 0);
      const tail = c.tail().slice(-15).join('\n');
      if (err instanceof Error && !err.message.includes('last output') && tail) err.message += `; its last output:\n${tail}`;
      throw err;
    }
  };

  const halt = async () => {
    // A paused server would sit out the whole grace period.
    child?.process.kill('SIGCONT');
    if (child) await stopChild(child, STOP_GRACE_MS, kind.stopSignal);
    child = undefined;
  };

  const server: TestServer = {
    url: `${kind.scheme}://${kind.host ?? '127.0.0.1'}:${port}`,
    port,
    storeDir,
    get pid() {
      return child && !child.exit() ? child.pid : undefined;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await halt();
      await rm(storeDir, { recursive: true, force: true, maxRetries: 5 });
      reapDirOnExit(storeDir, false);
    },
    kill9() {
      child?.process.kill('SIGKILL');
    },
    pause() {
      child?.process.kill('SIGSTOP');
    },
    resume() {
      child?.process.kill('SIGCONT');
    },
    async restart() {
      if (stopped) throw new Error(`${kind.what} on port ${port} was stopped for good; start a new one`);
      await halt();
      await launch();
    },
  };

  try {
    await launch();
  } catch (err) {
    await server.stop();
    throw err;
  }
  t?.teardown(() => server.stop());
  return server;
}

const NATS: ServerKind = {
  what: 'nats-server',
  stopSignal: NATS_STOP_SIGNAL,
  scheme: 'nats',
  binary: 'nats-server',
  args: (port, storeDir) => natsArgs({ port, storeDir }),
  answers: (port) => natsAnswers(port),
};

/** The AOF fsync policy the shop runs its Redis with by default: the test servers run it too. */
export const DEFAULT_APPENDFSYNC = loadConfig({}).redisAppendfsync;

const REDIS: ServerKind = {
  what: 'redis-server',
  stopSignal: 'SIGTERM',
  scheme: 'redis',
  binary: 'redis-server',
  args: (port, dir) => redisArgs({ port, dir, appendfsync: DEFAULT_APPENDFSYNC }),
  answers: (port) => redisAnswers(port),
};

export interface Login {
  user: string;
  password: string;
}

/** The users of a test server with auth: one per role, and a second gateway (each gateway process has its own user). */
export interface TestUsers {
  worker: Login;
  gateway: Login;
  gateway2: Login;
  admin: Login;
  /** The Redis ACL user of the workers. */
  redis: Login;
}

const TEST_USER_ROLES: [keyof Omit<TestUsers, 'redis'>, string, Role][] = [
  ['worker', 'worker', 'worker'],
  ['gateway', 'gateway-0', 'gateway'],
  ['gateway2', 'gateway-1', 'gateway'],
  ['admin', 'admin', 'admin'],
];

/** Fresh random passwords for every test user. */
export function testUsers(): TestUsers {
  const login = (user: string) => ({ user, password: randomBytes(12).toString('base64url') });
  const users = Object.fromEntries(TEST_USER_ROLES.map(([key, user]) => [key, login(user)])) as Omit<TestUsers, 'redis'>;
  return { ...users, redis: login('worker') };
}

/**
 * With `users`: the authorization block of src/auth.ts for any stream prefix (tests share a server between random
 * prefixes), in a config file in the store dir.
 */
/** The authorization block of src/auth.ts for the test users, for stream prefix `prefix` (default: any). */
export function testNatsAuthorization(users: TestUsers, prefix = ANY_PREFIX): string {
  return natsAuthorization({ prefix, users: TEST_USER_ROLES.map(([key, , role]) => ({ user: users[key].user, role, password: { value: users[key].password } })) });
}

function natsKind(users?: TestUsers, prefix = ANY_PREFIX): ServerKind {
  if (!users) return NATS;
  const config = (dir: string) => join(dir, 'auth.conf');
  return {
    ...NATS,
    setup: (dir) => writeFile(config(dir), testNatsAuthorization(users, prefix), { mode: 0o600 }),
    args: (port, storeDir) => natsArgs({ port, storeDir, configFile: config(storeDir) }),
  };
}

/**
 * With `users`: the default user off, the worker's ACL user of src/auth.ts (any key prefix). `appendfsync`: the AOF
 * fsync policy (default: the shop's).
 */
function redisKind(users?: TestUsers, appendfsync: Config['redisAppendfsync'] = DEFAULT_APPENDFSYNC): ServerKind {
  if (!users && appendfsync === DEFAULT_APPENDFSYNC) return REDIS;
  const acl = (dir: string) => join(dir, 'users.acl');
  return {
    ...REDIS,
    args: (port, dir) => redisArgs({ port, dir, appendfsync, aclFile: users ? acl(dir) : undefined }),
    ...(users && {
      setup: (dir: string) => writeFile(acl(dir), redisAcl({ user: users.redis.user, password: users.redis.password, keyPrefix: '' }), { mode: 0o600 }),
      answers: (port: number) => redisAnswers(port, { auth: { user: users.redis.user, password: users.redis.password } }),
    }),
  };
}

/**
 * A nats-server with JetStream on a free port and a fresh store dir; stopped in `t`'s teardown. With `users`, it
 * requires them, with their permissions for stream prefix `prefix` (default: any prefix).
 */
export function startNats(t?: Test, users?: TestUsers, prefix?: string): Promise<TestServer> {
  return startServer(natsKind(users, prefix), t);
}

/**
 * A redis-server with AOF (`appendfsync`: the shop's default fsync policy unless given) on a free port and a fresh
 * dir; restart() keeps the data. Stopped in `t`'s teardown. With `users`, only users.redis may log in.
 */
export function startRedis(t?: Test, users?: TestUsers, appendfsync?: Config['redisAppendfsync']): Promise<TestServer> {
  return startServer(redisKind(users, appendfsync), t);
}

/** Both servers, started in parallel. */
export async function startServers(t?: Test): Promise<{ nats: TestServer; redis: TestServer }>;
/**
 * Both servers with the authorization of src/auth.ts: nobody gets in without one of `users`' passwords. The NATS
 * permissions are for any stream prefix (each test config has a random one), or for `prefix` only.
 */
export async function startServers(t: Test | undefined, opts: { auth: true; prefix?: string }): Promise<{ nats: TestServer; redis: TestServer; users: TestUsers }>;
export async function startServers(t?: Test, opts: { auth?: boolean; prefix?: string } = {}): Promise<{ nats: TestServer; redis: TestServer; users?: TestUsers }> {
  const users = opts.auth ? testUsers() : undefined;
  const [nats, redis] = await Promise.allSettled([startNats(t, users, opts.prefix), startRedis(t, users)]);
  if (nats.status === 'fulfilled' && redis.status === 'fulfilled') return { nats: nats.value, redis: redis.value, users };
  // Without a `t`, nothing else would stop the one that did start.
  if (!t) await Promise.all([nats, redis].map((r) => (r.status === 'fulfilled' ? r.value.stop() : undefined)));
  throw nats.status === 'rejected' ? nats.reason : (redis as PromiseRejectedResult).reason;
}

/** A random name token, safe in stream names, subjects and Redis keys. */
export function randomToken(): string {
  return 't' + randomBytes(5).toString('hex');
}

/**
 * A Config for the test profile pointing at these servers, with a random stream prefix and Redis key
 * prefix so tests never see each other's data, and small streams (TEST_STREAM_MAX_BYTES) so many configs fit
 * on one server. httpPort 0 lets the OS pick; pass { httpPort: await freePort() } when a test must know the
 * port in advance.
 */
export function testConfig(nats: { url: string; port: number }, redis: { url: string; port: number }, overrides: Partial<Record<keyof Config, unknown>> = {}): Readonly<Config> {
  const token = randomToken();
  return loadConfig(
    { SHOP_PROFILE: 'test' },
    {
      natsUrl: nats.url,
      redisUrl: redis.url,
      natsPort: nats.port,
      redisPort: redis.port,
      startServers: false,
      streamPrefix: token,
      redisPrefix: `${token}:`,
      httpPort: 0,
      streamMaxBytes: TEST_STREAM_MAX_BYTES,
      ...overrides,
    },
  );
}
