/**
 * The local stack behind `npm start`: nats-server and redis-server (when config.startServers), then the
 * worker and gateway processes, each child's output prefixed with its name, crashed children restarted
 * with a doubling backoff, and on SIGINT/SIGTERM an ordered stop: gateways, workers, Sentinels, redis, nats.
 *
 * With natsNodes > 1, redisReplicas and sentinelNodes (the cluster profile, `SHOP_PROFILE=cluster npm start`) the
 * servers are the production topology on one machine: a JetStream cluster, a Redis primary with replicas, and
 * Sentinels that promote a replica when the primary dies (src/stack/topology.ts).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { systemClock, type Clock, type Timer } from '../clock.js';
import { ConfigError, envName, type Config } from '../config.js';
import { childStep, newChild, type ChildEvent, type ChildState, type RestartPolicy } from './restart.js';
import { resolveLogFormat, type Log } from '../log.js';
import { ensureLocalSecrets, gatewayUser, writePrivate, type LocalSecrets } from './secrets.js';
import {
  askFailover,
  currentPrimary,
  jetstreamClusterReady,
  liveReplicas,
  portsFrom,
  redisNodeConf,
  replicasOnline,
  SENTINEL_FAILOVER_TIMEOUT_MS,
  sentinelConf,
  sentinelQuorum,
  sentinelReady,
} from './topology.js';
import {
  abortOnExit,
  anySignal,
  describeExit,
  findBinary,
  NATS_STOP_SIGNAL,
  natsAnswers,
  natsArgs,
  pidAlive,
  portIsFree,
  redisAnswers,
  redisArgs,
  spawnChild,
  stopChild,
  tcpAccepts,
  waitFor,
  type Child,
  type Exit,
} from './processes.js';

export type Role = 'nats' | 'redis' | 'sentinel' | 'worker' | 'gateway';

/** One child process of the stack. */
export interface ChildSpec {
  /** Prefix of its output lines and name in the log: nats, redis, worker-0, gateway-1 (nats-0, redis-1, sentinel-2 in a cluster). */
  name: string;
  /** Decides the stop order (gateway, worker, sentinel, redis, nats) and whether it is a server to wait for. */
  role: Role;
  /** An absolute path, or a name looked up on PATH and in /usr/sbin. */
  command: string;
  args: string[];
  /** Set on top of the supervisor's own environment, which children inherit. */
  env: Record<string, string>;
  /** A server's port (for messages and the port check). */
  port?: number;
  /** Its pid file, named when its port is taken (a previous run's server still running?). */
  pidFile?: string;
  /**
   * Run before every start of the child (the first and each restart): writes what it reads and returns its
   * arguments, when they depend on the moment (a Redis server replicates whichever primary the Sentinels name now).
   */
  prepare?: (log: Log) => Promise<string[]>;
}

/** Stopped in this order: first what accepts requests, last what holds the data (the Sentinels before Redis, so a stop is not a failover). */
const STOP_ORDER: readonly Role[] = ['gateway', 'worker', 'sentinel', 'redis', 'nats'];
/** How long a JetStream cluster may take to elect its meta leader, and replicas and Sentinels to find each other, at start. */
const CLUSTER_READY_DEADLINE_MS = 60_000;
/** The longest pause before restarting a child that keeps crashing. */
const RESTART_BACKOFF_MAX_MS = 10_000;
/** A child that ran this long before it died starts again from config.restartBackoffMs. */
const STABLE_UPTIME_MS = 10_000;
/** How long nats-server and redis-server may take to answer (redis replays its whole AOF first). */
const SERVER_READY_DEADLINE_MS = 60_000;
/** How long the gateways may take to listen before `ready` is logged anyway, with a warning. */
const HTTP_READY_DEADLINE_MS = 30_000;
/**
 * A second SIGINT sooner than this after the first is the same Ctrl-C: the terminal sends it to the
 * whole foreground process group and npm forwards it to its child again.
 */
const SIGNAL_REPEAT_MIN_MS = 1000;

const here = dirname(fileURLToPath(import.meta.url));

/** main.js one folder up from this module: dist/src/main.js when compiled. */
const MAIN_JS = join(here, '..', 'main.js');

