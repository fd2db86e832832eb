/**
 * The scenarios: what batch_init creates first, which request comes next, which refusals are expected
 * outcomes rather than errors, and what the audit afterwards may check. A scenario hands the engine one
 * operation at a time and hears every answer; it does no I/O itself.
 */
import { OrderOutcomes } from './audit.js';
import { LARGE_AMOUNT, type BenchOptions, type ScenarioName } from './options.js';
import { seededRandom } from '../src/actors/random.js';

export interface Op {
  method: 'GET' | 'POST';
  path: string;
  /** Index into Scenario.kinds. */
  kind: number;
  /** The order index of a checkout that the audit follows, else -1. */
  ref: number;
  /** Scenario-private state travelling with the request (mixed: the order it changes). */
  ctx: unknown;
}

/** One batch_init (POST) before the load. */
export interface SetupStep {
  what: string;
  path: string;
}

/** What the audit reads afterwards: orders, items and users "0".."n-1", and their starting amounts. */
export interface AuditPlan {
  orders: number;
  items: number;
  users: number;
  initialStock: number;
  initialCredit: number;
  outcomes: OrderOutcomes;
}

export interface Scenario {
  readonly name: ScenarioName;
  readonly kinds: readonly string[];
  readonly setup: readonly SetupStep[];
  /** How many operations it has when finite (checkout-fresh, contention), for the progress bar. */
  readonly total: number | undefined;
  /** The next operation; undefined when the scenario is exhausted. */
  next(): Op | undefined;
  /** Whether the engine should keep a 2xx body for onResult (creates: the new id). */
  wantsBody(op: Op): boolean;
  /** A non-2xx that is an expected outcome, not an error. `code`: the body's "error". */
  isExpected(op: Op, status: number, code: string | undefined): boolean;
  /** Every answer; status 0 when none came. `body`: parsed JSON when kept, else undefined. */
  onResult(op: Op, status: number, body: unknown): void;
  readonly audit: AuditPlan | undefined;
}

/**
 * Requests the generator sends before anything is measured (unless --no-prime), whatever the scenario: reads of an
 * item that does not exist and checkouts of an order that does not exist, both answered 400 not_found, so nothing
 * in the system changes that a client could see (the checkouts do pass through the order stream and a commit).
 * They bring the code on both sides out of V8's interpreter: the generator's load loop and HTTP client, and the
 * system's HTTP, command and reply paths. Without them the first half second of a run measures the JIT (at about
 * half the rate and twice the latency; docs/perf/README.md). The actors' code is warmed by the worker at start
 * (src/datapath/warm-up.ts); the saga's messages between workers by the saga primer (below).
 */
export const PRIME_REQUESTS = 20_000;

export function primer(o: BenchOptions): Scenario {
  let n = 0;
  const next = (): Op => (n++ % 2 === 0 ? { method: 'GET', path: '/stock/find/bench-warm-up', kind: 0, ref: -1, ctx: undefined } : { method: 'POST', path: '/orders/checkout/bench-warm-up', kind: 0, ref: -1, ctx: undefined });
  return priming(o, PRIME_REQUESTS, next, (status) => status === 400);
}

/**
 * The saga primer's own entities, made before it runs (bench/http.ts, primeOrders): one user without credit,
 * PRIME_ITEMS items with PRIME_STOCK units each (about twice the 64 partitions of a kind, so most hold one), and
 * PRIME_ORDERS orders of that user, of two of those items each. Nothing the run measures or audits.
 */
export const PRIME_ITEMS = 128;
export const PRIME_STOCK = 1_000;
export const PRIME_ORDERS = 512;
/** Checkouts the saga primer sends, round robin over its orders. */
export const PRIME_SAGAS = 8_192;

/**
 * Checkouts of the primer's own orders, each refused: the user has no credit, so the debit is refused and every
 * reserve held is given back before the 400 (insufficient_credit) comes, and no stock or credit changes. Each one is a
 * whole saga, reserves, holds, answers, releases and forgets, across workers when there are several: without it each
 * worker process compiled that code during the measured load (at 4 workers, 9 % of the machine's CPU over a 20 s
 * run, docs/perf/scale-out.md), which a shop that runs for hours does not pay.
 */
