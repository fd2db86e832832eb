/** The load generator's pure parts (bench/): options, the audit arithmetic, the SVG writer, scenarios and the load loop on a fake dispatcher. No network. */
import t from 'tap';
import type { Dispatcher } from 'undici';
import { ANSWERED_2XX, ANSWERED_4XX, auditConservation, OrderOutcomes, SENT, UNDECIDED, verdict, type AuditInput, type OrderView } from '../../bench/audit.js';
import { startLoad } from '../../bench/engine.js';
import { HelpShown, LARGE_AMOUNT, parseDuration, parseOptions, parseRate, UsageError, type BenchOptions } from '../../bench/options.js';
import { createScenario, MIX, primer, PRIME_REQUESTS, PRIME_SAGAS, sagaPrimer, type Op } from '../../bench/scenarios.js';
import { Stats } from '../../bench/stats.js';
import { escapeXml, niceTicks, renderChart } from '../../bench/svg.js';

const parse = (...argv: string[]) => parseOptions(argv, () => 42);

t.test('options: scenario defaults, and --orders sizing items and users', async (t) => {
  const o = parse('checkout-fresh');
  t.match(o, { scenario: 'checkout-fresh', url: 'http://127.0.0.1:8000', start: false, connections: 256, orders: 100_000, items: 100_000, users: 100_000, seed: 42, init: true, audit: true });
  t.equal(o.durationMs, undefined, 'checkout-fresh runs until every order is checked out');
  t.equal(o.rate, undefined, 'closed loop by default');
  t.ok(Object.isFrozen(o));

  const sized = parse('checkout-fresh', '--orders', '20000', '--connections', '64');
  t.match(sized, { orders: 20_000, items: 20_000, users: 20_000, connections: 64 });
  t.match(parse('checkout-fresh', '--orders', '20000', '--items', '7'), { orders: 20_000, items: 7, users: 20_000 });

  t.equal(parse('reads').durationMs, 30_000);
  t.equal(parse('wdm-stress').durationMs, 60_000);
  t.match(parse('wdm-stress', '--vus', '50', '--unthrottled'), { vus: 50, unthrottled: true });
  t.match(parse('contention'), { orders: 10_000, items: 5, hotItems: 5, stock: 100, durationMs: undefined });
  t.match(parse('contention', '--hot-items', '3', '--stock', '10'), { items: 3, hotItems: 3, stock: 10 });
  t.match(parse('reads', '--no-init'), { init: false, audit: false }, 'no batch_init: starting amounts unknown, so no audit');
  t.match(parse('wdm-stress', '--no-audit'), { init: true, audit: false });
  t.equal(o.prime, true, 'primed by default');
  t.equal(parse('checkout-fresh', '--no-prime').prime, false);
});

t.test('the primer: reads of a missing item and checkouts of a missing order, whose 400 is expected', async (t) => {
  const scenario = primer(parse('checkout-fresh'));
  const ops = Array.from({ length: 4 }, () => scenario.next()!);
  t.same(
    ops.map((op) => `${op.method} ${op.path}`),
    ['GET /stock/find/bench-warm-up', 'POST /orders/checkout/bench-warm-up', 'GET /stock/find/bench-warm-up', 'POST /orders/checkout/bench-warm-up'],
  );
  t.ok(ops.every((op) => scenario.isExpected(op, 400, 'not_found')), 'not_found is the answer they want');
  t.notOk(scenario.isExpected(ops[1]!, 200, undefined), 'a checkout that succeeded would be an error: it changed something');
  t.same([scenario.setup, scenario.audit, scenario.total], [[], undefined, PRIME_REQUESTS]);
});

t.test('the saga primer: checkouts of its own orders, round robin; only insufficient_credit is the answer it wants', async (t) => {
  const scenario = sagaPrimer(parse('checkout-fresh'), ['a', 'b', 'c']);
  const ops = Array.from({ length: 4 }, () => scenario.next()!);
  t.same(ops.map((op) => `${op.method} ${op.path}`), ['POST /orders/checkout/a', 'POST /orders/checkout/b', 'POST /orders/checkout/c', 'POST /orders/checkout/a']);
  t.ok(scenario.isExpected(ops[0]!, 400, 'insufficient_credit'), 'refused for want of credit: nothing changed');
  t.notOk(scenario.isExpected(ops[0]!, 400, 'insufficient_stock'), 'refused for want of stock: something else took it, an error');
  t.notOk(scenario.isExpected(ops[0]!, 200, undefined), 'paid: it changed something, an error');
  t.same([scenario.setup, scenario.audit, scenario.total], [[], undefined, PRIME_SAGAS]);
});

