/**
 * The HTTP API of docs/api.md as plain async functions: a route table, a matcher that validates every
 * path segment before anything reaches an actor, and the stock and payment handlers. Nothing here
 * knows about uWebSockets.js (see uws.ts), so all of it is testable with a fake ShopClient.
 */
import { randomInt, randomUUID } from 'node:crypto';
import { setImmediate as yieldTurn } from 'node:timers/promises';
import { envName, type Config, type Kind } from '../config.js';
import { ShopError, errorResponse, type ErrorCode } from '../errors.js';
import type { Log } from '../log.js';
import { batchInitRanges, drawIn, partitionOf } from '../partitioning.js';
import { fail as failed, ID_MAX_CHARS, type Reply } from '../protocol.js';
import type { ShopClient } from '../transport/shop-client.js';

export type Method = 'GET' | 'POST';

/** What a route answers; the adapter serialises `body` as JSON. */
export interface HttpResult {
  status: number;
  body: unknown;
  headers?: Readonly<Record<string, string>>;
}

/** Longest id the gateway forwards (a longer one is answered 400 not_found without asking an actor). */
export { ID_MAX_CHARS };
/** Longest bad segment echoed back in an error message. */
const ECHO_MAX_CHARS = 40;

// ---------------------------------------------------------------------------------------------
// Patterns. A segment is a literal, `:name` (an id: URL-decoded, non-empty string) or
// `:name(int)` (an integer in 0..2^53-1). The handler's parameter type is derived from the pattern,
// so `/stock/add/:item_id/:amount(int)` hands the handler `{ item_id: string; amount: number }`.

type Segments<P extends string> = P extends `/${infer S}/${infer Rest}` ? S | Segments<`/${Rest}`> : P extends `/${infer S}` ? S : never;
type IntName<S> = S extends `:${infer N}(int)` ? N : never;
type IdName<S> = S extends `:${string}(int)` ? never : S extends `:${infer N}` ? N : never;
export type Params<P extends string> = { readonly [N in IdName<Segments<P>>]: string } & { readonly [N in IntName<Segments<P>>]: number };

type AnyParams = Readonly<Record<string, string | number>>;

export interface Route {
  method: Method;
  pattern: string;
  handler(params: AnyParams): Promise<HttpResult>;
}

export function route<P extends string>(method: Method, pattern: P, handler: (params: Params<P>) => Promise<HttpResult>): Route {
  return { method, pattern, handler: handler as (params: AnyParams) => Promise<HttpResult> };
}

type Segment = { lit: string } | { id: string } | { int: string };

interface Compiled {
  route: Route;
  segments: Segment[];
}

function compile(r: Route): Compiled {
  if (!r.pattern.startsWith('/')) throw new Error(`route pattern must start with "/": ${r.pattern}`);
  const segments = r.pattern
    .slice(1)
    .split('/')
    .map((s): Segment => {
      const int = /^:(\w+)\(int\)$/.exec(s);
      if (int) return { int: int[1]! };
      const id = /^:(\w+)$/.exec(s);
      if (id) return { id: id[1]! };
      if (!/^[\w-]+$/.test(s)) throw new Error(`route pattern ${r.pattern} has a bad segment ${JSON.stringify(s)}`);
      return { lit: s };
    });
  return { route: r, segments };
}

/** Parses a number segment: base-10 digits only, value in 0..2^53-1; anything else is undefined. */
export function parseCount(raw: string): number | undefined {
  // Digits only rules out "-1", "+5", "1.5", "1e3", "0x10", " 7", "" and percent-encoding at once.
  if (!/^[0-9]+$/.test(raw)) return undefined;
  const n = Number(raw);
  // Every digit string above 2^53-1 converts to at least 2^53, so this bound is exact.
  return n <= Number.MAX_SAFE_INTEGER ? n : undefined;
}

/** Decodes an id segment; undefined if it is empty, too long or not valid percent-encoding. */
export function parseId(raw: string): string | undefined {
  let id: string;
  try {
    id = decodeURIComponent(raw);
  } catch {
    return undefined;
  }
  return id.length > 0 && id.length <= ID_MAX_CHARS ? id : undefined;
}

const echo = (raw: string) => JSON.stringify(raw.length > ECHO_MAX_CHARS ? raw.slice(0, ECHO_MAX_CHARS) + '…' : raw);

