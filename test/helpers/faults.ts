/**
 * Fault tests on the production topology: a shop of real processes shaped like the cluster profile (3 clustered
 * nats-servers with R3 streams and buckets, a Redis primary with the profile's two replicas and 3 Sentinels and every
 * commit WAITed by one replica, 3 workers with dynamic placement and the profile's lease, heartbeats and pings, 2 gateways, every
 * process with its own user), a storm of checkouts with stock and credit top-ups that records every answer with its
 * time, the audit per item, per user and per order, and the unavailability measured around each fault.
 *
 * The test plays the supervisor for workers and gateways: a process that exits is started again at once (as
 * `npm start` does, after its 0.5 s backoff). What each fault test does to the servers (kill, pause, cut, restart) it
 * does itself, with the helpers of ha.ts and netns.ts.
 */
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NatsConnection } from 'nats';
import type { Test } from 'tap';
import { readStatus, type StatusDetail } from '../../src/admin/status.js';
import { loadConfig, type Config, type Kind } from '../../src/config.js';
import { connectNats } from '../../src/transport/connect.js';
import { partitionOf } from '../../src/partitioning.js';
import { names } from '../../src/protocol.js';
import { placementKey } from '../../src/placement/placement.js';
import { replicasOnline } from '../../src/stack/topology.js';
import { seedShop, type Shop } from './cluster.js';
import { httpCall } from './http.js';
import { pool } from './pool.js';
import { startNatsCluster, startRedisHA, type NatsCluster, type RedisHA } from './ha.js';
import { startNetLab, type NetLab } from './netns.js';
import { freePort, testConfig, testUsers, waitFor, type TestUsers } from './servers.js';
import { spawnRole, type Child } from './stack.js';

// ---- the topology ------------------------------------------------------------------------------------

/** A worker or gateway process that the test (as the supervisor would) starts again whenever it exits. */
export interface Proc {
  readonly role: 'worker' | 'gateway';
  readonly index: number;
  /** The process running now (a new one after each exit). */
  readonly child: Child;
  readonly pid: number;
  /** Exits it did not ask for (a worker that lost its lease, say), with the end of that process's output. */
  readonly unexpectedExits: string[];
  /** Sends a signal to the running process; an exit SIGKILL or SIGTERM causes is expected (the process is started again). */
  signal(sig: NodeJS.Signals): void;
  /** The next exit is expected (a paused worker that finds its lease lost when it resumes). */
  expectExit(): void;
  /** Resolves once the process running now has exited and a new one was started. */
  replaced(): Promise<void>;
}

export interface FaultShop {
  nats: NatsCluster;
  redis: RedisHA;
  /** The network namespaces the nats-servers run in, or why there are none (then a cut is a SIGSTOP). */
  lab: NetLab | undefined;
  labUnavailable: string | undefined;
  /** The workers' settings (gateways get their own user and index). */
  config: Readonly<Config>;
  workers: Proc[];
  gateways: Proc[];
  /** http://127.0.0.1:<port> of each gateway. */
  gatewayUrls: string[];
  /** The test's own connection, as the admin user. */
  look: NatsConnection;
  /** shopctl status, read over an admin connection. */
  status(): Promise<StatusDetail>;
  /**
   * Resolves once every partition runs on a live worker at its placement epoch, on `workers` workers (default all),
   * none of them `without` (a worker id: one that was killed, whose last heartbeat is still within its lease).
   */
  settled(what: string, opts?: { workers?: number; without?: string; deadlineMs?: number }): Promise<StatusDetail>;
  /** Resolves once the shop is whole again: streams caught up, the Redis replicas online, every partition placed and running. */
  whole(what: string): Promise<void>;
}

const READY_DEADLINE_MS = 60_000;
/** How long the topology may take to be whole again after a fault was lifted. */
export const RECOVERY_DEADLINE_MS = 60_000;

/**
 * The shop on the production topology; `netns`: run each nats-server in a network namespace of its own (when the
 * test can make them; else `labUnavailable` says why). Redis as the profile has it: its replicas, its Sentinels and
 * their down-after.
 */
