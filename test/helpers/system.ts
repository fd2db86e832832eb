import { Redis } from 'ioredis';
import { connect } from 'nats';
import type { Registry } from 'prom-client';
import type { Test } from 'tap';
import { LEDGER } from '../../src/actors/saga.js';
import type { Config } from '../../src/config.js';
import { partitionKeyTag } from '../../src/datapath/store-scripts.js';
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

/**
 * How many saga ledger entries every stock and payment partition of `config` holds in Redis right now (0 once every
 * saga has ended and its forgets have arrived). Its Redis connection is closed in `t`'s teardown.
 */
export function ledgerEntries(t: Test, config: Pick<Config, 'redisUrl' | 'redisPrefix' | 'partitions'>): () => Promise<number> {
  const redis = new Redis(config.redisUrl);
  t.teardown(() => redis.quit());
  const keys = (['stock', 'payment'] as const).flatMap((kind) => Array.from({ length: config.partitions }, (_, p) => `${partitionKeyTag(config.redisPrefix, kind, p)}:t:${LEDGER}`));
  return async () => (await Promise.all(keys.map((k) => redis.hlen(k)))).reduce((a, b) => a + b, 0);
}