export function sagaPrimer(o: BenchOptions, orders: readonly string[]): Scenario {
  let n = 0;
  const checkout = (): Op => ({ method: 'POST', path: '/orders/checkout/' + orders[n++ % orders.length]!, kind: 0, ref: -1, ctx: undefined });
  return priming(o, PRIME_SAGAS, checkout, (status, code) => status === 400 && code === 'insufficient_credit');
}

/** A primer's scenario: `total` requests from `next`, unmeasured, no setup, no audit; `expected` says which answers it wants. */
function priming(o: BenchOptions, total: number, next: () => Op, expected: (status: number, code: string | undefined) => boolean): Scenario {
  return {
    name: o.scenario,
    kinds: ['prime'],
    setup: [],
    total,
    next,
    wantsBody: () => false,
    isExpected: (_op, status, code) => expected(status, code),
    onResult: () => {},
    audit: undefined,
  };
}

/** The course's stress test data: every item and user starts with 1,000,000 (stress-test/init_orders.py). */
const WDM_STARTING_AMOUNT = 1_000_000;

const batchInit = (users: number, credit: number, items: number, stock: number, orders: number): SetupStep[] => [
  { what: `${users} users with credit ${credit}`, path: `/payment/batch_init/${users}/${credit}` },
  { what: `${items} items with stock ${stock}, price 1`, path: `/stock/batch_init/${items}/${stock}/1` },
  { what: `${orders} orders of 2 random items each, of ${users} users`, path: `/orders/batch_init/${orders}/${items}/${users}/1` },
];

const isOk = (status: number) => status >= 200 && status < 300;

export function createScenario(o: BenchOptions): Scenario {
  const random = seededRandom(o.seed); // a run's ids repeat with its --seed
  switch (o.scenario) {
    case 'checkout-fresh':
      return checkoutEach(o, batchInit(o.users, LARGE_AMOUNT, o.items, LARGE_AMOUNT, o.orders), { initialStock: LARGE_AMOUNT, initialCredit: LARGE_AMOUNT, items: o.items }, () => false);
    case 'contention':
      return checkoutEach(
        o,
        batchInit(o.users, LARGE_AMOUNT, o.hotItems, o.stock, o.orders),
        { initialStock: o.stock, initialCredit: LARGE_AMOUNT, items: o.hotItems },
        (status, code) => status === 400 && code === 'insufficient_stock',
      );
    case 'wdm-stress':
      return wdmStress(o, random);
    case 'reads':
      return reads(o, random);
    case 'mixed':
      return mixed(o, random);
  }
}

/** Orders "0".."n-1" checked out once each, in order, however many connections take them. */
function checkoutEach(
  o: BenchOptions,
  setup: SetupStep[],
  amounts: { initialStock: number; initialCredit: number; items: number },
  expected: (status: number, code: string | undefined) => boolean,
): Scenario {
  const outcomes = new OrderOutcomes(o.orders);
  let nextOrder = 0;
  return {
    name: o.scenario,
    kinds: ['checkout'],
    setup,
    total: o.orders,
    next() {
      if (nextOrder >= o.orders) return undefined;
      const i = nextOrder++;
      outcomes.sent(i);
      return { method: 'POST', path: '/orders/checkout/' + i, kind: 0, ref: i, ctx: undefined };
    },
    wantsBody: () => false,
    isExpected: (_op, status, code) => expected(status, code),
    onResult: (op, status) => outcomes.answered(op.ref, status),
    audit: o.audit ? { orders: o.orders, items: amounts.items, users: o.users, initialStock: amounts.initialStock, initialCredit: amounts.initialCredit, outcomes } : undefined,
  };
}