/** nats/local.conf at the package root, from both src/stack/ and dist/src/stack/. */
function natsConfigFile(): string {
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

/**
 * Where each server keeps its data: `nats/` and `redis/` for the one-node stack (as always), `nats-<i>/`,
 * `redis-<i>/` and `sentinel-<i>/` for a cluster's nodes; a pid file beside each.
 */
function dataPaths(config: Config) {
  const dataDir = resolve(config.dataDir);
  const node = (what: string, i: number, single: boolean) => (single ? what : `${what}-${i}`);
  const natsSingle = config.natsNodes === 1;
  const redisSingle = config.redisReplicas === 0;
  return {
    dataDir,
    nats: portsFrom(config.natsPort, config.natsNodes).map((port, i) => ({
      name: node('nats', i, natsSingle),
      port,
      dir: join(dataDir, node('nats', i, natsSingle)),
      pidFile: join(dataDir, `${node('nats', i, natsSingle)}.pid`),
    })),
    redis: portsFrom(config.redisPort, 1 + config.redisReplicas).map((port, i) => ({
      name: node('redis', i, redisSingle),
      port,
      dir: join(dataDir, node('redis', i, redisSingle)),
      pidFile: join(dataDir, `${node('redis', i, redisSingle)}.pid`),
    })),
    sentinels: portsFrom(config.sentinelPort, config.sentinelNodes).map((port, i) => ({
      name: `sentinel-${i}`,
      port,
      dir: join(dataDir, `sentinel-${i}`),
      pidFile: join(dataDir, `sentinel-${i}.pid`),
    })),
    /** The port of the Redis primary as last seen (a whole stack restarting after a failover starts it as the primary again). */
    primaryFile: join(dataDir, 'redis-primary'),
  };
}

/** How a server is named in messages: `redis-server` alone, `redis-server (redis-1)` in a cluster. */
const serverName = (spec: ChildSpec) => (spec.name === spec.role ? spec.command : `${spec.command} (${spec.name})`);

/** The primary last recorded in `file`, if it is one of `ports`. */
function recordedPrimary(file: string, ports: number[]): number | undefined {
  try {
    const port = Number(readFileSync(file, 'utf8').trim());
    return ports.includes(port) ? port : undefined;
  } catch {
    return undefined;
  }
}

/** Whether the supervisor starts servers that require credentials (generated under `<dataDir>/secrets/`). */
export const withServerAuth = (config: Config) => config.startServers && config.serverAuth;

/** Creates (first start) or reads the local stack's credentials, and writes the servers' configs from them. */
export function localSecrets(config: Config): LocalSecrets {
  return ensureLocalSecrets(config, readFileSync(natsConfigFile(), 'utf8'));
}

/** The Redis servers' and Sentinels' part of plan(): a replicated group whose start depends on who is primary now. */
function redisGroup(config: Config, p: ReturnType<typeof dataPaths>, auth: LocalSecrets | undefined): ChildSpec[] {
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
  const c = auth.credentials;
  const nodePorts = p.redis.map((r) => r.port);
  const sentinelPorts = p.sentinels.map((s) => s.port);
  /** Who is primary now: the Sentinels' word, else a server that says so, else the last one recorded, else node 0. */
  const primaryNow = async (asking: number[]) =>
    (await currentPrimary({ sentinels: asking, sentinelPassword: c.sentinel, masterName: config.redisMasterName, nodes: nodePorts, login: c.redisSentinel })) ??
    recordedPrimary(p.primaryFile, nodePorts) ??
    nodePorts[0]!;
  const remember = (port: number) => writeFileSync(p.primaryFile, `${port}\n`);
  /**
   * The primary died and is about to start again before the Sentinels noticed. Started as the primary, it would be
   * whatever its files hold, and its replicas would copy that over what they had: every WAITed write is on a replica,
   * but a primary's files may miss some (Redis restarted from an older copy, a disk that lost its last writes). So
   * when a replica is up, the Sentinels promote it first (SENTINEL FAILOVER) and this node comes back as its replica,
   * taking a copy of it; a node never comes back as the primary over a replica that has its writes. Alone (no replica
   * up, or no failover within SENTINEL_FAILOVER_TIMEOUT_MS), it starts as the primary: the only copy there is.
   */
  const handOver = async (port: number, name: string, log: Log): Promise<number> => {
    const replicas = await liveReplicas(nodePorts.filter((other) => other !== port), c.redisSentinel);
    if (replicas.length === 0 || !(await askFailover(sentinelPorts, config.redisMasterName, c.sentinel))) return port;
    log.warn(`${name} was the Redis primary: the Sentinels promote a replica before it starts again, as a replica (its files may miss writes the replicas have)`);
    let promoted = port;
    await waitFor(async () => (promoted = await primaryNow(sentinelPorts)) !== port, { deadlineMs: SENTINEL_FAILOVER_TIMEOUT_MS, intervalMs: 100, what: `the Sentinels to promote a replica of ${name}` }).catch((err: Error) =>
      log.warn(`${err.message}; ${name} starts as the primary`),
    );
    return promoted;
  };
  const nodes: ChildSpec[] = p.redis.map((r, i) => ({
    name: r.name,
    role: 'redis',
    command: 'redis-server',
    args: [auth.paths.redisNodeConfig(i)],
    env: {},
    port: r.port,
    pidFile: r.pidFile,
    async prepare(log) {
      writePrivate(auth.paths.redisNodeConfig(i), redisNodeConf({ port: r.port, dir: r.dir, appendfsync: config.redisAppendfsync, pidFile: r.pidFile, aclFile: auth.paths.redisAcl, replica: c.redisReplica }));
      let primary = await primaryNow(sentinelPorts);
      if (primary === r.port) primary = await handOver(r.port, r.name, log);
      remember(primary);
      return primary === r.port ? [auth.paths.redisNodeConfig(i)] : [auth.paths.redisNodeConfig(i), '--replicaof', '127.0.0.1', String(primary)];
    },
  }));
  const sentinels: ChildSpec[] = p.sentinels.map((s, i) => ({
    name: s.name,
    role: 'sentinel',
    command: 'redis-server',
    args: [auth.paths.sentinelConfig(i), '--sentinel'],
    env: {},
    port: s.port,
    pidFile: s.pidFile,
    async prepare() {
      const primary = await primaryNow(sentinelPorts.filter((port) => port !== s.port));
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
          redis: c.redisSentinel,
          password: c.sentinel,
        }),
      );
      return [auth.paths.sentinelConfig(i), '--sentinel'];
    },
  }));
  return [...nodes, ...sentinels];
}

