import { Redis } from 'ioredis';
import { connect } from 'nats';
import type { Registry } from 'prom-client';
import type { Test } from 'tap';
import type { Config } from '../../src/config.js';
import { createGateway } from '../../src/http/gateway.js';
import { createLog } from '../../src/log.js';
import { startWorker } from '../../src/placement/worker.js';
import { startServers, testConfig, type TestServer } from './servers.js';
import { httpCall, type HttpAnswer } from './http.js';

export interface System {
  nats: TestServer;
  redis: TestServer;
  config: Readonly<Config>;
  url: string;
  /** The gateway's metrics. */
  gatewayRegistry: Registry;
  /** fetch against the gateway: status, parsed JSON body (the raw text when not JSON), content type. */
  call(method: 'GET' | 'POST', path: string): Promise<HttpAnswer>;
}

/**
 * Real nats-server and redis-server, `workers` in-process workers (static placement) and one gateway on a free port.
 * Everything is stopped in teardown.
 */
export async function startSystem(t: Test, { workers = 2, overrides = {} }: { workers?: number; overrides?: Partial<Record<keyof Config, unknown>> } = {}): Promise<System> {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { workerProcesses: workers, ...overrides });
  const log = createLog('test', config.logLevel);
  for (let i = 0; i < workers; i++) {
    const nc = await connect({ servers: config.natsUrl });
    const r = new Redis(config.redisUrl, { maxRetriesPerRequest: null });
    const worker = await startWorker({ nc, redis: r, config: { ...config, workerIndex: i }, log });
    t.teardown(async () => {
      await worker.close();
      await nc.close();
      r.disconnect();
    });
  }
  const gnc = await connect({ servers: config.natsUrl });
  const gateway = await createGateway({ nc: gnc, config, log });
  t.teardown(async () => {
    await gateway.close();
    await gnc.close();
  });
  const url = `http://127.0.0.1:${gateway.port}`;
  return {
    nats,
    redis,
    config,
    url,
    gatewayRegistry: gateway.registry,
    call: (method, path) => httpCall(url, method, path),
  };
}