/** Random orders, repeats allowed: a repeat of a paid order answers 200 and charges nothing (docs/api.md), so 4xx is an error. */
function wdmStress(o: BenchOptions, random: () => number): Scenario {
  const outcomes = new OrderOutcomes(o.orders);
  return {
    name: o.scenario,
    kinds: ['checkout'],
    setup: o.init ? batchInit(o.users, WDM_STARTING_AMOUNT, o.items, WDM_STARTING_AMOUNT, o.orders) : [],
    total: undefined,
    next() {
      const i = Math.floor(random() * o.orders);
      outcomes.sent(i);
      return { method: 'POST', path: '/orders/checkout/' + i, kind: 0, ref: i, ctx: undefined };
    },
    wantsBody: () => false,
    isExpected: () => false,
    onResult: (op, status) => outcomes.answered(op.ref, status),
    audit: o.audit ? { orders: o.orders, items: o.items, users: o.users, initialStock: WDM_STARTING_AMOUNT, initialCredit: WDM_STARTING_AMOUNT, outcomes } : undefined,
  };
}

function reads(o: BenchOptions, random: () => number): Scenario {
  const targets = [
    { prefix: '/stock/find/', n: o.items },
    { prefix: '/payment/find_user/', n: o.users },
    { prefix: '/orders/find/', n: o.orders },
  ] as const;
  let turn = 0;
  return {
    name: o.scenario,
    kinds: ['find_item', 'find_user', 'find_order'],
    setup: o.init ? batchInit(o.users, LARGE_AMOUNT, o.items, LARGE_AMOUNT, o.orders) : [],
    total: undefined,
    next() {
      const kind = turn;
      turn = turn === 2 ? 0 : turn + 1;
      const t = targets[kind]!;
      return { method: 'GET', path: t.prefix + Math.floor(random() * t.n), kind, ref: -1, ctx: undefined };
    },
    wantsBody: () => false,
    isExpected: () => false,
    onResult: () => {},
    audit: undefined,
  };
}

/**
 * The mix, in percent of operations. Roughly a shop's day: mostly reads, then building orders (create, addItem)
 * and checking them out, a little administration (new items and users, stock and funds added).
 */
export const MIX: ReadonlyArray<readonly [string, number]> = [
  ['find_item', 20],
  ['find_user', 10],
  ['find_order', 10],
  ['create_item', 3],
  ['add_stock', 5],
  ['create_user', 3],
  ['add_funds', 4],
  ['create_order', 10],
  ['add_item', 20],
  ['checkout', 15],
];
// Indexes into MIX, which is also the scenario's list of kinds.
const FIND_ITEM = 0, FIND_USER = 1, FIND_ORDER = 2, CREATE_ITEM = 3, ADD_STOCK = 4;
const CREATE_USER = 5, ADD_FUNDS = 6, CREATE_ORDER = 7, ADD_ITEM = 8, CHECKOUT = 9;
/** Created ids kept for later operations; past it a new id replaces a random old one. */
const CREATED_KEPT_MAX = 50_000;
/** Orders being built (created, not yet checked out); past it, new orders wait and checkouts go first. */
const OPEN_ORDERS_MAX = 10_000;
/** Share of operations that use a batch_init'ed item or user (large stock and credit) rather than a created one. */
const BATCH_SHARE = 0.9;

interface OpenOrder {
  id: string;
  lines: number;
}