/**
 * Every child of the stack, in start order. Pure apart from resolving paths. With server auth, `secrets` are
 * the local stack's (localSecrets): the servers run with the generated configs, and each child gets its own
 * user and password in SHOP_* variables (a gateway neither the workers' password nor Redis's). `logFormat` is the
 * workers' and gateways' (SHOP_LOG_FORMAT): a child's stderr is a pipe to the supervisor, so 'auto' there would
 * always mean JSON, even when the supervisor shows the lines on a terminal.
 */
export function plan(config: Config, secrets?: LocalSecrets, logFormat: 'json' | 'pretty' = resolveLogFormat(config.logFormat)): ChildSpec[] {
  if (withServerAuth(config) && !secrets) throw new Error('plan: servers with auth (serverAuth) need the local secrets (localSecrets(config))');
  const auth = withServerAuth(config) ? secrets : undefined;
  const children: ChildSpec[] = [];
  if (config.startServers) {
    const p = dataPaths(config);
    const cluster = config.natsNodes > 1;
    if (cluster && !auth) throw new ConfigError(`setting natsNodes (${envName('natsNodes')}) > 1 needs serverAuth: the cluster's routes log in with a generated password`);
    for (const [i, n] of p.nats.entries()) {
      const configFile = cluster ? auth!.paths.natsNodeConfig(i) : (auth?.paths.natsConfig ?? natsConfigFile());
      children.push({
        name: n.name,
        role: 'nats',
        command: 'nats-server',
        // -n: every node of a JetStream cluster needs a name of its own (the flag overrides the config's).
        args: [...natsArgs({ port: n.port, storeDir: n.dir, configFile, pidFile: n.pidFile }), ...(cluster ? ['-n', `shop-${i}`] : [])],
        env: {},
        port: n.port,
        pidFile: n.pidFile,
      });
    }
    children.push(...redisGroup(config, p, auth));
  }
  const { natsUrl, redisUrl, redisSentinels } = serverUrls(config);
  const env = { ...configEnv(config), SHOP_NATS_URL: natsUrl, SHOP_REDIS_URL: redisUrl, SHOP_REDIS_SENTINELS: redisSentinels, SHOP_LOG_FORMAT: logFormat };
  const c = auth?.credentials;
  const sentinelAuth: Record<string, string> = config.startServers && config.sentinelNodes > 0 && c ? { SHOP_REDIS_SENTINEL_USER: '', SHOP_REDIS_SENTINEL_PASSWORD: c.sentinel } : {};
  const workerAuth: Record<string, string> = c
    ? { SHOP_NATS_USER: 'worker', SHOP_NATS_PASSWORD: c.nats.worker!, SHOP_REDIS_USER: c.redis.user, SHOP_REDIS_PASSWORD: c.redis.password, ...sentinelAuth }
    : {};
  const gatewayAuth = (i: number): Record<string, string> =>
    c ? { SHOP_NATS_USER: gatewayUser(i), SHOP_NATS_PASSWORD: c.nats[gatewayUser(i)]!, SHOP_REDIS_USER: '', SHOP_REDIS_PASSWORD: '', SHOP_REDIS_SENTINEL_PASSWORD: '' } : {};
  for (let i = 0; i < config.workerProcesses; i++) {
    children.push({ name: `worker-${i}`, role: 'worker', command: process.execPath, args: [MAIN_JS, 'worker'], env: { ...env, ...workerAuth, SHOP_WORKER_INDEX: String(i) } });
  }
  for (let i = 0; i < config.gatewayProcesses; i++) {
    children.push({ name: `gateway-${i}`, role: 'gateway', command: process.execPath, args: [MAIN_JS, 'gateway'], env: { ...env, ...gatewayAuth(i), SHOP_GATEWAY_INDEX: String(i) } });
  }
  return children;
}

