/**
 * A partition's reminders (src/datapath/reminders.ts) over a table in memory and a clock the test moves: what is
 * due when, worked out from the committed state at that moment, and dropped once it owes nothing.
 */
import t from 'tap';
import type { Outgoing, Reminders } from '../../src/actors/types.js';
import { PartitionReminders } from '../../src/datapath/reminders.js';

/** Entries are numbers: an entry owes `value` messages, and may owe while its value is positive. */
function rig(startMs = 0, hurried = true) {
  const table = new Map<string, unknown>();
  const sent: string[] = [];
  const r: Reminders = {
    table: 't',
    firstMs: 100,
    maxMs: 400,
    startMs,
    hurried,
    owes: (v) => (v as number) > 0,
    owed: (key, v) => Array.from({ length: v as number }, (_, i): Outgoing => ({ kind: 'order', partition: 0, cmd: `${key}${i}` })),
  };
  const reminders = new PartitionReminders(r, { partition: 0, partitions: 1 }, () => table, (out) => sent.push(...out.map((o) => o.cmd as string)));
  return { table, sent, reminders };
}

t.test('what a commit changed is due firstMs later, then after twice as long each time up to maxMs, from the state then', async (t) => {
  const { table, sent, reminders } = rig();
  table.set('a', 1);
  reminders.committed(new Map([['a', 1]]), 1000);
  reminders.remind(1099);
  t.same(sent, [], 'not before firstMs');
  reminders.remind(1100);
  t.same(sent, ['a0'], 'what it owes at firstMs');
  table.set('a', 2); // the state moved without a commit the reminders heard of: they send what it says now
  reminders.remind(1299);
  reminders.remind(1300);
  t.same(sent, ['a0', 'a0', 'a1'], 'then 200 ms later');
  reminders.remind(1700);
  reminders.remind(2100);
  reminders.remind(2499);
  t.same(sent.length, 7, 'then 400, the max, and 400 again');
});

t.test('an entry that owes nothing any more, or is deleted, is dropped; a commit that changes it starts it over', async (t) => {
  const { table, sent, reminders } = rig();
  table.set('a', 1).set('b', 1);
  reminders.committed(new Map([['a', 1], ['b', 1]]), 0);
  t.equal(reminders.size, 2);
  table.set('a', 0);
  reminders.committed(new Map<string, unknown>([['a', 0], ['b', undefined]]), 50);
  t.equal(reminders.size, 0, 'a commit that ended both');
  table.set('c', 1);
  reminders.committed(new Map([['c', 1]]), 0);
  table.delete('c'); // gone without a commit heard of: dropped when due
  reminders.remind(100);
  t.same([sent, reminders.size], [[], 0]);
  table.set('d', 1);
  reminders.committed(new Map([['d', 1]]), 0);
  reminders.remind(100);
  reminders.committed(new Map([['d', 1]]), 150);
  reminders.remind(200);
  t.same(sent, ['d0'], 'changed again at 150: next due at 250, not 300');
  reminders.remind(250);
  t.same(sent, ['d0', 'd0']);
});

t.test('a partition taken anew: every loaded entry that may owe is due startMs later; soon() makes all of them due now', async (t) => {
  const { table, sent, reminders } = rig(1000);
  table.set('a', 1).set('b', 0).set('c', 1);
  reminders.loaded(0);
  t.equal(reminders.size, 2, 'b owes nothing');
  reminders.remind(999);
  t.same(sent, []);
  reminders.soon();
  reminders.remind(1);
  t.same(sent, ['a0', 'c0']);
});

t.test('reminders that are not hurried (a ledger\'s) keep their time when a partition moves', async (t) => {
  const { table, sent, reminders } = rig(1000, false);
  table.set('a', 1);
  reminders.loaded(0);
  reminders.soon();
  reminders.remind(1);
  t.same(sent, []);
  reminders.remind(1000);
  t.same(sent, ['a0']);
});

t.test('a partition that moved: what any entry owes it is due now, a ledger\'s too; the rest keeps its time', async (t) => {
  const table = new Map<string, unknown>([['a', 1], ['b', 2]]);
  const sent: string[] = [];
  // Entry a owes stock 1, entry b owes stock 2.
  const r: Reminders = { table: 't', firstMs: 100, maxMs: 400, startMs: 1000, hurried: false, owes: () => true, owed: (key, v) => [{ kind: 'stock', partition: v as number, cmd: key }] };
  const reminders = new PartitionReminders(r, { partition: 0, partitions: 4 }, () => table, (out) => sent.push(...out.map((o) => o.cmd as string)));
  reminders.loaded(0);
  reminders.remind(1, new Set(['stock.2', 'order.1']));
  t.same(sent, ['b'], 'only what is owed to stock 2');
});