export async function startFaultShop(t: Test, { netns = false, partitions = 8 }: { netns?: boolean; partitions?: number } = {}): Promise<FaultShop> {
  const profile = loadConfig({ SHOP_PROFILE: 'cluster' });
  const users: TestUsers = testUsers();
  let lab: NetLab | undefined;
  let labUnavailable: string | undefined;
  if (netns) {
    const made = await startNetLab(t, 3);
    if ('unavailable' in made) labUnavailable = made.unavailable;
    else lab = made;
  }
  const [nats, redis] = await Promise.all([
    startNatsCluster(t, { users, ...(lab ? { lab } : {}) }),
    startRedisHA(t, { users, replicas: profile.redisReplicas, sentinels: profile.sentinelNodes, downAfterMs: profile.sentinelDownAfterMs }),
  ]);
  const config = testConfig({ url: nats.url, port: nats.nodes[0]!.port }, redis.nodes[0]!, {
    ...redis.settings(),
    natsUser: users.worker.user,
    natsPassword: users.worker.password,
    redisWaitReplicas: profile.redisWaitReplicas,
    redisWaitTimeoutMs: profile.redisWaitTimeoutMs,
    placement: 'dynamic',
    streamReplicas: 3,
    partitions,
    workerProcesses: profile.workerProcesses,
    gatewayProcesses: profile.gatewayProcesses,
    heartbeatIntervalMs: profile.heartbeatIntervalMs,
    workerLeaseMs: profile.workerLeaseMs,
    natsPingIntervalMs: profile.natsPingIntervalMs,
    requestDeadlineMs: profile.requestDeadlineMs,
    readDeadlineMs: profile.readDeadlineMs,
    trimIntervalMs: profile.trimIntervalMs,
    logLevel: 'info',
    logFormat: 'json',
  });
  const gatewayPorts = await Promise.all(Array.from({ length: config.gatewayProcesses }, () => freePort()));
  const gatewayLogins = [users.gateway, users.gateway2];
  const workers = Array.from({ length: config.workerProcesses }, (_, i) => supervise(t, 'worker', i, { ...config, workerIndex: i }));
  const gateways = gatewayPorts.map((port, j) =>
    supervise(t, 'gateway', j, {
      ...config,
      gatewayIndex: j,
      httpPort: port,
      httpHost: '127.0.0.1',
      natsUser: gatewayLogins[j]!.user,
      natsPassword: gatewayLogins[j]!.password,
      // A gateway never sees Redis's or the Sentinels' passwords.
      redisPassword: '',
      redisSentinelPassword: '',
    }),
  );
  const gatewayUrls = gatewayPorts.map((p) => `http://127.0.0.1:${p}`);

  // The test's own look at the buckets and streams, as the admin user (the others may not read them).
  const look: NatsConnection = await connectNats({ ...config, natsUser: users.admin.user, natsPassword: users.admin.password }, 'fault-test');
  t.teardown(() => look.close());
  const status = () => readStatus(look, config);
  const settled = async (what: string, { workers: count = config.workerProcesses, without, deadlineMs = RECOVERY_DEADLINE_MS }: { workers?: number; without?: string; deadlineMs?: number } = {}) => {
    let last: StatusDetail | undefined;
    await waitFor(
      async () => {
        last = await status();
        const live = [...last.workers.keys()].filter((id) => id !== without);
        return live.length === count && last.moving.size === 0 && last.status.partitions.every((p) => p.owner !== null && p.owner !== without && last!.workers.has(p.owner));
      },
      { deadlineMs, intervalMs: 200, what: `${what} (last status: ${last ? `${last.workers.size} workers, moving ${[...last.moving].join(' ') || 'none'}` : 'none'})` },
    );
    return last!;
  };
  const shop: FaultShop = {
    nats,
    redis,
    lab,
    labUnavailable,
    config,
    workers,
    gateways,
    gatewayUrls,
    look,
    status,
    settled,
    async whole(what) {
      await nats.caughtUp(undefined, RECOVERY_DEADLINE_MS);
      await waitFor(async () => replicasOnline((await redis.primary()).port, redis.nodes.length - 1, redis.worker), {
        deadlineMs: RECOVERY_DEADLINE_MS,
        intervalMs: 200,
        what: `${what}: the Redis primary to have its ${redis.nodes.length - 1} replicas online`,
      });
      await settled(`${what}: every partition running`);
      await Promise.all(gatewayUrls.map((url) => waitFor(async () => (await fetch(`${url}/stock/find/none`)).status === 400, { deadlineMs: RECOVERY_DEADLINE_MS, what: `${what}: gateway ${url} to answer` })));
    },
  };
  await settled('the workers to take every partition', { deadlineMs: READY_DEADLINE_MS });
  await Promise.all(gatewayUrls.map((url) => waitFor(async () => (await fetch(`${url}/stock/find/none`)).status === 400, { deadlineMs: READY_DEADLINE_MS, what: `gateway ${url} to answer` })));
  return shop;
}

/** The message of the last error a process logged (its reason to exit, as a rule). */
function lastError(output: string): string {
  const line = output.trim().split('\n').reverse().find((l) => l.includes('"level":"error"') || l.includes('"level":"fatal"'));
  try {
    return line ? String((JSON.parse(line) as { msg?: string }).msg) : 'no error logged';
  } catch {
    return line!.slice(0, 200);
  }
}

