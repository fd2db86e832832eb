/**
 * The local stack behind `npm start`: nats-server and redis-server (when config.startServers), then the
 * worker and gateway processes, each child's output prefixed with its name, crashed children restarted
 * with a doubling backoff, and on SIGINT/SIGTERM an ordered stop: gateways, workers, redis, nats.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, envName, type Config } from './config.js';
import { resolveLogFormat, type Log } from './log.js';
import { ensureLocalSecrets, gatewayUser, type LocalSecrets } from './secrets.js';
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

export type Role = 'nats' | 'redis' | 'worker' | 'gateway';

/** One child process of the stack. */
export interface ChildSpec {
  /** Prefix of its output lines and name in the log: nats, redis, worker-0, gateway-1. */
  name: string;
  /** Decides the stop order (gateway, worker, redis, nats) and whether it is a server to wait for. */
  role: Role;
  /** An absolute path, or a name looked up on PATH and in /usr/sbin. */
  command: string;
  args: string[];
  /** Set on top of the supervisor's own environment, which children inherit. */
  env: Record<string, string>;
}

/** Stopped in this order: first what accepts requests, last what holds the data. */
const STOP_ORDER: readonly Role[] = ['gateway', 'worker', 'redis', 'nats'];
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

/** main.js next to this module: dist/src/main.js when compiled. */
const MAIN_JS = join(here, 'main.js');

/** nats/local.conf at the package root, from both src/ and dist/src/. */
function natsConfigFile(): string {
  for (const up of ['..', '../..']) {
    const file = resolve(here, up, 'nats', 'local.conf');
    if (existsSync(file)) return file;
  }
  throw new ConfigError(`nats/local.conf not found above ${here}; it ships with the package (restore it from git)`);
}

