/**
 * The HTTP side besides the load loop: the connection pool, batch_init before the run, and reading
 * orders, items and users back for the audit with bounded concurrency.
 */
import { Client, Pool, type Dispatcher } from 'undici';
import type { AuditInput, OrderView } from './audit.js';
import { PRIME_ITEMS, PRIME_ORDERS, PRIME_STOCK, type AuditPlan, type SetupStep } from './scenarios.js';

/** batch_init of 100,000 records is one request that may take a while on a loaded machine. */
export const SETUP_TIMEOUT_MS = 600_000;
/** Audit reads that get no answer, or a 5xx, are tried this many times in all. */
const READ_ATTEMPTS = 3;
const READ_RETRY_PAUSE_MS = 200;

export interface Connections {
  /** Hands each request to a free connection: set-up, the open loop, the audit. */
  pool: Pool;
  /** The same connections one by one: a closed-loop worker keeps one for itself and skips the pool's search. */
  clients: Client[];
}

/**
 * Keep-alive connections, one request at a time on each (pipelining 1), as a browser or locust would. The pool
 * is made of the listed clients: undici's pool looks for a free one by walking its list on every request, which
 * at 256 connections cost the load loop more than a request's own bookkeeping.
 */
export function createConnections(url: string, connections: number, timeoutMs: number): Connections {
  const options = { pipelining: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 600_000, headersTimeout: timeoutMs, bodyTimeout: timeoutMs };
  const clients = Array.from({ length: connections }, () => new Client(url, options));
  let handedOut = 0;
  const pool = new Pool(url, { ...options, connections, factory: (origin, opts) => clients[handedOut++] ?? new Client(origin, opts) });
  return { pool, clients };
}

export interface Reply {
  status: number;
  /** Parsed JSON, or the raw text when it is not JSON. */
  body: unknown;
}

export async function call(d: Dispatcher, method: 'GET' | 'POST', path: string, timeoutMs: number): Promise<Reply> {
  const res = await d.request({ method, path, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  const text = await res.body.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text for the message
  }
  return { status: res.statusCode, body };
}

/** Runs the batch_inits in order; throws naming the step that failed. Returns each step's duration. */
export async function runSetup(d: Dispatcher, steps: readonly SetupStep[], log: (line: string) => void): Promise<{ what: string; ms: number }[]> {
  const timings: { what: string; ms: number }[] = [];
  for (const step of steps) {
    const t = performance.now();
    let reply: Reply;
    try {
      reply = await call(d, 'POST', step.path, SETUP_TIMEOUT_MS);
    } catch (err) {
      throw new Error(`setup: POST ${step.path} failed: ${(err as Error).message}. Is the system running (npm start), or use --start?`);
    }
    if (reply.status < 200 || reply.status >= 300) {
      throw new Error(`setup: POST ${step.path} answered ${reply.status} ${JSON.stringify(reply.body)}`);
    }
    const ms = Math.round(performance.now() - t);
    timings.push({ what: step.what, ms });
    log(`setup: ${step.what}: ${ms} ms`);
  }
  return timings;
}

/**
 * Opens the pool's connections before the load (one request per connection, all at once), so the first second
 * of the run measures the system rather than TCP handshakes. Any answer will do: it asks for an id that does not exist.
 */
export async function warmConnections(d: Dispatcher, connections: number, timeoutMs: number): Promise<number> {
  const t = performance.now();
  await mapLimit(connections, connections, () => call(d, 'GET', '/stock/find/bench-warm-up', timeoutMs).catch(() => undefined));
  return Math.round(performance.now() - t);
}

/**
 * The saga primer's entities (bench/scenarios.ts, sagaPrimer): one user without credit, PRIME_ITEMS items with stock,
 * PRIME_ORDERS orders of two different items each, drawn with `random`. Returns the orders' ids.
 */
export async function primeOrders(d: Dispatcher, timeoutMs: number, random: () => number): Promise<string[]> {
  const post = async (path: string, id?: string): Promise<string> => {
    const reply = await call(d, 'POST', path, timeoutMs);
    const made = id === undefined ? '' : (reply.body as Record<string, unknown> | null)?.[id];
    if (reply.status !== 200 || typeof made !== 'string') throw new Error(`prime: POST ${path} answered ${reply.status} ${JSON.stringify(reply.body)}`);
    return made;
  };
  const user = await post('/payment/create_user', 'user_id');
  const items = await mapLimit(PRIME_ITEMS, PRIME_CONCURRENCY, async () => {
    const item = await post('/stock/item/create/1', 'item_id');
    await post(`/stock/add/${item}/${PRIME_STOCK}`);
    return item;
  });
  return mapLimit(PRIME_ORDERS, PRIME_CONCURRENCY, async () => {
    const order = await post(`/orders/create/${user}`, 'order_id');
    const a = Math.floor(random() * items.length);
    const b = (a + 1 + Math.floor(random() * (items.length - 1))) % items.length;
    for (const item of [items[a]!, items[b]!]) await post(`/orders/addItem/${order}/${item}/1`);
    return order;
  });
}

/** Requests in flight while the primer makes its entities. */
const PRIME_CONCURRENCY = 64;

/** fn(0..count-1) with at most `concurrency` calls in flight; results by index. */
export async function mapLimit<T>(count: number, concurrency: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const results = new Array<T>(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      results[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return results;
}

/** A record read back, or undefined when the API does not know it (400) or never answered. */
async function read(d: Dispatcher, path: string, timeoutMs: number): Promise<unknown> {
  for (let attempt = 1; ; attempt++) {
    try {
      const reply = await call(d, 'GET', path, timeoutMs);
      if (reply.status === 200) return reply.body;
      if (reply.status < 500 || attempt >= READ_ATTEMPTS) return undefined;
    } catch {
      if (attempt >= READ_ATTEMPTS) return undefined;
    }
    await new Promise((r) => setTimeout(r, READ_RETRY_PAUSE_MS));
  }
}

function isOrder(body: unknown): body is OrderView {
  const o = body as Partial<OrderView> | undefined;
  return typeof o?.paid === 'boolean' && Array.isArray(o.items) && typeof o.user_id === 'string' && typeof o.total_cost === 'number';
}

/** Reads orders, items and users "0".."n-1" of the plan back; `progress` hears each read. */
export async function readAuditInput(d: Dispatcher, plan: AuditPlan, concurrency: number, timeoutMs: number, progress: () => void = () => {}): Promise<AuditInput> {
  const orders = await mapLimit(plan.orders, concurrency, async (i) => {
    const body = await read(d, `/orders/find/${i}`, timeoutMs);
    progress();
    return isOrder(body) ? body : undefined;
  });
  const missing: string[] = [];
  /** ids "0".."count-1" -> the number `field` of each record; a record without it is missing. */
  const numbers = async (count: number, path: string, field: string, what: string) => {
    const found = new Map<string, number>();
    await mapLimit(count, concurrency, async (i) => {
      const body = (await read(d, `${path}${i}`, timeoutMs)) as Record<string, unknown> | undefined;
      progress();
      const value = body?.[field];
      if (typeof value === 'number') found.set(String(i), value);
      else missing.push(`${what} ${i}`);
    });
    return found;
  };
  const stock = await numbers(plan.items, '/stock/find/', 'stock', 'item');
  const credit = await numbers(plan.users, '/payment/find_user/', 'credit', 'user');
  return { orders, stock, credit, missing, initialStock: plan.initialStock, initialCredit: plan.initialCredit, outcomes: plan.outcomes };
}
