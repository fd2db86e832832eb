/**
 * Whatever a client sends, the gateway does bounded work: random paths, methods, numbers and ids against a real
 * gateway in front of a real worker (a property test), batch_init at and over its maximum, and other requests
 * answered while a large batch_init runs.
 */
import http from 'node:http';
import fc from 'fast-check';
import t from 'tap';
import { HTTP_METHODS, HTTP_STATUSES } from '../../src/monitoring/metrics.js';
import { ID_MAX_CHARS } from '../../src/protocol.js';
import { startSystem } from '../helpers/system.js';

/** Methods uWebSockets.js parses; it drops the connection on any other. */
const UWS_METHODS = new Set(['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE']);

interface Sent {
  method: string;
  path: string;
}
type Got = { status: number; type: string | undefined; body: string } | { error: string };

function send(agent: http.Agent, port: number, { method, path }: Sent): Promise<Got> {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], body }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }));
    req.end();
  });
}

const MAX_SAFE = '9007199254740991';
/** A number segment: small, at a bound, huge, or not a number at all. */
const numberSeg = fc.oneof(
  fc.nat({ max: 3000 }).map(String),
  fc.constantFrom(MAX_SAFE, '9007199254740992', '99999999999999999999999999', '0', '-1', '1.5', '1e3', '0x10', '', '%31', '+5', '%207'),
  fc.bigInt({ min: 0n, max: 10n ** 40n }).map(String),
);
/** An id segment: plausible, percent-encoded, badly encoded, empty, or very long. */
const idSeg = fc.oneof(
  fc.constantFrom('0', '1', '42', 'nope', '%2F', '%ZZ', '%E0%A4%A', '%00', '', '..', '%', 'a%20b'),
  fc.uuid(),
  fc.string({ maxLength: 20 }).map(encodeURIComponent),
  fc.string({ unit: 'binary', maxLength: 10 }).map(encodeURIComponent),
  fc.integer({ min: ID_MAX_CHARS - 2, max: 3000 }).map((n) => 'x'.repeat(n)),
);
const anySeg = fc.oneof(numberSeg, idSeg, fc.constantFrom('stock', 'payment', 'orders', 'find', 'batch_init', 'checkout', 'addItem', 'create', 'item'));

/** Paths shaped like the API's routes (with any segments), or any segments at all. */
const pathArb = fc.oneof(
  fc.tuple(numberSeg, numberSeg, numberSeg).map(([n, s, p]) => `/stock/batch_init/${n}/${s}/${p}`),
  fc.tuple(numberSeg, numberSeg).map(([n, m]) => `/payment/batch_init/${n}/${m}`),
  fc.tuple(numberSeg, numberSeg, numberSeg, numberSeg).map(([n, i, u, p]) => `/orders/batch_init/${n}/${i}/${u}/${p}`),
  fc.constant(`/payment/batch_init/${MAX_SAFE}/0`),
  numberSeg.map((p) => `/stock/item/create/${p}`),
  idSeg.map((id) => `/stock/find/${id}`),
  fc.tuple(idSeg, numberSeg).map(([id, n]) => `/stock/add/${id}/${n}`),
  fc.tuple(idSeg, numberSeg).map(([id, n]) => `/stock/subtract/${id}/${n}`),
  idSeg.map((id) => `/payment/find_user/${id}`),
  fc.tuple(idSeg, numberSeg).map(([id, n]) => `/payment/add_funds/${id}/${n}`),
  fc.tuple(idSeg, numberSeg).map(([id, n]) => `/payment/pay/${id}/${n}`),
  idSeg.map((id) => `/orders/create/${id}`),
  idSeg.map((id) => `/orders/find/${id}`),
  fc.tuple(idSeg, idSeg, numberSeg).map(([o, i, q]) => `/orders/addItem/${o}/${i}/${q}`),
  idSeg.map((id) => `/orders/checkout/${id}`),
  fc.array(anySeg, { maxLength: 7 }).map((segs) => '/' + segs.join('/')),
  fc.constantFrom('/', '//', '/stock//find', '/stock/find/x?y=1', '/%2e%2e/%2e%2e', '/stock/find/a#b'),
);
const methodArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom('GET', 'POST') }, { weight: 2, arbitrary: fc.constantFrom('PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE', 'get', 'post') }, { weight: 1, arbitrary: fc.constantFrom('FOO', 'PURGE', 'PROPFIND', 'M-SEARCH', 'X'.repeat(40)) });
const requestArb = fc.record({ method: methodArb, path: pathArb });