function fail(code: ErrorCode, detail?: string, headers?: Record<string, string>): HttpResult {
  const res: HttpResult = errorResponse(code, detail);
  return headers ? { ...res, headers } : res;
}

/** A match, or the error answer; an error past the route's shape (a bad number or id) names the route too. */
export type Match = { route: Route; params: AnyParams } | { error: HttpResult; route?: Route };

export interface Router {
  match(method: string, path: string): Match;
}

/**
 * Matching: a path matches a pattern with the same number of segments and equal literals.
 * No match → 404 route_not_found; matches only under other methods → 405 method_not_allowed
 * (with Allow). Then numbers are checked (400 bad_number), then ids (400 not_found: an empty,
 * over-long or badly encoded id names nothing that can exist, and unknown ids are 400 per docs/api.md).
 */
export function createRouter(routes: readonly Route[]): Router {
  const table = routes.map(compile);
  for (let i = 0; i < table.length; i++) {
    for (let j = 0; j < i; j++) {
      if (table[i]!.route.method === table[j]!.route.method && overlaps(table[i]!.segments, table[j]!.segments)) {
        throw new Error(`routes ${table[j]!.route.method} ${table[j]!.route.pattern} and ${table[i]!.route.pattern} overlap`);
      }
    }
  }

  return {
    match(method: string, path: string): Match {
      const parts = path.startsWith('/') ? path.slice(1).split('/') : undefined;
      if (!parts) return { error: fail('route_not_found') };
      const shaped = table.filter((c) => c.segments.length === parts.length && c.segments.every((s, i) => !('lit' in s) || s.lit === parts[i]));
      if (shaped.length === 0) return { error: fail('route_not_found', `${method} ${echo(path)}`) };
      const found = shaped.find((c) => c.route.method === method);
      if (!found) {
        const allow = [...new Set(shaped.map((c) => c.route.method))].join(', ');
        return { error: fail('method_not_allowed', `${method} ${echo(path)}; allowed: ${allow}`, { Allow: allow }) };
      }

      const params: Record<string, string | number> = {};
      for (const [i, s] of found.segments.entries()) {
        if (!('int' in s)) continue;
        const n = parseCount(parts[i]!);
        if (n === undefined) return { error: fail('bad_number', `${s.int} is ${echo(parts[i]!)}`), route: found.route };
        params[s.int] = n;
      }
      for (const [i, s] of found.segments.entries()) {
        if (!('id' in s)) continue;
        const id = parseId(parts[i]!);
        if (id === undefined) return { error: fail('not_found', `${s.id} ${echo(parts[i]!)}`), route: found.route };
        params[s.id] = id;
      }
      return { route: found.route, params };
    },
  };
}

function overlaps(a: Segment[], b: Segment[]): boolean {
  return a.length === b.length && a.every((s, i) => !('lit' in s) || !('lit' in b[i]!) || s.lit === (b[i] as { lit: string }).lit);
}

/**
 * Hears every answered request: its route pattern ("unmatched" for a path no route of its method has the shape
 * of, so the set stays bounded whatever paths clients send), method, status and duration.
 */
export type Observe = (method: string, route: string, status: number, seconds: number) => void;

/** The whole request path: match, run, and turn every exception into a response (the adapter never sees one). */
export function createDispatcher(router: Router, log: Log, observe?: Observe): (method: string, path: string) => Promise<HttpResult> {
  const run = async (method: string, path: string, m: Match): Promise<HttpResult> => {
    if ('error' in m) return m.error;
    try {
      return await m.route.handler(m.params);
    } catch (err) {
      if (err instanceof ShopError) {
        if (err.code === 'internal') log.error('request failed', { method, path, err });
        return errorResponse(err.code, err.detail);
      }
      log.error('request failed with an unexpected error', { method, path, err });
      return errorResponse('internal');
    }
  };
  if (!observe) return (method, path) => run(method, path, router.match(method, path));
  return async (method, path) => {
    const started = performance.now();
    const m = router.match(method, path);
    const result = await run(method, path, m);
    observe(method, m.route?.pattern ?? 'unmatched', result.status, (performance.now() - started) / 1000);
    return result;
  };
}

/**
 * Most batch_init commands one request has in flight. Enough to keep every partition's owner busy (each command
 * creates up to BATCH_INIT_CHUNK / partitions ids), and it bounds what one request holds at a time: n only decides
 * how long the request runs.
 */