export type SupervisorState = 'idle' | 'starting' | 'ready' | 'draining' | 'closed';

export interface SupervisorOptions {
  /**
   * The children besides nats and redis; default: the workers and gateways of plan(config).
   * Tests pass [] to run only the servers, or small stand-ins.
   */
  children?: ChildSpec[];
  /** Where children's output lines go; default: this process's stdout/stderr, prefixed with the child's name. */
  output?: (name: string, line: string, stream: 'stdout' | 'stderr') => void;
  /** Time for uptimes and restart pauses; default the wall clock. */
  clock?: Clock;
}

export interface Supervisor {
  readonly state: SupervisorState;
  /** Starts the servers (waiting until they answer), then the other children; rejects with a message saying what to fix. */
  start(): Promise<void>;
  /** The ordered stop. Idempotent; also cuts a start short. */
  stop(): Promise<void>;
  /** SIGKILL to every child at once. */
  kill(): void;
  /** Pids of the running children by name. */
  pids(): Record<string, number>;
}

interface Slot {
  spec: ChildSpec;
  child?: Child;
  /** Its lifecycle and backoff, as restart.ts decides them. */
  state: ChildState;
  timer?: Timer;
}

export function createSupervisor(config: Config, log: Log, options: SupervisorOptions = {}): Supervisor {
  const secrets = withServerAuth(config) ? localSecrets(config) : undefined;
  if (secrets) log.info(`servers require credentials: ${secrets.paths.dir} (delete it while stopped for new ones)`);
  // Children's lines that go to this process's terminal are readable; lines that go elsewhere (options.output) are JSON.
  const childLogFormat = config.logFormat !== 'auto' ? config.logFormat : options.output ? 'json' : resolveLogFormat('auto');
  const planned = plan(config, secrets, childLogFormat);
  const specs = options.children ? [...planned.filter((s) => s.role === 'nats' || s.role === 'redis'), ...options.children] : planned;
  const width = Math.max(...specs.map((s) => s.name.length), 5);
  const output =
    options.output ??
    ((name: string, line: string, stream: 'stdout' | 'stderr') => process[stream].write(`${name.padEnd(width)} | ${line}\n`));
  const clock = options.clock ?? systemClock;
  const policy: RestartPolicy = { baseMs: config.restartBackoffMs, maxMs: RESTART_BACKOFF_MAX_MS, stableMs: STABLE_UPTIME_MS };
  const slots: Slot[] = specs.map((spec) => ({ spec, state: newChild(policy) }));
  const stopping = new AbortController();
  let state: SupervisorState = 'idle';
  let stopped: Promise<void> | undefined;

  const setState = (next: SupervisorState) => {
    log.info(`${state} -> ${next}`);
    state = next;
  };
  const running = () => state === 'starting' || state === 'ready';

  /** Runs the child's prepare step (if any), then starts it. */
  async function launch(slot: Slot): Promise<Child> {
    const args = (await slot.spec.prepare?.(log)) ?? slot.spec.args;
    return spawn(slot, args);
  }

  function spawn(slot: Slot, args: string[]): Child {
    const { spec } = slot;
    const child = spawnChild(spec.name, findBinary(spec.command), {
      args,
      env: spec.env,
      // Its own process group: a Ctrl-C in the terminal reaches only the supervisor, which stops children in order.
      detached: true,
      onLine: (line, stream) => output(spec.name, line, stream),
    });
    slot.child = child;
    apply(slot, { kind: 'launched', now: clock.now() });
    if (child.pid !== undefined) log.info(`started ${spec.name} (pid ${child.pid})`);
    void child.exited.then((exit) => onExit(slot, child, exit));
    return child;
  }

  function onExit(slot: Slot, child: Child, exit: Exit) {
    if (slot.child !== child) return;
    slot.child = undefined;
    apply(slot, { kind: 'exited', now: clock.now(), exit, supervising: running() });
  }

  /** Decides (restart.ts) and performs: the restarts with their backoff. */
  function apply(slot: Slot, event: ChildEvent) {
    const step = childStep(slot.state, event, policy);
    slot.state = step.state;
    for (const action of step.actions) {
      switch (action.do) {
        case 'schedule':
          log.warn(`${slot.spec.name} exited unexpectedly (${describeExit(action.exit)}) after ${action.upMs} ms; restart #${action.restart} in ${action.delayMs} ms`);
          slot.timer = clock.setTimeout(() => {
            slot.timer = undefined;
            apply(slot, { kind: 'due', supervising: running() });
          }, action.delayMs);
          break;
        case 'launch':
          // e.g. the binary vanished: counted as another crash, so the backoff keeps growing.
          launch(slot).catch((err: unknown) => apply(slot, { kind: 'launch-failed', now: clock.now(), error: err as Error, supervising: running() }));
          break;
        case 'cancel':
          clock.clearTimeout(slot.timer);
          slot.timer = undefined;
          break;
      }
    }
  }

  async function assertPortFree(port: number, key: keyof Config, what: string, host = '127.0.0.1', pidFile?: string) {
    if (await portIsFree(port, host)) return;
    let hint = '';
    if (pidFile && existsSync(pidFile)) {
      const pid = Number(readFileSync(pidFile, 'utf8').trim());
      if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) hint = ` ${pidFile} names pid ${pid}, which is still running: a previous run's ${what}? Stop it with \`kill ${pid}\`.`;
    }
    throw new ConfigError(
      `port ${port} for ${what} (setting ${key}, ${envName(key)}) is already in use on ${host}.${hint} ` +
        `Stop what listens there (\`ss -ltnp 'sport = :${port}'\` shows it) or choose another port with ${envName(key)}=<port>.`,
    );
  }

  async function startServers() {
    const p = dataPaths(config);
    const servers = slots.filter((s) => s.spec.role === 'nats' || s.spec.role === 'redis' || s.spec.role === 'sentinel');
    const ports: [number, keyof Config][] = [
      ...p.nats.map((n) => [n.port, 'natsPort'] as [number, keyof Config]),
      ...(config.natsNodes > 1 ? portsFrom(config.natsClusterPort, config.natsNodes).map((port) => [port, 'natsClusterPort'] as [number, keyof Config]) : []),
      ...p.redis.map((r) => [r.port, 'redisPort'] as [number, keyof Config]),
      ...p.sentinels.map((s) => [s.port, 'sentinelPort'] as [number, keyof Config]),
    ];
    for (const [port, key] of ports) {
      if (port === 0) throw new ConfigError(`setting ${key} (${envName(key)}) must be a fixed port when startServers is true, got 0`);
      if (port > 65535) throw new ConfigError(`setting ${key} (${envName(key)}) leaves no port for all its nodes (${port} > 65535); choose a lower one`);
    }
    const taken = new Map<number, keyof Config>();
    for (const [port, key] of ports) {
      const other = taken.get(port);
      if (other) {
        throw new ConfigError(
          other === key
            ? `setting ${key} (${envName(key)}) gives port ${port} twice`
            : `settings ${other} and ${key} (${envName(other)}, ${envName(key)}) overlap: both use port ${port} (nodes take consecutive ports from each base)`,
        );
      }
      taken.set(port, key);
    }
    for (const [port, key] of ports) {
      const spec = servers.find((s) => s.spec.port === port)?.spec;
      await assertPortFree(port, key, spec ? serverName(spec) : 'nats-server (cluster route)', '127.0.0.1', spec?.pidFile);
    }
    for (const dir of [...p.nats, ...p.redis, ...p.sentinels].map((n) => n.dir)) mkdirSync(dir, { recursive: true });

    const auth = secrets && { user: secrets.credentials.redis.user, password: secrets.credentials.redis.password };
    const startServer = async (slot: Slot) => {
      const port = slot.spec.port!;
      const child = await launch(slot);
      const what = `${serverName(slot.spec)} on 127.0.0.1:${port}`;
      const probe =
        slot.spec.role === 'nats'
          ? () => natsAnswers(port)
          : slot.spec.role === 'redis'
            ? () => redisAnswers(port, { auth })
            : () => redisAnswers(port, { auth: { user: 'default', password: secrets!.credentials.sentinel } });
      await waitFor(probe, {
        deadlineMs: SERVER_READY_DEADLINE_MS,
        what: `${what} to answer (see its output above)`,
        signal: anySignal(abortOnExit(child, what).signal, stopping.signal),
      });
      apply(slot, { kind: 'established' });
      log.info(`${slot.spec.name} ready on port ${port}`);
    };
    // nats and redis together; the Sentinels once the Redis servers answer (they must find the primary).
    await Promise.all(servers.filter((s) => s.spec.role !== 'sentinel').map(startServer));
    const { natsUrl } = serverUrls(config);
    const wait = (fn: () => Promise<boolean>, what: string) => waitFor(fn, { deadlineMs: CLUSTER_READY_DEADLINE_MS, intervalMs: 200, what, signal: stopping.signal });
    if (config.natsNodes > 1) {
      const admin = secrets && { user: 'admin', pass: secrets.credentials.nats.admin! };
      await wait(() => jetstreamClusterReady(natsUrl.split(','), admin, config.natsNodes), `the ${config.natsNodes} nats-servers to form a JetStream cluster with a meta leader`);
      log.info(`JetStream cluster of ${config.natsNodes} nodes ready`);
    }
    if (config.redisReplicas > 0) {
      const c = secrets!.credentials;
      const primaryPort = async () =>
        (await currentPrimary({ sentinels: [], masterName: config.redisMasterName, nodes: p.redis.map((r) => r.port), login: c.redisSentinel })) ?? p.redis[0]!.port;
      await wait(async () => replicasOnline(await primaryPort(), config.redisReplicas, c.redisSentinel), `the Redis primary to have its ${config.redisReplicas} replica(s) online`);
      await Promise.all(servers.filter((s) => s.spec.role === 'sentinel').map(startServer));
      if (config.sentinelNodes > 0) {
        const primary = await primaryPort();
        await wait(
          async () =>
            (
              await Promise.all(
                p.sentinels.map((s) =>
                  sentinelReady(s.port, { masterName: config.redisMasterName, password: c.sentinel, primaryPort: primary, sentinels: config.sentinelNodes, replicas: config.redisReplicas }),
                ),
              )
            ).every(Boolean),
          `the ${config.sentinelNodes} Sentinels to watch the primary (port ${primary}) and know each other and its replicas`,
        );
        log.info(`Redis primary on port ${primary} with ${config.redisReplicas} replica(s), watched by ${config.sentinelNodes} Sentinels (quorum ${sentinelQuorum(config.sentinelNodes)})`);
      }
    }
  }

  const httpHost = config.httpHost === '0.0.0.0' ? '127.0.0.1' : config.httpHost === '::' ? '::1' : config.httpHost;

  async function start() {
    if (state !== 'idle') throw new Error(`start() called in state ${state}`);
    setState('starting');
    if (config.startServers) await startServers();
    stopping.signal.throwIfAborted();

    const apps = slots.filter((s) => s.spec.role === 'worker' || s.spec.role === 'gateway');
    const hasGateway = apps.some((s) => s.spec.role === 'gateway');
    if (hasGateway && config.httpPort > 0) await assertPortFree(config.httpPort, 'httpPort', 'the HTTP gateway', config.httpHost);
    for (const slot of apps) {
      await launch(slot);
      apply(slot, { kind: 'established' }); // restarted whenever it dies, from its first launch on
    }
    if (hasGateway && config.httpPort > 0) {
      try {
        await waitFor(() => tcpAccepts(config.httpPort, httpHost), {
          deadlineMs: HTTP_READY_DEADLINE_MS,
          what: `a gateway to listen on ${httpHost}:${config.httpPort}`,
          signal: stopping.signal,
        });
      } catch (err) {
        stopping.signal.throwIfAborted();
        log.warn(`${(err as Error).message}; the gateways may still be starting or crash-looping: see their output above`);
      }
    }
    stopping.signal.throwIfAborted();
    setState('ready');
    const { natsUrl, redisUrl, redisSentinels } = serverUrls(config);
    const redis = redisSentinels ? `redis via Sentinels ${redisSentinels} (${config.redisMasterName})` : `redis ${redisUrl}`;
    log.info(`ready: http://${httpHost.includes(':') ? `[${httpHost}]` : httpHost}:${config.httpPort} (nats ${natsUrl}, ${redis})`);
  }

  async function stopInOrder() {
    setState('draining');
    stopping.abort(new Error('the supervisor is stopping'));
    for (const slot of slots) apply(slot, { kind: 'stop' });
    if (secrets && config.startServers && config.sentinelNodes > 0) {
      // Which Redis is primary now (it may not be node 0 after a failover): the next start begins with it.
      const p = dataPaths(config);
      const primary = await currentPrimary({
        sentinels: p.sentinels.map((s) => s.port),
        sentinelPassword: secrets.credentials.sentinel,
        masterName: config.redisMasterName,
        nodes: [],
      }).catch(() => undefined);
      if (primary !== undefined) writeFileSync(p.primaryFile, `${primary}\n`);
    }
    for (const role of STOP_ORDER) {
      await Promise.all(
        slots
          .filter((s) => s.spec.role === role && s.child)
          .map(async (slot) => {
            const { exit, killed } = await stopChild(slot.child!, config.shutdownGraceMs, role === 'nats' ? NATS_STOP_SIGNAL : 'SIGTERM');
            if (killed) log.warn(`${slot.spec.name} did not exit within ${config.shutdownGraceMs} ms of the stop signal; killed (${describeExit(exit)})`);
            else log.info(`stopped ${slot.spec.name} (${describeExit(exit)})`);
          }),
      );
    }
    setState('closed');
  }

  return {
    get state() {
      return state;
    },
    start,
    stop() {
      stopped ??= stopInOrder();
      return stopped;
    },
    kill() {
      for (const slot of slots) {
        apply(slot, { kind: 'stop' });
        slot.child?.process.kill('SIGKILL');
      }
    },
    pids() {
      const pids: Record<string, number> = {};
      for (const slot of slots) if (slot.child?.pid !== undefined && !slot.child.exit()) pids[slot.spec.name] = slot.child.pid;
      return pids;
    },
  };
}

