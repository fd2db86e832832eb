import fc from 'fast-check';
import t from 'tap';
import { loadConfig } from '../../src/config.js';
import { balance, parsePlacementKey, placementKey } from '../../src/placement/placement.js';

const workerIds: fc.Arbitrary<string[]> = fc.uniqueArray(fc.constantFrom('w-a', 'w-b', 'w-c', 'w-d', 'w-e', 'w-f'), { minLength: 1, maxLength: 6 });

const counts = (owners: (string | undefined)[]) => {
  const m = new Map<string, number>();
  for (const o of owners) if (o !== undefined) m.set(o, (m.get(o) ?? 0) + 1);
  return m;
};

t.test('balance: every partition on an eligible worker, counts within one of each other', async () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 64 }), workerIds, fc.array(fc.option(fc.constantFrom('w-a', 'w-b', 'w-x', 'w-c'), { nil: undefined }), { maxLength: 64 }), (n, eligible, raw) => {
      const current = Array.from({ length: n }, (_, p) => raw[p]);
      const owners = balance({ kind: 'stock', partitions: n, current, eligible });
      for (const o of owners) if (!eligible.includes(o!)) return false;
      const c = eligible.map((w) => counts(owners).get(w) ?? 0);
      return Math.max(...c) - Math.min(...c) <= 1;
    }),
  );
});

t.test('balance: moves only what must move (partitions of gone workers, and the excess of the fullest)', async () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 64 }), workerIds, workerIds, (n, before, after) => {
      const first = balance({ kind: 'order', partitions: n, current: [], eligible: before });
      const second = balance({ kind: 'order', partitions: n, current: first, eligible: after });
      const moved = second.filter((o, p) => o !== first[p]).length;
      const orphaned = first.filter((o) => !after.includes(o!)).length;
      // Lower bound of moves: the orphans, plus whatever the survivors hold above the new ceiling.
      const ceil = Math.ceil(n / after.length);
      const excess = after.reduce((sum, w) => sum + Math.max(0, (counts(first).get(w) ?? 0) - ceil), 0);
      // A new worker must receive at least floor(n / workers): that many moves at least, and no more than needed.
      const floor = Math.floor(n / after.length);
      const newcomersNeed = after.filter((w) => !before.includes(w)).length * floor;
      return moved <= Math.max(orphaned + excess, newcomersNeed) + after.length;
    }),
  );
});

t.test('balance is stable: the same input gives the same placement, and a balanced one stays put', async (t) => {
  const current = balance({ kind: 'stock', partitions: 32, current: [], eligible: ['w-1', 'w-2', 'w-3'] });
  t.same(balance({ kind: 'stock', partitions: 32, current: [], eligible: ['w-3', 'w-1', 'w-2'] }), current, 'order of the worker list does not matter');
  t.same(balance({ kind: 'stock', partitions: 32, current, eligible: ['w-1', 'w-2', 'w-3'] }), current, 'no moves when nothing changed');
  const grown = balance({ kind: 'stock', partitions: 32, current, eligible: ['w-1', 'w-2', 'w-3', 'w-4'] });
  t.equal(counts(grown).get('w-4'), 8, 'a new worker takes a fair share');
  t.equal(grown.filter((o, p) => o !== current[p]).length, 8, 'and only that share moves');
});

t.test('balance co-locates: partition p of every kind goes to the same worker, from scratch and as workers join and leave', async (t) => {
  const place = (current: Map<string, (string | undefined)[]>, eligible: string[]) =>
    new Map((['order', 'stock', 'payment'] as const).map((kind) => [kind, balance({ kind, partitions: 64, current: current.get(kind) ?? [], eligible, seed: 's' })]));
  const same = (placed: Map<string, (string | undefined)[]>, what: string) => t.same([placed.get('stock'), placed.get('payment')], [placed.get('order'), placed.get('order')], what);
  let placed = place(new Map(), ['w-1']);
  same(placed, 'one worker');
  for (const eligible of [['w-1', 'w-2'], ['w-1', 'w-2', 'w-3', 'w-4'], ['w-1', 'w-3', 'w-4'], ['w-1', 'w-3', 'w-4', 'w-5']]) {
    placed = place(placed, eligible);
    same(placed, `workers ${eligible.join(', ')}`);
  }
  t.equal(new Set(placed.get('order')).size, 4, 'and spread over every worker');
});

t.test('balance: a pin holds while its worker is eligible; no eligible worker leaves everything as it was', async (t) => {
  const current = balance({ kind: 'payment', partitions: 8, current: [], eligible: ['a', 'b'] });
  const onA = current.indexOf('a');
  const pinned = balance({ kind: 'payment', partitions: 8, current, eligible: ['a', 'b'], pins: new Map([[onA, 'b']]) });
  t.equal(pinned[onA], 'b', 'the pinned partition is on b');
  t.same([counts(pinned).get('a'), counts(pinned).get('b')], [4, 4], 'and another one went the other way');
  t.same(balance({ kind: 'payment', partitions: 8, current, eligible: [] }), current);
});

t.test('placement keys', async (t) => {
  t.equal(placementKey('stock', 7), 'stock.7');
  t.same(parsePlacementKey('order.12'), { kind: 'order', partition: 12 });
  t.equal(parsePlacementKey('leader'), undefined);
  t.equal(parsePlacementKey('bogus.1'), undefined);
});

t.test('config: the lease must cover several heartbeats', async (t) => {
  t.throws(() => loadConfig({}, { heartbeatIntervalMs: 500, workerLeaseMs: 1000 }), /workerLeaseMs .* at least 3 heartbeat intervals/);
  t.equal(loadConfig({}).placement, 'dynamic', 'dynamic placement is the default');
  t.equal(loadConfig({ SHOP_PROFILE: 'test' }).placement, 'static', 'the test profile keeps static placement for the tests written for it');
});