/**
 * With SHOP_FAULT_LOG_DIR set, every worker's and gateway's whole output is kept there when it exits (one file per
 * role and index, each process appended): what a run that passed slowly did.
 */
function keepOutput(role: string, index: number, c: Child): void {
  const dir = process.env.SHOP_FAULT_LOG_DIR;
  if (dir) appendFileSync(join(dir, `${role}-${index}.log`), c.output());
}

/** A worker or gateway process, started again whenever it exits (as the supervisor would), SIGKILLed in teardown. */
function supervise(t: Test, role: 'worker' | 'gateway', index: number, config: Config): Proc {
  let child = spawnRole(role, config);
  let stopping = false;
  let expected = 0;
  const unexpectedExits: string[] = [];
  let waiters: (() => void)[] = [];
  const follow = (c: Child) => {
    void c.exited.then((how) => {
      keepOutput(role, index, c);
      if (stopping) return;
      if (expected > 0) expected--;
      else unexpectedExits.push(`${role} ${index} exited (${how}) at ${Math.round(performance.now())} ms: ${lastError(c.output())}`);
      child = spawnRole(role, config);
      follow(child);
      const w = waiters;
      waiters = [];
      for (const resolve of w) resolve();
    });
  };
  follow(child);
  t.teardown(async () => {
    stopping = true;
    await child.kill('SIGKILL');
  });
  return {
    role,
    index,
    get child() {
      return child;
    },
    get pid() {
      return child.process.pid!;
    },
    unexpectedExits,
    signal(sig) {
      if (sig === 'SIGKILL' || sig === 'SIGTERM') expected++;
      child.process.kill(sig);
    },
    expectExit() {
      expected++;
    },
    replaced() {
      return new Promise<void>((resolve) => waiters.push(resolve));
    },
  };
}

// ---- the storm ---------------------------------------------------------------------------------------

export type Op = 'checkout' | 'add' | 'funds';

/** One request of the storm and its answer. Times are performance.now() ms. */
export interface Req {
  op: Op;
  /** The order, item or user. */
  id: string;
  /** Units or credit added (top-ups). */
  amount: number;
  /** The gateway asked first (a refused connection sends the request on to the next one). */
  gateway: number;
  sent: number;
  /** When the answer (or the error) came; undefined while it waits. */
  done?: number;
  /** HTTP status; 0: no HTTP answer (connection refused or reset, or the client's own timeout). */
  status?: number;
  /** The error code of a 4xx/5xx, or the connection error. */
  error?: string;
}

/** A request with an unknown outcome: 5xx, or no answer. Its effect is decided by the final state. */
export const unknownOutcome = (r: Req) => r.status === undefined || r.status === 0 || r.status >= 500;
/** A request answered with its outcome: 2xx, or a business refusal (4xx). */
export const answered = (r: Req) => r.status !== undefined && r.status > 0 && r.status < 500;

export interface StormOptions {
  /** Requests per second, sent on schedule whatever is still waiting (an open loop). */
  rate?: number;
  /** Most requests waiting at once; the schedule waits beyond it. */
  inFlightMax?: number;
}

/** How long the storm's client waits for one answer before it counts the request as unanswered. */
const CLIENT_TIMEOUT_MS = 60_000;
/** Shares of the storm: checkouts (of which a quarter check out an order again), stock top-ups, credit top-ups. */
const CHECKOUT_SHARE = 0.7;
const ADD_SHARE = 0.15;
const AGAIN_SHARE = 0.25;

export interface Storm {
  readonly requests: readonly Req[];
  /** Requests not yet answered. */
  waiting(): number;
  /**
   * Resolves once the storm is healthy again after `since`: at least `ok` requests sent after it were answered with
   * their outcome, and nothing sent after it waits longer than `stuckMs`.
   */
  healthy(since: number, what: string, opts?: { ok?: number; stuckMs?: number; deadlineMs?: number }): Promise<number>;
  /** Stops sending; resolves once every request has its answer. */
  stop(): Promise<Req[]>;
}

/**
 * An open-loop storm against the gateways, alternating between them: a request whose connection is refused (that
 * gateway is down: nothing was sent) goes to the next gateway, as a proxy would; any other failure is an unknown
 * outcome. Checkouts of fresh orders and of orders checked out before, stock `add`s and credit `add_funds`.
 */