/** What a user may see for any request: a JSON answer that is not a 5xx other than 503, or (a method uWS does not know) a dropped connection. */
function acceptable({ method, path }: Sent, got: Got): string | undefined {
  if ('error' in got) return UWS_METHODS.has(method.toUpperCase()) ? `${method} ${path}: no answer (${got.error})` : undefined;
  if (got.status >= 500 && got.status !== 503) return `${method} ${path}: ${got.status} ${got.body.slice(0, 200)}`;
  if (got.type !== 'application/json') return `${method} ${path}: content type ${got.type}`;
  if (method.toUpperCase() === 'HEAD') return got.body === '' ? undefined : `${method} ${path}: HEAD answered with a body`;
  try {
    JSON.parse(got.body);
  } catch {
    return `${method} ${path}: not JSON: ${got.body.slice(0, 200)}`;
  }
  return undefined;
}

const BATCH_INIT_MAX = 2000;

t.test('random requests: never a 5xx but 503, the gateway stays up, its memory and metric series stay bounded', async (t) => {
  const sys = await startSystem(t, { workers: 1, overrides: { batchInitMax: BATCH_INIT_MAX } });
  const port = Number(new URL(sys.url).port);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  t.teardown(() => agent.destroy());
  const item = (await sys.call('POST', '/stock/item/create/5')).body.item_id as string;

  // Warm the code paths once, then measure what a few thousand random requests add.
  await Promise.all(fc.sample(requestArb, { numRuns: 200, seed: 1 }).map((r) => send(agent, port, r)));
  const before = process.memoryUsage();
  let requests = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(requestArb, { minLength: 50, maxLength: 50 }), async (batch) => {
      const got = await Promise.all(batch.map((r) => send(agent, port, r)));
      requests += batch.length;
      const wrong = batch.map((r, i) => acceptable(r, got[i]!)).filter((w) => w !== undefined);
      if (wrong.length > 0) throw new Error(wrong.join('\n'));
    }),
    { numRuns: 60, seed: 20261130, endOnFailure: true },
  );
  const after = process.memoryUsage();
  t.ok(requests >= 3000, `${requests} random requests`);
  const heapGrowthMb = (after.heapUsed - before.heapUsed) / 2 ** 20;
  const rssGrowthMb = (after.rss - before.rss) / 2 ** 20;
  t.comment(`heap ${(before.heapUsed / 2 ** 20).toFixed(0)} -> ${(after.heapUsed / 2 ** 20).toFixed(0)} MiB, rss ${(before.rss / 2 ** 20).toFixed(0)} -> ${(after.rss / 2 ** 20).toFixed(0)} MiB`);
  // Gateway, worker and test run in this process; a batch_init of 2^53 ids took gigabytes before it was bounded.
  t.ok(heapGrowthMb < 200, `heap grew ${heapGrowthMb.toFixed(0)} MiB (bound 200)`);
  t.ok(rssGrowthMb < 400, `rss grew ${rssGrowthMb.toFixed(0)} MiB (bound 400)`);

  t.same((await sys.call('GET', `/stock/find/${item}`)).body, { stock: 0, price: 5 }, 'the gateway answers a normal request afterwards');

  const metrics = await sys.gatewayRegistry.getSingleMetricAsString('shop_http_requests_total');
  const series = metrics.split('\n').filter((l) => l.startsWith('shop_http_requests_total{'));
  const labels = series.map((l) => /method="([^"]*)",status="([^"]*)"/.exec(l)!.slice(1));
  t.ok(
    labels.every(([m]) => HTTP_METHODS.has(m!) || m === 'other'),
    `method labels from the fixed set: ${[...new Set(labels.map(([m]) => m))].join(' ')}`,
  );
  t.ok(
    labels.every(([, s]) => HTTP_STATUSES.has(Number(s)) || s === 'other'),
    `status labels from the fixed set: ${[...new Set(labels.map(([, s]) => s))].join(' ')}`,
  );
  const routes = 15 + 1; // the API's routes and "unmatched"
  t.ok(series.length <= routes * (HTTP_METHODS.size + 1) * (HTTP_STATUSES.size + 1), `${series.length} series, within routes × methods × statuses`);
});

