/**
 * A partition's Redis keys and the argument the commit script reads (src/datapath/store-scripts.ts), without Redis:
 * the argument is parsed back here the way the script's cmsgpack reads it (an array of str32).
 */
import t from 'tap';
import { decode } from '../../src/codec.js';
import { commitArgs, COMMIT_RESULTS, packArgs, partitionKeys, partitionKeyTag, type BatchWrite } from '../../src/datapath/store-scripts.js';

/** A msgpack array32 of str32 and uint32, as packed for the script, back into its items. */
function unpack(buf: Buffer): (Buffer | number)[] {
  if (buf[0] !== 0xdd) throw new Error('not an array32');
  const count = buf.readUInt32BE(1);
  const items: (Buffer | number)[] = [];
  let at = 5;
  for (let i = 0; i < count; i++) {
    if (buf[at] === 0xce) {
      items.push(buf.readUInt32BE(at + 1));
      at += 5;
      continue;
    }
    if (buf[at] !== 0xdb) throw new Error(`item ${i} is neither a str32 nor a uint32`);
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

const tableKeys = (...names: string[]) => names.map((name) => ({ name, key: `k:${name}` }));
/** Counts as numbers, strings and bytes as text. */
const text = (items: (Buffer | number)[]) => items.map((b) => (typeof b === 'number' ? b : b.toString()));

t.test('commitArgs: the counts, the outbox, the cleared fields, then per changed table its sets and deletes', async (t) => {
  const changes = new Map([
    ['items', new Map<string, unknown>([['a', { stock: 1 }], ['b', undefined], ['c', { stock: 3 }]])],
    ['emptied', new Map<string, unknown>()],
    ['other', new Map<string, unknown>([['z', undefined]])],
  ]);
  const { keys, args } = commitArgs('k:meta', 'k:outbox', tableKeys('items', 'unchanged', 'emptied', 'other'), write({ changes, outboxField: '90.3', outbox: new Uint8Array([1, 2]), cleared: ['80.1', '85.2'] }));
  t.same(keys, ['k:meta', 'k:outbox', 'k:items', 'k:other'], 'meta, outbox, then only the tables the batch changes, in the partition order');
  const items = unpack(args);
  const all = text(items);
  t.same(all.slice(0, 10), [4, '4', '12', '90', '3', '90.3', '\u0001\u0002', 2, '80.1', '85.2'], 'key count, epoch, commits, cursor, local, outbox, cleared');
  t.same(all.slice(10, 16), [2, 'a', all[12], 'c', all[14], 1], 'items: two sets, one delete');
  t.same([decode(items[12] as Buffer), decode(items[14] as Buffer)], [{ stock: 1 }, { stock: 3 }], 'the values encoded');
  t.same(all.slice(16), ['b', 0, 1, 'z'], 'then other: its one delete');
});

t.test('commitArgs: no outbox entry and no changes', async (t) => {
  const { keys, args } = commitArgs('k:meta', 'k:outbox', tableKeys('items'), write());
  t.same(keys, ['k:meta', 'k:outbox']);
  t.same(text(unpack(args)), [2, '4', '12', '90', '3', '', '', 0]);
});

t.test('packArgs: counts of any size up to 2^32 - 1 as uint32, strings and bytes as str32', async (t) => {
  t.same(text(unpack(packArgs([0, 127, 128, 2 ** 32 - 1, 'é', new Uint8Array([0xff])]))), [0, 127, 128, 2 ** 32 - 1, 'é', '\ufffd']);
});

t.test("the commit script's result codes", async (t) => {
  t.same(COMMIT_RESULTS, { 0: 'fenced', 1: 'committed', 2: 'withheld', 3: 'redis-behind', 4: 'redis-ahead' });
});