t.test('options: durations, rates, counts', async (t) => {
  t.equal(parseDuration('10'), 10_000, 'a bare number is seconds');
  t.equal(parseDuration('10s'), 10_000);
  t.equal(parseDuration('500ms'), 500);
  t.equal(parseDuration('2m'), 120_000);
  t.equal(parseDuration('1.5s'), 1500);
  for (const bad of ['', '0', '-1', '10x', 's', '1e3']) t.throws(() => parseDuration(bad), `duration ${JSON.stringify(bad)} is rejected`);
  t.equal(parseRate('2000'), 2000);
  t.equal(parseRate('2000/s'), 2000);
  t.equal(parseRate('2k/s'), 2000);
  for (const bad of ['0', 'abc', '-5', '2k/m']) t.throws(() => parseRate(bad), `rate ${JSON.stringify(bad)} is rejected`);

  t.match(parse('reads', '-d', '10', '-r', '5k', '--max-outstanding', '100', '-n', '1000'), { durationMs: 10_000, rate: 5000, maxOutstanding: 100, requests: 1000 });
  t.equal(parse('reads', '--orders', '1_000').orders, 1000, 'underscores as digit separators');
  t.equal(parse('reads', '--url', 'http://127.0.0.1:9000/').url, 'http://127.0.0.1:9000');
});

t.test('options: bad command lines say what is wrong', async (t) => {
  const usage = (argv: string[], pattern: RegExp, what: string) => t.throws(() => parse(...argv), pattern, what);
  usage(['nope'], /unknown scenario "nope"/, 'unknown scenario');
  usage([], /missing required argument/, 'no scenario');
  usage(['reads', '--connections', '0'], /connections.*1\.\.100000/, 'zero connections');
  usage(['reads', '--orders', '-5'], /orders/, 'negative orders');
  usage(['reads', '--start', '--url', 'http://127.0.0.1:8000'], /--start.*--url/, '--start with --url');
  usage(['reads', '--url', 'https://example.org'], /only http/, 'https');
  usage(['reads', '--url', 'http://127.0.0.1:8000/orders'], /origin only/, 'a path in the URL');
  usage(['contention', '--items', '3'], /--hot-items/, 'contention sizes its items with --hot-items');
  usage(['checkout-fresh', '--no-init'], /fresh orders/, 'checkout-fresh needs batch_init');
  usage(['reads', 'extra'], /too many arguments|unknown/i, 'a second positional argument');
  t.throws(() => parse('reads', '--bogus'), UsageError);
  try {
    parse('--help');
    t.fail('--help should throw HelpShown');
  } catch (err) {
    t.type(err, HelpShown);
    t.match((err as HelpShown).text, /Usage: npm run bench -- <scenario> \[options\][^]*Scenarios:[^]*checkout-fresh[^]*contention/);
  }
});

// ---- the audit ----------------------------------------------------------------------------------------

/** Three items (stock 10 each), two users (credit 100 each), four orders; orders 0 and 1 paid and answered 200, 2 refused, 3 never sent. */
function consistentRun(): AuditInput {
  const orders: OrderView[] = [
    { paid: true, items: [['0', 1], ['1', 1]], user_id: '0', total_cost: 2 },
    { paid: true, items: [['1', 3], ['1', 1]], user_id: '1', total_cost: 40 },
    { paid: false, items: [['2', 99]], user_id: '0', total_cost: 99 },
    { paid: false, items: [['0', 1]], user_id: '1', total_cost: 1 },
  ];
  const outcomes = new OrderOutcomes(4);
  for (const [i, status] of [[0, 200], [1, 200], [2, 400]] as const) {
    outcomes.sent(i);
    outcomes.answered(i, status);
  }
  return {
    orders,
    stock: new Map([['0', 9], ['1', 5], ['2', 10]]),
    credit: new Map([['0', 98], ['1', 60]]),
    initialStock: 10,
    initialCredit: 100,
    outcomes,
  };
}

