/**
 * What a committed batch owes (src/datapath/batch-owed.ts), without Redis or NATS: each share's outbox entry and
 * field, its saga messages (never stored), the batch's replies gathered into one entry, and acknowledgements of older
 * workers' parcels grouped by sender.
 */
import t from 'tap';
import { actorOf } from '../../src/actors/index.js';
import type { Actor } from '../../src/actors/types.js';
import { decode } from '../../src/codec.js';
import { bySender, gatherReplies, owedBy, parcelsOfOutgoing, type Owed, type Owing } from '../../src/datapath/batch-owed.js';
import type { Sends } from '../../src/datapath/batch-share.js';
import type { DeadLetter, OutboxEntry } from '../../src/datapath/outbox.js';
import { Later } from '../../src/datapath/later.js';

const bytes = (s: string) => new TextEncoder().encode(s);

function owing(over: Partial<Owing> = {}): Owing {
  return { kind: 'order', partition: 3, actor: actorOf('order'), last: 40, local: 7, replies: [], dead: [], sends: new Map<string, Sends>(), ...over };
}

const entry = (e: Partial<OutboxEntry>): OutboxEntry => ({ replies: [], parcels: [], dead: [], ...e });
const dead: DeadLetter = { seq: 1, reason: 'invalid', detail: 'x', data: bytes('x') };

t.test('owedBy: a share that caused nothing owes nothing and stores no field', async (t) => {
  t.same(owedBy(owing()), { field: '', entry: null, parcels: [], later: [] });
});

t.test('owedBy: replies and dead letters are kept; the field is the cursor and local count after the batch', async (t) => {
  const o = owedBy(owing({ replies: [['_INBOX.a', bytes('r')]], dead: [dead] }));
  t.equal(o.field, '40.7');
  t.same(o.entry?.replies, [['_INBOX.a', bytes('r')]]);
  t.same(o.entry?.dead, [dead]);
  t.same(o.entry?.parcels, []);
});

t.test('owedBy: commands for elsewhere become parcels per target, without ids, and stay out of the stored entry', async (t) => {
  const sends = new Map<string, Sends>([
    ['stock.1', { kind: 'stock', partition: 1, cmds: [{ k: 'a' }, { k: 'b' }] }],
    ['payment.0', { kind: 'payment', partition: 0, cmds: [{ k: 'c' }] }],
  ]);
  const o = owedBy(owing({ sends }));
  t.same(
    o.parcels.map(([kind, partition, id, data]) => [kind, partition, id, decode(data)]),
    [
      ['stock', 1, '', [{ k: 'a' }, { k: 'b' }]],
      ['payment', 0, '', [{ k: 'c' }]],
    ],
  );
  t.same([o.field, o.entry], ['', null], 'a share that only sends saga messages stores nothing');
  const withReply = owedBy(owing({ sends, replies: [['_INBOX.a', bytes('r')]] }));
  t.same(withReply.entry?.parcels, [], 'nor does one with a reply store them');
  t.equal(withReply.parcels.length, 2);
});

t.test('parcelsOfOutgoing: outgoing commands grouped per target in the order made, merged, like a share\'s', async (t) => {
  const merge = (cmds: unknown[]) => [{ merged: cmds }];
  const parcels = parcelsOfOutgoing(
    [
      { kind: 'stock', partition: 2, cmd: 1 },
      { kind: 'payment', partition: 0, cmd: 2 },
      { kind: 'stock', partition: 2, cmd: 3 },
    ],
    merge,
  );
  t.same(
    parcels.map(([kind, partition, id, data]) => [kind, partition, id, decode(data)]),
    [
      ['stock', 2, '', [{ merged: [1, 3] }]],
      ['payment', 0, '', [{ merged: [2] }]],
    ],
  );
});

t.test("owedBy: the actor's mergeOutgoing merges a target's commands before they are packed", async (t) => {
  const actor = { ...actorOf('order'), mergeOutgoing: (cmds: unknown[]) => [{ merged: cmds.length }] } as Actor<unknown, unknown>;
  const sends = new Map<string, Sends>([['stock.1', { kind: 'stock', partition: 1, cmds: [1, 2, 3] }]]);
  t.same(decode(owedBy(owing({ actor, sends })).parcels[0]![3]), [{ merged: 3 }]);
});

