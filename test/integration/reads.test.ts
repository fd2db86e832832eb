/**
 * Reads that do not fit in one NATS message, and reads that are not reads: the owner answers SPLIT when a batch's
 * replies would pass max_payload and the gateway asks each half again; a query that is not one gets a clear
 * bad_request and the subscription goes on.
 */
import { connect } from 'nats';
import t from 'tap';
import { ORDER_LINES_MAX } from '../../src/actors/order.js';
import { decode, encode } from '../../src/codec.js';
import { createLog } from '../../src/log.js';
import { partitionOf } from '../../src/partitioning.js';
import { ID_MAX_CHARS, names, ok, type Reply } from '../../src/protocol.js';
import { createShopClient } from '../../src/transport/shop-client.js';
import { NATS_MAX_PAYLOAD_DEFAULT_BYTES, READ_REPLY_BYTES_MAX } from '../../src/transport/reads.js';
import { startSystem } from '../helpers/system.js';

t.test('the largest possible reply fits in one message: READ_REPLY_BYTES_MAX holds, below the server default max_payload', async (t) => {
  // A 3-byte UTF-8 character in every one of an id's ID_MAX_CHARS code units: the most bytes an id can take.
  const longest = '\u0800'.repeat(ID_MAX_CHARS);
  t.equal(Buffer.byteLength(longest), 3 * ID_MAX_CHARS);
  t.ok(Buffer.byteLength('\u{10000}'.repeat(ID_MAX_CHARS / 2)) <= 3 * ID_MAX_CHARS, 'surrogate pairs take fewer bytes per code unit');
  const items = Array.from({ length: ORDER_LINES_MAX }, () => [longest, Number.MAX_SAFE_INTEGER]);
  const reply = ok({ paid: false, items, user: longest, total: Number.MAX_SAFE_INTEGER });
  const bytes = encode(reply).length;
  t.ok(bytes <= READ_REPLY_BYTES_MAX, `the largest order's reply is ${bytes} bytes, within READ_REPLY_BYTES_MAX ${READ_REPLY_BYTES_MAX}`);
  t.ok(READ_REPLY_BYTES_MAX < NATS_MAX_PAYLOAD_DEFAULT_BYTES / 2, 'and well below the 1 MiB nats-server allows by default');
});

t.test('a batch of large reads is answered in full: the owner splits what does not fit, the gateway asks again', async (t) => {
  const sys = await startSystem(t, { workers: 1 });
  const { config } = sys;
  const nc = await connect({ servers: config.natsUrl });
  t.teardown(() => nc.close());
  const client = createShopClient({ nc, config, log: createLog('test', 'warn') });
  t.teardown(() => client.close());

  // 16 orders of ORDER_LINES_MAX lines, each naming a 128-character item, all on one partition: ~140 KB each,
  // ~2.2 MB for a batch of all of them, so even its halves (~1.1 MB) are over max_payload (1 MiB) and are split
  // again. Made by commands straight to the owner (the order actor does not ask whether an item exists; the
  // gateway does, and it makes only UUIDs).
  const ORDERS = 16;
  const ids: string[] = [];
  for (let i = 0; ids.length < ORDERS; i++) if (partitionOf(`big-${i}`, config.partitions) === 0) ids.push(`big-${i}`);
  const item = (line: number) => `item-${line}-`.padEnd(ID_MAX_CHARS, 'x');
  for (const id of ids) t.same(await client.command('order', 0, { k: 'create', id, user: 'u' }), ok({}));
  const added = await Promise.all(
    ids.flatMap((id) => Array.from({ length: ORDER_LINES_MAX }, (_, line) => client.command('order', 0, { k: 'addItem', id, item: item(line), quantity: Number.MAX_SAFE_INTEGER, price: 0 }))),
  );
  t.ok(
    added.every((r) => r.ok),
    `${added.length} lines added`,
  );

  const expected = (id: string) => ({ order_id: id, paid: false, items: Array.from({ length: ORDER_LINES_MAX }, (_, line) => [item(line), Number.MAX_SAFE_INTEGER]), user_id: 'u', total_cost: 0 });

  // Through HTTP, all at once (one gateway turn, so they travel as one batch when they arrive together).
  const found = await Promise.all(ids.map((id) => sys.call('GET', `/orders/find/${id}`)));
  for (const [i, r] of found.entries()) {
    t.equal(r.status, 200, `${ids[i]}: 200`);
    t.same(r.body, expected(ids[i]!), `${ids[i]}: the whole order`);
  }

  // The same as queries from one turn of one client: certainly one batch of all of them.
  const replies = await Promise.all(ids.map((id) => client.query<{ items: unknown[] }>('order', 0, { k: 'find', id })));
  t.ok(
    replies.every((r) => r.ok && r.v.items.length === ORDER_LINES_MAX),
    'every query of the batch answered with its full order',
  );
  t.equal((await sys.call('GET', '/orders/find/nope')).status, 400, 'the owner still serves reads');
});

t.test('a read that is not one is answered bad_request, and the subscription goes on', async (t) => {
  const sys = await startSystem(t, { workers: 1 });
  const nc = await connect({ servers: sys.config.natsUrl });
  t.teardown(() => nc.close());
  const subject = names(sys.config.streamPrefix).get('stock', 0);
  const ask = async (data: Uint8Array) => decode<Reply | Reply[]>((await nc.request(subject, data, { timeout: 5000 })).data);

  const notMsgpack = Uint8Array.of(0xc1); // a byte msgpack never uses
  for (const [what, data] of [
    ['not msgpack', notMsgpack],
    ['null', encode(null)],
    ['a number', encode(5)],
    ['no id', encode({ k: 'find' })],
    ['an id over ID_MAX_CHARS', encode({ k: 'find', id: 'x'.repeat(ID_MAX_CHARS + 1) })],
    ['an unknown query', encode({ k: 'drop', id: 'x' })],
    ['an empty batch', encode([])],
    ['a batch over READ_QUERIES_MAX', encode(Array.from({ length: 1025 }, () => ({ k: 'find', id: 'x' })))],
  ] as const) {
    t.match(await ask(data), { ok: false, code: 'bad_request', detail: /a read is \{k: "find"/ }, what);
  }
  t.same(
    await ask(encode([{ k: 'find', id: 'a' }, null])),
    [
      { ok: false, code: 'not_found', detail: 'item a' },
      { ok: false, code: 'bad_request', detail: `a read is {k: "find", id: <1 to ${ID_MAX_CHARS} characters>}, or an array of 1 to 1024 of them` },
    ],
    'in a batch, each query is answered on its own',
  );
  const item = (await sys.call('POST', '/stock/item/create/3')).body.item_id as string;
  t.same((await sys.call('GET', `/stock/find/${item}`)).body, { stock: 0, price: 3 }, 'reads are still served');
});