t.test('audit: a consistent run passes, with the sums', async (t) => {
  const r = auditConservation(consistentRun());
  t.ok(r.pass, verdict(r));
  t.match(r.orders, { read: 4, paid: 2, unpaid: 2, answered2xx: 2, refused: 1, undecided: 0, notSent: 1 });
  t.match(r.items, { checked: 3, sold: 6, taken: 6 });
  t.match(r.users, { checked: 2, charged: 42, taken: 42 });
  t.match(verdict(r), /^PASS: 4 orders read \(2 paid/);
});

t.test('audit: each kind of inconsistency is counted and fails the verdict', async (t) => {
  const cases: [string, (i: AuditInput) => AuditInput, string][] = [
    ['a unit of stock lost', (i) => ({ ...i, stock: new Map([...i.stock, ['1', 4]]) }), 'stock'],
    ['a unit of stock invented', (i) => ({ ...i, stock: new Map([...i.stock, ['2', 11]]) }), 'stock'],
    ['a user charged twice', (i) => ({ ...i, credit: new Map([...i.credit, ['1', 20]]) }), 'credit'],
    ['stock below zero', (i) => ({ ...i, initialStock: -5, stock: new Map([['0', -6], ['1', -10], ['2', -5]]) }), 'negative'],
    ['a 2xx order not paid', (i) => ({ ...i, orders: i.orders.map((o, n) => (n === 0 ? { ...o!, paid: false } : o)), stock: new Map([['0', 10], ['1', 6], ['2', 10]]), credit: new Map([['0', 100], ['1', 60]]) }), 'okButUnpaid'],
    ['a refused order paid', (i) => ({ ...i, orders: i.orders.map((o, n) => (n === 2 ? { ...o!, paid: true, items: [['2', 1]] as [string, number][], total_cost: 1 } : o)), stock: new Map([['0', 9], ['1', 5], ['2', 9]]), credit: new Map([['0', 97], ['1', 60]]) }), 'refusedButPaid'],
    ['a never checked out order paid', (i) => ({ ...i, orders: i.orders.map((o, n) => (n === 3 ? { ...o!, paid: true } : o)), stock: new Map([['0', 8], ['1', 5], ['2', 10]]), credit: new Map([['0', 98], ['1', 59]]) }), 'notSentButPaid'],
    ['an order that cannot be read', (i) => ({ ...i, orders: [i.orders[0], undefined, i.orders[2], i.orders[3]] }), 'unreadable'],
    ['an item a paid order names is missing', (i) => ({ ...i, stock: new Map([['1', 5], ['2', 10]]) }), 'unreadable'],
    ['an item that could not be read', (i) => ({ ...i, missing: ['item 7'] }), 'unreadable'],
  ];
  for (const [what, change, violation] of cases) {
    const r = auditConservation(change(consistentRun()));
    t.notOk(r.pass, `${what}: FAIL`);
    t.ok(r.violations[violation as keyof typeof r.violations] > 0, `${what}: counted as ${violation}`);
    t.ok(r.examples.length > 0, `${what}: an example is given`);
    t.match(verdict(r), new RegExp(`^FAIL: .*${violation} \\d`), `${what}: the verdict names ${violation}`);
  }
});

t.test('audit: undecided checkouts may end either way; repeated checkouts accumulate', async (t) => {
  const input = consistentRun();
  input.outcomes.answered(2, 503);
  t.ok(auditConservation(input).pass, 'refused once, then a 503: unpaid is fine');
  const paidAfter503 = consistentRun();
  paidAfter503.outcomes.answered(2, 0);
  paidAfter503.orders = paidAfter503.orders.map((o, n) => (n === 2 ? { ...o!, paid: true, items: [['2', 1]], total_cost: 1 } : o));
  paidAfter503.stock = new Map([['0', 9], ['1', 5], ['2', 9]]);
  paidAfter503.credit = new Map([['0', 97], ['1', 60]]);
  const r = auditConservation(paidAfter503);
  t.ok(r.pass, 'an unanswered checkout may have paid the order');
  t.equal(r.orders.undecided, 1);

  const o = new OrderOutcomes(1);
  o.sent(0);
  o.answered(0, 200);
  o.answered(0, 200);
  o.answered(0, 400);
  t.equal(o.flags[0], SENT | ANSWERED_2XX | ANSWERED_4XX);
  o.answered(0, 504);
  t.equal(o.flags[0]! & UNDECIDED, UNDECIDED);
});

// ---- the SVG chart --------------------------------------------------------------------------------------

/** Every tag closed in order: a well-formedness check good enough for what renderChart writes. */
function balanced(svg: string): boolean {
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    const [, close, name, selfClose] = m;
    if (selfClose) continue;
    if (close) {
      if (stack.pop() !== name) return false;
    } else stack.push(name!);
  }
  return stack.length === 0;
}