export function startStorm(urls: string[], shop: Shop, { rate = 200, inFlightMax = 3000 }: StormOptions = {}): Storm {
  const requests: Req[] = [];
  const checkedOut: string[] = [];
  let nextOrder = 0;
  let nextGateway = 0;
  let inFlight = 0;
  let stopped = false;
  const pending = new Set<Promise<void>>();
  const random = (n: number) => Math.floor(Math.random() * n);

  async function send(req: Req): Promise<void> {
    const path = req.op === 'checkout' ? `/orders/checkout/${req.id}` : req.op === 'add' ? `/stock/add/${req.id}/${req.amount}` : `/payment/add_funds/${req.id}/${req.amount}`;
    for (let tries = 0; tries < urls.length; tries++) {
      try {
        const res = await fetch(urls[(req.gateway + tries) % urls.length]! + path, { method: 'POST', signal: AbortSignal.timeout(CLIENT_TIMEOUT_MS) });
        const text = await res.text();
        req.status = res.status;
        if (res.status >= 400) req.error = errorCode(text);
        if (req.op === 'checkout' && res.status < 500) checkedOut.push(req.id);
        break;
      } catch (err) {
        const code = errCode(err);
        if (code === 'ECONNREFUSED' && tries + 1 < urls.length) continue; // nothing reached that gateway: ask the next
        req.status = 0;
        req.error = code;
        break;
      }
    }
    req.done = performance.now();
  }

  function next(): Req {
    const gateway = nextGateway++ % urls.length;
    const sent = performance.now();
    const dice = Math.random();
    if (dice < CHECKOUT_SHARE) {
      const again = checkedOut.length > 0 && (Math.random() < AGAIN_SHARE || nextOrder >= shop.orders);
      const id = again ? checkedOut[random(checkedOut.length)]! : String(nextOrder++);
      return { op: 'checkout', id, amount: 0, gateway, sent };
    }
    if (dice < CHECKOUT_SHARE + ADD_SHARE) return { op: 'add', id: String(random(shop.items)), amount: 1 + random(15), gateway, sent };
    return { op: 'funds', id: String(random(shop.users)), amount: 1 + random(15), gateway, sent };
  }

  const started = performance.now();
  let scheduled = 0;
  const TICK_MS = 5;
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - started) * rate) / 1000);
    while (!stopped && scheduled < due && inFlight < inFlightMax) {
      scheduled++;
      const req = next();
      requests.push(req);
      inFlight++;
      const p = send(req).finally(() => {
        inFlight--;
        pending.delete(p);
      });
      pending.add(p);
    }
    // Behind by more than a second of requests (the in-flight cap): the schedule starts again from now.
    if (due - scheduled > rate) scheduled = due;
  }, TICK_MS);

  return {
    requests,
    waiting: () => inFlight,
    async healthy(since, what, { ok = 50, stuckMs = 1000, deadlineMs = RECOVERY_DEADLINE_MS } = {}) {
      await waitFor(
        () => {
          const now = performance.now();
          let good = 0;
          for (let i = requests.length - 1; i >= 0 && requests[i]!.sent >= since; i--) {
            const r = requests[i]!;
            if (r.done === undefined && now - r.sent > stuckMs) return false;
            if (r.done !== undefined && answered(r)) good++;
          }
          // Nothing older waits either.
          for (const r of requests) if (r.done === undefined && r.sent < since) return false;
          return good >= ok;
        },
        { deadlineMs, intervalMs: 50, what: `the storm to be healthy again ${what} (${inFlight} requests waiting)` },
      );
      return performance.now();
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      await Promise.all([...pending]);
      return requests;
    },
  };
}

function errCode(err: unknown): string {
  const e = err as { name?: string; cause?: { code?: string; name?: string } };
  if (e.name === 'TimeoutError') return 'client timeout';
  return e.cause?.code ?? e.cause?.name ?? e.name ?? 'error';
}

function errorCode(text: string): string {
  try {
    return (JSON.parse(text) as { error?: string }).error ?? text.slice(0, 40);
  } catch {
    return text.slice(0, 40);
  }
}

// ---- the audit ---------------------------------------------------------------------------------------

export interface OrderState {
  paid: boolean;
  items: [string, number][];
  total_cost: number;
  user_id: string;
}

export interface AuditResult {
  requests: number;
  checkouts: number;
  paid: number;
  refused: number;
  /** 5xx or no answer. */
  unknown: number;
  /** Findings: each a sentence naming the order, item or user. Empty when everything holds. */
  violations: string[];
  /** The orders as read back (for who touched which partition). */
  orders: Map<string, OrderState>;
}

/**
 * Longest an audit waits for units held by sagas that already answered to come back: a participant that holds for
 * a saga that has ended (a reserve re-sent that arrived after the saga's forget) answers, and the coordinator gives
 * the hold back; if a fault lost that answer, the ledger's reminder sends it again after 10 s, then after up to 60 s
 * (actors/saga.ts). Such units are held, not lost; units still missing after this long are.
 */