function mixed(o: BenchOptions, random: () => number): Scenario {
  const cumulative: number[] = [];
  let sum = 0;
  for (const [, weight] of MIX) cumulative.push((sum += weight));
  const int = (n: number) => Math.floor(random() * n);
  const between = (lo: number, hi: number) => lo + int(hi - lo + 1);
  const createdItems: string[] = [];
  const createdUsers: string[] = [];
  /** Orders idle between operations; one being changed or checked out is out of this list, so one order sees one request at a time. */
  const open: OpenOrder[] = [];
  const keep = (list: string[], id: string) => (list.length < CREATED_KEPT_MAX ? list.push(id) : (list[int(list.length)] = id));
  const item = () => (createdItems.length === 0 || random() < BATCH_SHARE ? String(int(o.items)) : createdItems[int(createdItems.length)]!);
  const user = () => (createdUsers.length === 0 || random() < BATCH_SHARE ? String(int(o.users)) : createdUsers[int(createdUsers.length)]!);
  const take = (index: number) => {
    const order = open[index]!;
    open[index] = open[open.length - 1]!;
    open.pop();
    return order;
  };
  const op = (method: 'GET' | 'POST', path: string, kind: number, ctx?: OpenOrder): Op => ({ method, path, kind, ref: -1, ctx });

  function pick(): number {
    const r = random() * sum;
    let k = 0;
    while (cumulative[k]! <= r) k++;
    if (k === CREATE_ORDER && open.length >= OPEN_ORDERS_MAX) return CHECKOUT;
    return k;
  }

  function build(k: number): Op {
    switch (k) {
      case FIND_ITEM:
        return op('GET', '/stock/find/' + item(), k);
      case FIND_USER:
        return op('GET', '/payment/find_user/' + user(), k);
      case FIND_ORDER:
        return op('GET', '/orders/find/' + int(o.orders), k);
      case CREATE_ITEM:
        return op('POST', `/stock/item/create/${between(1, 10)}`, k);
      case ADD_STOCK:
        return op('POST', `/stock/add/${item()}/${between(100, 1000)}`, k);
      case CREATE_USER:
        return op('POST', '/payment/create_user', k);
      case ADD_FUNDS:
        return op('POST', `/payment/add_funds/${user()}/${between(10_000, 100_000)}`, k);
      case CREATE_ORDER:
        return op('POST', '/orders/create/' + user(), k);
      case ADD_ITEM: {
        if (open.length === 0) return build(CREATE_ORDER);
        const order = take(int(open.length));
        return op('POST', `/orders/addItem/${order.id}/${item()}/${between(1, 3)}`, k, order);
      }
      default: {
        // Checkout: an order with lines (a few random tries), else keep building.
        for (let attempt = 0; attempt < 4 && open.length > 0; attempt++) {
          const index = int(open.length);
          if (open[index]!.lines > 0) {
            const order = take(index);
            return op('POST', '/orders/checkout/' + order.id, CHECKOUT, order);
          }
        }
        return build(ADD_ITEM);
      }
    }
  }

  const idOf = (body: unknown, key: string): string | undefined => {
    const id = (body as Record<string, unknown> | undefined)?.[key];
    return typeof id === 'string' ? id : undefined;
  };

  return {
    name: o.scenario,
    kinds: MIX.map(([name]) => name),
    setup: o.init ? batchInit(o.users, LARGE_AMOUNT, o.items, LARGE_AMOUNT, o.orders) : [],
    total: undefined,
    next: () => build(pick()),
    wantsBody: (op) => op.kind === CREATE_ITEM || op.kind === CREATE_USER || op.kind === CREATE_ORDER,
    // A created user may not be funded yet, a created item may be sold out: refusals a shop sees every day.
    isExpected: (op, status, code) => op.kind === CHECKOUT && status === 400 && (code === 'insufficient_stock' || code === 'insufficient_credit'),
    onResult(op, status, body) {
      if (op.kind === CREATE_ITEM && isOk(status)) {
        const id = idOf(body, 'item_id');
        if (id) keep(createdItems, id);
      } else if (op.kind === CREATE_USER && isOk(status)) {
        const id = idOf(body, 'user_id');
        if (id) keep(createdUsers, id);
      } else if (op.kind === CREATE_ORDER && isOk(status)) {
        const id = idOf(body, 'order_id');
        if (id && open.length < OPEN_ORDERS_MAX) open.push({ id, lines: 0 });
      } else if (op.kind === ADD_ITEM) {
        const order = op.ctx as OpenOrder;
        if (isOk(status)) order.lines++;
        // Back to building unless the order turned out to be gone or paid (a 4xx); an unanswered addItem may have
        // applied, which only changes its line count.
        if (!(status >= 400 && status < 500)) open.push(order);
      }
      // A checked-out order (paid or refused) leaves the pool for good.
    },
    audit: undefined,
  };
}
