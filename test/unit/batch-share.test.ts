/**
 * One partition's share of a batch (src/datapath/batch-share.ts): where it starts, what it records, what it writes.
 */
import t from 'tap';
import { actorOf } from '../../src/actors/index.js';
import type { Kind } from '../../src/config.js';
import { Share } from '../../src/datapath/batch-share.js';
import type { Participant } from '../../src/datapath/participant.js';

const participant = (kind: Kind = 'order', cursor = 10, local = 2) =>
  ({ kind, partition: 1, actor: actorOf(kind), live: new Map([['orders', new Map()]]), cursor, local }) as unknown as Participant;
const data = new Uint8Array([0]);

t.test('a share starts at its partition\'s cursor, or at the share below it that is still committing', async (t) => {
  const below = new Share(participant());
  t.same([below.last, below.local, below.writes], [10, 2, false]);
  below.last = 15;
  t.equal(below.nextLocal(), -3, 'commands within the worker number on from the local count');
  const share = new Share(participant(), below);
  t.same([share.fromCursor, share.fromLocal, share.writes], [15, 3, false]);
  share.last = 16;
  t.ok(share.writes, 'it writes once it applied a stream message');
});

t.test('a message id applied by the share below counts as applied', async (t) => {
  const below = new Share(participant());
  below.addMessage('m1');
  const share = new Share(participant(), below);
  share.addMessage('m2');
  t.same([share.hasMessage('m1'), share.hasMessage('m2'), share.hasMessage('m3')], [true, true, false]);
  share.detach();
  t.notOk(share.hasMessage('m1'), 'not once the share below has committed');
  t.same(share.messageIds, ['m2']);
});

t.test('dead letters remember the order they were about, where the command names one', async (t) => {
  const share = new Share(participant('order'));
  share.deadLetter(1, 'invalid', 'no', data, { k: 'x', id: 'o-1' });
  share.deadLetter(2, 'invalid', 'no', data, { k: 'x', order: 'o-2' });
  share.deadLetter(3, 'invalid', 'no', data, 'junk');
  share.deadLetter(4, 'invalid', 'no', data, { id: 'x'.repeat(10_000) });
  t.same(share.dead.map((d) => share.deadOrders.get(d)), ['o-1', 'o-2', undefined, undefined]);
  const stock = new Share(participant('stock'));
  stock.deadLetter(1, 'invalid', 'no', data, { id: 'item-1' });
  t.equal(stock.deadOrders.get(stock.dead[0]!), undefined, "a stock command's id is no order");
  share.dropDeadSince(1);
  t.same([share.dead.length, share.deadOrders.size], [1, 1], 'dropped with their orders');
});

t.test('commands for elsewhere are kept per target, in order; decided sagas are counted by outcome', async (t) => {
  const share = new Share(participant());
  share.send({ kind: 'stock', partition: 0, cmd: 'a' });
  share.send({ kind: 'payment', partition: 0, cmd: 'b' });
  share.send({ kind: 'stock', partition: 0, cmd: 'c' });
  t.same([...share.sends.values()], [
    { kind: 'stock', partition: 0, cmds: ['a', 'c'] },
    { kind: 'payment', partition: 0, cmds: ['b'] },
  ]);
  share.decided('');
  share.decided('insufficient_stock');
  share.decided('');
  t.same([...share.outcomes], [['', 2], ['insufficient_stock', 1]]);
});