export const BATCH_INIT_INFLIGHT_MAX = 64;

/** The commands of a batch_init, made lazily: every range of ids, to every partition. */
function* batchInitCommands(n: number, partitions: number): Generator<{ partition: number; range: { from: number; to: number } }> {
  for (const range of batchInitRanges(n)) for (let partition = 0; partition < partitions; partition++) yield { partition, range };
}

// ---------------------------------------------------------------------------------------------
// The API. Each handler validates nothing (the matcher did), picks the partition, asks the actor
// and shapes its reply; a business failure in the reply becomes errorResponse(code, detail).

export interface RouteDeps {
  client: ShopClient;
  config: Pick<Config, 'partitions' | 'batchInitMax'>;
  /** Makes ids for create routes; crypto.randomUUID unless a test passes its own. */
  newId?: () => string;
}

const ok = (body: unknown): HttpResult => ({ status: 200, body });

function answer<V>(reply: Reply<V>, body: (v: V) => unknown): HttpResult {
  return reply.ok ? ok(body(reply.v)) : errorResponse(reply.code, reply.detail);
}

function helpers({ client, config, newId = randomUUID }: RouteDeps) {
  const part = (id: string) => partitionOf(id, config.partitions);
  return {
    newId,
    /** A new id that hashes to the same partition number as `other` (drawIn). */
    idBeside: (other: string) => drawIn(part(other), config.partitions, newId),
    command: <V>(kind: Kind, id: string, cmd: unknown) => client.command<V>(kind, part(id), cmd),
    query: <V>(kind: Kind, id: string, q: unknown) => client.query<V>(kind, part(id), q),
    /**
     * batch_init of ids "0".."n-1": every partition gets one command per range of BATCH_INIT_CHUNK ids and creates
     * its share of it. The commands are made one at a time as earlier ones are answered, at most
     * BATCH_INIT_INFLIGHT_MAX in flight, each lane yielding a turn between them; the first failure stops the rest.
     */
    async batchInit(kind: Kind, n: number, fields: Record<string, unknown>): Promise<Reply> {
      if (n > config.batchInitMax) return failed('too_large', `n is ${n}; batchInitMax (${envName('batchInitMax')}) is ${config.batchInitMax}`);
      const commands = batchInitCommands(n, config.partitions);
      let failure: Reply | undefined;
      let error: { err: unknown } | undefined;
      const lane = async () => {
        while (!failure && !error) {
          const next = commands.next();
          if (next.done) return;
          const { partition, range } = next.value;
          try {
            const reply = await client.command(kind, partition, { k: 'batchInit', ...range, ...fields }, { alone: true });
            if (!reply.ok) failure ??= reply;
          } catch (err) {
            error ??= { err };
          }
          await yieldTurn();
        }
      };
      await Promise.all(Array.from({ length: BATCH_INIT_INFLIGHT_MAX }, lane));
      if (error) throw error.err;
      return failure ?? { ok: true, v: {} };
    },
  };
}

export function stockRoutes(deps: RouteDeps): Route[] {
  const { newId, command, query, batchInit } = helpers(deps);
  return [
    route('POST', '/stock/item/create/:price(int)', async ({ price }) => {
      const id = newId();
      return answer(await command('stock', id, { k: 'create', id, price }), () => ({ item_id: id }));
    }),
    route('POST', '/stock/batch_init/:n(int)/:starting_stock(int)/:item_price(int)', async ({ n, starting_stock, item_price }) =>
      answer(await batchInit('stock', n, { stock: starting_stock, price: item_price }), () => ({
        msg: 'Batch init for stock successful',
      })),
    ),
    route('GET', '/stock/find/:item_id', async ({ item_id }) =>
      answer(await query<{ stock: number; price: number }>('stock', item_id, { k: 'find', id: item_id }), (v) => ({ stock: v.stock, price: v.price })),
    ),
    route('POST', '/stock/add/:item_id/:amount(int)', async ({ item_id, amount }) =>
      answer(await command<{ stock: number }>('stock', item_id, { k: 'add', id: item_id, amount }), (v) => ({ item_id, stock: v.stock })),
    ),
    route('POST', '/stock/subtract/:item_id/:amount(int)', async ({ item_id, amount }) =>
      answer(await command<{ stock: number }>('stock', item_id, { k: 'subtract', id: item_id, amount }), (v) => ({ item_id, stock: v.stock })),
    ),
  ];
}