export const AUDIT_SETTLE_MS = 75_000;

/**
 * auditStorm, and while its only findings are units or credit short (what a hold still being given back looks
 * like), again every second until they are gone or `settleMs` has passed. Says in a comment what was short at
 * first and how long it took; any other finding (units invented, an answer that does not hold) is returned at once.
 */
export async function auditSettled(t: Test, url: string, shop: Shop, requests: readonly Req[], settleMs = AUDIT_SETTLE_MS): Promise<AuditResult> {
  const short = (v: string) => / lost$/.test(v);
  const started = performance.now();
  let audit = await auditStorm(url, shop, requests);
  const first = audit.violations;
  if (first.length === 0 || !first.every(short)) return audit;
  await waitFor(
    async () => {
      audit = await auditStorm(url, shop, requests);
      return audit.violations.length === 0 || !audit.violations.every(short);
    },
    { what: 'the units and credit short after the storm to come back', deadlineMs: settleMs, intervalMs: 1000 },
  ).catch(() => undefined); // still short: the caller's assertion shows what
  const comeBack = audit.violations.length === 0 ? `all back ${Math.round(performance.now() - started)} ms after the storm (held, not lost)` : `still short after ${settleMs} ms`;
  t.comment(`short right after the storm (${first.length}), ${comeBack}: ${first.slice(0, 3).join('; ')}${first.length > 3 ? '; …' : ''}`);
  return audit;
}

/**
 * Reads back every order the storm checked out, every item and every user, and checks:
 * - per item: final stock = initial + acknowledged adds − units of paid orders, plus at most the adds of unknown
 *   outcome (each either applied or not); per user likewise with credit, funds and the totals of paid orders;
 * - every order answered 2xx is paid; no checkout sent after a 2xx of its order was answered 4xx; an order whose
 *   checkouts were all answered 4xx is not paid.
 */
export async function auditStorm(url: string, shop: Shop, requests: readonly Req[]): Promise<AuditResult> {
  const get = async (path: string) => {
    for (let attempt = 0; ; attempt++) {
      const r = await fetch(url + path);
      if (r.status === 200) return (await r.json()) as any;
      if (attempt >= 20) throw new Error(`GET ${path}: ${r.status} ${await r.text()}`);
      await new Promise((resolve) => setTimeout(resolve, 250)); // a read of a partition between owners: asked again
    }
  };
  const orderIds = [...new Set(requests.filter((r) => r.op === 'checkout').map((r) => r.id))];
  const orderStates = await pool(orderIds, 32, (id) => get(`/orders/find/${id}`) as Promise<OrderState>);
  const orders = new Map(orderIds.map((id, i) => [id, orderStates[i]!]));
  const ids = (n: number) => Array.from({ length: n }, (_, i) => String(i));
  const stocks = await pool(ids(shop.items), 32, async (id) => (await get(`/stock/find/${id}`)).stock as number);
  const credits = await pool(ids(shop.users), 32, async (id) => (await get(`/payment/find_user/${id}`)).credit as number);

  const violations: string[] = [];
  const expectStock = new Map(ids(shop.items).map((id) => [id, { low: shop.stock, unknown: 0 }]));
  const expectCredit = new Map(ids(shop.users).map((id) => [id, { low: shop.credit, unknown: 0 }]));
  for (const r of requests) {
    if (r.op === 'checkout') continue;
    const e = (r.op === 'add' ? expectStock : expectCredit).get(r.id)!;
    if (r.status !== undefined && r.status >= 200 && r.status < 300) e.low += r.amount;
    else if (unknownOutcome(r)) e.unknown += r.amount;
    else violations.push(`${r.op} ${r.amount} to ${r.id} answered ${r.status} ${r.error}`); // a top-up is never refused
  }
  for (const [, order] of orders) {
    if (!order.paid) continue;
    for (const [item, qty] of order.items) expectStock.get(item)!.low -= qty;
    expectCredit.get(order.user_id)!.low -= order.total_cost;
  }
  ids(shop.items).forEach((id, i) => {
    const { low, unknown } = expectStock.get(id)!;
    const have = stocks[i]!;
    if (have < low) violations.push(`item ${id}: stock ${have}, expected at least ${low}: ${low - have} units lost`);
    if (have > low + unknown) violations.push(`item ${id}: stock ${have}, expected at most ${low + unknown}: ${have - low - unknown} units invented`);
  });
  ids(shop.users).forEach((id, i) => {
    const { low, unknown } = expectCredit.get(id)!;
    const have = credits[i]!;
    if (have < low) violations.push(`user ${id}: credit ${have}, expected at least ${low}: ${low - have} lost`);
    if (have > low + unknown) violations.push(`user ${id}: credit ${have}, expected at most ${low + unknown}: ${have - low - unknown} invented`);
  });

  const byOrder = new Map<string, Req[]>();
  for (const r of requests) if (r.op === 'checkout') byOrder.set(r.id, [...(byOrder.get(r.id) ?? []), r]);
  let paid = 0;
  let refused = 0;
  for (const [id, list] of byOrder) {
    const order = orders.get(id)!;
    const ok = list.filter((r) => r.status! >= 200 && r.status! < 300);
    if (ok.length > 0 && !order.paid) violations.push(`order ${id}: answered ${ok[0]!.status} but not paid`);
    const firstOk = Math.min(...ok.map((r) => r.done!));
    for (const r of list) {
      if (r.status! >= 400 && r.status! < 500 && r.sent > firstOk) violations.push(`order ${id}: a checkout sent after it was answered 2xx was answered ${r.status} ${r.error}`);
    }
    if (order.paid && list.every((r) => r.status! >= 400 && r.status! < 500)) violations.push(`order ${id}: paid, but every checkout of it was answered 4xx (${list.map((r) => r.error).join(', ')})`);
    for (const r of list) {
      if (r.status! >= 200 && r.status! < 300) paid++;
      else if (r.status! >= 400 && r.status! < 500) refused++;
    }
  }
  return {
    requests: requests.length,
    checkouts: requests.filter((r) => r.op === 'checkout').length,
    paid,
    refused,
    unknown: requests.filter(unknownOutcome).length,
    violations,
    orders,
  };
}

