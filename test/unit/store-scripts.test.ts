/**
 * A partition's Redis keys and the argument the commit script reads (src/datapath/store-scripts.ts), without Redis:
 * the argument is parsed back here the way the script's cmsgpack reads it (an array of str32).
 */
import t from 'tap';
import { decode } from '../../src/codec.js';
import { commitArgs, COMMIT_RESULTS, partitionKeys, partitionKeyTag, type BatchWrite } from '../../src/datapath/store-scripts.js';

/** A msgpack array32 of str32, as packed for the script, back into its items. */
function unpack(buf: Buffer): Buffer[] {
  if (buf[0] !== 0xdd) throw new Error('not an array32');
  const count = buf.readUInt32BE(1);
  const items: Buffer[] = [];
  let at = 5;
  for (let i = 0; i < count; i++) {
    if (buf[at] !== 0xdb) throw new Error(`item ${i} is not a str32`);
    const len = buf.readUInt32BE(at + 1);
    items.push(buf.subarray(at + 5, at + 5 + len));
    at += 5 + len;
  }
  if (at !== buf.length) throw new Error('bytes after the array');
  return items;
}

const write = (over: Partial<BatchWrite> = {}): BatchWrite => ({
  epoch: 4,
  commits: 12,
  cursor: 90,
  local: 3,
  changes: new Map(),
  outboxField: '',
  outbox: null,
  cleared: [],
  ...over,
});

t.test("a partition's keys share its hash tag", async (t) => {
  t.equal(partitionKeyTag('shop:', 'stock', 5), 'shop:{stock:5}');
  const keys = partitionKeys('shop:', 'stock', 5);
  t.same([keys.meta, keys.outbox, keys.table('items')], ['shop:{stock:5}:meta', 'shop:{stock:5}:outbox', 'shop:{stock:5}:t:items']);
});

t.test('commitArgs: the counts, the outbox, the cleared fields, then per table its sets and deletes', async (t) => {
  const changes = new Map([
    ['items', new Map<string, unknown>([['a', { stock: 1 }], ['b', undefined], ['c', { stock: 3 }]])],
    ['other', new Map<string, unknown>([['z', undefined]])],
  ]);
  const items = unpack(commitArgs(['items', 'empty', 'other'], write({ changes, outboxField: '90.3', outbox: new Uint8Array([1, 2]), cleared: ['80.1', '85.2'] })));
  const text = items.map((b) => b.toString());
  t.same(text.slice(0, 10), ['5', '4', '12', '90', '3', '90.3', '\u0001\u0002', '2', '80.1', '85.2'], 'key count (meta, outbox, 3 tables), epoch, commits, cursor, local, outbox, cleared');
  t.same(text.slice(10, 16), ['2', 'a', text[12], 'c', text[14], '1'], 'items: two sets, one delete');
  t.same([decode(items[12]!), decode(items[14]!)], [{ stock: 1 }, { stock: 3 }], 'the values encoded');
  t.same(text.slice(16), ['b', '0', '0', '0', '1', 'z'], 'then the empty table, then other: its one delete');
});

t.test('commitArgs: no outbox entry and no changes', async (t) => {
  t.same(unpack(commitArgs(['items'], write())).map((b) => b.toString()), ['3', '4', '12', '90', '3', '', '', '0', '0', '0']);
});

t.test("the commit script's result codes", async (t) => {
  t.same(COMMIT_RESULTS, { 0: 'fenced', 1: 'committed', 2: 'withheld', 3: 'redis-behind', 4: 'redis-ahead' });
});