t.test('svg: a chart with both axes, its series and legend', async (t) => {
  const svg = renderChart({
    title: 'reads <fast> & "cheap"',
    subtitle: 'closed loop, 256 connections',
    xLabel: 'seconds',
    series: [
      { name: 'completed', unit: 'req/s', color: '#1f77b4', axis: 'left', points: [[1, 1000], [2, 31_000], [3, 30_500]] },
      { name: 'p99 latency', unit: 'ms', color: '#d62728', axis: 'right', dashed: true, points: [[1, 12.5], [2, 3.25], [3, 4]] },
    ],
  });
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" [^>]*viewBox="0 0 900 420">/);
  t.ok(svg.trimEnd().endsWith('</svg>'));
  t.ok(balanced(svg), 'tags are balanced');
  t.equal(svg.match(/<polyline /g)?.length, 2, 'one line per series');
  t.match(svg, /stroke="#1f77b4"[^>]*points="[\d.]+,[\d.]+ [\d.]+,[\d.]+ [\d.]+,[\d.]+"/);
  t.match(svg, /stroke-dasharray/);
  t.match(svg, />completed \(req\/s, left axis\)</);
  t.match(svg, />p99 latency \(ms, right axis\)</);
  t.match(svg, />40k</, 'left axis reaches a round value above 31,000');
  t.match(svg, /reads &lt;fast&gt; &amp; &quot;cheap&quot;/, 'text is escaped');
  t.match(svg, />closed loop, 256 connections</, 'the subtitle');
  t.notMatch(svg, /NaN|undefined|Infinity/);
  // Every point lies inside the plot area.
  for (const m of svg.matchAll(/points="([^"]+)"/g)) {
    for (const pair of m[1]!.split(' ')) {
      const [x, y] = pair.split(',').map(Number) as [number, number];
      t.ok(x >= 76 && x <= 824 && y >= 68 && y <= 368, `point ${pair} inside the plot`);
    }
  }
});

t.test('svg: empty series and helpers', async (t) => {
  const svg = renderChart({ title: 'nothing', xLabel: 's', series: [{ name: 'a', unit: 'req/s', color: '#000', axis: 'left', points: [] }] });
  t.ok(balanced(svg));
  t.match(svg, /no data/);
  t.notMatch(svg, /<polyline/);
  t.notMatch(svg, /NaN/);
  t.same(niceTicks(31_000), [0, 10_000, 20_000, 30_000, 40_000]);
  t.same(niceTicks(9), [0, 2, 4, 6, 8, 10]);
  t.same(niceTicks(0), [0, 1]);
  t.equal(escapeXml(`<a href="x">'&'</a>`), '&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;');
});

// ---- scenarios ----------------------------------------------------------------------------------------

const options = (argv: string[]): BenchOptions => ({ ...parse(...argv) });

t.test('scenarios: checkout-fresh hands out every order once, then stops', async (t) => {
  const s = createScenario(options(['checkout-fresh', '--orders', '5']));
  t.same(
    s.setup.map((x) => x.path),
    [`/payment/batch_init/5/${LARGE_AMOUNT}`, `/stock/batch_init/5/${LARGE_AMOUNT}/1`, '/orders/batch_init/5/5/5/1'],
  );
  const paths: string[] = [];
  for (let op = s.next(); op; op = s.next()) paths.push(`${op.method} ${op.path}`);
  t.same(paths, [0, 1, 2, 3, 4].map((i) => `POST /orders/checkout/${i}`));
  t.equal(s.next(), undefined, 'stays exhausted');
  t.match(s.audit, { orders: 5, items: 5, users: 5, initialStock: LARGE_AMOUNT, initialCredit: LARGE_AMOUNT });
});

t.test('scenarios: contention expects insufficient_stock only', async (t) => {
  const s = createScenario(options(['contention', '--orders', '100', '--hot-items', '3', '--stock', '7']));
  t.same(s.setup.map((x) => x.path).slice(1), ['/stock/batch_init/3/7/1', '/orders/batch_init/100/3/100/1']);
  const op = s.next()!;
  t.ok(s.isExpected(op, 400, 'insufficient_stock'));
  t.notOk(s.isExpected(op, 400, 'insufficient_credit'));
  t.notOk(s.isExpected(op, 400, 'not_found'));
  t.notOk(s.isExpected(op, 503, 'insufficient_stock'));
  t.match(s.audit, { items: 3, initialStock: 7 });
});