// ---- unavailability ----------------------------------------------------------------------------------

/** A request counts as stuck when it waited longer than this for an answer it then got. */
export const STUCK_MS = 1000;

export interface Window {
  /** Requests sent in the phase. */
  requests: number;
  /** Answered 5xx, or not at all. */
  failed: number;
  /** Answered with their outcome, but after more than STUCK_MS. */
  stuck: number;
  /** The longest stretch of time covered by failed or stuck requests (from send to answer), ms. */
  longestMs: number;
  /** The longest wait of any request of the phase, ms. */
  maxMs: number;
  /** What the failed requests were answered (status or error, with counts). */
  failures: string;
  /** The request that waited longest: what it was, through which gateway, and how it ended. */
  slowest: string;
}

/** The unavailability seen by `reqs`: failed and stuck requests, and the longest stretch they cover. */
const wait = (r: Req) => (r.done ?? performance.now()) - r.sent;
const describeReq = (r: Req | undefined) => (r ? `${r.op} ${r.id} via gateway ${r.gateway}: ${r.done === undefined ? 'still waiting' : `${r.status ?? 'no answer'}${r.error ? ` ${r.error}` : ''}`}` : 'none');

export function measure(reqs: readonly Req[]): Window {
  const bad = reqs.filter((r) => unknownOutcome(r) || r.done! - r.sent > STUCK_MS);
  const spans = bad.map((r) => [r.sent, r.done ?? performance.now()] as [number, number]).sort((a, b) => a[0] - b[0]);
  let longest = 0;
  let from = 0;
  let to = -Infinity;
  for (const [s, e] of spans) {
    if (s > to) [from, to] = [s, e];
    else to = Math.max(to, e);
    longest = Math.max(longest, to - from);
  }
  const failures = new Map<string, number>();
  for (const r of reqs.filter(unknownOutcome)) {
    const k = `${r.status ?? 'none'}${r.error ? ` ${r.error}` : ''}`;
    failures.set(k, (failures.get(k) ?? 0) + 1);
  }
  return {
    requests: reqs.length,
    failed: reqs.filter(unknownOutcome).length,
    stuck: bad.length - reqs.filter(unknownOutcome).length,
    longestMs: Math.round(longest),
    maxMs: Math.round(Math.max(0, ...reqs.map((r) => (r.done ?? performance.now()) - r.sent))),
    failures: [...failures].map(([k, n]) => `${n}× ${k}`).join(', ') || 'none',
    slowest: describeReq(reqs.reduce<Req | undefined>((a, r) => (!a || wait(r) > wait(a) ? r : a), undefined)),
  };
}

export const describeWindow = (w: Window) =>
  `${w.requests} requests: longest stretch of failed or stuck (> ${STUCK_MS} ms) requests ${w.longestMs} ms; ${w.failed} failed (${w.failures}), ${w.stuck} stuck; slowest ${w.maxMs} ms (${w.slowest})`;

