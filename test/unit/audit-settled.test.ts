/**
 * The fault tests' audit (test/helpers/faults.ts, auditSettled) against a shop of two items and one user served by a
 * small HTTP server of this test: units held by a saga that has answered come back and are not lost; units that
 * never come back are; anything else is reported at once. No broker: what is tested is the audit's own logic.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { auditSettled, type Req } from '../helpers/faults.js';

const SHOP = { items: 2, stock: 10, users: 1, credit: 10, orders: 1, price: 1 };

/** Serves order 'o' (paid, one unit of item 0), the items' stock from `stock()` and the user's credit 9. */
async function serve(stock: () => number[]): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const send = (body: unknown) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    const [, kind, , id] = req.url!.split('/');
    if (kind === 'orders') return send({ paid: true, items: [['0', 1]], total_cost: 1, user_id: '0' });
    if (kind === 'stock') return send({ stock: stock()[Number(id)] });
    return send({ credit: 9 });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

const checkout: Req = { op: 'checkout', id: 'o', amount: 0, gateway: 0, sent: 1, done: 2, status: 200 };

t.test('units held right after the storm and back a few reads later are not lost; the comment says so', async (t) => {
  let reads = 0;
  const { url, server } = await serve(() => (reads++ < 4 ? [7, 8] : [9, 10]));
  t.teardown(() => void server.close());
  const comments: string[] = [];
  const audit = await auditSettled({ comment: (m: string) => comments.push(m) } as unknown as Parameters<typeof auditSettled>[0], url, SHOP, [checkout]);
  t.same(audit.violations, []);
  t.match(comments.join('\n'), /short right after the storm \(2\), all back \d+ ms after the storm \(held, not lost\): item 0: stock 7, expected at least 9: 2 units lost/);
});

t.test('units that do not come back within the deadline are lost', async (t) => {
  const { url, server } = await serve(() => [8, 10]);
  t.teardown(() => void server.close());
  const comments: string[] = [];
  const audit = await auditSettled({ comment: (m: string) => comments.push(m) } as unknown as Parameters<typeof auditSettled>[0], url, SHOP, [checkout], 1500);
  t.same(audit.violations, ['item 0: stock 8, expected at least 9: 1 units lost']);
  t.match(comments.join('\n'), /short right after the storm \(1\), still short after 1500 ms: item 0: stock 8/);
});

t.test('units invented are reported at once, without waiting', async (t) => {
  const { url, server } = await serve(() => [9, 11]);
  t.teardown(() => void server.close());
  const started = performance.now();
  const audit = await auditSettled({ comment: () => {} } as unknown as Parameters<typeof auditSettled>[0], url, SHOP, [checkout]);
  t.same(audit.violations, ['item 1: stock 11, expected at most 10: 1 units invented']);
  t.ok(performance.now() - started < 1000, 'no second read');
});