t.test('scenarios: reads and wdm-stress stay inside the batch_init ranges, repeatably per seed', async (t) => {
  const reads = createScenario(options(['reads', '--orders', '10', '--items', '3', '--users', '4']));
  const seen = new Set<string>();
  for (let i = 0; i < 300; i++) {
    const op = reads.next()!;
    t.equal(op.method, 'GET');
    const [, prefix, id] = /^(\/\w+\/\w+\/)(\d+)$/.exec(op.path)!;
    const n = { '/stock/find/': 3, '/payment/find_user/': 4, '/orders/find/': 10 }[prefix!]!;
    if (!(Number(id) < n)) t.fail(`${op.path} is outside 0..${n - 1}`);
    seen.add(op.path);
  }
  t.equal(seen.size, 17, 'every id of every kind is read');
  const a = createScenario(options(['wdm-stress', '--orders', '1000', '--seed', '7']));
  const b = createScenario(options(['wdm-stress', '--orders', '1000', '--seed', '7']));
  const pathsA = Array.from({ length: 50 }, () => a.next()!.path);
  t.same(Array.from({ length: 50 }, () => b.next()!.path), pathsA, 'same seed, same orders');
  t.ok(new Set(pathsA).size > 40, 'random orders');
});

t.test('scenarios: mixed keeps one request per order at a time and follows the mix', async (t) => {
  const s = createScenario(options(['mixed', '--seed', '3']));
  const inFlight = new Set<string>();
  const pending: Op[] = [];
  const counts = new Map<string, number>();
  let created = 0;
  const N = 20_000;
  for (let i = 0; i < N; i++) {
    const op = s.next()!;
    counts.set(s.kinds[op.kind]!, (counts.get(s.kinds[op.kind]!) ?? 0) + 1);
    const order = /^\/orders\/(?:addItem|checkout)\/([^/]+)/.exec(op.path)?.[1];
    if (order) {
      if (inFlight.has(order)) t.fail(`order ${order} got a second request while one is in flight: ${op.path}`);
      inFlight.add(order);
    }
    pending.push(op);
    // Answer in a shuffled order, a few requests late, as a server would.
    if (pending.length > 8) {
      const done = pending.splice(i % pending.length, 1)[0]!;
      const kind = s.kinds[done.kind];
      const body = kind === 'create_order' ? { order_id: `o${created++}` } : kind === 'create_item' ? { item_id: `i${created++}` } : kind === 'create_user' ? { user_id: `u${created++}` } : undefined;
      s.onResult(done, 200, s.wantsBody(done) ? body : undefined);
      const doneOrder = /^\/orders\/(?:addItem|checkout)\/([^/]+)/.exec(done.path)?.[1];
      if (doneOrder) inFlight.delete(doneOrder);
    }
  }
  const total = MIX.reduce((sum, [, w]) => sum + w, 0);
  for (const [name, weight] of MIX) {
    const share = (counts.get(name) ?? 0) / N;
    if (['find_item', 'find_user', 'find_order', 'create_item', 'add_stock', 'create_user', 'add_funds'].includes(name)) {
      t.ok(Math.abs(share - weight / total) < 0.02, `${name}: ${(share * 100).toFixed(1)}% of operations, mix says ${weight}%`);
    }
  }
  t.ok((counts.get('checkout') ?? 0) > N * 0.1, 'checkouts happen');
  t.ok((counts.get('add_item') ?? 0) > N * 0.15, 'items are added to orders');
  const checkout = { method: 'POST', path: '/orders/checkout/x', kind: s.kinds.indexOf('checkout'), ref: -1, ctx: { id: 'x', lines: 1 } } as const;
  t.ok(s.isExpected(checkout, 400, 'insufficient_credit'), 'an unfunded new user is a refusal, not an error');
  t.notOk(s.isExpected({ ...checkout, kind: s.kinds.indexOf('add_item') }, 400, 'insufficient_stock'));
});

// ---- the load loop, on a fake dispatcher ----------------------------------------------------------------

type Handler = Dispatcher.DispatchHandler & { onConnect(a: unknown): void; onHeaders(s: number): boolean; onData(c: Buffer): boolean; onComplete(t: unknown): void; onError(e: Error): void };