/** The partitions (`<kind>.<p>`) a request touches: a checkout its order's, its items' and its user's. */
export function touches(r: Req, orders: Map<string, OrderState>, partitions: number): string[] {
  if (r.op === 'add') return [placementKey('stock', partitionOf(r.id, partitions))];
  if (r.op === 'funds') return [placementKey('payment', partitionOf(r.id, partitions))];
  const o = orders.get(r.id);
  const keys = [placementKey('order', partitionOf(r.id, partitions))];
  if (o) {
    for (const [item] of o.items) keys.push(placementKey('stock', partitionOf(item, partitions)));
    keys.push(placementKey('payment', partitionOf(o.user_id, partitions)));
  }
  return keys;
}

/** The id of the worker with this pid, as its heartbeat says. */
export const workerId = (status: StatusDetail, pid: number) => [...status.workers.values()].find((w) => w.heartbeat.pid === pid)?.heartbeat.id;

/** The partitions a worker (by pid) runs now, as `<kind>.<p>` keys. */
export function partitionsOf(status: StatusDetail, pid: number): Set<string> {
  const id = workerId(status, pid);
  return new Set(status.status.partitions.filter((p) => p.owner === id).map((p) => placementKey(p.kind as Kind, p.partition)));
}

/** What the shop looks like when a fault test gives up waiting: what waits, the status, the processes' warnings. */
async function diagnosis(shop: FaultShop, storm: Storm): Promise<string> {
  const now = performance.now();
  const waiting = storm.requests.filter((r) => r.done === undefined);
  const byWhat = new Map<string, number>();
  for (const r of waiting) byWhat.set(`${r.op} via gateway ${r.gateway}`, (byWhat.get(`${r.op} via gateway ${r.gateway}`) ?? 0) + 1);
  const lines = [`waiting: ${[...byWhat].map(([k, n]) => `${n}× ${k}`).join(', ') || 'none'}; oldest ${Math.round(now - Math.min(now, ...waiting.map((r) => r.sent)))} ms`];
  const parts = new Map<string, number>();
  for (const r of waiting) {
    const key = r.op === 'checkout' ? placementKey('order', partitionOf(r.id, shop.config.partitions)) : r.op === 'add' ? placementKey('stock', partitionOf(r.id, shop.config.partitions)) : placementKey('payment', partitionOf(r.id, shop.config.partitions));
    parts.set(key, (parts.get(key) ?? 0) + 1);
  }
  lines.push(`waiting per partition: ${[...parts].sort().map(([k, n]) => `${k}=${n}`).join(' ')}`);
  const sample = waiting.filter((r) => r.op === 'checkout').slice(0, 6);
  const found = await Promise.all(sample.map((r) => httpCall(shop.gatewayUrls[0]!, 'GET', `/orders/find/${r.id}`).then((a) => `${r.id} waited ${Math.round(now - r.sent)} ms: ${a.status} paid=${a.body?.paid}`, (e: Error) => `${r.id}: ${e.message}`)));
  lines.push(`waiting checkouts read back: ${found.join('; ')}`);
  try {
    const s = await shop.status();
    lines.push(`status: workers ${[...s.workers.keys()].join(' ')}; leader ${s.leader}; not running: ${s.status.partitions.filter((p) => p.state !== 'running').map((p) => `${p.kind}.${p.partition} ${p.state} (owner ${p.owner}, lag ${p.lag})`).join(', ') || 'none'}; lag: ${s.status.partitions.filter((p) => p.lag > 0).map((p) => `${p.kind}.${p.partition}=${p.lag}`).join(' ')}`);
  } catch (err) {
    lines.push(`status: ${(err as Error).message}`);
  }
  try {
    const jsm = await shop.look.jetstreamManager({ timeout: 2000 });
    for (const kind of shop.config.kinds) {
      const info = await jsm.streams.info(names(shop.config.streamPrefix).stream(kind));
      lines.push(`stream ${kind}: leader ${info.cluster?.leader}, replicas ${(info.cluster?.replicas ?? []).map((r) => `${r.name}${r.current ? '' : ' behind'}${r.offline ? ' offline' : ''}`).join(' ')}, last seq ${info.state.last_seq}, messages ${info.state.messages}`);
    }
  } catch (err) {
    lines.push(`streams: ${(err as Error).message}`);
  }
  for (const p of [...shop.workers, ...shop.gateways]) {
    const tail = p.child.output().trim().split('\n').filter((l) => !l.includes('"placed"')).slice(-25);
    lines.push(`--- ${p.role} ${p.index} (pid ${p.pid}):`, ...tail.map((l) => l.slice(0, 400)));
  }
  return lines.join('\n');
}

// ---- a sequence of faults under one storm --------------------------------------------------------------