t.test('batch_init: n over batchInitMax is 400 too_large naming the setting, n at it is done, for every kind', async (t) => {
  const sys = await startSystem(t, { workers: 1, overrides: { batchInitMax: BATCH_INIT_MAX } });
  const over = [`/stock/batch_init/${BATCH_INIT_MAX + 1}/1/1`, `/payment/batch_init/${MAX_SAFE}/0`, `/orders/batch_init/${BATCH_INIT_MAX + 1}/1/1/1`];
  for (const path of over) {
    const r = await sys.call('POST', path);
    t.equal(r.status, 400, `${path}: 400`);
    t.match(r.body, { error: 'too_large', message: new RegExp(`batchInitMax \\(SHOP_BATCH_INIT_MAX\\) is ${BATCH_INIT_MAX}`) }, `${path}: names the setting`);
  }
  t.equal((await sys.call('GET', `/payment/find_user/${BATCH_INIT_MAX}`)).status, 400, 'nothing was created');
  for (const path of [`/stock/batch_init/${BATCH_INIT_MAX}/1/1`, `/payment/batch_init/${BATCH_INIT_MAX}/7`, `/orders/batch_init/${BATCH_INIT_MAX}/1/1/1`]) {
    t.equal((await sys.call('POST', path)).status, 200, `${path}: at the maximum, done`);
  }
  t.same((await sys.call('GET', `/payment/find_user/${BATCH_INIT_MAX - 1}`)).body, { user_id: String(BATCH_INIT_MAX - 1), credit: 7 }, 'the last id exists');
  t.equal((await sys.call('GET', `/payment/find_user/${BATCH_INIT_MAX}`)).status, 400, 'and no more');
});

t.test('while a large batch_init runs, the gateway answers other requests', async (t) => {
  const N = 500_000; // 31 ranges × 8 partitions = 248 commands, more than the window
  const sys = await startSystem(t, { workers: 1, overrides: { batchInitMax: N } });
  let done = false;
  const init = sys.call('POST', `/payment/batch_init/${N}/3`).finally(() => (done = true));
  const during: number[] = [];
  let reads = 0;
  let wrong = 0;
  while (!done) {
    const at = performance.now();
    // One the gateway answers alone (an id over ID_MAX_CHARS), one the worker answers (a missing item).
    const [shaped, read] = await Promise.all([sys.call('GET', `/stock/find/${'x'.repeat(ID_MAX_CHARS + 1)}`), sys.call('GET', '/stock/find/nope')]);
    if (done) break;
    if (shaped.status !== 400) wrong++;
    if (read.status === 400) reads++;
    during.push(performance.now() - at);
  }
  t.equal(wrong, 0, 'every request the gateway answers alone was answered 400');
  t.equal((await init).status, 200, 'the batch_init succeeded');
  t.ok(during.length >= 3, `${during.length} pairs of requests answered while it ran`);
  t.ok(reads >= 1, `${reads} reads answered by the worker meanwhile`);
  t.comment(`slowest answer while it ran: ${Math.round(Math.max(...during))} ms`);
  t.same((await sys.call('GET', `/payment/find_user/${N - 1}`)).body, { user_id: String(N - 1), credit: 3 });
});