/** Answers every request after `delayMs` with `answer(path)`; records the paths and the most in flight. */
function fakeDispatcher(answer: (path: string) => [number, string] | Error, delayMs = 1) {
  const paths: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const dispatcher = {
    dispatch(opts: Dispatcher.DispatchOptions, handler: Handler) {
      paths.push(opts.path);
      maxInFlight = Math.max(maxInFlight, ++inFlight);
      const path = opts.path;
      setTimeout(() => {
        inFlight--;
        const a = answer(path);
        handler.onConnect(() => {});
        if (a instanceof Error) return handler.onError(a);
        handler.onHeaders(a[0]);
        handler.onData(Buffer.from(a[1]));
        handler.onComplete(null);
      }, delayMs);
      return true;
    },
  };
  return { dispatcher: dispatcher as unknown as Dispatcher, paths, maxInFlight: () => maxInFlight };
}

t.test('load: closed loop checks out each order once with C requests in flight, and counts outcomes', async (t) => {
  const scenario = createScenario(options(['contention', '--orders', '500', '--seed', '1']));
  const stats = new Stats(scenario.kinds);
  const fake = fakeDispatcher((path) => {
    const id = Number(path.split('/').pop());
    if (id % 10 === 0) return [200, '{"order_id":"x","paid":true}'];
    if (id % 100 === 1) return [503, '{"error":"timeout","message":"later"}'];
    if (id % 100 === 3) return Object.assign(new Error('socket hang up'), { code: 'UND_ERR_SOCKET' });
    return [400, '{"error":"insufficient_stock","message":"no"}'];
  });
  const run = startLoad({ dispatcher: fake.dispatcher, scenario, stats, model: { kind: 'closed', concurrency: 16, paceMs: 0 }, timeoutMs: 1000 });
  const result = await run.done;
  t.equal(result.stoppedBy, 'exhausted');
  t.equal(result.issued, 500);
  t.equal(fake.paths.length, 500);
  t.equal(new Set(fake.paths).size, 500, 'no order twice');
  t.equal(fake.maxInFlight(), 16);
  const s = stats.summary();
  t.match(s, { completed: 500, ok: 50, expected: 440, errors: 10 });
  t.same(s.byStatus, { '400': 440, '200': 50, '503': 5, '0': 5 });
  t.same(s.byCode, { insufficient_stock: 440, timeout: 5, UND_ERR_SOCKET: 5 });
  t.equal(s.latency.count, 495, 'no latency recorded for requests without a response');
  const flags = scenario.audit!.outcomes.flags;
  t.equal(flags[10], SENT | ANSWERED_2XX);
  t.equal(flags[2], SENT | ANSWERED_4XX);
  t.equal(flags[1], SENT | UNDECIDED);
  t.equal(flags[3], SENT | UNDECIDED);
});

t.test('load: --requests and --duration stop a closed loop', async (t) => {
  const scenario = createScenario(options(['reads', '--orders', '100']));
  const byCount = await startLoad({ dispatcher: fakeDispatcher(() => [200, '{}']).dispatcher, scenario, stats: new Stats(scenario.kinds), model: { kind: 'closed', concurrency: 8, paceMs: 0 }, requests: 100, timeoutMs: 1000 }).done;
  t.equal(byCount.stoppedBy, 'requests');
  t.equal(byCount.issued, 100);
  const stats = new Stats(scenario.kinds);
  const byTime = await startLoad({ dispatcher: fakeDispatcher(() => [200, '{}'], 5).dispatcher, scenario, stats, model: { kind: 'closed', concurrency: 4, paceMs: 0 }, durationMs: 300, timeoutMs: 1000 }).done;
  t.equal(byTime.stoppedBy, 'duration');
  t.ok(byTime.elapsedMs >= 300 && byTime.elapsedMs < 1000, `ran ${byTime.elapsedMs} ms`);
  t.equal(stats.completed, byTime.issued, 'every request issued was awaited');
});