/** What a fault did: when it began and was lifted, which requests it affected (when that can be told), and notes. */
export interface FaultRun {
  at: number;
  liftedAt: number;
  affected?: (r: Req, orders: Map<string, OrderState>) => boolean;
  notes?: string[];
}

export interface Fault {
  name: string;
  /** Applies the fault and lifts it (restarting, resuming, healing as the fault requires). */
  run(shop: FaultShop, storm: Storm): Promise<FaultRun>;
}

export interface FaultReport {
  name: string;
  all: Window;
  affected?: Window;
  others?: Window;
  /** From the fault until the storm was healthy again, ms. */
  recoveryMs: number;
  notes: string[];
}

/** The shop of the fault tests: few enough items and users that top-ups and refusals meet on the same ones. */
export const FAULT_SHOP: Shop = { items: 100, stock: 10, users: 100, credit: 10, orders: 50_000, price: 1 };

/**
 * Starts the shop, a storm, and runs `faults` one after the other, each once the shop is whole again and the storm
 * healthy; then stops the storm, audits, asserts that nothing was lost or invented and every answer holds, and
 * reports each fault's windows (t.comment). Resolves with the reports for assertions of the caller.
 */
export async function runFaults(t: Test, faults: Fault[], { netns = false, rate = 100 }: { netns?: boolean; rate?: number } = {}): Promise<{ shop: FaultShop; reports: FaultReport[]; audit: AuditResult }> {
  const shop = await startFaultShop(t, { netns });
  if (netns && shop.labUnavailable) t.comment(`no network namespaces here (${shop.labUnavailable}): a cut node is a paused one (SIGSTOP)`);
  else if (shop.lab) t.comment(`each nats-server in a network namespace of its own on ${shop.lab.subnet}`);
  await seedShop({ call: (method, path) => httpCall(shop.gatewayUrls[0]!, method, path) }, FAULT_SHOP);
  const storm = startStorm(shop.gatewayUrls, FAULT_SHOP, { rate });
  t.teardown(() => storm.stop());
  const runs: { fault: Fault; run: FaultRun; healthyAt: number }[] = [];
  for (const fault of faults) {
    try {
      await shop.whole(`before ${fault.name}`);
      await storm.healthy(performance.now(), `before ${fault.name}`);
      const run = await fault.run(shop, storm);
      const healthyAt = await storm.healthy(run.liftedAt, `after ${fault.name}`);
      runs.push({ fault, run, healthyAt });
    } catch (err) {
      if (err instanceof Error) err.message += `\n${await diagnosis(shop, storm)}`;
      throw err;
    }
  }
  await shop.whole('after the faults');
  const requests = await storm.stop();
  const audit = await auditSettled(t, shop.gatewayUrls[0]!, FAULT_SHOP, requests);
  t.comment(`storm: ${audit.requests} requests (${audit.checkouts} checkouts: ${audit.paid} answered paid, ${audit.refused} refused; ${audit.unknown} requests of unknown outcome)`);
  t.same(audit.violations, [], 'nothing lost or invented per item and per user; every order answered 2xx is paid, none answered 4xx after a 2xx');
  t.ok(audit.paid > 0 && audit.refused > 0, 'both outcomes of a checkout occurred');

  const reports: FaultReport[] = runs.map(({ fault, run, healthyAt }) => {
    const reqs = requests.filter((r) => r.sent >= run.at - 1000 && r.sent <= healthyAt);
    const report: FaultReport = { name: fault.name, all: measure(reqs), recoveryMs: Math.round(healthyAt - run.at), notes: run.notes ?? [] };
    if (run.affected) {
      report.affected = measure(reqs.filter((r) => run.affected!(r, audit.orders)));
      report.others = measure(reqs.filter((r) => !run.affected!(r, audit.orders)));
    }
    t.comment(`${fault.name}: healthy again ${report.recoveryMs} ms after the fault`);
    if (report.affected) {
      t.comment(`  affected: ${describeWindow(report.affected)}`);
      t.comment(`  others:   ${describeWindow(report.others!)}`);
    } else t.comment(`  all: ${describeWindow(report.all)}`);
    for (const note of report.notes) t.comment(`  ${note}`);
    return report;
  });
  for (const p of [...shop.workers, ...shop.gateways]) for (const exit of p.unexpectedExits) t.comment(`unexpected: ${exit}`);
  const copies = shop.workers.reduce((n, w) => n + w.child.output().split('a second copy of a stream message').length - 1, 0);
  if (copies > 0) t.comment(`workers passed second copies of stream messages (logged at most once a minute per partition): ${copies} lines`);
  return { shop, reports, audit };
}