export function paymentRoutes(deps: RouteDeps): Route[] {
  const { newId, command, query, batchInit } = helpers(deps);
  return [
    route('POST', '/payment/create_user', async () => {
      const id = newId();
      return answer(await command('payment', id, { k: 'create', id }), () => ({ user_id: id }));
    }),
    route('POST', '/payment/batch_init/:n(int)/:starting_money(int)', async ({ n, starting_money }) =>
      answer(await batchInit('payment', n, { credit: starting_money }), () => ({ msg: 'Batch init for users successful' })),
    ),
    route('GET', '/payment/find_user/:user_id', async ({ user_id }) =>
      answer(await query<{ credit: number }>('payment', user_id, { k: 'find', id: user_id }), (v) => ({ user_id, credit: v.credit })),
    ),
    route('POST', '/payment/add_funds/:user_id/:amount(int)', async ({ user_id, amount }) =>
      answer(await command<{ credit: number }>('payment', user_id, { k: 'addFunds', id: user_id, amount }), (v) => ({
        user_id,
        credit: v.credit,
        done: true,
      })),
    ),
    route('POST', '/payment/pay/:user_id/:amount(int)', async ({ user_id, amount }) =>
      answer(await command<{ credit: number }>('payment', user_id, { k: 'pay', id: user_id, amount }), (v) => ({ user_id, credit: v.credit })),
    ),
  ];
}

interface OrderView {
  paid: boolean;
  items: [string, number][];
  user: string;
  total: number;
}

export function orderRoutes(deps: RouteDeps): Route[] {
  const { idBeside, command, query, batchInit } = helpers(deps);
  return [
    route('POST', '/orders/create/:user_id', async ({ user_id }) => {
      // Users are never deleted, so a user seen here still exists when the order is created.
      const user = await query('payment', user_id, { k: 'find', id: user_id });
      if (!user.ok) return answer(user, () => null);
      // An id that hashes to the user's partition number: the checkout's debit then stays on the order's worker.
      const id = idBeside(user_id);
      return answer(await command('order', id, { k: 'create', id, user: user_id }), () => ({ order_id: id }));
    }),
    route('POST', '/orders/batch_init/:n(int)/:n_items(int)/:n_users(int)/:item_price(int)', async ({ n, n_items, n_users, item_price }) => {
      if (n > 0 && (n_items === 0 || n_users === 0)) return errorResponse('bad_number', 'n_items and n_users must be at least 1');
      // One seed for all partitions: the "random" lines are drawn once, and replays draw them the same way.
      const seed = randomInt(2 ** 31);
      return answer(await batchInit('order', n, { nItems: n_items, nUsers: n_users, price: item_price, seed }), () => ({
        msg: 'Batch init for orders successful',
      }));
    }),
    route('GET', '/orders/find/:order_id', async ({ order_id }) =>
      answer(await query<OrderView>('order', order_id, { k: 'find', id: order_id }), (v) => ({
        order_id,
        paid: v.paid,
        items: v.items,
        user_id: v.user,
        total_cost: v.total,
      })),
    ),
    route('POST', '/orders/addItem/:order_id/:item_id/:quantity(int)', async ({ order_id, item_id, quantity }) => {
      if (quantity === 0) return errorResponse('bad_quantity', 'quantity is 0');
      // The price at this moment, from the item's owner; the order actor itself never waits on another partition.
      const item = await query<{ price: number }>('stock', item_id, { k: 'find', id: item_id });
      if (!item.ok) return answer(item, () => null);
      const reply = await command<{ total: number }>('order', order_id, { k: 'addItem', id: order_id, item: item_id, quantity, price: item.v.price });
      return answer(reply, (v) => ({ order_id, total_cost: v.total }));
    }),
    route('POST', '/orders/checkout/:order_id', async ({ order_id }) =>
      answer(await command('order', order_id, { k: 'checkout', id: order_id }), () => ({ order_id, paid: true })),
    ),
  ];
}

/** Every route of the public API (port 8000). */
export function apiRoutes(deps: RouteDeps): Route[] {
  return [...stockRoutes(deps), ...paymentRoutes(deps), ...orderRoutes(deps)];
}