/**
 * Runs the stack until SIGINT/SIGTERM/SIGHUP, stops it in order, and exits the process with 0.
 * A second Ctrl-C kills every child at once. A failed start stops what was started, then throws.
 */
export async function runSupervisor(config: Config, log: Log, options: SupervisorOptions = {}): Promise<void> {
  const supervisor = createSupervisor(config, log, options);
  const clock = options.clock ?? systemClock;
  let firstSignalAt = 0;
  const done = new Promise<void>((resolveDone) => {
    const onSignal = (signal: NodeJS.Signals) => {
      const now = clock.now();
      if (!firstSignalAt) {
        firstSignalAt = now;
        log.info(`${signal} received: stopping gateways, workers, ${config.sentinelNodes > 0 ? 'Sentinels, ' : ''}redis, nats in that order (Ctrl-C again to kill everything at once)`);
        supervisor.stop().then(resolveDone, (err: unknown) => {
          log.error('stop failed', { err });
          process.exit(1);
        });
        return;
      }
      if (now - firstSignalAt < SIGNAL_REPEAT_MIN_MS) return;
      log.warn(`${signal} received again: killing every child now`);
      supervisor.kill();
      process.exit(130);
    };
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal);
  });
  try {
    await supervisor.start();
  } catch (err) {
    if (!firstSignalAt) {
      await supervisor.stop();
      throw err;
    }
    // A signal cut the start short; the ordered stop is already running.
  }
  await done;
  log.info('all children stopped; exiting');
  process.exit(0);
}
