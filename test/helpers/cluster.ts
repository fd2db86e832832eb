/**
 * A dynamic-placement cluster for failover tests: real nats-server and redis-server, worker processes (or
 * in-process workers) with placement 'dynamic', and one gateway in the test process. Plus a checkout storm
 * and the audit that checks every answer against the committed state.
 */
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import type { Registry } from 'prom-client';
import type { Test } from 'tap';
import { readStatus, type StatusDetail } from '../../src/admin/status.js';
import type { Config } from '../../src/config.js';
import { createGateway } from '../../src/http/gateway.js';
import { createLog } from '../../src/log.js';
import { encode } from '../../src/codec.js';
import { names } from '../../src/protocol.js';
import { placementKey } from '../../src/placement/placement.js';
import { startServers, testConfig, waitFor, type TestServer } from './servers.js';
import { configEnv, spawnRole, type Child } from './stack.js';
import { pool } from './pool.js';
import { httpCall } from './http.js';

const SHOPCTL = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'admin', 'shopctl.js');

export interface Answer {
  status: number;
  body: any;
  /** performance.now() when the request was sent. */
  at: number;
  ms: number;
}

export interface Cluster {
  nats: TestServer;
  redis: TestServer;
  config: Readonly<Config>;
  nc: NatsConnection;
  url: string;
  /** The in-process gateway's metrics. */
  gatewayRegistry: Registry;
  call(method: 'GET' | 'POST', path: string): Promise<Answer>;
  /** A worker process with dynamic placement; SIGKILLed in teardown. */
  spawnWorker(index: number, extraEnv?: Record<string, string>): Child;
  status(): Promise<StatusDetail>;
  /** Every partition placed on a live worker that runs it at the placement epoch. */
  waitSettled(what: string, deadlineMs?: number): Promise<StatusDetail>;
  /** Runs the built shopctl with this cluster's settings. */
  shopctl(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
}

export async function startCluster(t: Test, overrides: Partial<Record<keyof Config, unknown>> = {}): Promise<Cluster> {
  const { nats, redis } = await startServers(t);
  const config = testConfig(nats, redis, { placement: 'dynamic', workerProcesses: 4, partitions: 8, requestDeadlineMs: 30_000, ...overrides });
  const nc = await connect({ servers: config.natsUrl });
  const gateway = await createGateway({ nc, config, log: createLog('gateway', config.logLevel) });
  t.teardown(async () => {
    await gateway.close();
    await nc.close();
  });
  const url = `http://127.0.0.1:${gateway.port}`;

  const status = () => readStatus(nc, config);
  return {
    nats,
    redis,
    config,
    nc,
    url,
    gatewayRegistry: gateway.registry,
    call(method, path) {
      return httpCall(url, method, path);
    },
    spawnWorker(index, extraEnv = {}) {
      const child = spawnRole('worker', { ...config, workerIndex: index }, extraEnv);
      t.teardown(() => child.kill('SIGKILL'));
      return child;
    },
    status,
    async waitSettled(what, deadlineMs = 15_000) {
      let last: StatusDetail | undefined;
      await waitFor(
        async () => {
          last = await status();
          return last.moving.size === 0 && last.status.partitions.every((p) => p.owner !== null && last!.workers.has(p.owner));
        },
        { deadlineMs, intervalMs: 50, what },
      );
      return last!;
    },
    shopctl(...args) {
      return new Promise((resolve) => {
        const child = spawn(process.execPath, [SHOPCTL, ...args], { env: { PATH: process.env.PATH ?? '', ...configEnv(config) }, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('exit', (code) => resolve({ code, stdout, stderr }));
      });
    },
  };
}

/** Resolves with the ms from `since` until every partition in `keys` answers a read (an owner serves it). */
export async function timeUntilServing(nc: NatsConnection, config: Config, keys: { kind: Config['kinds'][number]; partition: number }[], since: number, deadlineMs = 20_000): Promise<number> {
  const n = names(config.streamPrefix);
  const probe = encode({ k: 'find', id: 'no-such-id' });
  await Promise.all(
    keys.map(async ({ kind, partition }) => {
      for (;;) {
        if (performance.now() - since > deadlineMs) throw new Error(`${placementKey(kind, partition)} not served within ${deadlineMs} ms`);
        try {
          await nc.request(n.get(kind, partition), probe, { timeout: 200 });
          return;
        } catch {
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    }),
  );
  return performance.now() - since;
}

// ---- the checkout storm -------------------------------------------------------------------------------

export interface Shop {
  items: number;
  stock: number;
  users: number;
  credit: number;
  orders: number;
  price: number;
}

/** batch_init of items, users and orders (each order: two random lines of quantity 1). */
export async function seedShop(c: Pick<Cluster, 'call'>, shop: Shop): Promise<void> {
  for (const path of [
    `/stock/batch_init/${shop.items}/${shop.stock}/${shop.price}`,
    `/payment/batch_init/${shop.users}/${shop.credit}`,
    `/orders/batch_init/${shop.orders}/${shop.items}/${shop.users}/${shop.price}`,
  ]) {
    const r = await c.call('POST', path);
    if (r.status !== 200) throw new Error(`${path}: ${r.status} ${JSON.stringify(r.body)}`);
  }
}

export interface Storm {
  /** Stops starting checkouts; resolves with every answer once all in flight are answered. */
  stop(): Promise<Map<string, Answer>>;
  /** Answers so far. */
  readonly answers: Map<string, Answer>;
  /** Resolves once `n` more checkouts have been answered than when called (or every order has), within 30 s. */
  answered(n: number): Promise<void>;
}

/** `concurrency` loops checking out orders "0", "1", ... (each once, in that order) until stopped or out of orders. */
export function storm(c: Pick<Cluster, 'call'>, shop: Shop, concurrency = 32): Storm {
  const answers = new Map<string, Answer>();
  let next = 0;
  let stopped = false;
  const loops = Array.from({ length: concurrency }, async () => {
    while (!stopped && next < shop.orders) {
      const id = String(next++);
      try {
        answers.set(id, await c.call('POST', `/orders/checkout/${id}`));
      } catch (err) {
        answers.set(id, { status: 0, body: String(err), at: performance.now(), ms: 0 });
      }
    }
  });
  return {
    answers,
    answered(n) {
      const target = Math.min(answers.size + n, shop.orders);
      return waitFor(() => answers.size >= target, { deadlineMs: 30_000, intervalMs: 20, what: `the storm to answer ${n} more checkouts` });
    },
    async stop() {
      stopped = true;
      await Promise.all(loops);
      return answers;
    },
  };
}

export interface Audit {
  checkouts: number;
  paid: number;
  refused: number;
  /** 5xx, or no HTTP answer at all. */
  failed: number;
  /** Checkouts whose answer disagrees with the committed order (200 but unpaid, 400 but paid). */
  wrong: number;
  stockConserved: boolean;
  creditConserved: boolean;
  p99Ms: number;
  maxMs: number;
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** p99 of the requests that were in flight during any of `windows` ([start, end] in performance.now() ms). */
export function p99During(answers: Map<string, Answer>, windows: [number, number][]): { p99Ms: number; requests: number } {
  const during = [...answers.values()].filter((a) => windows.some(([s, e]) => a.at <= e && a.at + a.ms >= s)).map((a) => a.ms);
  return { p99Ms: Math.round(percentile(during, 99)), requests: during.length };
}

/** Reads back every checked-out order, every item and every user, and checks the answers against them. */
export async function audit(c: Pick<Cluster, 'call'>, shop: Shop, answers: Map<string, Answer>): Promise<Audit> {
  let paid = 0;
  let refused = 0;
  let failed = 0;
  let wrong = 0;
  let soldUnits = 0;
  let spent = 0;
  const checked = [...answers];
  const orders = await pool(checked, 32, async ([id]) => (await c.call('GET', `/orders/find/${id}`)).body as { paid: boolean; items: [string, number][]; total_cost: number });
  checked.forEach(([, answer], i) => {
    const order = orders[i]!;
    if (answer.status === 200) paid++;
    else if (answer.status === 400) refused++;
    else failed++;
    if ((answer.status === 200) !== order.paid || (answer.status !== 200 && answer.status !== 400)) wrong += answer.status >= 500 || answer.status === 0 ? 0 : 1;
    if (order.paid) {
      soldUnits += order.items.reduce((sum, [, q]) => sum + q, 0);
      spent += order.total_cost;
    }
  });
  const ids = (n: number) => Array.from({ length: n }, (_, i) => String(i));
  const stocks = await pool(ids(shop.items), 32, async (id) => (await c.call('GET', `/stock/find/${id}`)).body.stock as number);
  const credits = await pool(ids(shop.users), 32, async (id) => (await c.call('GET', `/payment/find_user/${id}`)).body.credit as number);
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const latencies = checked.map(([, a]) => a.ms);
  return {
    checkouts: checked.length,
    paid,
    refused,
    failed,
    wrong,
    stockConserved: sum(stocks) + soldUnits === shop.items * shop.stock,
    creditConserved: sum(credits) + spent === shop.users * shop.credit,
    p99Ms: Math.round(percentile(latencies, 99)),
    maxMs: Math.round(Math.max(0, ...latencies)),
  };
}