t.test("owedBy: commands the actor may defer (order's forgets) wait apart, the others leave as parcels in their order", async (t) => {
  const release = { k: 'release', saga: 'b', order: 'o', from: 3 };
  const forget = (saga: string) => ({ k: 'forget', sagas: [[saga, 1]] });
  const sends = new Map<string, Sends>([
    ['stock.1', { kind: 'stock', partition: 1, cmds: [forget('a'), release, forget('c')] }],
    ['payment.0', { kind: 'payment', partition: 0, cmds: [forget('d')] }],
  ]);
  const o = owedBy(owing({ sends }));
  t.same(o.parcels.map(([kind, partition, , data]) => [kind, partition, decode(data)]), [['stock', 1, [release]]], 'the release leaves now');
  t.same(o.later, [
    { kind: 'stock', partition: 1, cmd: forget('a') },
    { kind: 'stock', partition: 1, cmd: forget('c') },
    { kind: 'payment', partition: 0, cmd: forget('d') },
  ]);
  const stock = owedBy(owing({ kind: 'stock', actor: actorOf('stock'), sends: new Map([['order.3', { kind: 'order', partition: 3, cmds: [forget('x')] }]]) }));
  t.same([stock.parcels.length, stock.later], [1, []], 'an actor that defers nothing sends everything now');
});

t.test('Later: kept commands go per partition, merged across batches by their actor, each once', async (t) => {
  const later = new Later();
  const { mergeForgets } = await import('../../src/actors/saga.js');
  const forget = (saga: string) => ({ k: 'forget', sagas: [[saga, 1]] });
  later.add([{ kind: 'stock', partition: 1, cmd: forget('a') }, { kind: 'payment', partition: 0, cmd: forget('b') }], mergeForgets);
  later.add([{ kind: 'stock', partition: 1, cmd: forget('c') }], mergeForgets);
  t.equal(later.size, 2, 'two partitions wait');
  t.same(later.take('stock', 2), [], 'nothing for a partition nothing was kept for');
  const stock = later.take('stock', 1);
  t.same(stock.map(([kind, partition, id, data]) => [kind, partition, id, decode(data)]), [['stock', 1, '', [{ k: 'forget', sagas: [['a', 1], ['c', 1]] }]]], 'one parcel, one forget of both batches');
  t.same(later.take('stock', 1), [], 'taken once');
  later.add([{ kind: 'order', partition: 4, cmd: 'x' }], undefined);
  const all = later.takeAll();
  t.same(all.map(([kind, partition, , data]) => [kind, partition, decode(data)]), [['payment', 0, [forget('b')]], ['order', 4, ['x']]], 'the rest at the sweep, unmerged where the actor does not merge');
  t.equal(later.size, 0);
});

t.test('gatherReplies: replies go to the entry stored anyway; the partitions with only replies then owe nothing', async (t) => {
  const owed: Owed[] = [
    { field: '1.0', entry: entry({ replies: [['a', bytes('1')]] }), parcels: [], later: [] },
    { field: '', entry: null, parcels: [], later: [] },
    { field: '5.0', entry: entry({ replies: [['b', bytes('2')]], dead: [dead] }), parcels: [], later: [] },
    { field: '9.0', entry: entry({ replies: [['c', bytes('3')]] }), parcels: [], later: [] },
  ];
  const gathered = gatherReplies(owed);
  t.same(gathered.map((o) => o.field), ['', '', '5.0', '']);
  t.same(gathered[2]!.entry!.replies.map(([to]) => to), ['b', 'a', 'c'], 'the carrier holds every reply');
});

t.test('gatherReplies: with only replies, the first entry carries them; with nothing owed, nothing changes', async (t) => {
  const gathered = gatherReplies([
    { field: '', entry: null, parcels: [], later: [] },
    { field: '2.0', entry: entry({ replies: [['a', bytes('1')]] }), parcels: [], later: [] },
    { field: '3.0', entry: entry({ replies: [['b', bytes('2')]] }), parcels: [], later: [] },
  ]);
  t.same(gathered.map((o) => o.field), ['', '2.0', '']);
  t.same(gathered[1]!.entry!.replies.map(([to]) => to), ['a', 'b']);
  const none: Owed[] = [{ field: '', entry: null, parcels: [], later: [] }];
  t.equal(gatherReplies(none), none);
});

t.test('bySender: one list of ids per sender, in the order they were applied; parcels without an id ask for none', async (t) => {
  const grouped = bySender([
    { id: 'p1', ackTo: 'w1', commands: bytes('') },
    { id: 'p2', ackTo: 'w2', commands: bytes('') },
    { id: '', ackTo: 'w3', commands: bytes('') },
    { id: 'p3', ackTo: 'w1', commands: bytes('') },
  ]);
  t.same([...grouped], [
    ['w1', ['p1', 'p3']],
    ['w2', ['p2']],
  ]);
});