/** The URLs the app processes use: the servers the supervisor starts, or the configured ones. */
export function serverUrls(config: Config): { natsUrl: string; redisUrl: string } {
  return config.startServers
    ? { natsUrl: `nats://127.0.0.1:${config.natsPort}`, redisUrl: `redis://127.0.0.1:${config.redisPort}` }
    : { natsUrl: config.natsUrl, redisUrl: config.redisUrl };
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

function dataPaths(config: Config) {
  const dataDir = resolve(config.dataDir);
  return {
    natsDir: join(dataDir, 'nats'),
    redisDir: join(dataDir, 'redis'),
    natsPidFile: join(dataDir, 'nats.pid'),
    redisPidFile: join(dataDir, 'redis.pid'),
  };
}

/** Whether the supervisor starts servers that require credentials (generated under `<dataDir>/secrets/`). */
export const withServerAuth = (config: Config) => config.startServers && config.serverAuth;

/** Creates (first start) or reads the local stack's credentials, and writes the servers' configs from them. */
export function localSecrets(config: Config): LocalSecrets {
  return ensureLocalSecrets(config, readFileSync(natsConfigFile(), 'utf8'));
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
    children.push(
      {
        name: 'nats',
        role: 'nats',
        command: 'nats-server',
        args: natsArgs({ port: config.natsPort, storeDir: p.natsDir, configFile: auth?.paths.natsConfig ?? natsConfigFile(), pidFile: p.natsPidFile }),
        env: {},
      },
      {
        name: 'redis',
        role: 'redis',
        command: 'redis-server',
        args: redisArgs({ port: config.redisPort, dir: p.redisDir, appendfsync: config.redisAppendfsync, pidFile: p.redisPidFile, aclFile: auth?.paths.redisAcl }),
        env: {},
      },
    );
  }
  const { natsUrl, redisUrl } = serverUrls(config);
  const env = { ...configEnv(config), SHOP_NATS_URL: natsUrl, SHOP_REDIS_URL: redisUrl, SHOP_LOG_FORMAT: logFormat };
  const c = auth?.credentials;
  const workerAuth: Record<string, string> = c
    ? { SHOP_NATS_USER: 'worker', SHOP_NATS_PASSWORD: c.nats.worker!, SHOP_REDIS_USER: c.redis.user, SHOP_REDIS_PASSWORD: c.redis.password }
    : {};
  const gatewayAuth = (i: number): Record<string, string> =>
    c ? { SHOP_NATS_USER: gatewayUser(i), SHOP_NATS_PASSWORD: c.nats[gatewayUser(i)]!, SHOP_REDIS_USER: '', SHOP_REDIS_PASSWORD: '' } : {};
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
  startedAt: number;
  /** The pause before the next restart. */
  backoffMs: number;
  restarts: number;
  timer?: NodeJS.Timeout;
  /** Restart it when it dies. A server becomes restartable once it has answered the first time. */
  restartable: boolean;
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
  const slots: Slot[] = specs.map((spec) => ({ spec, startedAt: 0, backoffMs: config.restartBackoffMs, restarts: 0, restartable: false }));
  const stopping = new AbortController();
  let state: SupervisorState = 'idle';
  let stopped: Promise<void> | undefined;

  const setState = (next: SupervisorState) => {
    log.info(`${state} -> ${next}`);
    state = next;
  };
  const running = () => state === 'starting' || state === 'ready';

  function launch(slot: Slot): Child {
    const { spec } = slot;
    const child = spawnChild(spec.name, findBinary(spec.command), {
      args: spec.args,
      env: spec.env,
      // Its own process group: a Ctrl-C in the terminal reaches only the supervisor, which stops children in order.
      detached: true,
      onLine: (line, stream) => output(spec.name, line, stream),
    });
    slot.child = child;
    slot.startedAt = Date.now();
    if (child.pid !== undefined) log.info(`started ${spec.name} (pid ${child.pid})`);
    void child.exited.then((exit) => onExit(slot, child, exit));
    return child;
  }

  function onExit(slot: Slot, child: Child, exit: Exit) {
    if (slot.child !== child) return;
    slot.child = undefined;
    if (running() && slot.restartable) scheduleRestart(slot, exit);
  }

  function scheduleRestart(slot: Slot, exit: Exit) {
    const upMs = Date.now() - slot.startedAt;
    if (upMs >= STABLE_UPTIME_MS) slot.backoffMs = config.restartBackoffMs;
    const delayMs = slot.backoffMs;
    slot.backoffMs = Math.min(RESTART_BACKOFF_MAX_MS, Math.max(1, delayMs * 2));
    slot.restarts++;
    log.warn(`${slot.spec.name} exited unexpectedly (${describeExit(exit)}) after ${upMs} ms; restart #${slot.restarts} in ${delayMs} ms`);
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      if (!running()) return;
      try {
        launch(slot);
      } catch (err) {
        // e.g. the binary vanished: count it as another crash, so the backoff keeps growing.
        slot.startedAt = Date.now();
        scheduleRestart(slot, { code: null, signal: null, error: err as Error });
      }
    }, delayMs);
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
    for (const [port, key] of [[config.natsPort, 'natsPort'], [config.redisPort, 'redisPort']] as const) {
      if (port === 0) throw new ConfigError(`setting ${key} (${envName(key)}) must be a fixed port when startServers is true, got 0`);
    }
    if (config.natsPort === config.redisPort) {
      throw new ConfigError(`settings natsPort and redisPort (${envName('natsPort')}, ${envName('redisPort')}) must differ, both are ${config.natsPort}`);
    }
    await assertPortFree(config.natsPort, 'natsPort', 'nats-server', '127.0.0.1', p.natsPidFile);
    await assertPortFree(config.redisPort, 'redisPort', 'redis-server', '127.0.0.1', p.redisPidFile);
    mkdirSync(p.natsDir, { recursive: true });
    mkdirSync(p.redisDir, { recursive: true });

    const servers = slots.filter((s) => s.spec.role === 'nats' || s.spec.role === 'redis');
    await Promise.all(
      servers.map(async (slot) => {
        const isNats = slot.spec.role === 'nats';
        const port = isNats ? config.natsPort : config.redisPort;
        const child = launch(slot);
        const what = `${slot.spec.command} on 127.0.0.1:${port}`;
        const auth = secrets && { user: secrets.credentials.redis.user, password: secrets.credentials.redis.password };
        await waitFor(() => (isNats ? natsAnswers(port) : redisAnswers(port, { auth })), {
          deadlineMs: SERVER_READY_DEADLINE_MS,
          what: `${what} to answer (see its output above)`,
          signal: anySignal(abortOnExit(child, what).signal, stopping.signal),
        });
        slot.restartable = true;
        log.info(`${slot.spec.name} ready on port ${port}`);
      }),
    );
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
      slot.restartable = true;
      launch(slot);
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
    const { natsUrl, redisUrl } = serverUrls(config);
    log.info(`ready: http://${httpHost.includes(':') ? `[${httpHost}]` : httpHost}:${config.httpPort} (nats ${natsUrl}, redis ${redisUrl})`);
  }

  async function stopInOrder() {
    setState('draining');
    stopping.abort(new Error('the supervisor is stopping'));
    for (const slot of slots) clearTimeout(slot.timer);
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
        clearTimeout(slot.timer);
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
  let firstSignalAt = 0;
  const done = new Promise<void>((resolveDone) => {
    const onSignal = (signal: NodeJS.Signals) => {
      const now = Date.now();
      if (!firstSignalAt) {
        firstSignalAt = now;
        log.info(`${signal} received: stopping gateways, workers, redis, nats in that order (Ctrl-C again to kill everything at once)`);
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
