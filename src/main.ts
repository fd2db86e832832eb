#!/usr/bin/env node
/** One build, one entry point: the role (supervisor, worker, gateway, controller) comes from the command line. */
import type { NatsConnection } from 'nats';
import type { Registry } from 'prom-client';
import { startAdminHttp, type AdminHttp, type Probe } from './monitoring/admin-http.js';
import { adminPortOf, ConfigError, envName, loadConfig, type Config } from './config.js';
import { connectNats, connectRedis, logNatsStatus } from './transport/connect.js';
import { exitOnFatal } from './fatal.js';
import { allOf, natsHealth, redisHealth } from './monitoring/health.js';
import { connectionMetrics } from './monitoring/metrics.js';
import { checkLayout, claimLayout } from './transport/layout.js';
import { createLog, type Log } from './log.js';

type Lifecycle = 'starting' | 'ready' | 'draining' | 'closed';

/** Runs a role until SIGINT/SIGTERM (or until it ends by itself), then closes it in order. The state changes in one place, logged. */
async function serve(log: Log, start: () => Promise<{ close(): Promise<void>; ended?: Promise<string> }>): Promise<void> {
  let state: Lifecycle = 'starting';
  const setState = (next: Lifecycle) => {
    log.info(`${state} -> ${next}`);
    state = next;
  };
  const running = await start();
  setState('ready');
  const stop = async (signal: string) => {
    if (state !== 'ready') return;
    log.info(`${signal} received`);
    setState('draining');
    await running.close();
    setState('closed');
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  void running.ended?.then(async (why) => {
    if (state !== 'ready') return;
    log.warn(`ending by itself: ${why}`);
    setState('draining');
    // A lost lease exits non-zero, so that a supervisor starts a fresh worker (under a new id).
    const code = why === 'drained' ? 0 : 1;
    const forced = setTimeout(() => process.exit(code), ENDED_CLOSE_DEADLINE_MS);
    forced.unref();
    await running.close().catch((err: unknown) => log.error('close failed', { err }));
    setState('closed');
    process.exit(code);
  });
}

/** How often a gateway that found no layout in the cluster (no worker yet) looks again. */
const LAYOUT_RECHECK_MS = 5000;

/** How long a worker that ends by itself (drained, lease lost) may take to close before it exits anyway. */
const ENDED_CLOSE_DEADLINE_MS = 5000;

/** Admin HTTP on the loopback port of this process; the probes and metrics come from `target` once it exists. */
async function adminHttp(config: Config, role: 'worker' | 'gateway', log: Log, nc: NatsConnection, target: () => { registry: Registry; ready(): Probe } | undefined): Promise<AdminHttp> {
  const port = adminPortOf(config, role);
  try {
    return await startAdminHttp({
      host: config.adminHost,
      port,
      log,
      registry: () => target()?.registry,
      health: () => (nc.isClosed() ? { ok: false, detail: 'NATS connection closed' } : { ok: true }),
      ready: () => target()?.ready() ?? { ok: false, detail: 'starting' },
    });
  } catch (err) {
    throw new ConfigError(
      `cannot listen for admin HTTP on ${config.adminHost}:${port} (${(err as Error).message}); ` +
        `choose another base port with ${envName('adminPort')}=<port>, or 0 for any free port`,
    );
  }
}

/**
 * The process's logger: named after its role (and index), with the role and index as fields of every line, in the
 * configured format. Fields common to every process (pid, hostname) come with every line anyway.
 */
function processLog(config: Config, role: string | undefined): Log {
  const fields: Record<string, unknown> = { role: role ?? 'main' };
  let name = role ?? 'main';
  if (role === 'worker') {
    fields.workerIndex = config.workerIndex;
    name = `worker-${config.workerIndex}`;
  } else if (role === 'gateway') {
    fields.gatewayIndex = config.gatewayIndex;
    name = `gateway-${config.gatewayIndex}`;
  }
  return createLog(name, config.logLevel, { format: config.logFormat, fields });
}

async function main(role: string | undefined): Promise<void> {
  const config = loadConfig();
  const log = processLog(config, role);
  exitOnFatal(log);
  switch (role) {
    case 'supervisor': {
      const { runSupervisor } = await import('./stack/supervisor.js');
      await runSupervisor(config, log);
      return;
    }
    case 'worker': {
      const { startWorker } = await import('./placement/worker.js');
      await serve(log, async () => {
        const nc = await connectNats(config, `worker-${config.workerIndex}`);
        logNatsStatus(nc, log);
        const redis = await connectRedis(config, {}, log);
        const natsUp = natsHealth(nc);
        const redisUp = redisHealth(redis);
        let worker: Awaited<ReturnType<typeof startWorker>> | undefined;
        const admin = await adminHttp(config, 'worker', log, nc, () =>
          worker ? { registry: worker.registry, ready: () => allOf(natsUp.probe(), redisUp.probe(), worker!.ready()) } : undefined,
        );
        worker = await startWorker({ nc, redis, config, log, adminPort: admin.port });
        connectionMetrics(worker.registry, { nats: () => natsUp.probe().ok, redis: () => redisUp.probe().ok });
        const w = worker;
        return {
          ended: w.ended,
          async close() {
            await w.close();
            await admin.close();
            natsUp.stop();
            redisUp.stop();
            await nc.drain();
            await redis.quit();
          },
        };
      });
      return;
    }
    case 'gateway': {
      const { createGateway } = await import('./http/gateway.js');
      await serve(log, async () => {
        const nc = await connectNats(config, 'gateway');
        logNatsStatus(nc, log);
        // A gateway whose partition count differs from the cluster's refuses: it would route ids elsewhere.
        let refuse: (why: string) => void = () => {};
        const refused = new Promise<string>((resolve) => (refuse = resolve));
        const layout = await checkLayout(nc, config, `gateway ${config.gatewayIndex}`, log, LAYOUT_RECHECK_MS, (why) => {
          log.error(why);
          refuse('its partitions differ from the cluster\'s');
        });
        const natsUp = natsHealth(nc);
        let gateway: Awaited<ReturnType<typeof createGateway>> | undefined;
        const admin = await adminHttp(config, 'gateway', log, nc, () => (gateway ? { registry: gateway.registry, ready: () => natsUp.probe() } : undefined));
        gateway = await createGateway({ nc, config, log });
        connectionMetrics(gateway.registry, { nats: () => natsUp.probe().ok });
        const g = gateway;
        return {
          ended: refused,
          async close() {
            layout.stop();
            await g.close();
            await admin.close();
            natsUp.stop();
            await nc.drain();
          },
        };
      });
      return;
    }
    case 'monitor': {
      const { runMonitor } = await import('./stack/monitor.js');
      await runMonitor(config, log);
      return;
    }
    case 'controller': {
      // A controller candidate of its own (workers run one each already): for deployments that keep placement
      // decisions out of the worker processes.
      const { startController } = await import('./placement/controller.js');
      const { openControlBucket } = await import('./placement/membership.js');
      await serve(log, async () => {
        const nc = await connectNats(config, 'controller');
        logNatsStatus(nc, log);
        await claimLayout(await openControlBucket(nc.jetstream(), config), config, 'controller', log);
        const controller = await startController({ nc, config, log, id: `controller-${process.pid}-${Date.now().toString(36)}` });
        return {
          async close() {
            await controller.close();
            await nc.drain();
          },
        };
      });
      return;
    }
    default:
      throw new ConfigError(`usage: main.js supervisor|worker|gateway|controller|monitor (got ${JSON.stringify(role)})`);
  }
}

main(process.argv[2]).catch((err) => {
  process.stderr.write(`${err instanceof ConfigError ? 'config error' : 'fatal'}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(err instanceof ConfigError ? 2 : 1);
});
