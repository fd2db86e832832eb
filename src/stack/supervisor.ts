/**
 * The local stack behind `npm start`: nats-server and redis-server (when config.startServers), then the
 * worker and gateway processes, each child's output prefixed with its name, crashed children restarted
 * with a doubling backoff, and on SIGINT/SIGTERM an ordered stop: gateways, workers, Sentinels, redis, nats.
 *
 * With natsNodes > 1, redisReplicas and sentinelNodes (the cluster profile, `SHOP_PROFILE=cluster npm start`) the
 * servers are the production topology on one machine: a JetStream cluster, a Redis primary with replicas, and
 * Sentinels that promote a replica when the primary dies (src/stack/topology.ts).
 *
 * This file is the lifecycle (idle → starting → ready → draining → closed) and its order; what runs comes from
 * plan.ts, the servers' start from start-servers.ts, each child's spawn and restarts from children.ts (as restart.ts
 * decides them).
 */
import { readFileSync } from 'node:fs';
import { systemClock, type Clock } from '../clock.js';
import type { Config } from '../config.js';
import { resolveLogFormat, type Log } from '../log.js';
import { createChildren } from './children.js';
import { dataPaths, natsConfigFile, plan, serverUrls, withServerAuth, type ChildSpec, type Prepare, type Program } from './plan.js';
import { assertPortFree } from './port-checks.js';
import { tcpAccepts, waitFor } from './probes.js';
import { prepareArgs, recordPrimary, type RedisGroup } from './redis-primary.js';
import type { RestartPolicy } from './restart.js';
import { ensureLocalSecrets, type LocalSecrets } from './secrets.js';
import { startServers } from './start-servers.js';

/** Stopped in this order: first what accepts requests, last what holds the data (the Sentinels before Redis, so a stop is not a failover). */
const STOP_ORDER: readonly Program[] = ['gateway', 'worker', 'sentinel', 'redis', 'nats'];
/** The longest pause before restarting a child process that keeps crashing. */
const PROCESS_RESTART_BACKOFF_MAX_MS = 10_000;
/** A child that ran this long before it died starts again from config.restartBackoffMs. */
const STABLE_UPTIME_MS = 10_000;
/** How long the gateways may take to listen before `ready` is logged anyway, with a warning. */
const HTTP_READY_DEADLINE_MS = 30_000;
/**
 * A second SIGINT sooner than this after the first is the same Ctrl-C: the terminal sends it to the
 * whole foreground process group and npm forwards it to its child again.
 */
const SIGNAL_REPEAT_MIN_MS = 1000;

/** Creates (first start) or reads the local stack's credentials, and writes the servers' configs from them. */
export function localSecrets(config: Config): LocalSecrets {
  return ensureLocalSecrets(config, readFileSync(natsConfigFile(), 'utf8'));
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

/** Where the gateways' listener is reached from this machine: a wildcard address through the loopback one. */
const reachableHost = (host: string) => (host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host);

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
  const policy: RestartPolicy = { baseMs: config.restartBackoffMs, maxMs: PROCESS_RESTART_BACKOFF_MAX_MS, stableMs: STABLE_UPTIME_MS };
  const redisGroup: RedisGroup | undefined = secrets && { config, paths: dataPaths(config), auth: secrets };
  // Only a replicated Redis group's children have a prepare step, and plan() makes one only with the local secrets.
  const prepare = async (step: Prepare) => prepareArgs(redisGroup!, step, log);
  const stopping = new AbortController();
  let state: SupervisorState = 'idle';
  let stopped: Promise<void> | undefined;
  const isRunning = () => state === 'starting' || state === 'ready';
  const children = createChildren({ specs, log, clock: options.clock ?? systemClock, policy, output, isRunning, prepare });

  const setState = (next: SupervisorState) => {
    log.info(`${state} -> ${next}`);
    state = next;
  };

  async function start() {
    if (state !== 'idle') throw new Error(`start() called in state ${state}`);
    setState('starting');
    if (config.startServers) await startServers({ config, log, secrets, children, signal: stopping.signal });
    stopping.signal.throwIfAborted();

    const apps = children.slots.filter((s) => s.spec.role === 'worker' || s.spec.role === 'gateway');
    const listens = apps.some((s) => s.spec.role === 'gateway') && config.httpPort > 0;
    if (listens) await assertPortFree(config.httpPort, 'httpPort', 'the HTTP gateway', config.httpHost);
    for (const slot of apps) {
      await children.launch(slot);
      children.apply(slot, { kind: 'established' }); // restarted whenever it dies, from its first launch on
    }
    if (listens) await gatewaysListening();
    stopping.signal.throwIfAborted();
    setState('ready');
    const { natsUrl, redisUrl, redisSentinels } = serverUrls(config);
    const redis = redisSentinels ? `redis via Sentinels ${redisSentinels} (${config.redisMasterName})` : `redis ${redisUrl}`;
    const httpHost = reachableHost(config.httpHost);
    log.info(`ready: http://${httpHost.includes(':') ? `[${httpHost}]` : httpHost}:${config.httpPort} (nats ${natsUrl}, ${redis})`);
  }

  /** Waits for a gateway to listen; past the deadline only warns (they may still be starting). */
  async function gatewaysListening() {
    const httpHost = reachableHost(config.httpHost);
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

  async function stopInOrder() {
    setState('draining');
    stopping.abort(new Error('the supervisor is stopping'));
    for (const slot of children.slots) children.apply(slot, { kind: 'stop' });
    if (secrets && config.startServers && config.sentinelNodes > 0) await recordPrimary(config, dataPaths(config), secrets.credentials.sentinel);
    for (const program of STOP_ORDER) await children.stopProgram(program, config.shutdownGraceMs);
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
    kill: children.kill,
    pids: children.pids,
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