t.test('load: a --duration run is never shorter than asked (Node may fire a timer before performance.now() reaches its time)', async (t) => {
  // Node runs timers by the event loop's cached millisecond clock: a timer can fire up to about a millisecond
  // before performance.now() says its time has come. Many short runs make that show.
  const scenario = createScenario(options(['reads', '--orders', '100']));
  const short: number[] = [];
  for (let run = 0; run < 40; run++) {
    const r = await startLoad({ dispatcher: fakeDispatcher(() => [200, '{}'], 1).dispatcher, scenario, stats: new Stats(scenario.kinds), model: { kind: 'closed', concurrency: 2, paceMs: 0 }, durationMs: 7, timeoutMs: 1000 }).done;
    if (r.stoppedBy !== 'duration' || r.elapsedMs < 7) short.push(r.elapsedMs);
  }
  t.same(short, [], 'every run lasted its 7 ms at least');
});

t.test('load: open loop keeps the rate, drops past the outstanding bound, times from the intended send', async (t) => {
  const scenario = createScenario(options(['reads', '--orders', '100']));
  const stats = new Stats(scenario.kinds);
  // A server that takes 100 ms per request, at 200 req/s: about 20 in flight; a bound of 10 must drop about half.
  const fake = fakeDispatcher(() => [200, '{}'], 100);
  const result = await startLoad({ dispatcher: fake.dispatcher, scenario, stats, model: { kind: 'open', rate: 200, maxOutstanding: 10 }, durationMs: 1000, timeoutMs: 1000 }).done;
  t.equal(result.stoppedBy, 'duration');
  const due = stats.completed + stats.dropped;
  t.ok(due >= 180 && due <= 215, `${due} requests due in 1 s at 200/s`);
  t.ok(stats.dropped > 50, `${stats.dropped} dropped past 10 outstanding`);
  t.ok(fake.maxInFlight() <= 10, 'never more than 10 in flight');
  t.ok(stats.summary().latency.p50Ms >= 99, 'latency includes the server time');
});

t.test('load: paced virtual users send once per pace each', async (t) => {
  const scenario = createScenario(options(['wdm-stress', '--orders', '100']));
  const stats = new Stats(scenario.kinds);
  const fake = fakeDispatcher(() => [200, '{}'], 1);
  const result = await startLoad({ dispatcher: fake.dispatcher, scenario, stats, model: { kind: 'closed', concurrency: 10, paceMs: 100 }, durationMs: 520, timeoutMs: 1000 }).done;
  t.equal(result.stoppedBy, 'duration');
  t.ok(stats.completed >= 45 && stats.completed <= 65, `${stats.completed} requests from 10 users at 10/s each for 0.52 s`);
});

t.test('load: the warm-up is sent but not measured, and the duration counts after it', async (t) => {
  const scenario = createScenario(options(['checkout-fresh', '--orders', '100000']));
  const stats = new Stats(scenario.kinds);
  const fake = fakeDispatcher(() => [200, '{}'], 10);
  const result = await startLoad({ dispatcher: fake.dispatcher, scenario, stats, model: { kind: 'closed', concurrency: 4, paceMs: 0 }, warmupMs: 300, durationMs: 300, timeoutMs: 1000 }).done;
  // 1 ms of slack below: libuv's timers run on a millisecond clock cached per loop turn, so a 300 ms timer was seen
  // to end 299.93 ms after it by performance.now() (CI, 2026-12-06).
  t.ok(result.elapsedMs >= 299 && result.elapsedMs < 600, `measured ${result.elapsedMs} ms after the warm-up`);
  t.ok(fake.paths.length >= 2 * stats.completed - 20, `${fake.paths.length} sent, ${stats.completed} measured: about half was warm-up`);
  t.ok(stats.completed > 50, 'the measured part is recorded');
  const answered = [...scenario.audit!.outcomes.flags].filter((f) => f & ANSWERED_2XX).length;
  t.equal(answered, fake.paths.length, 'the audit follows warm-up checkouts too');
  t.ok(stats.timeline.length >= 1 && stats.timeline[0]!.t <= 1.05, 'the timeline starts after the warm-up');
});

t.test('load: a target that never answers does not become a busy loop', async (t) => {
  const scenario = createScenario(options(['reads', '--orders', '100']));
  const stats = new Stats(scenario.kinds);
  const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  const fake = fakeDispatcher(() => refused, 0);
  await startLoad({ dispatcher: fake.dispatcher, scenario, stats, model: { kind: 'closed', concurrency: 2, paceMs: 0 }, durationMs: 200, timeoutMs: 1000 }).done;
  t.ok(stats.errors > 5 && stats.errors <= 50, `${stats.errors} attempts by 2 workers in 200 ms`);
  t.same(stats.summary().byCode, { ECONNREFUSED: stats.errors });
});
