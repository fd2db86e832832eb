#!/usr/bin/env node
/** One build, one entry point: the role (supervisor, worker, gateway) comes from the command line. */
import { Redis } from 'ioredis';
import { connect } from 'nats';
import { ConfigError, loadConfig, type Config } from './config.js';
import { createLog, type Log } from './log.js';

type Lifecycle = 'starting' | 'ready' | 'draining' | 'closed';

/** Runs a role until SIGINT/SIGTERM, then closes it in order. The state changes in one place, logged. */
async function serve(log: Log, start: () => Promise<{ close(): Promise<void> }>): Promise<void> {
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
}

function connectNats(config: Config, name: string) {
  return connect({ servers: config.natsUrl, name, maxReconnectAttempts: -1 });
}

async function connectRedis(config: Config): Promise<Redis> {
  // maxRetriesPerRequest null: a command waits through a Redis restart instead of failing a batch commit.
  const redis = new Redis(config.redisUrl, { lazyConnect: true, maxRetriesPerRequest: null });
  await redis.connect();
  return redis;
}

async function main(role: string | undefined): Promise<void> {
  const config = loadConfig();
  switch (role) {
    case 'supervisor': {
      const { runSupervisor } = await import('./supervisor.js');
      await runSupervisor(config, createLog('supervisor', config.logLevel));
      return;
    }
    case 'worker': {
      const log = createLog(`worker-${config.workerIndex}`, config.logLevel);
      const { startWorker } = await import('./runtime/worker.js');
      await serve(log, async () => {
        const nc = await connectNats(config, `worker-${config.workerIndex}`);
        const redis = await connectRedis(config);
        const worker = await startWorker({ nc, redis, config, log });
        return {
          async close() {
            await worker.close();
            await nc.drain();
            await redis.quit();
          },
        };
      });
      return;
    }
    case 'gateway': {
      const log = createLog(`gateway-${process.pid}`, config.logLevel);
      const { createGateway } = await import('./http/gateway.js');
      await serve(log, async () => {
        const nc = await connectNats(config, 'gateway');
        const gateway = await createGateway({ nc, config, log });
        return {
          async close() {
            await gateway.close();
            await nc.drain();
          },
        };
      });
      return;
    }
    default:
      throw new ConfigError(`usage: main.js supervisor|worker|gateway (got ${JSON.stringify(role)})`);
  }
}

main(process.argv[2]).catch((err) => {
  process.stderr.write(`${err instanceof ConfigError ? 'config error' : 'fatal'}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(err instanceof ConfigError ? 2 : 1);
});
